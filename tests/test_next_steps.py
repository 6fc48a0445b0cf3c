"""What a learner or a copy-paster does next must keep working (issue 24): a forgotten close(),
the app mounted in a bigger app, TestClient without `with`, get_session overridden, a form route
that loses a deadlock, a slow client, a middleware of the learner's. Each was a failure of the
app's own machinery, or is a way FastAPI's docs teach. (WebSockets, streams and background
tasks: tests/test_one_session_per_request.py.)"""

import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

import main
from conftest import need, url_of
from tests.support import ROOT, UvicornServer, copy_app, deadlocked

ADA = {"username": "ada", "email": "ada@example.com"}
README = (ROOT / "README.md").read_text()
TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()


def names(engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(text("SELECT username FROM users")).scalars())


# --- Approach B with the close() forgotten ----------------------------------------------------
FORGOTTEN_CLOSE = """

# --- Added by a learner: approach B, and the close() forgotten --------------------------------
from fastapi import HTTPException
from sqlalchemy.orm import sessionmaker

SessionLocal = sessionmaker(bind=db_engine)


@app.post("/learner/abandon")
def learner_abandon(user: UserInput):
    session = SessionLocal()
    session.add(UserTable(username=user.username, email=user.email))
    session.flush()  # the INSERT is sent, in a transaction that nobody ends
    raise HTTPException(status_code=400, detail="Changed my mind")
"""


def test_a_write_its_request_abandoned_is_never_committed_by_a_later_request(engine, tmp_path):
    app = copy_app(tmp_path, FORGOTTEN_CLOSE)
    answers: list = []
    with UvicornServer(url_of(engine), cwd=app).wait_started() as server, server.client() as http:
        for round_number in range(3):
            body = {"username": f"abandoned{round_number}", "email": "a@example.com"}
            assert http.post("/learner/abandon", json=body).status_code == 400
            creates = [
                {"username": f"user{round_number}-{n}", "email": "u@example.com"} for n in range(30)
            ]
            with ThreadPoolExecutor(max_workers=4) as pool:
                answers += pool.map(lambda body: http.post("/users/", json=body), creates)
    stored = names(engine)
    created = sorted(answer.json()["username"] for answer in answers if answer.status_code == 201)
    print(f"\n{engine.dialect.name}: {len(created)} creates answered 201; users stored: {stored}")
    assert [name for name in stored if name.startswith("abandoned")] == []
    assert stored == created


# --- Wherever FastAPI resolves a dependency ---------------------------------------------------
@pytest.fixture
def tables(engine):
    """A first normal run has created the tables; what follows runs without the lifespan."""
    with TestClient(main.app):
        pass
    return engine


def test_mounted_in_a_bigger_app_the_routes_answer(tables, rows):
    parent = FastAPI()
    parent.mount("/api", main.app)  # FastAPI's "Sub Applications - Mounts": no sub-app lifespan
    with TestClient(parent) as client:
        created = client.post("/api/users/", json=ADA)
        listed = client.get("/api/users/")
    assert created.status_code == 201, created.text
    assert listed.json() == [created.json()]
    assert rows() == [(created.json()["id"], "ada", "ada@example.com")]


NOTES_WITHOUT_A_REVISION = """

# --- Added by a learner: a second table and its route, before its revision, then mounted
from sqlalchemy import select


class NoteTable(BaseModelClass):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)


@app.get("/learner/notes")
def read_notes(session: SessionDep) -> list[int]:
    return list(session.scalars(select(NoteTable.id)))


bigger_app = FastAPI()
bigger_app.mount("/api", app)
"""


def test_mounted_a_table_without_its_revision_answers_503_saying_what_to_do(learner_app):
    with TestClient(learner_app().app):  # today's tables, at the newest revision
        pass
    says_what_to_do_when_mounted(learner_app(NOTES_WITHOUT_A_REVISION))


def says_what_to_do_when_mounted(app) -> None:  # main's copy here, the twin's too
    with TestClient(app.bigger_app) as client:  # the app's lifespan never runs: its checks then?
        notes = client.get("/api/learner/notes")  # before: 500, no such table
        client.portal.call(app.db_engine.dispose)  # no lifespan of its own: on its event loop
    assert notes.status_code == 503
    assert "Table 'notes' is missing" in notes.json()["detail"]
    assert "alembic upgrade head" in notes.json()["detail"]


