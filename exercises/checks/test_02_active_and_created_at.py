"""Exercise 2: is_active and a timezone-aware created_at, stored and exposed, and the revision
that adds them to a database that holds users already."""

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, inspect, text

from exercises.checks.migrating import add_users, models_match, upgrade_with_rows


@pytest.fixture(autouse=True)
def a_clock_five_hours_ahead_of_utc(monkeypatch):
    """This process's local time at UTC+5, as on a computer in Karachi: datetime.now() is then
    not UTC, on whatever clock the check runs (CI's says UTC). datetime.now(UTC) is."""
    if not hasattr(time, "tzset"):  # Windows: the check runs on the computer's own clock
        yield
        return
    monkeypatch.setenv("TZ", "PKT-5")  # POSIX spells UTC+5 with a minus
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, f"{text} has no time zone"
    return moment


def test_new_user_is_active_and_has_a_creation_time(client):
    before = datetime.now(UTC) - timedelta(seconds=5)
    user = client.post("/users/", json={"username": "ada", "email": "ada@example.com"}).json()
    assert user["is_active"] is True
    assert before <= aware(user["created_at"]) <= datetime.now(UTC) + timedelta(seconds=5)


def test_read_back_from_the_database_the_user_is_the_same_time_zone_included(client):
    created = client.post("/users/", json={"username": "ada", "email": "ada@example.com"}).json()
    read = client.get(f"/users/{created['id']}").json()
    assert read["is_active"] is True
    aware(read["created_at"])
    # The tests that compare whole answers (test_main.py, exercises 1 and 6) need this. MySQL's
    # DATETIME keeps whole seconds: store whole seconds, datetime.now(UTC).replace(microsecond=0).
    assert read == created, "GET answers another created_at than POST did"


def test_the_columns_exist_in_the_table(client, engine):
    columns = {column["name"]: column for column in inspect(engine).get_columns("users")}
    assert "is_active" in columns and "created_at" in columns
    assert columns["is_active"]["nullable"] is False
    assert columns["created_at"]["nullable"] is False


def adds_the_columns(database) -> bool:
    columns = {column["name"] for column in database.get_columns("users")}
    return {"is_active", "created_at"} <= columns


def test_an_existing_database_upgrades_in_place_and_keeps_every_row(engine):
    # The database as it was before your change, with users in it; then your revision (one
    # line of revisions: yours follows the newest one before it).
    # On MySQL, from a connection whose clock says UTC+5, as a server set to another time zone
    # does: NOW() is then not UTC. (SQLite's clock is always UTC.)
    far_from_utc = engine
    if engine.dialect.name == "mysql":
        far_from_utc = create_engine(
            engine.url, connect_args={"init_command": "SET time_zone = '+05:00'"}
        )
    migration = upgrade_with_rows(
        far_from_utc,
        add_users,
        adds_the_columns,
        "no revision adds is_active and created_at to users",
    )
    far_from_utc.dispose()
    assert migration.before["users"] == migration.after["users"] == 2, migration
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT username, email, is_active, created_at FROM users ORDER BY id")
        ).all()
    assert [(row[0], row[1]) for row in rows] == [
        ("ada", "ada@example.com"),
        ("grace", "grace@example.com"),
    ]
    assert all(row.is_active for row in rows), "existing users should stay active"
    now = datetime.now(UTC).replace(tzinfo=None)
    for row in rows:
        created_at = datetime.fromisoformat(str(row.created_at)).replace(tzinfo=None)
        assert abs(created_at - now) < timedelta(minutes=2), (
            f"an existing user's created_at is {created_at}, not the migration's time in UTC"
            f" ({now:%Y-%m-%d %H:%M}): write it in UTC, not the server's NOW()"
        )
    models_match(engine)  # the newest revision's tables are exactly what the models declare
