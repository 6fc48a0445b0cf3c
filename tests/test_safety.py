"""The safety machinery's own failure modes (issue 18): a learner's routes, appended to a copy of
main.py, meet the deadlock rerun, the error answers and the body limit, on both backends."""

import time

import pytest
from sqlalchemy import text

from conftest import url_of
from tests.support import UvicornServer, copy_app, deadlocked

LEARNER_ROUTES = """

# --- Added by a learner ---------------------------------------------------------------------
from fastapi import Depends
from sqlalchemy.orm import Session


@app.post("/learner/signup")
def learner_signup(user: UserInput, session: Session = Depends(get_session)):
    # Two commits in one request: the user first, then a second row.
    session.add(UserTable(username=user.username, email=user.email))
    session.commit()
    session.add(UserTable(username="shared", email=user.email))
    session.commit()
    return {"ok": True}


@app.post("/learner/users/{user_id}")
def learner_create_with_id(user_id: int, user: UserInput, session: Session = Depends(get_session)):
    session.add(UserTable(id=user_id, username=user.username, email=user.email))
    session.commit()
    return {"id": user_id}


@app.get("/learner/slow-service")
def learner_slow_service():
    raise TimeoutError("the payment service did not answer")


@app.post("/learner/notes", max_body_size=256 * 1024)
def learner_note(note: dict) -> dict:
    return {"length": len(note["text"])}
"""


@pytest.fixture
def learner_app(engine, tmp_path):
    """`uvicorn main:app` from a copy of main.py with the learner's routes above appended."""
    copy_app(tmp_path, LEARNER_ROUTES)
    with UvicornServer(url_of(engine), cwd=tmp_path).wait_started() as server:
        yield server


def names(engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(text("SELECT username FROM users")).scalars())


def test_a_deadlock_after_a_commit_is_not_run_again_and_answers_500(mysql_engine, tmp_path):
    # InnoDB's textbook deadlock, met by each request's second write: a holder inserts "shared"
    # and keeps it uncommitted; two requests commit their own user, then insert "shared" and
    # wait; the holder rolls back, and the two waiters deadlock. The victim had committed its
    # user already: running it again would write that part twice. (Their usernames sort after
    # "shared": a waiter's next-key lock on "shared" also covers the gap before it.)
    copy_app(tmp_path, LEARNER_ROUTES)
    server = UvicornServer(url_of(mysql_engine), cwd=tmp_path)
    with server.wait_started(), server.client() as http:
        sends = [
            {"url": "/learner/signup", "json": {"username": name, "email": "a@e.com"}}
            for name in ("tom", "zoe")
        ]  # both commit their user, then wait for "shared"
        responses = deadlocked(mysql_engine, http.post, sends, held="shared")
    statuses = sorted(response.status_code for response in responses)
    print(f"\ntwo commits, a deadlock at the second: {statuses}; rows {names(mysql_engine)}")
    assert statuses == [200, 500], [response.text for response in responses]
    assert names(mysql_engine) == ["shared", "tom", "zoe"]
    assert server.count("running it again") == 0
    [line] = [line for line in server.lines if "answered 500" in line]
    assert "(1213) Deadlock found" in line and "committed" in line, line


def test_a_primary_key_conflict_is_409_on_both_backends(engine, learner_app):
    with learner_app.client() as http:
        user_id = http.post("/users/", json={"username": "ada", "email": "a@e.com"}).json()["id"]
        body = {"username": "bo", "email": "b@e.com"}
        response = http.post(f"/learner/users/{user_id}", json=body)
    assert response.status_code == 409, response.text
    assert response.json() == {"detail": "Conflicts with existing data"}
    assert names(engine) == ["ada"]


def test_a_timeout_error_of_the_routes_own_is_a_500_with_its_traceback(learner_app):
    with learner_app.client() as http:
        response = http.get("/learner/slow-service")
        time.sleep(0.2)  # uvicorn writes the traceback after the answer
    assert response.status_code == 500
    log = "\n".join(learner_app.lines)
    assert "Traceback" in log and "TimeoutError: the payment service did not answer" in log
    assert "Database unavailable" not in log and "no free connection" not in log


def test_a_route_with_a_larger_body_limit_takes_a_body_above_the_apps(learner_app):
    with learner_app.client() as http:
        note = http.post("/learner/notes", json={"text": "x" * 100_000})
        too_large = http.post("/users/", json={"username": "a" * 100_000, "email": "a@e.com"})
    assert note.status_code == 200, note.text
    assert note.json() == {"length": 100_000}
    assert too_large.status_code == 413  # the app's own 64 KiB limit still holds elsewhere