NOTES = """

# --- Added by a learner: a second table whose rows refer to users
from sqlalchemy import ForeignKey


class NoteTable(BaseModelClass):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


@app.post("/learner/users/{user_id}/notes", status_code=201)
def add_note(user_id: int, session: SessionDep) -> dict:
    session.add(NoteTable(user_id=user_id))
    session.commit()  # a user deleted meanwhile: the foreign key says no
    return {}
"""


def test_a_row_that_refers_to_a_missing_user_is_409_saying_so(learner_app):
    refers_to_a_missing_user(learner_app(NOTES))


def refers_to_a_missing_user(app) -> None:  # main's copy here, the twin's too
    with TestClient(app.app) as client:
        response = client.post("/learner/users/999/notes")
    assert response.status_code == 409  # before: "Conflicts with existing data"
    assert response.json() == {"detail": "Refers to a row that does not exist"}


# A learner's table whose route checks nothing: the database is the last to say no
UNCHECKED_NOTES = """

# --- Added by a learner: notes, with no limits in their Pydantic model ------------------------
from sqlalchemy import BigInteger, CheckConstraint


class NoteTable(BaseModelClass):
    __tablename__ = "notes"
    __table_args__ = (CheckConstraint("pages >= 0"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(20))
    pages: Mapped[int] = mapped_column(BigInteger)


class NoteInput(BaseModel):
    title: str
    pages: int


@app.post("/learner/notes", status_code=201)
def add_note(note: NoteInput, session: SessionDep) -> dict:
    session.add(NoteTable(title=note.title, pages=note.pages))
    session.commit()
    return {}
"""


def test_a_number_too_large_for_its_column_is_422(learner_app, engine):
    refuses_a_number_too_large(learner_app(UNCHECKED_NOTES), engine)


def refuses_a_number_too_large(app, engine) -> None:  # main's copy here, the twin's too
    with TestClient(app.app) as client:
        response = client.post("/learner/notes", json={"title": "big", "pages": 2**63})
    assert response.status_code == 422, response.text  # before: 500 (MySQL), a traceback (SQLite)
    detail = response.json()["detail"]
    assert "'pages'" in detail or "too large to convert to SQLite INTEGER" in detail, detail
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM notes")).scalar() == 0


def test_a_value_its_tables_check_refuses_is_422(learner_app):
    refuses_a_value_against_its_check(learner_app(UNCHECKED_NOTES))


def refuses_a_value_against_its_check(app) -> None:
    with TestClient(app.app) as client:
        response = client.post("/learner/notes", json={"title": "less", "pages": -1})
    assert response.status_code == 422, response.text  # before: 500
    assert response.json()["detail"].startswith("The database refuses a value:"), response.text


def test_a_text_too_long_for_its_column_is_422_naming_it_on_mysql(learner_app, engine):
    refuses_a_text_too_long(learner_app(UNCHECKED_NOTES), engine)


def refuses_a_text_too_long(app, engine) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite keeps text of any length in a String(20) column (troubleshooting.md)")
    with TestClient(app.app) as client:
        response = client.post("/learner/notes", json={"title": "x" * 21, "pages": 1})
    assert response.status_code == 422, response.text  # before: 500
    said = "The database refuses a value: Data too long for column 'title'"
    assert response.json() == {"detail": said}


def test_routes_included_in_a_bigger_app_say_to_mount_the_app_instead(tables):
    parent = FastAPI()
    parent.include_router(main.app.router)  # main's routes, but not its middleware
    with TestClient(parent) as client, pytest.raises(RuntimeError, match=r"\.mount\("):
        client.get("/users/")


def bigger_app(*middleware) -> FastAPI:
    """An app of the learner's own: main.app mounted, and a route that takes main's session."""
    parent = FastAPI()
    for one in middleware:
        parent.add_middleware(one)
    parent.mount("/api", main.app)

    @parent.get("/stats")
    def stats(session: main.SessionDep) -> dict[str, int]:
        return {"users": len(session.scalars(main.select(main.UserTable)).all())}

    return parent


def test_a_bigger_apps_own_route_that_takes_the_session_says_to_add_the_middleware(tables, rows):
    fix = r"app\.add_middleware\(main\.one_session_per_request\)"
    with TestClient(bigger_app()) as client, pytest.raises(RuntimeError, match=fix):
        client.get("/stats")
    with TestClient(bigger_app(main.one_session_per_request)) as client:  # what it says
        assert client.post("/api/users/", json=ADA).status_code == 201
        assert client.post("/api/users/", json=ADA).status_code == 409
        assert client.get("/stats").json() == {"users": 1}
    assert [row[1] for row in rows()] == ["ada"]


