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
