"""One session and one turn per request, however a route asks for it (issue 30).

Each case is a learner's next step past the tutorial, written the way FastAPI's docs teach it and
appended to a copy of main.py (conftest.py's `learner_app`, or a real `uvicorn main:app` where a
real client has to go away). Before the fix each one escaped the turns or deadlocked on them."""

import contextlib
import logging
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx2
import pymysql.connections
import pytest
import sqlalchemy.event
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import exc, text
from starlette.websockets import WebSocketDisconnect

from conftest import url_of
from tests.support import ROOT, UvicornServer, copy_app, deadlocked

ADA = {"username": "ada", "email": "ada@example.com"}
FAST = {"DB_TIMEOUT": "4"}  # each single wait 2 s: a 503 for want of a turn comes after 2 s


def count(engine, table: str) -> int:
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()


# --- 1. Two spellings, one session ------------------------------------------------------------
TWO_SPELLINGS = """

# --- Added by a learner: a dependency that takes the session, as FastAPI's docs write one -----
from fastapi import Depends, HTTPException
from sqlalchemy import update
from sqlalchemy.orm import Session


def get_current_user(session: Session = Depends(get_session)) -> UserTable:
    user = session.get(UserTable, 1)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


@app.get("/learner/me")
def read_me(session: SessionDep, user: UserTable = Depends(get_current_user)) -> dict:
    return {"username": user.username, "one_session": user in session}


def touch_user(session: Session = Depends(get_session)) -> None:
    # An UPDATE sent now, not committed: its row stays locked until the request commits.
    session.execute(update(UserTable).where(UserTable.id == 1).values(email="seen@example.com"))


@app.patch("/learner/me/rename")
def rename_me(session: SessionDep, _: None = Depends(touch_user)) -> dict:
    session.get(UserTable, 1).username = "renamed"
    session.commit()
    return {"renamed": True}
"""


def test_a_dependency_and_its_route_share_one_session(learner_app, engine):
    app = learner_app(TWO_SPELLINGS, DB_POOL_SIZE="1", **FAST)
    with TestClient(app.app) as client:
        assert client.post("/users/", json=ADA).status_code == 201
        started = time.monotonic()
        response = client.get("/learner/me")
    print(f"\n{engine.dialect.name}: {response.status_code} {response.json()}", end="")
    print(f" after {time.monotonic() - started:.2f} s")
    assert response.status_code == 200, response.text
    assert response.json() == {"username": "ada", "one_session": True}


def test_requests_that_ask_for_the_session_twice_never_wait_for_themselves(learner_app, engine):
    # The default 4 turns, 8 such requests at once, three bursts.
    app = learner_app(TWO_SPELLINGS, **FAST)
    with TestClient(app.app) as client:
        assert client.post("/users/", json=ADA).status_code == 201
        bursts = []
        for _ in range(3):
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(lambda _: client.get("/learner/me").status_code, range(8)))
            bursts.append(Counter(answers))
    print(f"\n{engine.dialect.name}: three bursts of 8: {bursts}")
    assert bursts == [Counter({200: 8})] * 3


def test_a_route_that_updates_a_row_its_dependency_updated_does_not_wait_on_itself(
    learner_app, engine, rows
):
    app = learner_app(TWO_SPELLINGS, **FAST)
    with TestClient(app.app) as client:
        assert client.post("/users/", json=ADA).status_code == 201
        started = time.monotonic()
        response = client.patch("/learner/me/rename")
    print(f"\n{engine.dialect.name}: {response.status_code} {response.json()}", end="")
    print(f" after {time.monotonic() - started:.2f} s")
    assert response.status_code == 200, response.text
    assert rows() == [(1, "renamed", "seen@example.com")]


AUDITED_SIGNUP = """

# --- Added by a learner: a second table, and a dependency that commits to it -----------------
from fastapi import Depends
from sqlalchemy.orm import Session


class AuditTable(BaseModelClass):
    __tablename__ = "learner_audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(100))


def audited(user: UserInput, session: Session = Depends(get_session)) -> UserInput:
    session.add(AuditTable(action=f"signup {user.username}"))
    session.commit()
    return user


@app.post("/learner/signup", status_code=201, response_model=UserOutput)
def learner_signup(session: SessionDep, user: UserInput = Depends(audited)):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()
    return new_user
"""


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_deadlock_after_a_dependencys_commit_answers_500_and_keeps_one_audit_row_each(
    learner_app, engine, caplog
):
    # InnoDB's textbook deadlock (tests/test_database_errors.py): a holder keeps a new username
    # "x" uncommitted; two sign-ups of "x" commit their audit row, then insert "x" and wait;
    # the holder rolls back, and the two deadlock. The victim has committed its audit row: run
    # again, it would write that row a second time.
    app = learner_app(AUDITED_SIGNUP)
    with TestClient(app.app) as client:
        body = {"username": "x", "email": "a@example.com"}
        sends = [{"url": "/learner/signup", "json": body}] * 2
        statuses = sorted(r.status_code for r in deadlocked(engine, client.post, sends, pause=1))
    audits = count(engine, "learner_audit")
    print(f"\nanswers {statuses}, audit rows {audits} for 2 requests")
    assert statuses == [201, 500]
    assert audits == 2
    [line] = [r.getMessage() for r in caplog.records if "answered 500" in r.getMessage()]
    assert "(1213) Deadlock found" in line and "committed" in line, line