def test_testclient_without_with_answers(tables, rows):
    client = TestClient(main.app)  # the pattern of FastAPI's testing tutorial
    created = client.post("/users/", json=ADA)
    assert created.status_code == 201, created.text
    assert client.get(f"/users/{created.json()['id']}").json() == created.json()
    assert [row[1] for row in rows()] == ["ada"]


def test_async_tests_as_fastapis_docs_write_them_answer(tables, rows):
    async def post_twice() -> list:  # FastAPI's "Async Tests": httpx's AsyncClient, no lifespan
        transport = httpx2.ASGITransport(app=main.app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.post("/users/", json=ADA) for _ in range(2)]

    created, taken = anyio.run(post_twice)
    assert created.status_code == 201, created.text
    assert (taken.status_code, taken.json()) == (409, {"detail": "Username already taken"})
    assert [row[1] for row in rows()] == ["ada"]


def test_get_session_overridden_as_fastapis_testing_docs_do_answers_201_then_409(tables, rows):
    def get_session_override():  # FastAPI's "Testing Dependencies with Overrides"
        with Session(tables) as session:
            yield session

    main.app.dependency_overrides[main.get_session] = get_session_override
    try:
        client = TestClient(main.app)
        created = client.post("/users/", json=ADA)
        taken = client.post("/users/", json=ADA)  # the override session's IntegrityError
    finally:
        main.app.dependency_overrides.clear()
    assert created.status_code == 201, created.text
    assert (taken.status_code, taken.json()) == (409, {"detail": "Username already taken"})
    assert [row[1] for row in rows()] == ["ada"]


def test_an_in_memory_engine_as_fastapis_testing_docs_make_it_answers(learner_app):
    app = learner_app()
    answers_on_an_in_memory_engine(  # FastAPI's "Testing a Database": one connection, shared
        app,
        lambda: create_engine(
            "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
        ),
    )


def answers_on_an_in_memory_engine(app, make_engine) -> None:  # main's copy here, the twin's too
    app.db_engine = make_engine()  # in place of the app's, as README section 6 says
    with TestClient(app.app) as client:  # before: 500, "DATABASE_URL names an in-memory..."
        created = client.post("/users/", json=ADA)
        taken = client.post("/users/", json=ADA)
        listed = client.get("/users/")
    assert created.status_code == 201, created.text
    assert (taken.status_code, taken.json()) == (409, {"detail": "Username already taken"})
    assert listed.json() == [created.json()]


# --- The session and its turn go before the answer is sent -----------------------------------
async def ask(app, scope: dict) -> int:
    """Sends one bodiless request straight to an ASGI app, returns the status code."""
    statuses: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


def test_the_session_and_its_turn_are_released_before_the_answer_is_sent(engine, monkeypatch):
    # One turn only. While the list is being sent (a slow client keeps it there as long as it
    # likes), another request needs that turn.
    monkeypatch.setattr(main.settings, "db_pool_size", 1)
    seen: dict = {}

    async def app_watching_the_send(scope, receive, send):
        async def send_and_look(message: dict) -> None:
            if message["type"] == "http.response.start" and scope["path"] == "/users/":
                seen["checked_out"] = engine.pool.checkedout()
                other = {**scope, "method": "GET", "path": "/users/1", "raw_path": b"/users/1"}
                started = time.monotonic()
                with anyio.fail_after(30):
                    seen["other"] = await ask(main.app, {**other, "query_string": b""})
                seen["other_seconds"] = time.monotonic() - started
            await send(message)

        await main.app(scope, receive, send_and_look)

    with TestClient(app_watching_the_send) as client:
        assert client.post("/users/", json=ADA).status_code == 201
        assert client.get("/users/").status_code == 200
    print(f"\nwhile the list was sent: {seen}")
    assert seen["checked_out"] == 0, "the list's session still held its connection"
    assert seen["other"] == 200 and seen["other_seconds"] < 1


