"""Exercise 3: a posts table with a foreign key to users, two routes, and the revision that adds
the table to a database that holds users already."""

import json

from sqlalchemy import inspect, text

from exercises.checks.migrating import add_users, models_match, upgrade_with_rows


def new_user(client, name="ada") -> int:
    return client.post("/users/", json={"username": name, "email": f"{name}@example.com"}).json()[
        "id"
    ]


def test_create_a_post_for_a_user(client):
    user_id = new_user(client)
    response = client.post(f"/users/{user_id}/posts", json={"title": "Hello", "body": "First post"})
    assert response.status_code == 201
    post = response.json()
    assert post == {"id": post["id"], "user_id": user_id, "title": "Hello", "body": "First post"}


def test_list_a_users_posts_only(client):
    ada, grace = new_user(client, "ada"), new_user(client, "grace")
    client.post(f"/users/{ada}/posts", json={"title": "A1", "body": "x"})
    client.post(f"/users/{grace}/posts", json={"title": "G1", "body": "y"})
    client.post(f"/users/{ada}/posts", json={"title": "A2", "body": "z"})
    response = client.get(f"/users/{ada}/posts")
    assert response.status_code == 200
    assert [post["title"] for post in response.json()] == ["A1", "A2"]


def test_posts_of_an_unknown_user_are_404(client):
    assert client.get("/users/999/posts").status_code == 404
    response = client.post("/users/999/posts", json={"title": "t", "body": "b"})
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


def test_a_post_needs_a_title(client):
    user_id = new_user(client)
    assert (
        client.post(f"/users/{user_id}/posts", json={"title": "", "body": "b"}).status_code == 422
    )


def test_a_title_and_a_body_longer_than_their_columns_are_422(client):
    # MySQL would refuse them with an error (1406, Data too long): the model says no first
    user_id = new_user(client)
    for title, body, status in [
        ("t" * 200, "b" * 10_000, 201),
        ("t" * 201, "b", 422),
        ("t", "b" * 10_001, 422),
    ]:
        response = client.post(f"/users/{user_id}/posts", json={"title": title, "body": body})
        assert response.status_code == status, (len(title), len(body), response.text[:300])


def test_a_body_of_10_000_emoji_fits_as_utf8_but_not_as_escapes(client):
    # The app's 64 KiB limit on a request body (exercises/README.md): 4 bytes an emoji in UTF-8,
    # 12 as JSON's \ud83d\ude00
    user_id, post = new_user(client), {"title": "emoji", "body": "\U0001f600" * 10_000}
    for ensure_ascii, status in [(False, 201), (True, 413)]:
        body = json.dumps(post, ensure_ascii=ensure_ascii).encode()
        headers = {"content-type": "application/json"}
        response = client.post(f"/users/{user_id}/posts", content=body, headers=headers)
        assert response.status_code == status, (len(body), response.text[:300])


def test_the_posts_table_has_a_foreign_key_to_users(client, engine):
    [foreign_key] = inspect(engine).get_foreign_keys("posts")
    assert foreign_key["referred_table"] == "users"
    assert foreign_key["constrained_columns"] == ["user_id"]


def test_deleting_a_user_deletes_their_posts(client, engine):
    user_id = new_user(client)
    client.post(f"/users/{user_id}/posts", json={"title": "Hello", "body": "First post"})
    assert client.delete(f"/users/{user_id}").status_code == 204
    with engine.connect() as connection:  # gone from the table, not just hidden by the API
        assert connection.execute(text("SELECT COUNT(*) FROM posts")).scalar() == 0
    # SQLite may give the next user the deleted user's id: their posts must not come back.
    next_id = new_user(client, "grace")
    assert client.get(f"/users/{next_id}/posts").json() == []


def test_an_existing_database_gets_the_table_and_keeps_every_row(engine):
    # The database as it was before your change (after exercise 2, if you did it), with users
    # in it; then your revision, which follows the newest one before it.
    migration = upgrade_with_rows(
        engine,
        add_users,
        lambda database: database.has_table("posts"),
        "no revision adds the posts table",
    )
    assert migration.before["users"] == migration.after["users"] == 2, migration
    assert migration.after["posts"] == 0
    models_match(engine)  # the newest revision's tables are exactly what the models declare
    with engine.begin() as connection:  # a post for a user who was there before
        connection.execute(
            text("INSERT INTO posts (user_id, title, body) SELECT id, 'Hello', 'x' FROM users")
        )
        assert connection.execute(text("SELECT COUNT(*) FROM posts")).scalar() == 2