OWN_SESSION_TOO = """

# --- Added by a learner: an audit row written through a session of its own (approach B) ------
from sqlalchemy.orm import Session


class AuditTable(BaseModelClass):
    __tablename__ = "learner_audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(100))


@app.post("/learner/signup", status_code=201, response_model=UserOutput)
def learner_signup(user: UserInput, session: SessionDep):
    with Session(db_engine) as audit:
        audit.add(AuditTable(action=f"signup {user.username}"))
        audit.commit()
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()
    return new_user
"""


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_deadlock_after_a_commit_through_a_session_of_its_own_is_not_run_again(
    learner_app, engine, caplog
):
    # The app cannot count the commits of a session it did not make: a request that used one
    # is never run again, so its audit row is written once.
    app = learner_app(OWN_SESSION_TOO)
    with TestClient(app.app) as client:
        body = {"username": "x", "email": "a@example.com"}
        sends = [{"url": "/learner/signup", "json": body}] * 2
        statuses = sorted(r.status_code for r in deadlocked(engine, client.post, sends, pause=1))
    audits = count(engine, "learner_audit")
    print(f"\nanswers {statuses}, audit rows {audits} for 2 requests")
    assert statuses == [201, 503]
    assert audits == 2
    assert not [r for r in caplog.records if "running it again" in r.getMessage()]


COMMIT_AFTER_YIELD = """

# --- Added by a learner: a dependency that commits the route's changes after it -------------
from fastapi import BackgroundTasks, Depends
from sqlalchemy import insert, select
from sqlalchemy.orm import Session


def get_transaction(session: SessionDep):
    yield session
    session.commit()  # FastAPI runs this after the route, once the answer is sent


@app.post("/learner/signup-flushed", status_code=201, response_model=UserOutput)
def signup_flushed(user: UserInput, session: Session = Depends(get_transaction)):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.flush()  # the INSERT is sent now, for the id
    return new_user


@app.post("/learner/signup-added", status_code=201)
def signup_added(user: UserInput, session: Session = Depends(get_transaction)) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    return {"queued": True}


@app.get("/learner/count-in-transaction")
def count_in_transaction(session: Session = Depends(get_transaction)) -> dict:
    return {"users": len(session.scalars(select(UserTable)).all())}  # nothing to commit after


@app.post("/learner/signup-executed", status_code=201)
def signup_executed(user: UserInput, session: Session = Depends(get_transaction)) -> dict:
    session.execute(insert(UserTable).values(username=user.username, email=user.email))
    return {"sent": True}  # a statement, not an object: the session holds no new row


@app.post("/learner/signup-answered", status_code=201)
def signup_answered(
    user: UserInput, session: Session = Depends(get_transaction, scope="function")
) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    return {"saved": True}


def get_audited(session: SessionDep):  # a write of its own after the route
    yield session
    session.add(UserTable(username="audit", email="audit@example.com"))
    session.commit()


@app.post("/learner/signup-audited", status_code=201)
def signup_audited(
    user: UserInput, session: Session = Depends(get_audited, scope="function")
) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    session.commit()
    return {"saved": True}


@app.post("/learner/signup-audited-late", status_code=201)
def signup_audited_late(user: UserInput, session: Session = Depends(get_audited)) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    session.commit()
    return {"saved": True}


class Audited:  # FastAPI's docs: an object as the dependency, its __call__ with `yield`
    def __call__(self, session: SessionDep):
        yield from get_audited(session)


@app.post("/learner/signup-audited-by-an-object", status_code=201)
def signup_audited_by_an_object(user: UserInput, session: Session = Depends(Audited())) -> dict:
    return signup_audited_late(user, session)


seen_by_the_task = []


def look_for(username: str) -> None:  # a background task, with a session of its own
    with new_session() as session:
        seen_by_the_task.append(session.scalar(select(UserTable.id).filter_by(username=username)))


@app.post("/learner/signup-then-task", status_code=201)
def signup_then_task(
    user: UserInput, tasks: BackgroundTasks, session: Session = Depends(get_transaction)
) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    session.flush()  # the INSERT is sent: the request's session holds a connection
    tasks.add_task(look_for, user.username)
    return {"queued": True}
"""