# --- A deadlock on a route that takes a form, or a file ---------------------------------------
FORM_ROUTES = """

# --- Added by a learner: a sign-up form, as FastAPI's security tutorial's login takes one ----
from typing import Annotated

from fastapi import File, Form, UploadFile


@app.post("/learner/signup-form", status_code=201, response_model=UserOutput)
def learner_signup_form(
    username: Annotated[str, Form()], email: Annotated[str, Form()], session: SessionDep
):
    new_user = UserTable(username=username, email=email)
    session.add(new_user)
    session.commit()
    return new_user


@app.post(
    "/learner/signup-with-avatar",
    status_code=201,
    response_model=UserOutput,
    max_body_size=4 * 1024 * 1024,
)
def learner_signup_with_avatar(
    username: Annotated[str, Form()], avatar: Annotated[UploadFile, File()], session: SessionDep
):
    new_user = UserTable(username=username, email=f"{len(avatar.file.read())}@example.com")
    session.add(new_user)
    session.commit()
    return new_user
"""


@pytest.mark.parametrize("kind", ["form", "multipart", "large multipart"])
def test_a_deadlock_on_a_form_route_runs_it_again_or_answers_busy(mysql_engine, tmp_path, kind):
    # InnoDB's textbook deadlock (tests/test_database_errors.py), met by a route that reads a
    # form: the victim runs again with the same body, meets the winner's row and gets its 409.
    # The large body is over the app's 64 KiB (the route allows more): an honest 503 busy.
    need("python_multipart")  # which FastAPI needs for Form() and File()
    app = copy_app(tmp_path, FORM_ROUTES)
    if kind == "form":
        path, send = "/learner/signup-form", {"data": {"username": "x", "email": "a@e.com"}}
    else:
        size = 3000 if kind == "multipart" else 1_500_000
        avatar = {"avatar": ("avatar.png", b"\x89PNG" + b"\x00" * size, "image/png")}
        path, send = "/learner/signup-with-avatar", {"data": {"username": "x"}, "files": avatar}
    server = UvicornServer(url_of(mysql_engine), cwd=app)
    with server.wait_started(), server.client() as http:
        responses = deadlocked(mysql_engine, http.post, [{"url": path, **send}] * 2)
    answers = sorted(
        (response.status_code, response.json().get("detail")) for response in responses
    )
    print(f"\n{kind}: {answers}; {[line for line in server.lines if 'Deadlock' in line]}")
    assert names(mysql_engine) == ["x"]
    if kind == "large multipart":  # over the app's 64 KiB: not kept, so not run again
        assert answers == [(201, None), (503, "Database busy, try again")]
        assert server.count("running it again") == 0
    else:
        assert answers == [(201, None), (409, "Username already taken")]
        assert server.count("running it again") == 1


# --- A handler of the learner's own for HTTPException -------------------------------------------
PLAIN_TEXT_ERRORS = """

# --- Added by a learner: errors as plain text, as FastAPI's "Handling Errors" page shows ------
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


@app.exception_handler(StarletteHTTPException)
async def plain_text_errors(request, error):
    return PlainTextResponse(f"Error: {error.detail}", status_code=error.status_code)
"""


def test_the_learners_own_httpexception_handler_shapes_the_apps_409_too(learner_app, rows):
    answers_in_the_learners_format(learner_app(PLAIN_TEXT_ERRORS), rows)


def answers_in_the_learners_format(app, rows) -> None:  # main's copy here, the twin's too
    with TestClient(app.app) as client:
        client.post("/users/", json=ADA)
        taken = client.post("/users/", json=ADA)  # answered by part 3, not by a route
        missing = client.get("/users/999999")  # a route's own HTTPException
    assert (taken.status_code, taken.text) == (409, "Error: Username already taken")
    assert (missing.status_code, missing.text) == (404, "Error: User not found")
    assert [row[1] for row in rows()] == ["ada"]


THEIR_OWN_APP = """

# --- Added by a learner: an app of their own ("Bigger Applications"), given part 3's middleware
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

their_app = FastAPI(lifespan=lifespan)  # as docs/reliability.md says
their_app.add_middleware(one_session_per_request)
router = APIRouter()


@router.post("/signup", status_code=201, response_model=UserOutput)
def signup(user: UserInput, session: SessionDep):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()
    return new_user


their_app.include_router(router)


@their_app.exception_handler(StarletteHTTPException)
async def plain_text_errors(request, error):
    return PlainTextResponse(f"Error: {error.detail}", status_code=error.status_code)
"""


