"""Exercise 6: sessions from a sessionmaker inside each route (section 8, approach B), with no
connection leaked when a request fails."""

import inspect

import pytest
from sqlalchemy.orm import Session, sessionmaker

import main


@pytest.fixture
def approach_b(client, engine):
    factory = getattr(main, "SessionLocal", None)
    assert isinstance(factory, sessionmaker), "define SessionLocal = sessionmaker(...)"
    factory.configure(bind=engine)  # the test database, as the fixtures do for db_engine
    yield client
    factory.configure(bind=main.db_engine)


def test_no_route_takes_a_session_from_a_dependency(approach_b):
    for route in main.app.routes:
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None or endpoint.__module__ != "main":
            continue
        for parameter in inspect.signature(endpoint).parameters.values():
            annotation = str(parameter.annotation)
            assert "Session" not in annotation, f"{endpoint.__name__} still takes a Session"


def test_crud_still_works(approach_b):
    client = approach_b
    user = client.post("/users/", json={"username": "ada", "email": "ada@example.com"}).json()
    assert client.get(f"/users/{user['id']}").json() == user
    patched = client.patch(f"/users/{user['id']}", json={"email": "new@example.com"})
    assert patched.json()["email"] == "new@example.com"
    assert client.delete(f"/users/{user['id']}").status_code == 204
    assert client.get(f"/users/{user['id']}").status_code == 404


def test_failing_requests_leak_no_connection(approach_b, engine):
    client = approach_b
    client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    client.post("/users/", json={"username": "grace", "email": "grace@example.com"})
    for _ in range(30):
        assert (
            client.post("/users/", json={"username": "ada", "email": "a@example.com"}).status_code
            == 409
        )
        assert client.get("/users/9999").status_code == 404
        assert client.patch("/users/2", json={"username": "ada"}).status_code == 409
        assert client.delete("/users/9999").status_code == 404
    assert engine.pool.checkedout() == 0


def test_sessions_are_not_left_open(approach_b, monkeypatch):
    opened: list[Session] = []
    make_session = main.SessionLocal

    def tracking() -> Session:
        opened.append(make_session())
        return opened[-1]

    monkeypatch.setattr(main, "SessionLocal", tracking)
    client = approach_b
    client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    client.get("/users/")
    assert opened, "the routes did not use SessionLocal"
    assert all(not session.in_transaction() for session in opened)