@pytest.mark.parametrize(
    "path", ["/learner/signup-flushed", "/learner/signup-added", "/learner/signup-executed"]
)
def test_a_dependency_that_commits_after_the_route_saves_the_routes_changes(
    learner_app, engine, rows, path
):
    app = learner_app(COMMIT_AFTER_YIELD)
    with TestClient(app.app) as client:
        created = client.post(path, json=ADA)
        checked_out = app.db_engine.pool.checkedout()
    assert created.status_code == 201, created.text
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]
    assert checked_out == 0


def test_a_dependency_that_commits_after_the_route_lets_a_read_answer(learner_app, rows):
    reads_twice_behind_a_late_commit(learner_app(COMMIT_AFTER_YIELD))


def reads_twice_behind_a_late_commit(app) -> None:  # main's copy, the twin's too
    with TestClient(app.app) as client:  # an error after the answer would be raised here
        counted = [client.get("/learner/count-in-transaction") for _ in range(2)]
        checked_out = app.db_engine.pool.checkedout()
    assert [(answer.status_code, answer.json()) for answer in counted] == [(200, {"users": 0})] * 2
    assert checked_out == 0


def test_a_commit_after_yield_in_function_scope_answers_a_taken_username_409(learner_app, rows):
    app = learner_app(COMMIT_AFTER_YIELD)
    with TestClient(app.app) as client:
        first = client.post("/learner/signup-answered", json=ADA)
        again = client.post("/learner/signup-answered", json=ADA)
    assert first.status_code == 201, first.text
    assert again.status_code == 409 and again.json() == {"detail": "Username already taken"}
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]


def test_a_late_commit_that_fails_once_the_answer_is_sent_is_logged_in_one_line(
    learner_app, rows, caplog
):
    logs_a_late_commit_that_fails_in_one_line(learner_app(COMMIT_AFTER_YIELD), rows, caplog)


def logs_a_late_commit_that_fails_in_one_line(app, rows, caplog) -> None:  # main's, the twin's
    with TestClient(app.app) as client:  # the second is told 201: its commit comes after that
        answers = [client.post("/learner/signup-added", json=ADA) for _ in range(2)]
        answers.append(client.get("/users/1"))  # the connection, and the app, go on
    assert [answer.status_code for answer in answers] == [201, 201, 200]
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]
    [logged] = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert "POST /learner/signup-added, after the answer was sent: IntegrityError" in logged
    assert "INSERT" not in caplog.text and "ada@example.com" not in caplog.text  # no SQL, no values


def test_a_taken_username_after_the_request_committed_answers_500_not_409(
    learner_app, rows, caplog
):
    answers_500_to_a_conflict_after_a_commit(learner_app(COMMIT_AFTER_YIELD), rows, caplog)


def answers_500_to_a_conflict_after_a_commit(app, rows, caplog) -> None:  # main's, the twin's
    bob = {"username": "bob", "email": "bob@example.com"}
    with TestClient(app.app) as client:  # the second audit row's username is taken
        first, second = (client.post("/learner/signup-audited", json=user) for user in (ADA, bob))
    assert first.status_code == 201, first.text
    assert (second.status_code, second.json()) == (500, {"detail": "Internal Server Error"})
    assert [row[1] for row in rows()] == ["ada", "audit", "bob"]  # bob's was committed
    assert "the request had committed already" in caplog.text


def test_a_dependency_that_writes_after_yield_in_function_scope_keeps_its_row(learner_app, rows):
    app = learner_app(COMMIT_AFTER_YIELD)
    with TestClient(app.app) as client:
        created = client.post("/learner/signup-audited", json=ADA)
    assert created.status_code == 201, created.text
    assert [row[1] for row in rows()] == ["ada", "audit"]


@pytest.mark.parametrize(
    "path", ["/learner/signup-audited-late", "/learner/signup-audited-by-an-object"]
)
def test_a_dependency_that_writes_after_yield_once_the_answer_is_sent_keeps_its_row(
    learner_app, rows, path
):
    app = learner_app(COMMIT_AFTER_YIELD)
    with TestClient(app.app) as client:  # its session stays open, in its turn, until then
        created = client.post(path, json=ADA)
        checked_out = app.db_engine.pool.checkedout()
    assert created.status_code == 201, created.text
    assert [row[1] for row in rows()] == ["ada", "audit"]
    assert checked_out == 0


def test_a_background_task_behind_a_late_commit_gets_a_session_in_the_requests_turn(
    learner_app, rows
):
    app = learner_app(COMMIT_AFTER_YIELD, DB_POOL_SIZE="1")  # the request holds the one turn
    with TestClient(app.app) as client:  # the task runs before the dependency's commit
        started = time.monotonic()
        created = client.post("/learner/signup-then-task", json=ADA)
        took = time.monotonic() - started
        checked_out = app.db_engine.pool.checkedout()
    assert created.status_code == 201, created.text
    assert app.seen_by_the_task == [None], f"after {took:.1f} s"  # not committed yet: not seen
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]
    assert checked_out == 0


