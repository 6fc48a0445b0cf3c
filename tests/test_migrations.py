"""Alembic migrations, tested on SQLite and on the real MySQL server (issue 14): each downgrade
leaves the schema its previous revision had, the ways create_all (section 5.1) and Alembic meet,
which must never fight, and migrations that keep every row (pytest-alembic's standard tests are
in tests/test_alembic.py). Where a test starts the app, it runs on main.py and on its async twin
(conftest.py's `app_module`): both create, stamp and check the same tables."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, text

import main
from conftest import url_of
from tests.support import IGNORED, ROOT, UvicornServer, apply_solutions, copy_app

HEAD = ScriptDirectory.from_config(Config(ROOT / "alembic.ini")).get_current_head()

# The users table as create_all made it before the project used Alembic's naming convention.
OLD_USERS = Table(
    "users",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("username", String(50), nullable=False, unique=True),
    Column("email", String(120), nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)


def alembic(engine, name: str, *args) -> None:
    """Runs an alembic command (upgrade, downgrade, check, stamp) on the engine's database."""
    config = Config(ROOT / "alembic.ini")
    config.attributes["connection"] = engine  # migrations/env.py takes it
    getattr(command, name)(config, *args)


def version(engine) -> str | None:
    with engine.connect() as connection:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def test_upgrade_downgrade_upgrade_on_an_empty_database(engine):
    alembic(engine, "upgrade", "head")
    alembic(engine, "downgrade", "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    alembic(engine, "upgrade", "head")
    assert version(engine) == HEAD
    alembic(engine, "check")  # raises when the schema differs from the models


def schema(engine) -> dict:
    """Every table (but Alembic's) with its columns, unique rules, indexes and foreign keys, and
    on SQLite whether it has AUTOINCREMENT (which inspect() does not show)."""
    database = inspect(engine)
    return {
        table: (
            sorted((c["name"], str(c["type"]), c["nullable"]) for c in database.get_columns(table)),
            sorted(rule["name"] for rule in database.get_unique_constraints(table)),
            sorted(index["name"] for index in database.get_indexes(table)),
            sorted(key["name"] or "" for key in database.get_foreign_keys(table)),
            "AUTOINCREMENT" in sqlite_table_sql(engine, table),
        )
        for table in database.get_table_names()
        if table != "alembic_version"
    }


def sqlite_table_sql(engine, table: str) -> str:  # the CREATE TABLE that SQLite keeps; "" on MySQL
    if engine.dialect.name != "sqlite":
        return ""
    with engine.connect() as connection:
        query = text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :table")
        return connection.execute(query, {"table": table}).scalar()


def test_every_downgrade_restores_the_schema_its_previous_revision_had(engine):
    # (pytest-alembic's experimental test_downgrade_leaves_no_trace does this inside
    # savepoints, which MySQL's DDL cannot keep: this is the same check, without them.)
    script = ScriptDirectory.from_config(Config(ROOT / "alembic.ini"))
    for revision in reversed(list(script.walk_revisions())):  # oldest first
        before = schema(engine)
        alembic(engine, "upgrade", revision.revision)
        data_only = getattr(revision.module, "data_only", False)  # 0002 folds usernames only
        sqlite_only = getattr(revision.module, "sqlite_only", False)  # 0003 changes SQLite only
        if not (data_only or (sqlite_only and engine.dialect.name != "sqlite")):
            assert schema(engine) != before, f"{revision.revision} changed nothing"
        alembic(engine, "downgrade", revision.down_revision or "base")
        assert schema(engine) == before, f"downgrading {revision.revision} left a trace"
        alembic(engine, "upgrade", revision.revision)


def test_a_database_the_app_creates_is_at_head_and_upgrade_head_does_nothing(engine, app_module):
    with TestClient(app_module.app) as client:  # create_all, then stamped
        client.post("/users/", json={"username": "ada", "email": "a@example.com"})
    assert version(engine) == HEAD
    alembic(engine, "upgrade", "head")
    alembic(engine, "check")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT username FROM users")).scalars().all() == ["ada"]


def test_a_database_made_by_an_older_create_all_upgrades_keeping_every_row(engine, app_module):
    OLD_USERS.metadata.create_all(engine)  # before the project knew Alembic: no version table
    with engine.begin() as connection:
        for name in ("ada", "grace", "linus"):
            connection.execute(OLD_USERS.insert().values(username=name, email=f"{name}@e.com"))
    alembic(engine, "upgrade", "head")  # what everyone types
    assert version(engine) == HEAD
    alembic(engine, "check")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, username FROM users ORDER BY id")).all()
    assert rows == [(1, "ada"), (2, "grace"), (3, "linus")]
    with TestClient(app_module.app) as client:  # and the app agrees with the result
        assert client.post("/users/", json={"username": "ada", "email": "a@e.com"}).json() == {
            "detail": "Username already taken"
        }


def test_the_app_stamps_the_tables_it_creates_beside_a_learners_own_table(engine, app_module):
    with engine.begin() as connection:  # a table of the learner's, before the app's first start
        connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(200))"))
    with TestClient(app_module.app) as client:
        assert client.post("/users/", json={"username": "ada", "email": "a@e.com"}).is_success
    assert version(engine) == HEAD  # what `alembic current` prints
    alembic(engine, "upgrade", "head")  # nothing to do: no CREATE TABLE users again
    with engine.connect() as connection:
        assert connection.execute(text("SELECT username FROM users")).scalars().all() == ["ada"]


