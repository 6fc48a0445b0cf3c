"""The API's behaviour, one test per behaviour; each runs on SQLite and on MySQL (conftest.py)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, event, text

import main


def create(client, username="ada", email="ada@example.com"):
    return client.post("/users/", json={"username": username, "email": email})


# --- GET / ------------------------------------------------------------------------------------
def test_root_says_hello(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.json() == {"message": "Hello, World!"}


# --- POST /users/ -----------------------------------------------------------------------------
def test_create_user_returns_201_and_stores_the_row(client, rows):
    response = create(client)
    assert response.status_code == 201
    user = response.json()
    assert user == {"id": user["id"], "username": "ada", "email": "ada@example.com"}
    assert rows() == [(user["id"], "ada", "ada@example.com")]


def test_created_users_get_distinct_ids(client):
    first, second = create(client, "ada").json(), create(client, "grace").json()
    assert first["id"] != second["id"]


def test_duplicate_username_returns_409_and_keeps_one_row(client, rows):
    create(client, "ada", "ada@example.com")
    response = create(client, "ada", "other@example.com")
    assert response.status_code == 409
    assert response.json() == {"detail": "Username already taken"}
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]


@pytest.mark.parametrize(
    "first, second", [("Alice", "alice"), ("José", "Jose"), ("straße", "strasse")]
)
def test_usernames_are_unique_exactly_not_by_case_or_accent(client, rows, first, second):
    assert create(client, first).status_code == 201
    assert create(client, second).status_code == 201
    assert [row[1] for row in rows()] == [first, second]


@pytest.mark.parametrize(
    "username",
    [
        "😀" * 50,
        "山田太郎",
        "Zoë Ångström",
        "ñandú",
        "👩\u200d💻 dev",  # a joiner between two emoji: one picture
        "क्\u200dष",  # a joiner after a virama (Hindi): it changes how the letters join
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian: a non-joiner in a word
        "Ada Lovelace",
    ],
)
def test_unicode_username_round_trips_unchanged(client, rows, username):
    response = create(client, username)
    assert response.status_code == 201
    assert response.json()["username"] == username
    assert rows()[0][1] == username


# Usernames are compared as text, not as code points: Unicode's NFKC folds the ways a keyboard
# or an operating system may spell the same name (docs/usernames.md).
NFC_JOSE, NFD_JOSE = "Jos\u00e9", "Jose\u0301"  # é as one code point, or e + a combining accent


def test_a_decomposed_username_is_taken_by_its_composed_twin(client, rows):
    assert create(client, NFC_JOSE).status_code == 201
    response = create(client, NFD_JOSE)
    assert response.status_code == 409
    assert [row[1] for row in rows()] == [NFC_JOSE]


@pytest.mark.parametrize(
    "sent, stored",
    [
        (NFD_JOSE, NFC_JOSE),
        ("\u212aevin", "Kevin"),  # the Kelvin sign is the letter K
        ("\uff41\uff44\uff41", "ada"),  # fullwidth letters
        ("\ufb01sh", "fish"),  # the fi ligature
    ],
)
def test_a_username_is_stored_and_answered_in_one_spelling(client, rows, sent, stored):
    response = create(client, sent)
    assert response.status_code == 201
    assert response.json()["username"] == stored
    assert rows()[0][1] == stored


def test_patch_folds_the_username_too(client, rows):
    create(client, NFC_JOSE)
    user_id = create(client, "grace", "grace@example.com").json()["id"]
    assert client.patch(f"/users/{user_id}", json={"username": NFD_JOSE}).status_code == 409
    assert (
        client.patch(f"/users/{user_id}", json={"username": "\u212aim"}).json()["username"] == "Kim"
    )
    assert [row[1] for row in rows()] == [NFC_JOSE, "Kim"]


def test_the_length_limit_counts_the_folded_characters(client):
    assert create(client, "e\u0301" * 50).status_code == 201  # 100 code points, 50 letters é


def test_a_username_far_over_the_limit_is_refused_before_it_is_folded(client):
    response = create(client, "a" * 10_000)
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["type"] == "string_too_long"
    assert problem["ctx"] == {"max_length": 200}  # the limit on the text as sent, not folded


@pytest.mark.parametrize(
    "character",
    ["\u200b", "\u202e", "\u2066", "\ufeff", "\u200e", "\u00ad", "\ufe0f", "\u034f", "\u115f"],
    ids=[
        "zero-width space",
        "right-to-left override",
        "left-to-right isolate",
        "byte order mark",
        "left-to-right mark",
        "soft hyphen",
        "variation selector",
        "combining grapheme joiner",
        "hangul filler",
    ],
)
def test_an_invisible_or_direction_changing_character_is_refused(client, rows, character):
    response = create(client, f"ad{character}a")
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "username"]
    assert f"U+{ord(character):04X}" in problem["msg"] and "invisible" in problem["msg"]
    assert rows() == []


@pytest.mark.parametrize(
    "username",
    ["ada\u200d", "\u200c", "ad\u200da", "ad\u200ca", "क्\u200bष", "\u2800ada\u2800"],
    ids=[
        "joiner at the end",
        "non-joiner alone",
        "joiner",
        "non-joiner",
        "zero-width space after a virama",
        "blank braille",
    ],
)
def test_a_joiner_where_it_joins_nothing_or_a_blank_character_is_refused(client, rows, username):
    response = create(client, username)  # each looks like "ada", or like nothing at all
    assert response.status_code == 422
    assert "invisible" in response.json()["detail"][0]["msg"]
    assert rows() == []


def test_a_username_that_starts_with_an_accent_is_refused(client, rows):
    response = create(client, "\u0301ada")  # an accent with nothing to sit on
    assert response.status_code == 422
    assert "combining mark" in response.json()["detail"][0]["msg"]
    assert rows() == []


def test_sql_looking_input_is_stored_literally(client, rows):
    username = "x'); DROP TABLE users; --"
    assert create(client, username).status_code == 201
    assert client.get("/users/").json()[0]["username"] == username
    assert rows()[0][1] == username


def test_username_of_50_characters_is_accepted(client):
    assert create(client, "a" * 50).status_code == 201


@pytest.mark.parametrize(
    "username",
    [
        "",
        "a" * 51,
        "😀" * 51,
        "   ",
        " ada",
        "ada ",
        "\tada",
        "ada\n",
        "\u00a0ada",  # no-break space
        "ada\u3000",  # ideographic space
        "\u2003ada",  # em space
        "a\x00da",  # control character inside
        "a\u2028da",  # line separator: a new line
        "a\u0378da",  # not assigned by Unicode yet: NFKC may fold it once it is
    ],
)
def test_invalid_username_returns_422(client, rows, username):
    response = create(client, username)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "username"]
    assert rows() == []


@pytest.mark.parametrize(
    "email", ["", "not-an-email", "ada@", "@example.com", "a@b@c.com", "x" * 109 + "@example.com"]
)
def test_invalid_email_returns_422(client, rows, email):
    response = create(client, email=email)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "email"]
    assert rows() == []


def test_email_of_120_characters_is_accepted(client):
    email = "x" * 108 + "@example.com"
    assert len(email) == 120
    assert create(client, email=email).status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "ada"},
        {"email": "ada@example.com"},
        {"username": 123, "email": "ada@example.com"},
        {"username": None, "email": "ada@example.com"},
        {"username": ["ada"], "email": "ada@example.com"},
        {"username": "ada", "email": {"a": 1}},
        [],
        "ada",
    ],
)
def test_missing_fields_and_wrong_types_return_422(client, rows, body):
    assert client.post("/users/", json=body).status_code == 422
    assert rows() == []


def test_body_that_is_not_json_returns_422_saying_where_it_broke(client):
    response = client.post(
        "/users/", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"] == ["body", 1]


def test_concurrent_creates_of_one_username_give_one_201_and_one_row(client, rows):
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(lambda _: create(client, "racer").status_code, range(20)))
    assert sorted(statuses) == [201] + [409] * 19
    assert [row[1] for row in rows()] == ["racer"]


# --- GET /users/ ------------------------------------------------------------------------------
def test_list_users_is_empty_at_first(client):
    response = client.get("/users/")
    assert response.status_code == 200
    assert response.json() == []


def test_list_users_is_ordered_by_id(client):
    ids = [create(client, name).json()["id"] for name in ["carol", "alice", "bob"]]
    listed = client.get("/users/").json()
    assert [user["id"] for user in listed] == sorted(ids)
    assert [user["username"] for user in listed] == ["carol", "alice", "bob"]


def test_list_users_pages_with_skip_and_limit(client):
    for name in ["a", "b", "c", "d"]:
        create(client, name)
    page = client.get("/users/", params={"skip": 1, "limit": 2}).json()
    assert [user["username"] for user in page] == ["b", "c"]


def test_list_users_returns_at_most_100_by_default(client):
    for number in range(101):
        create(client, f"user{number}")
    assert len(client.get("/users/").json()) == 100


@pytest.mark.parametrize("params", [{"skip": -1}, {"limit": 0}, {"limit": 101}, {"limit": "ten"}])
def test_list_users_with_bad_paging_returns_422(client, params):
    assert client.get("/users/", params=params).status_code == 422


# --- GET /users/{user_id} ---------------------------------------------------------------------
def test_read_user_returns_the_user(client):
    created = create(client).json()
    response = client.get(f"/users/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created


def test_read_missing_user_returns_404(client):
    response = client.get("/users/12345")
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


@pytest.mark.parametrize("user_id", ["abc", "1.5", "0", "-1", str(2**31), str(2**64), "9" * 30])
def test_invalid_user_id_returns_422(client, user_id):
    assert client.get(f"/users/{user_id}").status_code == 422


# --- PATCH /users/{user_id} -------------------------------------------------------------------
def test_patch_changes_only_the_given_fields(client, rows):
    user_id = create(client).json()["id"]
    response = client.patch(f"/users/{user_id}", json={"email": "new@example.com"})
    assert response.status_code == 200
    assert response.json() == {"id": user_id, "username": "ada", "email": "new@example.com"}
    assert rows() == [(user_id, "ada", "new@example.com")]


def test_patch_can_change_both_fields(client, rows):
    user_id = create(client).json()["id"]
    body = {"username": "grace", "email": "grace@example.com"}
    assert client.patch(f"/users/{user_id}", json=body).json() == {"id": user_id, **body}
    assert rows() == [(user_id, "grace", "grace@example.com")]


def test_patch_answers_the_row_as_stored_though_another_request_changed_it(client, engine, rows):
    user_id = create(client).json()["id"]
    app_engine = getattr(main.db_engine, "sync_engine", main.db_engine)  # the twin's: async
    updates = []

    @event.listens_for(app_engine, "before_cursor_execute")
    def another_request_renames_the_user(connection, cursor, statement, *args):
        if statement.startswith("UPDATE users") and not updates:  # just before the PATCH's
            updates.append(statement)
            with engine.begin() as other:
                other.execute(text("UPDATE users SET username = 'grace'"))

    answer = client.patch(f"/users/{user_id}", json={"email": "new@example.com"}).json()
    assert (answer["username"], answer["email"]) == ("grace", "new@example.com")
    assert rows() == [(user_id, "grace", "new@example.com")]


def test_patch_with_empty_body_changes_nothing(client, rows):
    created = create(client).json()
    response = client.patch(f"/users/{created['id']}", json={})
    assert response.status_code == 200
    assert response.json() == created
    assert rows() == [(created["id"], "ada", "ada@example.com")]


def test_patch_keeping_own_username_is_not_a_conflict(client):
    user_id = create(client).json()["id"]
    assert client.patch(f"/users/{user_id}", json={"username": "ada"}).status_code == 200


@pytest.mark.parametrize(
    "body", [{"username": None}, {"email": None}, {"username": " ada"}, {"email": "nope"}]
)
def test_patch_with_null_or_invalid_field_returns_422(client, rows, body):
    user_id = create(client).json()["id"]
    assert client.patch(f"/users/{user_id}", json=body).status_code == 422
    assert rows() == [(user_id, "ada", "ada@example.com")]


def test_patch_with_a_misspelt_field_returns_422_naming_it(client, rows):
    user_id = create(client).json()["id"]
    response = client.patch(f"/users/{user_id}", json={"emial": "new@example.com"})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "emial"]]
    assert rows() == [(user_id, "ada", "ada@example.com")]


def test_patch_to_a_taken_username_returns_409(client, rows):
    create(client, "ada")
    grace_id = create(client, "grace", "grace@example.com").json()["id"]
    response = client.patch(f"/users/{grace_id}", json={"username": "ada"})
    assert response.status_code == 409
    assert response.json() == {"detail": "Username already taken"}
    assert [row[1] for row in rows()] == ["ada", "grace"]


def test_patch_missing_user_returns_404(client):
    response = client.patch("/users/12345", json={"email": "new@example.com"})
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


# --- DELETE /users/{user_id} ------------------------------------------------------------------
def test_delete_returns_204_and_removes_the_row(client, rows):
    user_id = create(client).json()["id"]
    response = client.delete(f"/users/{user_id}")
    assert response.status_code == 204
    assert response.content == b""
    assert rows() == []
    assert client.get(f"/users/{user_id}").status_code == 404


def test_delete_missing_user_returns_404(client):
    response = client.delete("/users/12345")
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


def test_deleted_username_can_be_taken_again(client):
    user_id = create(client).json()["id"]
    client.delete(f"/users/{user_id}")
    assert create(client).status_code == 201


def test_a_deleted_users_id_is_never_given_to_another(client):
    deleted = create(client, "ada").json()["id"]
    client.delete(f"/users/{deleted}")
    reused = create(client, "grace").json()["id"] == deleted  # SQLite's habit, unless told
    assert not reused  # else a client still holding the old id would read or change grace


# --- The database is unreachable --------------------------------------------------------------
def test_unreachable_database_returns_503_without_leaking_details(client, engine, monkeypatch):
    if engine.dialect.name == "sqlite":
        dead_url = "sqlite:////nonexistent-directory/app.db"
    else:
        dead_url = engine.url.set(host="127.0.0.1", port=1, password="s3cret-pass")
    monkeypatch.setattr(main, "db_engine", create_engine(dead_url))
    for response in [create(client), client.get("/users/"), client.get("/users/1")]:
        assert response.status_code == 503
        assert response.json() == {"detail": "Database unavailable"}
        assert "s3cret" not in response.text and "127.0.0.1" not in response.text