SECOND_SESSION_IN_THE_ROUTE = """

# --- Added by a learner: a route that opens a session of its own beside the request's
from sqlalchemy import func, select


@app.get("/learner/count-beside")
def count_beside(session: SessionDep) -> dict:
    session.scalar(select(UserTable.id).limit(1))  # the request's session holds a connection
    with new_session() as other:
        return {"users": other.scalar(select(func.count()).select_from(UserTable))}
"""


def test_a_route_that_opens_a_second_session_runs_it_in_its_own_turn(learner_app):
    counts_in_a_second_session(learner_app(SECOND_SESSION_IN_THE_ROUTE, DB_POOL_SIZE="1"))


NESTED_NEW_SESSIONS = """

# --- Added by a learner: a helper with a session of its own, called where one is open already
from fastapi import BackgroundTasks
from sqlalchemy import func, select


def count_users() -> int:
    with new_session() as session:
        return session.scalar(select(func.count()).select_from(UserTable))


@app.get("/learner/count-beside")
def count_in_a_helper() -> dict:  # no SessionDep: its own session, then the helper's
    with new_session() as session:
        session.scalar(select(UserTable.id).limit(1))
        return {"users": count_users()}


def note_the_count(user_id: int) -> None:
    with new_session() as session:
        session.get(UserTable, user_id).email = f"count{count_users()}@example.com"
        session.commit()


@app.post("/learner/users/{user_id}/note-the-count", status_code=202)
def ask_for_the_count(user_id: int, background_tasks: BackgroundTasks) -> dict:
    background_tasks.add_task(note_the_count, user_id)
    return {}
"""


def test_a_new_session_inside_another_runs_in_its_turn(learner_app):
    counts_in_a_second_session(learner_app(NESTED_NEW_SESSIONS, DB_POOL_SIZE="1"))


def test_a_background_task_nesting_new_sessions_saves_its_write(learner_app, rows):
    notes_the_count_in_a_task(learner_app(NESTED_NEW_SESSIONS, DB_POOL_SIZE="1"), rows)


def test_new_session_in_a_script_of_yours_outside_the_app_saves_its_write(learner_app, rows):
    app = learner_app()  # a seed script, say, or a test that calls a task's function itself
    app.create_tables()
    with app.new_session() as session:  # no request, no event loop: no turn to take
        session.add(app.UserTable(username="seed", email="seed@example.com"))
        session.commit()
    assert [row[1:] for row in rows()] == [("seed", "seed@example.com")]
    assert app.db_engine.pool.checkedout() == 0


def notes_the_count_in_a_task(app, rows) -> None:  # main's copy, the twin's too
    with TestClient(app.app) as client:  # before: it waited for itself, 5 s, and lost the write
        user_id = client.post("/users/", json=ADA).json()["id"]
        noted = client.post(f"/learner/users/{user_id}/note-the-count")
        checked_out = app.db_engine.pool.checkedout()
    assert noted.status_code == 202
    assert rows() == [(user_id, "ada", "count1@example.com")]
    assert checked_out == 0


def counts_in_a_second_session(app) -> None:  # main's copy, the twin's too
    with TestClient(app.app) as client:  # before: it waited for a second turn, 503 after 5 s
        started = time.monotonic()
        counted = client.get("/learner/count-beside")
        took = time.monotonic() - started
        checked_out = app.db_engine.pool.checkedout()
    assert (counted.status_code, counted.json()) == (200, {"users": 0}), f"after {took:.1f} s"
    assert checked_out == 0


# --- 2. A streamed answer, and a background task handed the session ---------------------------
STREAMS = """

# --- Added by a learner: a CSV export, streamed -----------------------------------------------
from fastapi import BackgroundTasks
from fastapi.responses import StreamingResponse
from sqlalchemy import select


@app.get("/learner/users.csv")
def export_users(session: SessionDep) -> StreamingResponse:
    def lines():
        yield "id,username\\n"
        for user in session.scalars(select(UserTable).order_by(UserTable.id)):
            yield f"{user.id},{user.username}\\n"

    return StreamingResponse(lines(), media_type="text/csv")


def remember_visit(session: Session, user_id: int) -> None:
    session.get(UserTable, user_id).email = "visited@example.com"
    session.commit()


@app.post("/learner/users/{user_id}/visit")
def visit(user_id: int, background_tasks: BackgroundTasks, session: SessionDep) -> dict:
    background_tasks.add_task(remember_visit, session, user_id)
    return {"queued": True}
"""


