"""Exercise 2: is_active and a timezone-aware created_at, stored and exposed."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

ROOT = Path(__file__).resolve().parents[2]


def aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, f"{text} has no time zone"
    return moment


def test_new_user_is_active_and_has_a_creation_time(client):
    before = datetime.now(UTC) - timedelta(seconds=5)
    user = client.post("/users/", json={"username": "ada", "email": "ada@example.com"}).json()
    assert user["is_active"] is True
    assert before <= aware(user["created_at"]) <= datetime.now(UTC) + timedelta(seconds=5)


def test_read_back_from_the_database_the_time_is_still_aware_and_the_same(client):
    created = client.post("/users/", json={"username": "ada", "email": "ada@example.com"}).json()
    read = client.get(f"/users/{created['id']}").json()
    assert read["is_active"] is True
    assert abs(aware(read["created_at"]) - aware(created["created_at"])) < timedelta(seconds=1)


def test_the_columns_exist_in_the_table(client, engine):
    columns = {column["name"]: column for column in inspect(engine).get_columns("users")}
    assert "is_active" in columns and "created_at" in columns
    assert columns["is_active"]["nullable"] is False
    assert columns["created_at"]["nullable"] is False


def alembic(engine, name: str, *args) -> None:
    config = Config(ROOT / "alembic.ini")
    config.attributes["connection"] = engine  # migrations/env.py takes it
    getattr(command, name)(config, *args)


def test_your_revision_is_the_single_head_after_0002():
    script = ScriptDirectory.from_config(Config(ROOT / "alembic.ini"))
    [head] = script.get_heads()
    assert head != "0002", "write a revision: alembic revision --autogenerate -m '...'"
    assert script.get_revision(head).down_revision == "0002"


def test_an_existing_database_upgrades_in_place_and_keeps_every_row(engine):
    alembic(engine, "upgrade", "0002")  # the database as it was before your change
    with engine.begin() as connection:
        for name in ("ada", "grace"):
            connection.execute(
                text("INSERT INTO users (username, email) VALUES (:name, :email)"),
                {"name": name, "email": f"{name}@example.com"},
            )
    alembic(engine, "upgrade", "head")
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT username, email, is_active, created_at FROM users ORDER BY id")
        ).all()
    assert [(row[0], row[1]) for row in rows] == [
        ("ada", "ada@example.com"),
        ("grace", "grace@example.com"),
    ]
    assert all(row.is_active for row in rows), "existing users should stay active"
    assert all(row.created_at is not None for row in rows)
    alembic(engine, "check")  # the migrated table is exactly what the models declare