def test_the_app_leaves_a_database_that_alembic_manages_to_alembic(engine, app_module):
    alembic(engine, "stamp", "base")  # managed by Alembic, no revision applied yet
    with pytest.raises(RuntimeError, match="alembic upgrade head"), TestClient(app_module.app):
        pass
    assert not inspect(engine).has_table("users"), "create_all ran on a managed database"
    alembic(engine, "upgrade", "head")
    with TestClient(app_module.app) as client:
        assert (
            client.post("/users/", json={"username": "ada", "email": "a@e.com"}).status_code == 201
        )


# --- 0002: usernames written before the app folded them (Unicode NFKC) ------------------------
NFC_JOSE, NFD_JOSE = "Jos\u00e9", "Jose\u0301"


def users_table(engine) -> list[tuple[int, str]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text("SELECT id, username FROM users"))]


def insert_users(engine, *names: str) -> None:
    with engine.begin() as connection:
        for name in names:
            connection.execute(
                text("INSERT INTO users (username, email) VALUES (:name, 'a@example.com')"),
                {"name": name},
            )


def test_0002_folds_each_existing_username_and_keeps_every_row(engine):
    alembic(engine, "upgrade", "0001")  # the database as it was before the fold
    insert_users(engine, NFD_JOSE, "\u212aevin", "ada")
    alembic(engine, "upgrade", "head")
    assert sorted(users_table(engine)) == [(1, NFC_JOSE), (2, "Kevin"), (3, "ada")]
    assert version(engine) == HEAD


def test_0002_stops_on_two_names_that_fold_alike_and_changes_no_row(engine):
    alembic(engine, "upgrade", "0001")
    insert_users(engine, NFD_JOSE, NFC_JOSE, "ada")
    with pytest.raises(RuntimeError, match="Revision 0002 changed no row") as stopped:
        alembic(engine, "upgrade", "head")
    message = str(stopped.value)
    print(f"\n{engine.dialect.name}: {message}")
    assert f"id 1 {NFD_JOSE!a}" in message and f"id 2 {NFC_JOSE!a}" in message
    assert "ada" not in message
    assert sorted(users_table(engine)) == [(1, NFD_JOSE), (2, NFC_JOSE), (3, "ada")]
    assert version(engine) == "0001"