YIELDED_ANSWERS = """

# --- Added by a learner: routes that yield their answer (FastAPI's docs: "Stream JSON Lines",
# "Server-Sent Events"): the route's own code runs while the answer is sent
from collections.abc import Iterable

from fastapi.sse import EventSourceResponse
from sqlalchemy import select


def users_in_pages(session: Session) -> Iterable[UserTable]:
    after_id = 0
    while page := session.scalars(
        select(UserTable).where(UserTable.id > after_id).order_by(UserTable.id).limit(100)
    ).all():
        yield from page  # FastAPI answers each row as a UserOutput
        after_id = page[-1].id


@app.get("/learner/users.jsonl")
def users_as_json_lines(session: SessionDep) -> Iterable[UserOutput]:
    yield from users_in_pages(session)


@app.get("/learner/users-events", response_class=EventSourceResponse)
def users_as_events(session: SessionDep) -> Iterable[UserOutput]:
    yield from users_in_pages(session)
"""


@pytest.mark.parametrize("path", ["/learner/users.jsonl", "/learner/users-events"])
def test_a_route_that_yields_its_answer_keeps_its_session_until_the_last_row(
    learner_app, engine, path
):
    streams_every_row(learner_app(YIELDED_ANSWERS, DB_POOL_SIZE="1"), engine, path)


def streams_every_row(app, engine, path: str) -> None:  # main's copy, the twin's too
    with TestClient(app.app) as client:
        client.get("/readyz")  # the tables exist
        seed(engine, 250)  # three pages
        streamed = [client.get(path) for _ in range(3)]
        checked_out = app.db_engine.pool.checkedout()
    lines = [line for line in streamed[-1].text.splitlines() if line.startswith(("{", "data:"))]
    assert [answer.status_code for answer in streamed] == [200] * 3
    assert len(lines) == 250 and "user249" in lines[-1]
    assert checked_out == 0


def readmes_block(containing: str) -> str:
    """The README's Python block that contains the text given, as a learner copies it."""
    readme = (ROOT / "README.md").read_text()
    [block] = [
        code for code in re.findall(r"```python\n(.*?)```", readme, re.S) if containing in code
    ]
    return "\n\n# --- Added by a learner: copied from the README ---\n" + block


AFTER_THE_ANSWER = readmes_block("new_session()")


def seed(engine, users: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO users (username, email) VALUES (:name, 'u@example.com')"),
            [{"name": f"user{number:03}"} for number in range(users)],
        )


def test_a_stream_that_uses_the_routes_session_fails_loudly_and_leaves_nothing_open(
    learner_app, engine
):
    app = learner_app(STREAMS)
    with TestClient(app.app) as client:
        client.get("/readyz")  # the tables exist
        seed(engine, 3)
        failures = []
        for _ in range(14):
            try:
                client.get("/learner/users.csv")
            except exc.InvalidRequestError as error:
                failures.append(str(error))
        checked_out = app.db_engine.pool.checkedout()
    print(
        f"\n{engine.dialect.name}: 14 exports, {len(failures)} failed loudly; {checked_out}", end=""
    )
    print(" connections checked out afterwards")
    assert len(failures) == 14 and "closed" in failures[0]
    assert checked_out == 0


def test_a_background_task_handed_the_routes_session_fails_loudly(learner_app, engine, rows):
    app = learner_app(STREAMS)
    with TestClient(app.app) as client:
        user_id = client.post("/users/", json=ADA).json()["id"]
        with pytest.raises(exc.InvalidRequestError, match="closed"):
            client.post(f"/learner/users/{user_id}/visit")
        checked_out = app.db_engine.pool.checkedout()
    assert checked_out == 0
    assert rows() == [(user_id, "ada", "ada@example.com")]


def test_the_readmes_stream_takes_a_turn_per_page_and_sends_every_row(learner_app, engine):
    app = learner_app(AFTER_THE_ANSWER)
    with TestClient(app.app) as client:
        client.get("/readyz")
        seed(engine, 250)
        with ThreadPoolExecutor(max_workers=16) as pool:
            exports = list(pool.map(lambda _: client.get("/users.csv"), range(16)))
        user = client.get("/users/1")
        checked_out = app.db_engine.pool.checkedout()
    lines = [export.text.splitlines() for export in exports]
    print(f"\n{engine.dialect.name}: 16 exports at once: {Counter(map(len, lines))} lines each")
    assert {export.status_code for export in exports} == {200}
    assert all(len(export) == 251 and export[-1] == "250,user249" for export in lines)
    assert user.status_code == 200 and checked_out == 0


def test_the_readmes_background_task_writes_in_a_session_of_its_own(learner_app, rows):
    app = learner_app(AFTER_THE_ANSWER)
    with TestClient(app.app) as client:
        user_id = client.post("/users/", json=ADA).json()["id"]
        assert client.post(f"/users/{user_id}/visits").status_code == 202
        checked_out = app.db_engine.pool.checkedout()
    assert rows() == [(user_id, "ada", "visited@example.com")]
    assert checked_out == 0


