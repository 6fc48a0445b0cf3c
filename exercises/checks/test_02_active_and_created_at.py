"""Exercise 2: is_active and a timezone-aware created_at, stored and exposed."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect


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