def test_an_app_on_a_database_behind_the_newest_revision_stops_naming_both(engine, app_module):
    # 0001's table has every column the models declare, but only 0002 folds the names stored
    # before the app folded them: without it, "\ufb01sh" and "fish" would both be stored.
    alembic(engine, "upgrade", "0001")
    insert_users(engine, "\ufb01sh")
    stop = f"revision 0001, older than this app's newest, {HEAD}: run `alembic upgrade head`"
    with pytest.raises(RuntimeError, match=re.escape(stop)), TestClient(app_module.app):
        pass
    assert users_table(engine) == [(1, "\ufb01sh")] and version(engine) == "0001"


def test_alembic_check_fails_when_a_model_changes_without_a_migration(tmp_path):
    # What CI runs (`alembic check`), on a copy of the project whose model gained a column.
    copy_app(tmp_path)
    source = (ROOT / "main.py").read_text()
    column = "    email: Mapped[str] = mapped_column(String(120))\n"
    (tmp_path / "main.py").write_text(
        source.replace(column, column + "    nickname: Mapped[str] = mapped_column(String(20))\n")
    )
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/check.db", "PATH": ""}
    alembic_cli = [sys.executable, "-m", "alembic"]
    subprocess.run([*alembic_cli, "upgrade", "head"], cwd=tmp_path, env=env, check=True)
    result = subprocess.run(
        [*alembic_cli, "check"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "add_column" in result.stderr and "nickname" in result.stderr


# An ordinary revision that SQLite can only run by copying the table (batch mode).
WIDEN_EMAIL = '''"""users: a longer email"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.alter_column("email", existing_type=sa.String(120), type_=sa.String(200))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.alter_column("email", existing_type=sa.String(200), type_=sa.String(120))
'''


def test_a_batch_migration_of_users_keeps_the_rows_that_reference_them(engine, tmp_path):
    # Exercise 3's posts reference users with ON DELETE CASCADE. On SQLite the batch copy drops
    # the old users table, which deletes every post if foreign keys are on, as Alembic warns.
    apply_solutions(copy_app(tmp_path), up_to="03")  # exercises 1 to 3, posts among them
    server = UvicornServer(url_of(engine), cwd=tmp_path)
    with server.wait_started(), server.client() as http:
        user = http.post("/users/", json={"username": "ada", "email": "a@e.com"}).json()
        for number in range(3):
            post = {"title": f"post {number}", "body": "text"}
            assert http.post(f"/users/{user['id']}/posts", json=post).status_code == 201
    (tmp_path / "migrations" / "versions" / "2026_12_01_0006_widen_email.py").write_text(
        WIDEN_EMAIL
    )
    env = {**os.environ, "DATABASE_URL": url_of(engine)}
    upgrade = [sys.executable, "-m", "alembic", "upgrade", "head"]
    subprocess.run(upgrade, cwd=tmp_path, env=env, check=True, capture_output=True)
    with engine.connect() as connection:
        counts = [connection.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES]
        [email] = [c for c in inspect(engine).get_columns("users") if c["name"] == "email"]
    print(f"\n{engine.dialect.name}: after the batch migration, users and posts: {counts}")
    assert counts == [1, 3]
    assert email["type"].length == 200


TABLES = ("users", "posts")


def test_the_foreign_key_pragma_is_on_for_the_apps_engine_only(tmp_path):
    probe = (
        "import main, sqlalchemy\n"
        "def pragma(engine):\n"
        "    with engine.connect() as connection:\n"
        "        return connection.exec_driver_sql('PRAGMA foreign_keys').scalar()\n"
        "other = sqlalchemy.create_engine('sqlite:///' + 'other.db')\n"
        "print(pragma(main.db_engine), pragma(other))\n"
    )
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/app.db", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.stdout.split() == ["1", "0"], result.stderr


# --- The README's backup, before a downgrade (README, section 7) ------------------------------
README_LINES = (ROOT / "README.md").read_text().splitlines()


def test_the_readmes_backup_line_restores_the_rows_a_downgrade_drops(
    mysql_engine, tmp_path, monkeypatch
):
    # The README's own line, run as the README's user, on the test database instead of `tutorial`.
    [line] = [line for line in README_LINES if line.startswith("mariadb-dump ")]
    dump = line.replace(" tutorial > tutorial.sql", f" {mysql_engine.url.database} > backup.sql")
    monkeypatch.setattr(main, "db_engine", mysql_engine)
    with TestClient(main.app) as client:
        for name in ("ada", "grace"):
            client.post("/users/", json={"username": name, "email": f"{name}@example.com"})
    before = users_table(mysql_engine)
    subprocess.run(dump, shell=True, check=True, cwd=tmp_path)
    alembic(mysql_engine, "downgrade", "base")  # what `downgrade -1` from 0001 does: no users
    assert not inspect(mysql_engine).has_table("users")
    restore = dump.replace("mariadb-dump --no-tablespaces", "mariadb").replace(" > ", " < ")
    subprocess.run(restore, shell=True, check=True, cwd=tmp_path)
    print(f"\nrows before {before}, after the restore {users_table(mysql_engine)}")
    assert users_table(mysql_engine) == before and len(before) == 2
    assert version(mysql_engine) == HEAD


def test_alembic_never_drops_a_table_the_models_do_not_declare(engine):
    # A table of the learner's own, declared in a module that migrations/env.py does not import
    alembic(engine, "upgrade", "head")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, text VARCHAR(50))"))
        connection.execute(text("INSERT INTO notes VALUES (1, 'keep me')"))
    try:
        alembic(engine, "check")  # autogenerate would write op.drop_table("notes")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT text FROM notes")).all() == [("keep me",)]
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE notes"))


def test_main_py_copied_into_a_package_as_reliability_md_says_makes_revisions(tmp_path):
    # docs/reliability.md, "An app of your own": main.py as myproj/database.py, its revisions
    # beside it, alembic.ini's two lines pointed there, env.py importing the copy.
    package = tmp_path / "myproj"
    shutil.copytree(ROOT / "migrations", package / "migrations", ignore=IGNORED)
    (package / "__init__.py").write_text("")
    shutil.copy(ROOT / "main.py", package / "database.py")
    env_py = package / "migrations" / "env.py"
    default_app = '.get("app", "main")'  # the app whose models autogenerate reads
    assert default_app in env_py.read_text()
    env_py.write_text(env_py.read_text().replace(default_app, '.get("app", "myproj.database")'))
    ini = (ROOT / "alembic.ini").read_text()
    ini = ini.replace("%(here)s/migrations", "%(here)s/myproj/migrations")
    ini = ini.replace("= migrations.format_revision", "= myproj.migrations.format_revision")
    (tmp_path / "alembic.ini").write_text(ini)
    recipe = " ".join((ROOT / "docs" / "reliability.md").read_text().split())
    assert "its format_revision.module line" in recipe
    assert "at myproj.migrations.format_revision" in recipe
    assert 'its default app, `"main"`, becomes `"myproj.database"`' in recipe
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/dev.db"}
    for command_line in (["upgrade", "head"], ["revision", "--autogenerate", "-m", "nothing"]):
        run = subprocess.run(
            [sys.executable, "-m", "alembic", *command_line],
            cwd=tmp_path, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
    assert list((package / "migrations" / "versions").glob("*_nothing.py"))


@pytest.mark.parametrize("revisions", ["head", "0001:0002"])
def test_alembic_sql_mode_is_refused_saying_why_not_a_traceback(tmp_path, revisions):
    # --sql prints a script instead of running it: our revisions read the database as they run
    copy_app(tmp_path)
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", revisions, "--sql"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "`--sql` cannot print this project's revisions" in result.stderr
    assert not (tmp_path / "app.db").exists()  # nothing touched