def test_the_readmes_background_task_for_an_unknown_user_answers_404(learner_app, caplog):
    app = learner_app(AFTER_THE_ANSWER)
    with TestClient(app.app) as client:
        client.get("/readyz")  # the tables exist
        answer = client.post("/users/99999/visits")
    assert answer.status_code == 404 and answer.json() == {"detail": "User not found"}
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


# --- 3. A background task after a sign-up ------------------------------------------------------
SLOW_EMAIL = """

# --- Added by a learner: a welcome e-mail, sent after the answer ------------------------------
import time

from fastapi import BackgroundTasks, Depends
from sqlalchemy.orm import Session


def send_welcome_email(address: str) -> None:
    time.sleep(4)  # a slow mail server; no SQL here


@app.post("/learner/signup", status_code=201)
def learner_signup(
    user: UserInput, background_tasks: BackgroundTasks, session: Session = Depends(get_session)
):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()
    background_tasks.add_task(send_welcome_email, new_user.email)
    return {"id": new_user.id}
"""


def test_a_background_task_holds_no_turn(engine, tmp_path):
    server = UvicornServer(url_of(engine), cwd=copy_app(tmp_path, SLOW_EMAIL), extra_env=FAST)
    with server.wait_started(), server.client() as http:
        user_id = http.post("/users/", json=ADA).json()["id"]
        with ThreadPoolExecutor(max_workers=4) as pool:
            bodies = [{"username": f"user{n}", "email": "u@example.com"} for n in range(4)]
            signups = list(pool.map(lambda body: http.post("/learner/signup", json=body), bodies))
        started = time.monotonic()
        read = http.get(f"/users/{user_id}")  # while the four e-mails are being sent
        seconds = time.monotonic() - started
    print(
        f"\n{engine.dialect.name}: GET during 4 e-mail tasks: {read.status_code} in {seconds:.2f} s"
    )
    assert [signup.status_code for signup in signups] == [201] * 4
    assert read.status_code == 200, read.text


# --- 4. WebSockets -----------------------------------------------------------------------------
SOCKETS = """

# --- Added by a learner: WebSockets ------------------------------------------------------------
from fastapi import WebSocket
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select, text


@app.websocket("/learner/idle")
async def idle_socket(websocket: WebSocket, session: SessionDep) -> None:
    await websocket.accept()
    async for message in websocket.iter_text():
        await websocket.send_text(message)


@app.websocket("/learner/late")
async def late_socket(websocket: WebSocket, session: SessionDep) -> None:
    await websocket.accept()
    await websocket.send_json({"users": session.scalar(select(func.count(UserTable.id)))})


def read_a_missing_table() -> None:
    with new_session() as session:
        session.execute(text("SELECT * FROM learner_no_such_table"))


@app.websocket("/learner/broken")
async def broken_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.receive_text()
    await run_in_threadpool(read_a_missing_table)
"""


def test_idle_websockets_hold_no_turn(learner_app, engine):
    app = learner_app(SOCKETS, **FAST)
    with TestClient(app.app) as client:
        user_id = client.post("/users/", json=ADA).json()["id"]
        with (
            client.websocket_connect("/learner/idle") as first,
            client.websocket_connect("/learner/idle"),
            client.websocket_connect("/learner/idle"),
            client.websocket_connect("/learner/idle"),
        ):
            started = time.monotonic()
            read = client.get(f"/users/{user_id}")
            seconds = time.monotonic() - started
            first.send_text("still here")
            assert first.receive_text() == "still here"
    print(
        f"\n{engine.dialect.name}: GET beside 4 idle sockets: {read.status_code} in {seconds:.2f} s"
    )
    assert read.status_code == 200, read.text


def test_a_websocket_that_uses_its_session_after_accepting_fails_loudly(learner_app, engine):
    app = learner_app(SOCKETS)
    with (
        TestClient(app.app) as client,
        pytest.raises(exc.InvalidRequestError, match="closed"),
        client.websocket_connect("/learner/late") as socket,
    ):
        socket.receive_json()
    assert app.db_engine.pool.checkedout() == 0


def test_the_readmes_websocket_reads_in_a_turn_per_message(learner_app, engine):
    app = learner_app(AFTER_THE_ANSWER)
    with TestClient(app.app) as client, client.websocket_connect("/users/count") as socket:
        socket.send_text("how many?")
        assert socket.receive_json() == {"users": 0}
        client.post("/users/", json=ADA)
        socket.send_text("and now?")
        assert socket.receive_json() == {"users": 1}
        assert app.db_engine.pool.checkedout() == 0


def test_a_database_error_in_a_websocket_closes_it_with_1011_and_logs_why(
    learner_app, engine, caplog
):
    app = learner_app(SOCKETS)
    with TestClient(app.app) as client, client.websocket_connect("/learner/broken") as socket:
        socket.send_text("go")
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 1011
    [line] = [r.getMessage() for r in caplog.records if "learner_no_such_table" in r.getMessage()]
    assert "/learner/broken" in line and "1011" in line, line