def test_an_app_of_the_learners_own_answers_the_409_with_its_own_handler(learner_app, rows):
    answers_409_in_their_apps_format(learner_app(THEIR_OWN_APP), rows)


def answers_409_in_their_apps_format(app, rows) -> None:  # main's copy here, the twin's too
    with TestClient(app.their_app) as client:  # part 3's lifespan: the tables made
        client.post("/signup", json=ADA)
        taken = client.post("/signup", json=ADA)
    assert (taken.status_code, taken.text) == (409, "Error: Username already taken")
    assert [row[1] for row in rows()] == ["ada"]


ASYNC_DEPENDENCY_IN_THEIR_APP = """

# --- Added by a learner: an app of their own, its router's dependency an async def
from fastapi import APIRouter

their_app = FastAPI(lifespan=lifespan)  # as docs/reliability.md says
their_app.add_middleware(one_session_per_request)


async def current_user(session: SessionDep) -> UserTable | None:
    return session.get(UserTable, 1)


router = APIRouter(prefix="/v2", dependencies=[Depends(current_user)])


@router.get("/users/{user_id}", response_model=UserOutput)
def read_user_v2(user_id: int, session: SessionDep):
    return session.get(UserTable, user_id)


their_app.include_router(router)
"""


def test_an_async_def_taking_the_session_in_an_app_of_their_own_is_named_at_startup(
    learner_app, caplog
):
    with (
        caplog.at_level(logging.WARNING),
        TestClient(learner_app(ASYNC_DEPENDENCY_IN_THEIR_APP).their_app),
    ):
        pass  # before: no warning, only main.app's routes were looked at
    warnings = [
        record.getMessage() for record in caplog.records if "async def" in record.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "GET /v2/users/{user_id}" in warnings[0] and "current_user()" in warnings[0]


GUARDS = """

# --- Added by a learner: what the database says of the connection's guards
from sqlalchemy import text


@app.get("/learner/guards")
def guards(session: SessionDep) -> dict:
    sqlite = session.get_bind().dialect.name == "sqlite"
    query = "PRAGMA foreign_keys" if sqlite else "SELECT @@innodb_lock_wait_timeout"
    return {"value": session.scalar(text(query))}
"""


def test_an_engine_a_test_puts_in_place_of_db_engine_gets_its_guards(learner_app, engine):
    app = learner_app(GUARDS)
    has_the_guards(app, lambda: create_engine(url_of(engine)))  # as a test of yours makes it


def has_the_guards(app, make_engine) -> None:  # main's copy here, the twin's too
    with TestClient(app.app) as client:
        guarded = client.get("/learner/guards").json()  # the app's own engine: 1, or 4 s
    app.db_engine = make_engine()  # the learner's test engine, without guard_engine()
    with TestClient(app.app) as client:
        replaced = client.get("/learner/guards").json()  # before: 0 (no foreign keys), or 50 s
    assert replaced == guarded


LOGGED_ERRORS = """

# --- Added by a learner: each error logged with the body that caused it, then FastAPI's answer
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException as StarletteHTTPException


@app.exception_handler(StarletteHTTPException)
async def logged_errors(request, error):
    body = await request.body()
    logger.info("%s answered %s, the body sent: %r", request.url.path, error.status_code, body)
    return await http_exception_handler(request, error)
"""


def test_the_learners_handler_that_reads_the_body_answers_the_apps_409(learner_app, caplog):
    answers_409_to_a_handler_that_reads_the_body(learner_app(LOGGED_ERRORS), caplog)


def answers_409_to_a_handler_that_reads_the_body(app, caplog) -> None:  # main's, the twin's too
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    with TestClient(app.app):  # the lifespan: the tables
        pass

    async def post_twice() -> list:  # a client that waits at most 10 s for each answer
        transport = httpx2.ASGITransport(app=app.app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            with anyio.fail_after(10):
                return [await client.post("/users/", json=ADA) for _ in range(2)]

    created, taken = anyio.run(post_twice)
    assert created.status_code == 201, created.text
    assert (taken.status_code, taken.json()) == (409, {"detail": "Username already taken"})
    [logged] = [line for line in caplog.text.splitlines() if "answered 409, the body" in line]
    assert "ada@example.com" in logged


BULK_CREATE = """

# --- Added by a learner: many users at once, in a body larger than the app's 64 KiB ----------
@app.post("/learner/bulk", status_code=201, max_body_size=8 * 2**20)
def create_many(users: list[UserInput], session: SessionDep) -> dict:
    for user in users:
        session.add(UserTable(username=user.username, email=user.email))
    session.commit()
    return {"created": len(users)}
"""


def test_the_learners_handler_that_reads_a_body_too_large_to_keep_answers_409(
    learner_app, rows, caplog
):
    answers_409_to_a_handler_of_a_large_body(learner_app(LOGGED_ERRORS + BULK_CREATE), rows, caplog)


def answers_409_to_a_handler_of_a_large_body(app, rows, caplog) -> None:  # main's, the twin's
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    with TestClient(app.app) as client:
        client.post("/users/", json=ADA)
    users = [{"username": f"user{n}", "email": "a@example.com"} for n in range(5000)]
    body = json.dumps([*users, ADA]).encode()  # about 250 KB, the last name taken

    async def post_then_close() -> dict:  # the twin's connections closed on the loop they use
        try:
            return await post_in_parts(app.app, "/learner/bulk", body)
        finally:
            if inspect.isawaitable(disposed := app.db_engine.dispose()):
                await disposed

    answer = anyio.run(post_then_close)
    assert (answer["status"], json.loads(answer["body"])) == (
        409,
        {"detail": "Username already taken"},
    )
    assert [row[1] for row in rows()] == ["ada"]
    [logged] = [line for line in caplog.text.splitlines() if "answered 409, the body" in line]
    assert logged.endswith("the body sent: b''")  # too large to keep: not given again


async def post_in_parts(app, path: str, body: bytes) -> dict:
    """POSTs the body in 64 KiB parts, as uvicorn hands them over, then waits as a client does
    for its answer: at most 10 s. Returns the status and the body of the answer."""
    parts = [body[at : at + 65536] for at in range(0, len(body), 65536)]
    messages = [
        {"type": "http.request", "body": part, "more_body": at < len(parts) - 1}
        for at, part in enumerate(parts)
    ]
    answer: dict = {"body": b""}

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()  # nothing more, until the client goes

    async def send(message: dict) -> None:
        answer.setdefault("status", message.get("status"))
        answer["body"] += message.get("body", b"")

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST"}
    scope |= {"scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b""}
    scope |= {"root_path": "", "headers": headers, "client": ("127.0.0.1", 50000)}
    scope |= {"server": ("test", 80), "state": {}}
    with anyio.fail_after(10):
        await app(scope, receive, send)
    return answer


# --- Added by a learner right after `app = ...`, where FastAPI's "CORS" page adds it ----------
CORS_FOR_A_FRONTEND = """
from fastapi.middleware.cors import CORSMiddleware

app.add_middleware(CORSMiddleware, allow_origins=["http://localhost:5173"])
"""


def test_a_middleware_added_right_after_the_app_wraps_the_apps_409_too(learner_app, rows):
    answers_through_the_learners_middleware(learner_app(CORS_FOR_A_FRONTEND, after="app ="), rows)


def answers_through_the_learners_middleware(app, rows) -> None:  # main's copy, the twin's too
    origin = {"Origin": "http://localhost:5173"}
    with TestClient(app.app) as client:
        created = client.post("/users/", json=ADA, headers=origin)
        taken = client.post("/users/", json=ADA, headers=origin)  # answered by part 3
    for answer in (created, taken):  # without it, a browser hides the answer from the page
        assert answer.headers.get("access-control-allow-origin") == origin["Origin"], answer
    assert (taken.status_code, taken.json()) == (409, {"detail": "Username already taken"})
    assert [row[1] for row in rows()] == ["ada"]


# --- Added by a learner right after `app = ...`, as FastAPI's "Middleware" page shows --------
PROCESS_TIME_HEADER = """
import time

from fastapi import Request


@app.middleware("http")
async def add_process_time_header(request: Request, call_next):
    start_time = time.perf_counter()
    response = await call_next(request)
    response.headers["X-Process-Time"] = str(time.perf_counter() - start_time)
    return response
"""


def test_a_learners_http_middleware_sees_a_deadlock_rerun_as_one_request(mysql_engine, tmp_path):
    app = copy_app(tmp_path, PROCESS_TIME_HEADER, after="app =")
    runs_a_deadlock_again_inside_the_learners_middleware(app, mysql_engine)


def runs_a_deadlock_again_inside_the_learners_middleware(
    app, mysql_engine
) -> None:  # the twin's too
    server = UvicornServer(url_of(mysql_engine), cwd=app)
    send = {"url": "/users/", "json": {"username": "x", "email": "x@example.com"}}
    with server.wait_started(), server.client() as http:
        responses = deadlocked(mysql_engine, http.post, [send, send])
    assert sorted(response.status_code for response in responses) == [201, 409]
    assert all("x-process-time" in response.headers for response in responses)  # the 409's too
    assert server.count("running it again") == 1
    assert names(mysql_engine) == ["x"]


# --- A learner's own app, mounted in this one, as FastAPI's "Sub Applications" page shows ------
SUB_APP = """

subapi = FastAPI()


@subapi.post("/users/", status_code=201, response_model=UserOutput)
def sub_create_user(user: UserInput, session: SessionDep):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()
    return new_user
"""
MOUNTED = '\napp.mount("/subapi", subapi)\n'
GIVEN_OUR_MIDDLEWARE = "\nsubapi.add_middleware(one_session_per_request)\n"


def test_a_mounted_apps_route_that_takes_the_session_says_to_add_the_middleware(learner_app):
    app = learner_app(SUB_APP + MOUNTED)
    fix = r"sub_app\.add_middleware\(.*one_session_per_request\)"
    with TestClient(app.app) as client, pytest.raises(RuntimeError, match=fix):
        client.post("/subapi/users/", json=ADA)  # before: a 500 for a taken username only


def test_a_mounted_app_given_the_middleware_answers_a_taken_username_409(learner_app, rows):
    app = learner_app(SUB_APP + GIVEN_OUR_MIDDLEWARE + MOUNTED)
    answers_201_then_409(app, "/subapi/users/", rows)


def answers_201_then_409(app, path: str, rows) -> None:  # main's copy, the twin's too
    with TestClient(app.app) as client:
        created = client.post(path, json=ADA)
        taken = client.post(path, json=ADA)
    assert created.status_code == 201, created.text
    assert (taken.status_code, taken.json()) == (409, {"detail": "Username already taken"})
    assert [row[1] for row in rows()] == ["ada"]


# --- Startup work written with @app.on_event, as FastAPI's docs of the tutorial's time did -----
ON_EVENT = """

# --- Added by a learner: startup work, as FastAPI's docs once wrote it ------------------------
seeded: list[str] = []


@app.on_event("startup")
def seed_admin() -> None:
    seeded.append("admin")
"""


def test_an_on_event_handler_that_fastapi_never_runs_is_named_in_a_warning(learner_app, caplog):
    with pytest.warns(DeprecationWarning, match="on_event is deprecated"):  # hidden by uvicorn
        app = learner_app(ON_EVENT)
    names_an_on_event_handler_never_run(app, caplog)


def names_an_on_event_handler_never_run(app, caplog) -> None:  # main's, the twin's
    with TestClient(app.app) as client:
        client.get("/")
    assert app.seeded == []  # the app has a lifespan: FastAPI runs no on_event handler
    [line] = [record.getMessage() for record in caplog.records if "on_event" in record.getMessage()]
    assert line.startswith("seed_admin() is an @app.on_event handler"), line
    assert "Move its code into lifespan() (README, section 5)" in line
    [row] = [row for row in README.splitlines() if row.startswith('| `@app.on_event("startup")`')]
    assert "the app's log names it" in row  # the errata row the warning points to


# --- A test file of the learner's own, beside test_main.py, as FastAPI's docs write one ------
LEARNERS_OWN_TESTS = """
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from main import BaseModelClass, app, get_session

# FastAPI's "Testing Dependencies with Overrides", as a learner copies it
engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
BaseModelClass.metadata.create_all(engine)


def override_get_session():
    with Session(engine) as session:
        yield session


def test_create_user_with_the_override():
    app.dependency_overrides[get_session] = override_get_session
    with TestClient(app) as client:
        response = client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    app.dependency_overrides.clear()
    assert response.status_code == 201, response.text


def test_create_user_on_the_app_as_it_is():  # FastAPI's "Testing": no override, no `with`
    client = TestClient(app)
    response = client.post("/users/", json={"username": "bob", "email": "bob@example.com"})
    assert response.status_code == 201, response.text
"""


def test_a_learners_own_test_file_beside_test_main_passes_and_spares_their_database(tmp_path):
    for name in ("main.py", "main_async.py", "conftest.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "tests").mkdir()
    for name in ("__init__.py", "support.py", "galera.py"):  # what conftest.py imports
        shutil.copy(ROOT / "tests" / name, tmp_path / "tests" / name)
    (tmp_path / "test_mine.py").write_text(LEARNERS_OWN_TESTS)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout
    assert not (tmp_path / "app.db").exists()  # the learner's own database: never the tests'


# --- A commit forgotten: the answer says created, the row is never saved ---------------------
FORGOTTEN_COMMIT = """

# --- Added by a learner: a create route, its commit forgotten ---------------------------------
from sqlalchemy import insert, update

@app.post("/learner/members/", status_code=201)
def create_member(user: UserInput, session: SessionDep) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    return {"created": user.username}
"""
# Each way a route writes: added only, or already sent to the database, but never committed
ADDED = "    session.add(UserTable(username=user.username, email=user.email))\n"
UNSAVED_WRITES = {
    "added": ADDED,
    "flushed": ADDED + "    session.flush()  # the id, at once\n",
    "read after": ADDED
    + "    session.scalars(select(UserTable)).all()  # sends the INSERT first\n",
    "inserted": "    session.execute(insert(UserTable).values(**user.model_dump()))\n",
    "updated": "    session.execute(update(UserTable).values(email=user.email))\n",
}


@pytest.mark.parametrize("write", UNSAVED_WRITES)
def test_a_forgotten_commit_is_named_in_a_warning(learner_app, rows, caplog, write):
    code = FORGOTTEN_COMMIT.replace(ADDED, UNSAVED_WRITES[write])
    names_a_forgotten_commit(learner_app(code), rows, caplog)


def test_writes_committed_or_rolled_back_on_purpose_are_not_named(learner_app, rows, caplog):
    undone = ADDED + "    session.flush()\n    session.rollback()  # a dry run, say\n"
    app = learner_app(FORGOTTEN_COMMIT.replace(ADDED, undone))
    with TestClient(app.app) as client:
        dry_run = client.post("/learner/members/", json=ADA)
        created = client.post("/users/", json=ADA)
        user = f"/users/{created.json()['id']}"  # not 1 on MySQL: the dry run took it
        changed = client.patch(user, json={"email": "ada@example.org"})
        deleted = client.delete(user)
    assert [dry_run.status_code, created.status_code, changed.status_code] == [201, 201, 200]
    assert deleted.status_code == 204 and rows() == []
    assert not [rec for rec in caplog.records if "never saved" in rec.getMessage()]


# FastAPI's docs return the row itself: without a commit its id is None, and the answer's check
# fails before any answer is sent (a 500 whose traceback names the id, not the commit)
RETURNS_THE_ROW = """

# --- Added by a learner: a create route that returns the row, its commit forgotten -----------
@app.post("/learner/rows/", status_code=201, response_model=UserOutput)
def create_row(user: UserInput, session: SessionDep):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    return new_user
"""


def test_a_forgotten_commit_that_fails_the_answers_check_is_named_too(learner_app, rows, caplog):
    names_a_forgotten_commit_behind_a_500(learner_app(RETURNS_THE_ROW), rows, caplog)


def names_a_forgotten_commit_behind_a_500(app, rows, caplog) -> None:  # main's, the twin's
    with TestClient(app.app, raise_server_exceptions=False) as client:
        response = client.post("/learner/rows/", json=ADA)
    assert response.status_code == 500 and rows() == []
    [line] = [rec.getMessage() for rec in caplog.records if "never saved" in rec.getMessage()]
    assert line.startswith("POST /learner/rows/ answered 500"), line  # before: no such line
    assert "changes to users" in line and "commit()" in line


def names_a_forgotten_commit(app, rows, caplog) -> None:  # main's, the twin's
    with TestClient(app.app) as client:
        created = client.post("/learner/members/", json=ADA)
        refused = client.post("/learner/members/", json={**ADA, "username": " bad"})
    assert created.status_code == 201 and refused.status_code == 422
    assert rows() == []  # the learner's bug: nothing saved, as SQLAlchemy does
    [line] = [rec.getMessage() for rec in caplog.records if "never saved" in rec.getMessage()]
    assert line.startswith("POST /learner/members/ answered 201"), line
    assert "changes to users" in line and "commit()" in line
    assert "`... were never saved: a commit() forgotten?`" in TROUBLESHOOTING
