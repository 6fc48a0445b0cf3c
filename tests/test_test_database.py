"""The tests never drop what they did not create (issue 31): pytest refuses, before it drops
anything, a TEST_DATABASE_URL that is the app's own database, whose name does not say it is for
tests, or whose database holds a table the suite does not make (conftest.py, SUITE_TABLES)."""

import os
import shutil
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

import main
from conftest import url_of
from tests.support import ROOT, copy_app


def pytest_with(**env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_main.py"]
    command += ["-k", "test_root_says_hello"]
    env = {**os.environ, **env}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_test_database_that_holds_a_table_of_yours_is_refused_and_kept(mysql_engine):
    with mysql_engine.begin() as connection:
        connection.execute(text("CREATE TABLE learner_notes (id INT PRIMARY KEY, body TEXT)"))
        connection.execute(text("INSERT INTO learner_notes VALUES (1, 'keep me')"))
    try:
        run = pytest_with(TEST_DATABASE_URL=url_of(mysql_engine))
        with mysql_engine.connect() as connection:
            kept = connection.execute(text("SELECT body FROM learner_notes")).scalars().all()
    finally:
        with mysql_engine.begin() as connection:
            connection.execute(text("DROP TABLE learner_notes"))  # this test made it
    assert run.returncode == 4, run.stdout
    assert "holds tables the tests did not make: learner_notes" in run.stdout
    assert kept == ["keep me"]


@pytest.mark.parametrize("which", ["the app's own", "not named for tests"])
def test_a_test_database_that_is_not_for_tests_is_refused(mysql_engine, which):
    url = url_of(mysql_engine)
    if which == "the app's own":
        run = pytest_with(TEST_DATABASE_URL=url, DATABASE_URL=url)
        reason = "it is the app's own DATABASE_URL"
    else:
        other = mysql_engine.url.set(database="tutorial").render_as_string(hide_password=False)
        run = pytest_with(TEST_DATABASE_URL=other)
        reason = "its database, 'tutorial', is not named for tests"
    assert run.returncode == 4, run.stdout
    assert f"Refusing TEST_DATABASE_URL: {reason}" in run.stdout
    assert "Nothing was dropped" in run.stdout


def test_the_readmes_user_can_make_a_fresh_database_of_its_own(mysql_engine):
    # README, section 4: "a new database of its own (`CREATE DATABASE tutorial_paging`, as the
    # user `tutorial`)". The setup grants every database named tutorial_...; this test makes
    # one under a name of its own, uses it, and drops only what it made.
    assert "(`CREATE DATABASE tutorial_paging`, as the user `tutorial`" in " ".join(
        (ROOT / "README.md").read_text().split()
    )
    fresh = f"tutorial_fresh_made_by_the_tests_{os.getpid()}"  # CI runs two suites at once
    with mysql_engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {fresh} CHARACTER SET utf8mb4"))
        try:
            connection.execute(text(f"CREATE TABLE {fresh}.users (id INT PRIMARY KEY)"))
            connection.execute(text(f"INSERT INTO {fresh}.users VALUES (1)"))
            assert connection.execute(text(f"SELECT id FROM {fresh}.users")).scalar() == 1
        finally:
            connection.execute(text(f"DROP DATABASE {fresh}"))


def test_a_session_bound_when_main_is_imported_never_reaches_the_apps_database(tmp_path):
    # Exercise 6's warned-of slip, `SessionLocal = sessionmaker(bind=db_engine)`, then the
    # exercises' advice, `pytest test_main.py` as you go: the fixtures point main.db_engine at
    # the test database, so conftest.py imports main.py with its engine on no database of yours.
    learner_code = """
SessionLocal = sessionmaker(bind=db_engine)


@app.post("/learner/users/", status_code=201, response_model=UserOutput)
def create_user_b(user: UserInput):
    with SessionLocal() as session:
        new_user = UserTable(username=user.username, email=user.email)
        session.add(new_user)
        session.commit()
        return new_user
"""
    folder = copy_app(tmp_path, learner_code)
    for name in ("conftest.py", "pyproject.toml", "tests/__init__.py", "tests/support.py"):
        (folder / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, folder / name)
    shutil.copy(ROOT / "tests/galera.py", folder / "tests/galera.py")
    (folder / "test_learner.py").write_text(
        "def test_create(client):\n"
        '    client.post("/learner/users/", json={"username": "ada", "email": "a@example.com"})\n'
    )
    apps_database = create_engine(f"sqlite:///{folder}/app.db")
    main.BaseModelClass.metadata.create_all(apps_database)  # the learner's, made by the app
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TEST_DATABASE_URL")}
    env["DATABASE_URL"] = "sqlite:///./app.db"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_learner.py"]
    run = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    with apps_database.connect() as connection:
        learners_rows = connection.execute(text("SELECT username FROM users")).scalars().all()
    apps_database.dispose()
    assert "1 passed" in run.stdout, run.stdout  # the learner's POST ran
    assert learners_rows == []