# --- 5. Mounted in a bigger app, on a fresh database -------------------------------------------
def test_mounted_on_a_fresh_database_the_tables_are_made_at_first_use(
    learner_app, engine, rows, caplog
):
    caplog.set_level(logging.INFO, "uvicorn.error")
    app = learner_app()
    parent = FastAPI()
    parent.mount("/api", app.app)  # FastAPI's "Sub Applications": the sub-app's lifespan never runs
    with TestClient(parent) as client:
        with ThreadPoolExecutor(max_workers=8) as pool:
            bodies = [{"username": f"user{n}", "email": "u@example.com"} for n in range(8)]
            created = list(pool.map(lambda body: client.post("/api/users/", json=body), bodies))
        ready = client.get("/api/readyz")
    print(f"\n{engine.dialect.name}: 8 first requests: {Counter(r.status_code for r in created)}")
    assert [response.status_code for response in created] == [201] * 8
    assert ready.status_code == 200 and len(rows()) == 8
    url = engine.url.render_as_string(hide_password=True)  # which database, said once
    assert [r.getMessage() for r in caplog.records].count(f"Database: {url}") == 1


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_mounted_on_a_stalled_database_each_first_request_answers_503_within_the_bound(
    learner_app, engine, make_proxy
):
    proxy = make_proxy()
    app = learner_app(DATABASE_URL=url_of(engine, proxy), **FAST)
    parent = FastAPI()
    parent.mount("/api", app.app)
    proxy.stalled = True  # before the first request: the tables are prepared then

    def first(number: int) -> tuple[float, int]:
        started = time.monotonic()
        answer = client.get(f"/api/users/{number + 1}")
        return time.monotonic() - started, answer.status_code

    with TestClient(parent) as client:
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(first, range(4)))
        proxy.stalled = False
    print(f"\nmounted, stalled: {[f'{status} in {seconds:.2f} s' for seconds, status in answers]}")
    assert [status for _, status in answers] == [503] * 4
    assert max(seconds for seconds, _ in answers) <= float(FAST["DB_TIMEOUT"]) + 0.5


def test_readyz_answers_503_when_a_table_is_missing(learner_app, engine):
    app = learner_app()
    with TestClient(app.app) as client:
        assert client.get("/readyz").status_code == 200
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE users"))  # made by this test's app
        response = client.get("/readyz")
    assert response.status_code == 503, response.text
    assert "users" in response.json()["detail"]


# --- 6. An async def route that takes the sync session -----------------------------------------
ASYNC_ROUTE = """

# --- Added by a learner: an async def route with the sync session -----------------------------
@app.get("/learner/async-users/{user_id}", response_model=UserOutput)
async def read_user_async(user_id: int, session: SessionDep):
    return session.get(UserTable, user_id)


async def first_user_async(session: SessionDep) -> UserTable:  # a dependency: the same
    return session.get(UserTable, 1)


@app.get("/learner/first")
def read_first_user(user: UserTable = Depends(first_user_async)) -> dict:
    return {"username": user.username}


async def get_transaction_async(session: SessionDep):  # one with yield: the same
    yield session
    session.commit()


@app.post("/learner/touch")
def touch(session: Session = Depends(get_transaction_async)) -> dict:
    return {"touched": True}


class FirstUser:  # an object as the dependency, its __call__ an async def: the same
    async def __call__(self, session: SessionDep) -> UserTable:
        return session.get(UserTable, 1)


@app.get("/learner/first-by-an-object")
def read_first_user_by_an_object(user: UserTable = Depends(FirstUser())) -> dict:
    return {"username": user.username}


from fastapi import APIRouter  # noqa: E402

router = APIRouter(prefix="/learner/grouped")  # routes grouped, as bigger apps do


@router.get("/{user_id}", response_model=UserOutput)
async def read_grouped_user(user_id: int, session: SessionDep):
    return session.get(UserTable, user_id)


app.include_router(router)
"""


def test_an_async_def_route_that_takes_the_session_is_named_in_a_warning(engine, tmp_path):
    folder = copy_app(tmp_path, ASYNC_ROUTE + SOCKETS + AFTER_THE_ANSWER)
    with UvicornServer(url_of(engine), cwd=folder).wait_started() as server:
        pass
    warnings = [line for line in server.lines if "async def" in line]
    print(f"\n{engine.dialect.name}: {warnings}")
    assert len(warnings) == 5, server.lines  # the WebSockets and the def routes are fine
    assert "/learner/async-users/{user_id}" in warnings[0] and "read_user_async" in warnings[0]
    assert "/learner/first" in warnings[1] and "first_user_async" in warnings[1]
    assert "/learner/touch" in warnings[2] and "get_transaction_async" in warnings[2]
    assert "/learner/first-by-an-object" in warnings[3] and "FirstUser" in warnings[3]
    assert "/learner/grouped/{user_id}" in warnings[4] and "read_grouped_user" in warnings[4]
    assert all(warning.startswith("WARNING") for warning in warnings)


