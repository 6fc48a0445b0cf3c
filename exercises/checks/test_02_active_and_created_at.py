"""Exercise 2: is_active and a timezone-aware created_at, stored and exposed, and the revision
that adds them to a database that holds users already."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, text

from exercises.checks.migrating import add_users, models_match, upgrade_with_rows


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
    migration = upgrade_with_rows(
        engine, add_users, adds_the_columns, "no revision adds is_active and created_at to users"
    )
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
    assert all(row.created_at is not None for row in rows)
    models_match(engine)  # the newest revision's tables are exactly what the models declare
