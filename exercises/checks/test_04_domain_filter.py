"""Exercise 4: GET /users/?domain=... lists only the users with an e-mail at that domain."""


def create(client, name, email):
    assert client.post("/users/", json={"username": name, "email": email}).status_code == 201


def test_filter_by_domain(client):
    create(client, "ada", "ada@example.com")
    create(client, "grace", "grace@navy.example")
    create(client, "alan", "alan@example.com")
    response = client.get("/users/", params={"domain": "example.com"})
    assert response.status_code == 200
    assert [user["username"] for user in response.json()] == ["ada", "alan"]


def test_the_domain_must_match_whole(client):
    create(client, "ada", "ada@sub.example.com")
    create(client, "bob", "bob@notexample.com")
    create(client, "eve", "eve@example.com.evil")
    assert client.get("/users/", params={"domain": "example.com"}).json() == []


def test_the_domain_ignores_case(client):
    create(client, "ada", "ada@Example.COM")
    assert len(client.get("/users/", params={"domain": "EXAMPLE.com"}).json()) == 1


def test_without_a_domain_every_user_is_listed(client):
    create(client, "ada", "ada@example.com")
    create(client, "grace", "grace@navy.example")
    assert len(client.get("/users/").json()) == 2


def test_paging_still_applies(client):
    for number in range(5):
        create(client, f"user{number}", f"user{number}@example.com")
    page = client.get("/users/", params={"domain": "example.com", "skip": 1, "limit": 2}).json()
    assert [user["username"] for user in page] == ["user1", "user2"]


def test_like_wildcards_in_the_domain_are_taken_literally(client):
    create(client, "ada", "ada@example.com")
    assert client.get("/users/", params={"domain": "example_com"}).json() == []
    assert client.get("/users/", params={"domain": "%"}).json() == []


def test_an_empty_domain_is_refused_with_422(client):
    create(client, "ada", "ada@example.com")
    response = client.get("/users/", params={"domain": ""})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "domain"]
