"""Exercise 1: GET /users/by-username/{username} finds a user by exact username."""


def test_finds_a_user_by_username(client):
    created = client.post("/users/", json={"username": "ada", "email": "ada@example.com"}).json()
    response = client.get("/users/by-username/ada")
    assert response.status_code == 200
    assert response.json() == created


def test_lookup_is_exact(client):
    client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    assert client.get("/users/by-username/Ada").status_code == 404


def test_unknown_username_returns_404(client):
    response = client.get("/users/by-username/nobody")
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


def test_ids_still_work(client):
    created = client.post("/users/", json={"username": "ada", "email": "ada@example.com"}).json()
    assert client.get(f"/users/{created['id']}").json() == created


def test_the_lookup_folds_the_name_as_the_app_does(client):
    # José as e plus a combining accent finds the José the app stored in one code point.
    created = client.post("/users/", json={"username": "Jos\u00e9", "email": "j@example.com"})
    response = client.get("/users/by-username/Jose\u0301")
    assert response.status_code == 200
    assert response.json() == created.json()


def test_a_name_no_user_can_have_is_refused_with_422(client):
    response = client.get("/users/by-username/ad\u200ba")  # a zero-width space inside
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "username"]


def test_a_name_with_a_slash_in_it_is_found(client):
    # A username may hold "/", which a URL sends as %2F and the router reads as "/" again: the
    # route takes the rest of the path, slashes and all, with {username:path}.
    created = client.post("/users/", json={"username": "a/b", "email": "ab@example.com"}).json()
    response = client.get("/users/by-username/a%2Fb")
    assert response.status_code == 200
    assert response.json() == created
