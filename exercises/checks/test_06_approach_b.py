"""Exercise 6: each route opens its own session (section 8, approach B), from a sessionmaker
called SessionLocal or from part 3's new_session(), with no connection leaked when a request
fails."""

import inspect

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

import main


def session_local() -> sessionmaker | None:
    factory = getattr(main, "SessionLocal", None)
    return factory if isinstance(factory, sessionmaker) else None


@pytest.fixture
def approach_b(client):
    # exercises/conftest.py binds SessionLocal to the test database, as conftest.py points
    # main.db_engine at it; new_session() binds main.db_engine as it is when it is called.
    assert session_local() or "with new_session() as session:" in inspect.getsource(main), (
        "open each session in the route: `with new_session() as session:`, or define"
        " SessionLocal = sessionmaker(...) and use `with SessionLocal(bind=db_engine) as session:`"
    )
    return client


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
    assert client.get(f"/users/{user['id']}").json()["email"] == "new@example.com"  # committed
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
    name = "SessionLocal" if session_local() else "session_factory"  # new_session() uses it
    make_session = getattr(main, name)

    def tracking(**options) -> Session:
        opened.append(make_session(**options))
        return opened[-1]

    monkeypatch.setattr(main, name, tracking)
    client = approach_b
    client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    client.get("/users/")
    assert opened, "the routes did not use SessionLocal"
    assert all(not session.in_transaction() for session in opened)


def test_the_routes_use_db_engine_as_the_tests_set_it(approach_b, rows, tmp_path):
    # conftest.py, and so `pytest test_main.py`, points main.db_engine at a test database. A
    # session bound to the engine main.py was imported with would miss it (conftest.py imports
    # main.py on an empty in-memory database, so never your app.db).
    factory = session_local() or main.session_factory
    bound, elsewhere = factory.kw.get("bind"), create_engine(f"sqlite:///{tmp_path}/other.db")
    factory.configure(bind=elsewhere)
    try:
        response = approach_b.post("/users/", json={"username": "ada", "email": "a@example.com"})
    finally:
        factory.configure(bind=bound)
        elsewhere.dispose()
    assert response.status_code == 201 and [row[1] for row in rows()] == ["ada"], (
        "POST /users/ did not write to main.db_engine's database: open each session with"
        " SessionLocal(bind=db_engine), so that it takes db_engine as it is at that moment"
    )