# --- 7. Clients that gave up before their turn came ---------------------------------------------
def test_a_turn_taken_as_its_wait_ends_is_always_given_back(learner_app):
    assert turns_free_after_a_turn_taken_at_the_last_moment(learner_app(DB_POOL_SIZE="1")) == 1


def turns_free_after_a_turn_taken_at_the_last_moment(app) -> int:  # main's here, the twin's too
    """A turn freed just before its waiter gives up, and a client check that outlasts the wait:
    under load after a stall, the twin lost its only turn this way, and answered 503 for good."""

    class SlowToTell:  # a request whose client check is slow (a checkpoint past the deadline)
        where = "GET /slow"

        async def client_gone(self) -> bool:
            await anyio.sleep(app.WAIT_SECONDS)
            return False

    async def scenario() -> int:
        held = await app.take_turn()  # the only turn, taken

        async def give_it_back_late() -> None:
            await anyio.sleep(app.WAIT_SECONDS - 0.5)
            held.release()

        async with anyio.create_task_group() as group:
            group.start_soon(give_it_back_late)
            with contextlib.suppress(exc.TimeoutError):  # no turn: a 503, fine if none is lost
                (await app.take_turn(SlowToTell())).release()  # a route would run, then release
        return held.value

    return anyio.run(scenario)


SLOW_REPORT = """

# --- Added by a learner: a report that takes a second -----------------------------------------
import time


@app.get("/learner/report")
def learner_report(session: SessionDep) -> dict:
    logger.info("learner report runs")
    time.sleep(1)  # a long query
    return {"users": len(session.scalars(select(UserTable)).all())}
"""


def test_a_client_gone_before_its_turn_came_does_not_run_its_route(engine, tmp_path):
    env = {"DB_POOL_SIZE": "1"}
    server = UvicornServer(url_of(engine), cwd=copy_app(tmp_path, SLOW_REPORT), extra_env=env)
    with server.wait_started(), server.client() as http:
        user_id = http.post("/users/", json=ADA).json()["id"]
        gave_up = []

        def impatient() -> None:
            try:
                with server.client(timeout=0.3) as quick:
                    quick.get("/learner/report")
            except httpx2.TimeoutException:
                gave_up.append(True)

        clients = [threading.Thread(target=impatient) for _ in range(6)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        started = time.monotonic()
        read = http.get(f"/users/{user_id}")
        seconds = time.monotonic() - started
        time.sleep(1.5)  # let whatever was still queued run, or not
    runs, gone = server.count("learner report runs"), server.count("gone before its turn")
    print(
        f"\n{engine.dialect.name}: {len(gave_up)} clients gave up; the route ran {runs} times;",
        end="",
    )
    print(f" {gone} skipped; GET meanwhile: {read.status_code} in {seconds:.2f} s")
    assert len(gave_up) == 6
    assert read.status_code == 200, read.text
    assert runs == 1 and gone == 5


# --- 8. What a request sends, and what it costs ------------------------------------------------
@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_read_sends_one_rollback(learner_app, monkeypatch):
    app = learner_app()
    sent: list[str] = []
    execute_command = pymysql.connections.Connection._execute_command

    def spy(connection, command, sql):
        text_sent = sql.decode() if isinstance(sql, bytes) else sql
        sent.append("PING" if command == 14 else text_sent.split()[0].upper())
        return execute_command(connection, command, sql)

    with TestClient(app.app) as client:
        user_id = client.post("/users/", json=ADA).json()["id"]
        monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", spy)
        assert client.get(f"/users/{user_id}").status_code == 200
    print(f"\na read sends {sent}")
    assert sent == ["PING", "SELECT", "ROLLBACK"]


def test_no_listener_is_registered_per_request(learner_app, engine, monkeypatch):
    app = learner_app()
    registered = []
    listen = sqlalchemy.event.api.listen

    def counting_listen(*args, **kwargs):
        registered.append(args[1])
        return listen(*args, **kwargs)

    with TestClient(app.app) as client:
        monkeypatch.setattr(sqlalchemy.event.api, "listen", counting_listen)
        monkeypatch.setattr(sqlalchemy.event, "listen", counting_listen)
        for number in range(5):
            client.post("/users/", json={"username": f"user{number}", "email": "u@example.com"})
            client.get("/users/1")
    assert registered == []


def test_no_wait_for_a_pooled_connection_is_longer_than_the_apps_bound(learner_app):
    app = learner_app(DB_TIMEOUT="6")
    assert app.db_engine.pool.timeout() == 3  # DB_TIMEOUT / 2, not the pool's default 30 s
