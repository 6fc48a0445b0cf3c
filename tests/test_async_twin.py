"""main_async.py, the async twin (issue 32): what async adds to main.py's guarantees, each on
SQLite and MySQL where it applies. test_main.py's behaviour, and the cases of tests/ that apply to
both apps, run on both (conftest.py's `app_module` and `app_folder`; docs/async.md lists them).

In-process cases run the twin's ASGI app on an event loop of their own (httpx2's ASGITransport:
no lifespan, so the app also prepares its tables at first use, as when mounted); the others run
`uvicorn main:app` on a copy of main_async.py named main.py."""

import asyncio
import importlib.util
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import exc, make_url, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool
from starlette.websockets import WebSocketDisconnect

from conftest import twin_engine, url_of
from tests.support import (
    ROOT,
    UvicornServer,
    copy_app,
    deadlocked,
    free_port,
    placed,
    twin_folder,
)
from tests.test_database_errors import NEW_COLUMN
from tests.test_next_steps import (
    BULK_CREATE,
    CORS_FOR_A_FRONTEND,
    FORGOTTEN_COMMIT,
    GIVEN_OUR_MIDDLEWARE,
    LOGGED_ERRORS,
    MOUNTED,
    ON_EVENT,
    PLAIN_TEXT_ERRORS,
    PROCESS_TIME_HEADER,
    RETURNS_THE_ROW,
    UNCHECKED_NOTES,
    answers_201_then_409,
    answers_409_in_their_apps_format,
    answers_409_to_a_handler_of_a_large_body,
    answers_409_to_a_handler_that_reads_the_body,
    answers_in_the_learners_format,
    answers_on_an_in_memory_engine,
    answers_through_the_learners_middleware,
    has_the_guards,
    names_a_forgotten_commit,
    names_a_forgotten_commit_behind_a_500,
    names_an_on_event_handler_never_run,
    refers_to_a_missing_user,
    refuses_a_number_too_large,
    refuses_a_text_too_long,
    refuses_a_value_against_its_check,
    runs_a_deadlock_again_inside_the_learners_middleware,
    says_what_to_do_when_mounted,
)
from tests.test_one_session_per_request import (
    answers_500_to_a_conflict_after_a_commit,
    counts_in_a_second_session,
    logs_a_late_commit_that_fails_in_one_line,
    notes_the_count_in_a_task,
    reads_twice_behind_a_late_commit,
    streams_every_row,
    turns_free_after_a_turn_taken_at_the_last_moment,
)
from tests.test_outages import (
    answers_201_through_a_stall_after_the_commit,
    answers_unknown_when_the_commits_answer_is_unreadable,
)

ADA = {"username": "ada", "email": "ada@example.com"}
BOB = {"username": "bob", "email": "bob@example.com"}
BOUND = 4.0  # DB_TIMEOUT for the stall cases, the least allowed: each wait 2 s
MARGIN = 1.0  # for the machine


@pytest.fixture
def twin_app(engine, tmp_path: Path, monkeypatch) -> Iterator[Callable[..., ModuleType]]:
    """Loads a copy of main_async.py with a learner's code appended, pointed at the test's
    database (or `database_url`): `twin_app(code, DB_POOL_SIZE="1")`. Each copy is its own
    module, with its own engine and app."""
    loaded: list[ModuleType] = []

    def load(
        learner_code: str = "",
        database_url: str | None = None,
        after: str | None = None,
        **settings,
    ) -> ModuleType:
        folder = tmp_path / f"twin-{len(loaded)}"
        twin_folder(folder, learner_code, "main_async.py", after)
        for name, value in {"DATABASE_URL": database_url or url_of(engine), **settings}.items():
            monkeypatch.setenv(name, value)
        module_name = f"twin_copy_{len(loaded)}"
        spec = importlib.util.spec_from_file_location(module_name, folder / "main_async.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded.append(module)
        return module

    yield load


def on_loop(app: ModuleType, scenario, raise_app_exceptions: bool = True) -> object:
    """Runs scenario(http) on an event loop of its own, with an httpx2 client talking to the
    app in process; the app's engine is disposed on that loop afterwards. With
    raise_app_exceptions=False, a route's error comes back as the 500 a client would get."""

    async def main() -> object:
        transport = httpx2.ASGITransport(app=app.app, raise_app_exceptions=raise_app_exceptions)
        try:
            async with httpx2.AsyncClient(transport=transport, base_url="http://twin") as http:
                return await scenario(http)
        finally:
            await app.db_engine.dispose()

    return asyncio.run(main())


def open_transactions(engine) -> int:
    """1 if a transaction still holds a write lock (the tests' UPDATE of every user), else 0:
    on SQLite, another connection cannot take the file's write lock; on MySQL, a row's."""
    if engine.dialect.name == "sqlite":
        import sqlite3

        probe = sqlite3.connect(engine.url.database, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return 0
        except sqlite3.OperationalError:
            return 1
        finally:
            probe.close()
    with engine.connect() as admin:  # NOWAIT: a locked row is an error at once (MariaDB 10.3)
        try:
            admin.exec_driver_sql("SELECT id FROM users FOR UPDATE NOWAIT").all()
            return 0
        except exc.DBAPIError:
            return 1
        finally:
            admin.rollback()


def settled(check: Callable[[], int], seconds: float = 3) -> int:
    """check() once it is 0, or its value after `seconds` (the server notices a dropped
    connection a moment later)."""
    deadline = time.monotonic() + seconds
    while (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


# --- Runs where main.py runs, with main.py's settings ----------------------------------------
def test_main_async_copied_alone_imports_without_warnings_and_serves_on_sqlite(tmp_path):
    shutil.copy(ROOT / "main_async.py", tmp_path / "main_async.py")
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    command = [sys.executable, "-W", "error", "-c", "import main_async"]
    imported = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stderr == "", imported.stderr
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "main_async:app", "--port", str(port)]
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with httpx2.Client(base_url=f"http://127.0.0.1:{port}") as http:
                    created = http.post("/users/", json=ADA)
                    read = http.get(f"/users/{created.json()['id']}")
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "main_async did not start"
                time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGINT)
        log = server.communicate(timeout=15)[1]
    assert created.status_code == 201 and read.json() == created.json()
    assert (tmp_path / "app.db").exists()
    assert "sqlite+aiosqlite:///./app.db" in log
    assert "Traceback" not in log and "Warning" not in log, log


@pytest.mark.parametrize(
    "given, used",
    [
        ("sqlite:///./app.db", "sqlite+aiosqlite"),
        ("mysql+pymysql://u:p@localhost/db", "mysql+aiomysql"),
        ("mysql://u:p@localhost/db", "mysql+aiomysql"),
        ("mysql+aiomysql://u:p@localhost/db", "mysql+aiomysql"),
        ("mysql+asyncmy://u:p@localhost/db", "mysql+asyncmy"),
        ("mariadb+pymysql://u:p@localhost/db", "mariadb+aiomysql"),
        ("mariadb://u:p@localhost/db", "mariadb+aiomysql"),
    ],
)
def test_main_pys_database_url_gets_an_async_driver(given, used):
    twin = importlib.import_module("main_async")
    assert twin.async_url(given).drivername == used


@pytest.mark.parametrize(
    "driver", ["mysql", "mysql+pymysql", "mysql+aiomysql", "mysql+asyncmy", "mariadb+pymysql"]
)
def test_each_mysql_url_form_reaches_the_server(mysql_engine, driver):
    url = make_url(url_of(mysql_engine)).set(drivername=driver)

    async def select_one() -> int:
        engine = twin_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.scalar(text("SELECT 1"))
        finally:
            await engine.dispose()

    assert asyncio.run(select_one()) == 1


def test_tls_options_in_the_url_stop_the_twin_saying_why(mysql_engine):
    # PyMySQL (main.py) refuses a server without TLS when the URL asks for it; the twin's drivers
    # would go on in plain text there (aiomysql), or fail obscurely where TLS is offered.
    url = make_url(url_of(mysql_engine)).update_query_dict({"ssl_ca": "/etc/ssl/certs/ca.pem"})

    async def connect() -> None:
        engine = twin_engine(url)
        try:
            async with engine.connect():
                pass
        finally:
            await engine.dispose()

    with pytest.raises(RuntimeError, match="TLS") as stopped:
        asyncio.run(connect())
    print(f"\n{stopped.value}")
    assert "main.py" in str(stopped.value)


# --- A learner's plain def, which cannot await the session ---------------------------------
PLAIN_DEF = """

# --- Added by a learner: a route written as main.py's are -------------------------------------
@app.get("/learner/count")
def count_users(session: SessionDep) -> dict:
    return {"users": len(list(session.scalars(select(UserTable))))}
"""

PLAIN_DEF_DEPENDENCY = """

# --- Added by a learner: a plain def dependency that takes the session ------------------------
def current_user(session: AsyncSession = Depends(get_session)) -> UserTable:
    return session.get(UserTable, 1)


@app.get("/learner/me")
async def read_me(user: UserTable = Depends(current_user)) -> dict:
    return {"username": user.username}
"""


TUTORIALS_SPELLING = """

# --- Added by a learner: main.py's create_user, copied as it is -------------------------------
@app.post("/learner/members/", status_code=201, response_model=UserOutput)
def create_member(user: UserInput, session: Session = Depends(get_session)):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()
    return new_user
"""

NO_ANNOTATION = """

# --- Added by a learner: a plain def route, its session without a type -----------------------
@app.get("/learner/first")
def first_user(session=Depends(get_session)) -> dict:
    return {"user": str(session.get(UserTable, 1))}
"""


A_METHOD = """

# --- Added by a learner: a dependency that is a method of an object ---------------------------
class Users:
    def first(self, session: SessionDep) -> UserTable:
        return session.get(UserTable, 1)


users = Users()


@app.get("/learner/first")
async def read_first(user: UserTable = Depends(users.first)) -> dict:
    return {"username": user.username}
"""


IN_A_ROUTER = """

# --- Added by a learner: a plain def route in a router, as bigger apps group them -----------
from fastapi import APIRouter

router = APIRouter(prefix="/learner")


@router.get("/count")
def count_users(session: SessionDep) -> dict:
    return {"users": len(list(session.scalars(select(UserTable))))}


app.include_router(router)
"""


THROUGH_A_DEPENDENCY = """

# --- Added by a learner: a plain def route handed the session by a dependency with yield -----
async def get_transaction(session: SessionDep):
    yield session
    await session.commit()


@app.post("/learner/touch")
def touch(session: Annotated[AsyncSession, Depends(get_transaction)]) -> dict:
    session.execute(update(UserTable).values(email="touched@example.com"))
    return {"touched": True}
"""


A_CLASS = """

# --- Added by a learner: a class that keeps the session, as a repository does -----------------
class Users:
    def __init__(self, session: SessionDep):
        self.session = session


@app.get("/learner/count")
def count_users(users: Annotated[Users, Depends()]) -> dict:
    return {"users": len(list(users.session.scalars(select(UserTable))))}
"""


@pytest.mark.parametrize(
    "code",
    [
        PLAIN_DEF,
        PLAIN_DEF_DEPENDENCY,
        TUTORIALS_SPELLING,
        NO_ANNOTATION,
        A_METHOD,
        IN_A_ROUTER,
        THROUGH_A_DEPENDENCY,
        A_CLASS,
    ],
    ids=[
        "route",
        "dependency",
        "tutorials-spelling",
        "no-annotation",
        "a-method",
        "in-a-router",
        "through-a-dependency",
        "through-a-class",
    ],
)
def test_a_plain_def_that_takes_the_session_stops_the_app_saying_what_to_write(twin_app, code):
    app = twin_app(code)
    with pytest.raises(RuntimeError) as stopped, TestClient(app.app):
        pass
    message = str(stopped.value)
    print(f"\n{message}")
    assert "/learner/" in message and "plain def" in message
    assert "async def" in message and "await" in message


def test_an_async_def_route_given_a_class_that_keeps_the_session_runs(twin_app):
    app = twin_app(
        A_CLASS.replace("def count_users", "async def count_users").replace(
            "list(users.session.scalars(", "list(await users.session.scalars("
        )
    )
    with TestClient(app.app) as client:
        counted = client.get("/learner/count")
    assert (counted.status_code, counted.json()) == (200, {"users": 0})


IN_AN_APP_OF_THEIR_OWN = """

# --- Added by a learner: an app of their own, given part 3's lifespan and middleware ----------
their_app = FastAPI(lifespan=lifespan)
their_app.add_middleware(one_session_per_request)


@their_app.get("/learner/count")
def count_users(session: SessionDep) -> dict:
    return {"users": len(list(session.scalars(select(UserTable))))}
"""


def test_a_plain_def_in_an_app_of_their_own_stops_it_at_startup(twin_app):
    app = twin_app(IN_AN_APP_OF_THEIR_OWN)
    with pytest.raises(RuntimeError) as stopped, TestClient(app.their_app):
        pass  # before: it started, and only main_async.app's routes were looked at
    assert "/learner/count: count_users() is a plain def" in str(stopped.value)


def test_a_plain_def_route_stops_a_mounted_app_at_its_first_request(twin_app):
    app = twin_app(PLAIN_DEF)
    outer = FastAPI()
    outer.mount("/api", app.app)
    with TestClient(outer) as client:
        with pytest.raises(RuntimeError, match="async def"):
            client.get("/api/users/")
        client.portal.call(app.db_engine.dispose)  # no lifespan of its own: on its event loop


# --- Lazy loads: the course's posts, on the app's own routes ---------------------------------
POSTS = """

# --- Added by a learner: the course's posts (exercise 3), and a route that reads them ---------
from sqlalchemy import ForeignKey, Text
from sqlalchemy.orm import relationship


class PostTable(BaseModelClass):
    __tablename__ = "posts"
    __table_args__ = {"mysql_charset": "utf8mb4"}
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    user: Mapped[UserTable] = relationship(back_populates="posts")


UserTable.posts = relationship(PostTable, back_populates="user", order_by=PostTable.id)


@app.post("/users/{user_id}/posts", status_code=201)
async def create_post(user_id: UserId, title: str, session: SessionDep) -> dict:
    user = await get_user_or_404(session, user_id)
    session.add(PostTable(user=user, title=title, body="text"))
    await session.commit()
    return {"titles": [post.title for post in await user.awaitable_attrs.posts]}
"""


def test_a_relationship_never_surfaces_as_a_missing_greenlet_in_the_apps_routes(
    twin_app, engine, caplog
):
    app = twin_app(POSTS)
    with TestClient(app.app) as client:
        ada = client.post("/users/", json=ADA).json()["id"]
        grace = client.post("/users/", json={**ADA, "username": "grace"}).json()["id"]
        answers = [client.post(f"/users/{ada}/posts", params={"title": t}) for t in "AB"]
        answers += [client.post(f"/users/{grace}/posts", params={"title": "G"})]
        answers += [
            client.get("/users/"),
            client.get(f"/users/{ada}"),
            client.patch(f"/users/{ada}", json={"email": "new@example.com"}),
            client.patch(f"/users/{grace}", json={"username": "ada"}),  # 409, then rolled back
            client.patch(f"/users/{grace}", json={"username": "grace2"}),
            client.delete(f"/users/{ada}"),  # the database deletes her posts
            client.get(f"/users/{ada}"),
            client.get("/readyz"),
        ]
        with engine.connect() as connection:
            posts = connection.execute(text("SELECT title FROM posts")).scalars().all()
    statuses = [answer.status_code for answer in answers]
    print(f"\n{engine.dialect.name}: {statuses}")
    assert statuses == [201, 201, 201, 200, 200, 200, 409, 200, 204, 404, 200]
    assert answers[1].json() == {"titles": ["A", "B"]}
    assert posts == ["G"]
    assert "MissingGreenlet" not in caplog.text


# --- Cancelled mid-request: no connection checked out, no transaction left on the server -------
HOLDING = """

# --- Added by a test: a request that writes, then waits: in a query, or between two -----------
import anyio
from sqlalchemy import text, update


@app.post("/learner/hold/{where}")
async def hold(where: str, session: SessionDep) -> dict:
    await session.execute(update(UserTable).values(email="held@example.com"))  # a lock held
    if where == "between":
        await anyio.sleep(30)
    elif session.bind.dialect.name == "mysql":
        await session.execute(text("SELECT SLEEP(3)"))  # the server stops it after 4 s
    else:  # a long query on SQLite: counts to 10 million (2 s)
        count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1e7)"
        await session.execute(text(count + " SELECT COUNT(*) FROM c"))
    await session.commit()
    return {"held": where}
"""


@pytest.mark.parametrize("where", ["between", "in-query"])
def test_a_task_cancelled_mid_request_leaves_no_connection_and_no_transaction(
    twin_app, engine, rows, where
):
    app = twin_app(HOLDING)

    async def scenario(http) -> tuple[int, int, int]:
        user_id = (await http.post("/users/", json=ADA)).json()["id"]
        request = asyncio.create_task(http.post(f"/learner/hold/{where}"))
        await asyncio.sleep(1)  # it holds the row lock and waits
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        checked_out = app.db_engine.pool.checkedout()
        left = await asyncio.to_thread(settled, lambda: open_transactions(engine), 6)
        after = await http.get(f"/users/{user_id}")  # the pool still serves
        return checked_out, left, after.status_code

    checked_out, left, after = on_loop(app, scenario)
    print(f"\n{engine.dialect.name}, cancelled {where}: {checked_out} checked out, {left} open")
    assert (checked_out, left, after) == (0, 0, 200)
    assert [row[2] for row in rows()] == ["ada@example.com"]  # the UPDATE was rolled back


def test_a_request_cancelled_by_server_shutdown_leaves_nothing_open(engine, tmp_path, rows):
    folder = twin_folder(tmp_path / "app", HOLDING)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port)]
    command += ["--timeout-graceful-shutdown", "1"]  # then uvicorn cancels what still runs
    env = {**os.environ, "DATABASE_URL": url_of(engine)}
    server = subprocess.Popen(command, cwd=folder, env=env, stderr=subprocess.PIPE, text=True)
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                http.post("/users/", json=ADA)
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "main_async did not start"
                time.sleep(0.1)
        with ThreadPoolExecutor(max_workers=2) as pool:
            holding = [
                pool.submit(http.post, f"/learner/hold/{w}") for w in ("between", "in-query")
            ]
            time.sleep(1)
            server.send_signal(signal.SIGTERM)
            log = server.communicate(timeout=30)[1]
            answers = [future.exception() or future.result().status_code for future in holding]
    left = settled(lambda: open_transactions(engine))
    print(f"\n{engine.dialect.name}: shutdown mid-request: {answers}; {left} left open")
    assert server.returncode in (0, -signal.SIGTERM), log  # uvicorn ends as its signal says
    assert left == 0
    assert [row[2] for row in rows()] == ["ada@example.com"]
    for trouble in ("Traceback", "non-checked-in", "never awaited", "Exception"):
        assert trouble not in log, log


LONG_REPORT = """

# --- Added by a learner: a report whose query runs far longer than one wait -------------------
from sqlalchemy import text


@app.get("/learner/report")
async def report(session: SessionDep) -> dict:
    if session.bind.dialect.name == "mysql":
        return {"slept": await session.scalar(text("SELECT SLEEP(20)"))}
    # SQLite: counts to 30 million, some 8 s, holding the database file's read lock
    count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3e7)"
    return {"count": await session.scalar(text(count + " SELECT COUNT(*) FROM c"))}
"""


def test_a_query_past_its_bound_is_stopped_and_the_next_write_is_served(twin_app, rows):
    # The bound answers 503 busy (a statement too long, as MySQL says), and the query stops too:
    # on MySQL the server's own limit ends it, on SQLite it is interrupted, not left running in
    # aiosqlite's thread with the file locked
    app = twin_app(LONG_REPORT, DB_TIMEOUT=str(BOUND))

    async def scenario(http) -> tuple:
        await http.post("/users/", json=ADA)
        report = await http.get("/learner/report")
        started = time.monotonic()
        write = await http.post("/users/", json=BOB)
        return report, write, time.monotonic() - started

    report, write, seconds = on_loop(app, scenario)
    print(f"\nreport: {report.status_code} {report.json()}; then a write in {seconds:.2f} s")
    assert (report.status_code, report.json()) == (503, {"detail": "Database busy, try again"})
    assert write.status_code == 201, write.json()
    assert [row[1] for row in rows()] == ["ada", "bob"]


# --- A stalled server: 503 within DB_TIMEOUT, the connection dropped --------------------------
STALL_MID_TRANSACTION = """

# --- Added by a test: a write, then the network stalls before the next query ------------------
from sqlalchemy import select, update


@app.post("/learner/stall")
async def stall(session: SessionDep) -> dict:
    await session.execute(update(UserTable).values(email="held@example.com"))  # a lock held
    proxy.stalled = True  # set by the test
    return {"users": len((await session.scalars(select(UserTable))).all())}
"""


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_stall_mid_transaction_answers_503_within_the_bound_and_leaves_nothing_open(
    twin_app, engine, make_proxy, rows
):
    proxy = make_proxy()
    app = twin_app(STALL_MID_TRANSACTION, database_url=url_of(engine, proxy), DB_TIMEOUT=str(BOUND))
    app.proxy = proxy

    async def scenario(http) -> tuple:
        await http.post("/users/", json=ADA)
        started = time.monotonic()
        stalled = await http.post("/learner/stall")
        seconds = time.monotonic() - started
        checked_out = app.db_engine.pool.checkedout()
        proxy.stalled = False
        left = await asyncio.to_thread(settled, lambda: open_transactions(engine))
        after = await http.get("/users/1")
        return stalled, seconds, checked_out, left, after.status_code

    stalled, seconds, checked_out, left, after = on_loop(app, scenario)
    print(
        f"\nstalled mid-transaction: {stalled.status_code} {stalled.json()} after {seconds:.2f} s"
    )
    assert (stalled.status_code, stalled.json()) == (503, {"detail": "Database unavailable"})
    assert stalled.headers["Retry-After"] == "5"
    assert seconds <= BOUND / 2 + MARGIN  # one wait: its bound
    assert (checked_out, left, after) == (0, 0, 200)
    assert [row[2] for row in rows()] == ["ada@example.com"]


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
def test_a_stall_after_the_commits_answer_still_answers_201_within_the_bound(
    twin_app, engine, make_proxy, rows, driver
):
    proxy = make_proxy()
    url = make_url(url_of(engine, proxy)).set(drivername=f"mysql+{driver}")
    app = twin_app(database_url=url.render_as_string(False), DB_TIMEOUT=str(BOUND))
    answers_201_through_a_stall_after_the_commit(app, proxy, rows)


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
def test_a_commit_whose_answer_arrives_unreadable_is_answered_saved_or_not_unknown(
    twin_app, engine, make_proxy, rows, driver
):
    proxy = make_proxy()
    url = make_url(url_of(engine, proxy)).set(drivername=f"mysql+{driver}")
    app = twin_app(database_url=url.render_as_string(False), DB_TIMEOUT=str(BOUND))
    answers_unknown_when_the_commits_answer_is_unreadable(app, proxy, rows)


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_request_that_waited_for_its_turn_then_meets_a_stall_answers_503_within_db_timeout(
    twin_app, engine, make_proxy
):
    # Its turn came within one wait; its connection (a ping, then a new one) gets one more
    proxy = make_proxy()
    app = twin_app(database_url=url_of(engine, proxy), DB_TIMEOUT=str(BOUND), DB_POOL_SIZE="2")

    async def scenario(http) -> tuple[list[int], float]:
        await asyncio.gather(*(http.post("/users/", json=who) for who in (ADA, BOB)))  # 2 kept
        proxy.stalled = True
        first = [asyncio.create_task(http.get("/users/1")) for _ in range(2)]  # the two turns
        await asyncio.sleep(0.6 * BOUND)  # the next two wait for those turns
        started = time.monotonic()
        late = await asyncio.gather(*(http.get("/users/1") for _ in range(2)))
        seconds = time.monotonic() - started
        statuses = [answer.status_code for answer in [*await asyncio.gather(*first), *late]]
        return statuses, seconds

    statuses, seconds = on_loop(app, scenario)
    print(f"\nstalled: {statuses}, the late two after {seconds:.2f} s")
    assert statuses == [503] * 4
    assert seconds <= BOUND


CORE_CONNECTION = """

# --- Added by a learner: a route that takes a Core connection of its own ----------------------
import asyncio

from sqlalchemy import func


@app.get("/learner/count")
async def count_users() -> dict:
    async with db_engine.connect() as connection:
        return {"users": await connection.scalar(select(func.count()).select_from(UserTable))}


@app.get("/learner/counts-one-after-another")
async def counts_one_after_another() -> dict:
    async def count_after(pause: float) -> int:
        await asyncio.sleep(pause)  # tasks that start apart, each with a connection of its own
        async with db_engine.connect() as connection:
            return await connection.scalar(select(func.count()).select_from(UserTable))

    return {"counts": await asyncio.gather(*(count_after(1.5 * task) for task in range(4)))}


@app.get("/learner/count-in-autocommit")
async def count_users_in_autocommit() -> dict:
    async with db_engine.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
        return {"users": await connection.scalar(select(func.count()).select_from(UserTable))}
"""


def answer_of_a_stalled_database(app, proxy, path: str, disposed: bool = False) -> tuple:
    """GET path once the database stalls (after a dispose(): on a new pool): its status, body
    and seconds; None, None if no answer came within 3 bounds."""

    async def scenario(http) -> tuple:
        await http.post("/users/", json=ADA)  # the tables made, a connection kept in the pool
        if disposed:  # a new pool, as at a loop's end: the next connection is a new one
            await app.db_engine.dispose()
        proxy.stalled = True
        started = time.monotonic()
        with anyio.move_on_after(3 * BOUND):  # before the fix: no answer
            answer = await http.get(path)
            return answer.status_code, answer.json(), time.monotonic() - started
        return None, None, time.monotonic() - started

    return on_loop(app, scenario)


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
@pytest.mark.parametrize(
    "path, disposed",
    [("/learner/count", False), ("/learner/count-in-autocommit", False), ("/learner/count", True)],
)
def test_a_core_connection_on_a_stalled_database_answers_503_within_db_timeout(
    twin_app, engine, make_proxy, path, disposed
):
    proxy = make_proxy()
    app = twin_app(CORE_CONNECTION, database_url=url_of(engine, proxy), DB_TIMEOUT=str(BOUND))
    status, body, seconds = answer_of_a_stalled_database(app, proxy, path, disposed)
    print(f"\na Core connection, the database stalled: {status} {body} after {seconds:.2f} s")
    assert (status, body) == (503, {"detail": "Database unavailable"})
    assert seconds <= BOUND + MARGIN


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_waits_that_start_one_after_another_are_each_bounded_from_their_own_start(
    twin_app, engine, make_proxy
):
    # The first task's wait for its connection ends within one wait, however many start later
    proxy = make_proxy()
    app = twin_app(CORE_CONNECTION, database_url=url_of(engine, proxy), DB_TIMEOUT=str(BOUND))
    path = "/learner/counts-one-after-another"
    status, body, seconds = answer_of_a_stalled_database(app, proxy, path)
    print(f"\n4 tasks 1.5 s apart, the database stalled: {status} {body} after {seconds:.2f} s")
    assert (status, body) == (503, {"detail": "Database unavailable"})
    assert seconds <= BOUND / 2 + MARGIN


def test_a_stalled_database_answers_503_within_the_bound_then_recovers(
    mysql_engine, make_proxy, tmp_path
):
    proxy = make_proxy()
    server = UvicornServer(
        url_of(mysql_engine, proxy), cwd=twin_folder(tmp_path), extra_env={"DB_TIMEOUT": str(BOUND)}
    )
    with server.wait_started(), server.client(timeout=60) as http:
        user_id = http.post("/users/", json=ADA).json()["id"]
        proxy.stalled = True
        started = time.monotonic()
        alone = http.get(f"/users/{user_id}")
        alone_seconds = time.monotonic() - started

        def one(number: int) -> tuple[float, int]:
            started = time.monotonic()
            if number % 2:
                answer = http.get(f"/users/{user_id}")
            else:
                answer = http.post("/users/", json={**ADA, "username": f"user{number}"})
            return time.monotonic() - started, answer.status_code

        with ThreadPoolExecutor(max_workers=64) as pool:
            waiting = pool.map(one, range(64))
            time.sleep(0.5)
            started = time.monotonic()
            root = http.get("/")  # while 64 wait on the database
            root_seconds = time.monotonic() - started
            results = list(waiting)
        proxy.stalled = False
        after = http.get(f"/users/{user_id}")
    slowest = max(seconds for seconds, _ in results)
    statuses = sorted({status for _, status in results})
    print(f"\nstalled: alone {alone.status_code} after {alone_seconds:.2f} s; 64 at once:")
    print(f"{statuses}, slowest {slowest:.2f} s; GET / {root_seconds * 1000:.0f} ms")
    assert (alone.status_code, alone.json()) == (503, {"detail": "Database unavailable"})
    assert alone_seconds <= BOUND + MARGIN
    assert statuses == [503]
    assert slowest <= 2 * BOUND + MARGIN
    assert root.status_code == 200 and root_seconds < BOUND / 4  # less than one wait: not queued
    assert after.status_code == 200
    [line, *_] = [line for line in server.lines if "answered 503 Database unavailable" in line]
    assert "OperationalError" in line and "2013" in line, line


CORE_THEN_ANOTHER_SERVICE = """

# --- Added by a learner: Core, or a session thrown away, then a call to another service ------
import anyio
from sqlalchemy import insert, text


@app.post("/learner/core/{ending}", status_code=201)
async def core_create(ending: str, user: UserInput) -> dict:
    async with db_engine.connect() as connection:
        await connection.execute(insert(UserTable).values(**user.model_dump()))
        await (connection.commit() if ending == "commit" else connection.rollback())
        await anyio.sleep(3)  # another service (an e-mail's), longer than one wait: 2 s
    return {"ended": ending}


@app.post("/learner/session/invalidate", status_code=201)
async def session_thrown_away(user: UserInput, session: SessionDep) -> dict:
    await session.execute(text("SELECT 1"))
    await session.invalidate()  # its connection thrown away, unsure of it: no ROLLBACK sent
    await anyio.sleep(3)
    return {"ended": "invalidate"}
"""


@pytest.mark.parametrize("ending", ["core/commit", "core/rollback", "session/invalidate"])
def test_a_wait_after_a_commit_a_rollback_or_an_invalidate_is_not_the_databases(
    twin_app, rows, ending
):
    # The COMMIT's (or the ROLLBACK's) wait ends with its answer, not when the connection goes
    # back to the pool; a connection thrown away waits for nothing. The route's other awaits
    # (another service's) are its own, not bounded (docs/async.md)
    app = twin_app(CORE_THEN_ANOTHER_SERVICE, DB_TIMEOUT=str(BOUND))

    async def scenario(http) -> httpx2.Response:
        await http.post("/users/", json=ADA)  # prepares the tables (no lifespan here)
        return await http.post(f"/learner/{ending}", json=BOB)

    answer = on_loop(app, scenario)
    assert (answer.status_code, answer.json()) == (201, {"ended": ending.split("/")[1]})
    saved = ["ada", "bob"] if ending == "core/commit" else ["ada"]
    assert [row[1] for row in rows()] == saved


# --- The rest of main.py's part 3, on the twin -------------------------------------------------
TWO_SPELLINGS = """

# --- Added by a learner: a dependency that takes the session, as FastAPI's docs write one -----
from fastapi import HTTPException


async def get_current_user(session: AsyncSession = Depends(get_session)) -> UserTable:
    user = await session.get(UserTable, 1)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


@app.get("/learner/me")
async def read_me(session: SessionDep, user: UserTable = Depends(get_current_user)) -> dict:
    return {"username": user.username, "one_session": user in session}
"""


def test_a_dependency_and_its_route_share_one_session(twin_app):
    app = twin_app(TWO_SPELLINGS, DB_POOL_SIZE="1", DB_TIMEOUT=str(BOUND))
    with TestClient(app.app) as client:
        client.post("/users/", json=ADA)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: client.get("/learner/me"), range(8)))
    assert {answer.status_code for answer in answers} == {200}
    assert answers[0].json() == {"username": "ada", "one_session": True}


SIGNUPS = """

# --- Added by a learner: a second table, and sign-ups that may commit to it first -------------
class AuditTable(BaseModelClass):
    __tablename__ = "learner_audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(100))


async def audited(user: UserInput, session: AsyncSession = Depends(get_session)) -> UserInput:
    session.add(AuditTable(action=f"signup {user.username}"))
    await session.commit()
    return user


@app.post("/learner/signup", status_code=201, response_model=UserOutput)
async def learner_signup(session: SessionDep, user: UserInput = Depends(audited)):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    await session.commit()
    return new_user
"""


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
@pytest.mark.parametrize("path", ["/users/", "/learner/signup"])
def test_a_deadlock_is_run_again_unless_the_request_had_committed(twin_app, engine, caplog, path):
    # InnoDB's textbook deadlock: a holder keeps a new username "x" uncommitted; two sign-ups
    # of "x" wait for it; the holder rolls back, and the two deadlock. /users/ has committed
    # nothing: run again, it meets the winner's row (409). /learner/signup has committed its
    # audit row: run again, it would write it twice, so it answers 500.
    app = twin_app(SIGNUPS)
    with TestClient(app.app) as client:
        sends = [{"url": path, "json": {"username": "x", "email": "a@example.com"}}] * 2
        statuses = sorted(r.status_code for r in deadlocked(engine, client.post, sends, pause=1))
    with engine.connect() as connection:
        audits = connection.execute(text("SELECT COUNT(*) FROM learner_audit")).scalar()
    messages = [record.getMessage() for record in caplog.records]
    print(f"\n{path}: {statuses}, audit rows {audits}")
    if path == "/users/":
        assert statuses == [201, 409]
        assert any("running it again" in message for message in messages)
    else:
        assert statuses == [201, 500] and audits == 2
        assert any("committed already" in message for message in messages)


SOCKET = """

# --- Added by a learner: a WebSocket that reads a table that is not there ---------------------
from fastapi import WebSocket


@app.websocket("/learner/broken")
async def broken_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.receive_text()
    async with new_session() as session:
        await session.execute(text("SELECT * FROM learner_no_such_table"))
"""


def test_a_websockets_database_error_closes_it_with_1011_and_is_logged(twin_app, caplog):
    app = twin_app(
        SOCKET.replace("import WebSocket", "import WebSocket\nfrom sqlalchemy import text")
    )
    with TestClient(app.app) as client, client.websocket_connect("/learner/broken") as socket:
        socket.send_text("go")
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
        checked_out = app.db_engine.pool.checkedout()
    assert closed.value.code == 1011 and checked_out == 0
    assert "closed with 1011" in caplog.text


def test_testclient_without_with_answers_every_request(twin_app, rows):
    app = twin_app()
    client = TestClient(app.app)  # FastAPI's testing tutorial: each request on a loop of its own
    bodies = [{"username": f"user{n}", "email": "u@example.com"} for n in range(3)]
    created = [client.post("/users/", json=body) for body in bodies]
    listed = client.get("/users/")
    assert [answer.status_code for answer in created] == [201, 201, 201], created[-1].text
    assert listed.json() == [answer.json() for answer in created]
    assert [row[1] for row in rows()] == ["user0", "user1", "user2"]


def test_the_learners_own_httpexception_handler_shapes_the_apps_409_too(twin_app, rows):
    answers_in_the_learners_format(twin_app(PLAIN_TEXT_ERRORS), rows)


THEIR_OWN_APP = """

# --- Added by a learner: an app of their own ("Bigger Applications"), given part 3's middleware
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

their_app = FastAPI(lifespan=lifespan)  # as docs/reliability.md says
their_app.add_middleware(one_session_per_request)
router = APIRouter()


@router.post("/signup", status_code=201, response_model=UserOutput)
async def signup(user: UserInput, session: SessionDep):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    await session.commit()
    return new_user


their_app.include_router(router)


@their_app.exception_handler(StarletteHTTPException)
async def plain_text_errors(request, error):
    return PlainTextResponse(f"Error: {error.detail}", status_code=error.status_code)
"""


NOTES_WITHOUT_A_REVISION = """

# --- Added by a learner: a second table and its route, before its revision, then mounted
from sqlalchemy import select


class NoteTable(BaseModelClass):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)


@app.get("/learner/notes")
async def read_notes(session: SessionDep) -> list[int]:
    return list(await session.scalars(select(NoteTable.id)))


bigger_app = FastAPI()
bigger_app.mount("/api", app)
"""


def test_mounted_a_table_without_its_revision_answers_503_saying_what_to_do(twin_app):
    with TestClient(twin_app().app):  # today's tables, at the newest revision
        pass
    says_what_to_do_when_mounted(twin_app(NOTES_WITHOUT_A_REVISION))


NOTES = """

# --- Added by a learner: a second table whose rows refer to users
from sqlalchemy import ForeignKey


class NoteTable(BaseModelClass):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


@app.post("/learner/users/{user_id}/notes", status_code=201)
async def add_note(user_id: int, session: SessionDep) -> dict:
    session.add(NoteTable(user_id=user_id))
    await session.commit()  # a user deleted meanwhile: the foreign key says no
    return {}
"""


def test_a_row_that_refers_to_a_missing_user_is_409_saying_so(twin_app):
    refers_to_a_missing_user(twin_app(NOTES))


ASYNC_UNCHECKED_NOTES = UNCHECKED_NOTES.replace("def add_note", "async def add_note").replace(
    "session.commit()", "await session.commit()"
)


def test_a_number_too_large_for_its_column_is_422(twin_app, engine):
    refuses_a_number_too_large(twin_app(ASYNC_UNCHECKED_NOTES), engine)


def test_a_value_its_tables_check_refuses_is_422(twin_app):
    refuses_a_value_against_its_check(twin_app(ASYNC_UNCHECKED_NOTES))


def test_a_text_too_long_for_its_column_is_422_naming_it_on_mysql(twin_app, engine):
    refuses_a_text_too_long(twin_app(ASYNC_UNCHECKED_NOTES), engine)


GUARDS = """

# --- Added by a learner: what the database says of the connection's guards
from sqlalchemy import text


@app.get("/learner/guards")
async def guards(session: SessionDep) -> dict:
    sqlite = session.get_bind().dialect.name == "sqlite"
    query = "PRAGMA foreign_keys" if sqlite else "SELECT @@innodb_lock_wait_timeout"
    return {"value": await session.scalar(text(query))}
"""


def test_an_engine_a_test_puts_in_place_of_db_engine_gets_its_guards(twin_app, engine):
    app = twin_app(GUARDS)
    has_the_guards(app, lambda: create_async_engine(app.async_url(url_of(engine))))


def test_an_in_memory_engine_as_fastapis_testing_docs_make_it_answers(twin_app):
    app = twin_app()
    answers_on_an_in_memory_engine(
        app, lambda: create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    )


def test_an_app_of_the_learners_own_answers_the_409_with_its_own_handler(twin_app, rows):
    answers_409_in_their_apps_format(twin_app(THEIR_OWN_APP), rows)


def test_the_learners_handler_that_reads_the_body_answers_the_apps_409(twin_app, caplog):
    answers_409_to_a_handler_that_reads_the_body(twin_app(LOGGED_ERRORS), caplog)


def test_the_learners_handler_that_reads_a_body_too_large_to_keep_answers_409(
    twin_app, rows, caplog
):
    code = BULK_CREATE.replace("def create_many", "async def create_many")
    code = code.replace("    session.commit()", "    await session.commit()")
    answers_409_to_a_handler_of_a_large_body(twin_app(LOGGED_ERRORS + code), rows, caplog)


def test_get_session_overridden_as_fastapis_testing_docs_do_answers_201_then_409(
    twin_app, engine, rows
):
    app = twin_app()
    test_engine = create_async_engine(app.async_url(url_of(engine)), poolclass=NullPool)

    async def get_session_override():  # FastAPI's "Testing Dependencies with Overrides", async
        async with AsyncSession(test_engine, expire_on_commit=False) as session:  # docs/async.md
            yield session

    app.app.dependency_overrides[app.get_session] = get_session_override
    with TestClient(app.app) as client:
        created = client.post("/users/", json=ADA)
        taken = client.post("/users/", json=ADA)  # the override session's IntegrityError
    assert created.status_code == 201, created.text
    assert (taken.status_code, taken.json()) == (409, {"detail": "Username already taken"})
    assert [row[1] for row in rows()] == ["ada"]


def test_a_middleware_added_right_after_the_app_wraps_the_apps_409_too(twin_app, rows):
    answers_through_the_learners_middleware(twin_app(CORS_FOR_A_FRONTEND, after="app ="), rows)


def test_a_learners_http_middleware_sees_a_deadlock_rerun_as_one_request(mysql_engine, tmp_path):
    twin = twin_folder(tmp_path / "twin", PROCESS_TIME_HEADER, after="app =")
    runs_a_deadlock_again_inside_the_learners_middleware(twin, mysql_engine)


def test_routes_included_in_a_bigger_app_say_to_mount_the_app_instead(twin_app):
    app = twin_app()
    parent = FastAPI()
    parent.include_router(app.app.router)  # the twin's routes, but not its middleware
    with TestClient(parent) as client, pytest.raises(RuntimeError, match=r"\.mount\("):
        client.get("/users/")


def test_mounted_without_its_lifespan_it_prepares_its_tables_at_first_use(twin_app, rows, caplog):
    caplog.set_level(logging.INFO, "uvicorn.error")
    app = twin_app()
    outer = FastAPI()
    outer.mount("/api", app.app)
    with TestClient(outer) as client:
        created = client.post("/api/users/", json=ADA)
        ready = client.get("/api/readyz")
        client.portal.call(app.db_engine.dispose)  # no lifespan of its own: on its event loop
    assert created.status_code == 201 and ready.json() == {"status": "ready"}
    assert rows() == [(created.json()["id"], "ada", "ada@example.com")]
    url = app.db_engine.url.render_as_string(hide_password=True)  # which database, as at startup
    assert [r.getMessage() for r in caplog.records].count(f"Database: {url}") == 1


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_mounted_on_a_stalled_database_each_first_request_answers_503_within_the_bound(
    twin_app, engine, make_proxy
):
    proxy = make_proxy()
    app = twin_app(database_url=url_of(engine, proxy), DB_TIMEOUT=str(BOUND))
    outer = FastAPI()
    outer.mount("/api", app.app)
    proxy.stalled = True  # before the first request: the tables are prepared then

    def first(number: int) -> tuple[float, int]:
        started = time.monotonic()
        answer = client.get(f"/api/users/{number + 1}")
        return time.monotonic() - started, answer.status_code

    with TestClient(outer) as client:
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(first, range(4)))
        proxy.stalled = False
        client.portal.call(app.db_engine.dispose)
    print(f"\nmounted, stalled: {[f'{status} in {seconds:.2f} s' for seconds, status in answers]}")
    assert [status for _, status in answers] == [503] * 4
    assert max(seconds for seconds, _ in answers) <= BOUND + MARGIN


def test_readyz_answers_503_naming_a_missing_table(twin_app, engine):
    app = twin_app()
    with TestClient(app.app) as client:
        assert client.get("/readyz").status_code == 200
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE users"))
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "Table 'users' is missing" in response.json()["detail"]


COMMIT_AFTER_YIELD = """

# --- Added by a learner: a dependency that commits the route's changes after it -------------
from fastapi import BackgroundTasks
from sqlalchemy import insert, select


async def get_transaction(session: SessionDep):
    yield session
    await session.commit()  # FastAPI runs this after the route, once the answer is sent


@app.post("/learner/signup-flushed", status_code=201, response_model=UserOutput)
async def signup_flushed(
    user: UserInput, session: AsyncSession = Depends(get_transaction)
):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    await session.flush()  # the INSERT is sent now, for the id
    return new_user


@app.post("/learner/signup-added", status_code=201)
async def signup_added(user: UserInput, session: AsyncSession = Depends(get_transaction)) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    return {"queued": True}


@app.get("/learner/count-in-transaction")
async def count_in_transaction(session: AsyncSession = Depends(get_transaction)) -> dict:
    return {"users": len((await session.scalars(select(UserTable))).all())}  # nothing to commit


@app.post("/learner/signup-executed", status_code=201)
async def signup_executed(
    user: UserInput, session: AsyncSession = Depends(get_transaction)
) -> dict:
    await session.execute(insert(UserTable).values(username=user.username, email=user.email))
    return {"sent": True}  # a statement, not an object: the session holds no new row


async def get_audited(session: SessionDep):  # a write of its own after the route
    yield session
    session.add(UserTable(username="audit", email="audit@example.com"))
    await session.commit()


@app.post("/learner/signup-audited", status_code=201)
async def signup_audited(
    user: UserInput, session: AsyncSession = Depends(get_audited, scope="function")
) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    await session.commit()
    return {"saved": True}


class Audited:  # FastAPI's docs: an object as the dependency, its __call__ with `yield`
    async def __call__(self, session: SessionDep):
        async for same_session in get_audited(session):
            yield same_session


@app.post("/learner/signup-audited-by-an-object", status_code=201)
async def signup_audited_by_an_object(
    user: UserInput, session: AsyncSession = Depends(Audited())
) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    await session.commit()
    return {"saved": True}


seen_by_the_task = []


async def look_for(username: str) -> None:  # a background task, with a session of its own
    async with new_session() as session:
        query = select(UserTable.id).filter_by(username=username)
        seen_by_the_task.append(await session.scalar(query))


@app.post("/learner/signup-then-task", status_code=201)
async def signup_then_task(
    user: UserInput, tasks: BackgroundTasks, session: AsyncSession = Depends(get_transaction)
) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    await session.flush()  # the INSERT is sent: the request's session holds a connection
    tasks.add_task(look_for, user.username)
    return {"queued": True}
"""


@pytest.mark.parametrize(
    "path", ["/learner/signup-flushed", "/learner/signup-added", "/learner/signup-executed"]
)
def test_a_dependency_that_commits_after_the_route_saves_the_routes_changes(twin_app, rows, path):
    app = twin_app(COMMIT_AFTER_YIELD)
    with TestClient(app.app) as client:
        created = client.post(path, json=ADA)
        checked_out = app.db_engine.pool.checkedout()
    assert created.status_code == 201, created.text
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]
    assert checked_out == 0


def test_a_dependency_that_commits_after_the_route_lets_a_read_answer(twin_app, rows):
    reads_twice_behind_a_late_commit(twin_app(COMMIT_AFTER_YIELD))


def test_a_dependency_that_writes_after_yield_once_the_answer_is_sent_keeps_its_row(twin_app, rows):
    app = twin_app(COMMIT_AFTER_YIELD)
    with TestClient(app.app) as client:
        created = client.post("/learner/signup-audited-by-an-object", json=ADA)
        checked_out = app.db_engine.pool.checkedout()
    assert created.status_code == 201, created.text
    assert [row[1] for row in rows()] == ["ada", "audit"]
    assert checked_out == 0


SECOND_SESSION_IN_THE_ROUTE = """

# --- Added by a learner: a route that opens a session of its own beside the request's
from sqlalchemy import func, select


@app.get("/learner/count-beside")
async def count_beside(session: SessionDep) -> dict:
    await session.scalar(select(UserTable.id).limit(1))  # the request's holds a connection
    async with new_session() as other:
        return {"users": await other.scalar(select(func.count()).select_from(UserTable))}
"""


def test_a_route_that_opens_a_second_session_runs_it_in_its_own_turn(twin_app):
    counts_in_a_second_session(twin_app(SECOND_SESSION_IN_THE_ROUTE, DB_POOL_SIZE="1"))


SESSIONS_GATHERED = """

# --- Added by a learner: two counts at once, each in its own session, as docs/async.md says
import asyncio

from sqlalchemy import func, select


async def count_users() -> int:
    async with new_session() as session:
        return await session.scalar(select(func.count()).select_from(UserTable))


@app.get("/learner/two-counts")
async def two_counts() -> dict:
    first, second = await asyncio.gather(count_users(), count_users())
    return {"users": first, "again": second}
"""


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_sessions_gathered_stay_bounded_when_one_connection_was_silently_dropped(
    twin_app, engine, make_proxy
):
    proxy = make_proxy()
    app = twin_app(SESSIONS_GATHERED, database_url=url_of(engine, proxy), DB_TIMEOUT=str(BOUND))

    async def scenario(http) -> tuple:
        await app.create_tables()  # no lifespan here
        warmed = await http.get("/users/")  # the pool keeps its one connection
        proxy.stall_open()  # dropped on the way, silently: new connections still work
        started = time.monotonic()
        with anyio.fail_after(3 * BOUND):  # a client's patience: no answer at all is the bug
            answer = await http.get("/learner/two-counts")
        return warmed, answer, time.monotonic() - started

    warmed, answer, seconds = on_loop(app, scenario)
    print(f"\none pooled connection dropped: {answer.status_code} after {seconds:.2f} s")
    assert warmed.status_code == 200
    assert (answer.status_code, answer.json()) == (503, {"detail": "Database unavailable"})
    assert seconds <= BOUND / 2 + MARGIN  # one wait: a ping, then a connect


NESTED_NEW_SESSIONS = """

# --- Added by a learner: a helper with a session of its own, called where one is open already
from fastapi import BackgroundTasks
from sqlalchemy import func, select


async def count_users() -> int:
    async with new_session() as session:
        return await session.scalar(select(func.count()).select_from(UserTable))


@app.get("/learner/count-beside")
async def count_in_a_helper() -> dict:  # no SessionDep: its own session, then the helper's
    async with new_session() as session:
        await session.scalar(select(UserTable.id).limit(1))
        return {"users": await count_users()}


async def note_the_count(user_id: int) -> None:
    async with new_session() as session:
        user = await session.get(UserTable, user_id)
        user.email = f"count{await count_users()}@example.com"
        await session.commit()


@app.post("/learner/users/{user_id}/note-the-count", status_code=202)
async def ask_for_the_count(user_id: int, background_tasks: BackgroundTasks) -> dict:
    background_tasks.add_task(note_the_count, user_id)
    return {}
"""


def test_a_new_session_inside_another_runs_in_its_turn(twin_app):
    counts_in_a_second_session(twin_app(NESTED_NEW_SESSIONS, DB_POOL_SIZE="1"))


def test_a_background_task_nesting_new_sessions_saves_its_write(twin_app, rows):
    notes_the_count_in_a_task(twin_app(NESTED_NEW_SESSIONS, DB_POOL_SIZE="1"), rows)


def test_a_late_commit_that_fails_once_the_answer_is_sent_is_logged_in_one_line(
    twin_app, rows, caplog
):
    logs_a_late_commit_that_fails_in_one_line(twin_app(COMMIT_AFTER_YIELD), rows, caplog)


def test_a_taken_username_after_the_request_committed_answers_500_not_409(twin_app, rows, caplog):
    answers_500_to_a_conflict_after_a_commit(twin_app(COMMIT_AFTER_YIELD), rows, caplog)


def test_an_on_event_handler_that_fastapi_never_runs_is_named_in_a_warning(twin_app, caplog):
    with pytest.warns(DeprecationWarning, match="on_event is deprecated"):
        app = twin_app(ON_EVENT)
    names_an_on_event_handler_never_run(app, caplog)


def test_a_commit_not_awaited_is_named_in_a_warning(twin_app, rows, caplog):
    code = FORGOTTEN_COMMIT.replace("def create_member", "async def create_member")
    not_awaited = "    session.commit()  # not awaited: it never runs\n"
    code = code.replace("    return {", not_awaited + "    return {")
    with pytest.warns(RuntimeWarning, match="was never awaited"):
        names_a_forgotten_commit(twin_app(code), rows, caplog)


def test_a_flush_then_a_commit_not_awaited_is_named_in_a_warning(twin_app, rows, caplog):
    code = FORGOTTEN_COMMIT.replace("def create_member", "async def create_member")
    flushed = "    await session.flush()  # the id, at once\n    session.commit()  # not awaited\n"
    code = code.replace("    return {", flushed + "    return {")
    with pytest.warns(RuntimeWarning, match="was never awaited"):
        names_a_forgotten_commit(twin_app(code), rows, caplog)


def test_a_forgotten_commit_that_fails_the_answers_check_is_named_too(twin_app, rows, caplog):
    code = RETURNS_THE_ROW.replace("def create_row", "async def create_row")
    names_a_forgotten_commit_behind_a_500(twin_app(code), rows, caplog)


def test_new_session_in_a_script_of_yours_outside_the_app_saves_its_write(twin_app, rows):
    app = twin_app()  # a seed script, say: asyncio.run() of its own

    async def seed() -> int:
        await app.create_tables()
        async with app.new_session() as session:
            session.add(app.UserTable(username="seed", email="seed@example.com"))
            await session.commit()
        return app.db_engine.pool.checkedout()

    assert asyncio.run(seed()) == 0
    assert [row[1:] for row in rows()] == [("seed", "seed@example.com")]


def test_a_background_task_behind_a_late_commit_gets_a_session_in_the_requests_turn(twin_app, rows):
    app = twin_app(COMMIT_AFTER_YIELD, DB_POOL_SIZE="1")  # the request holds the one turn
    with TestClient(app.app) as client:  # the task runs before the dependency's commit
        created = client.post("/learner/signup-then-task", json=ADA)
        checked_out = app.db_engine.pool.checkedout()
    assert created.status_code == 201, created.text
    assert app.seen_by_the_task == [None]  # not committed yet: not seen
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]
    assert checked_out == 0


YIELDED_ANSWERS = """

# --- Added by a learner: routes that yield their answer (FastAPI's docs: "Stream JSON Lines",
# "Server-Sent Events"): the route's own code runs while the answer is sent
from collections.abc import AsyncIterable

from fastapi.sse import EventSourceResponse
from sqlalchemy import select


async def users_in_pages(session: AsyncSession) -> AsyncIterable[UserTable]:
    after_id = 0
    query = select(UserTable).order_by(UserTable.id).limit(100)
    while page := (await session.scalars(query.where(UserTable.id > after_id))).all():
        for user in page:
            yield user  # FastAPI answers each row as a UserOutput
        after_id = page[-1].id


@app.get("/learner/users.jsonl")
async def users_as_json_lines(session: SessionDep) -> AsyncIterable[UserOutput]:
    async for user in users_in_pages(session):
        yield user


@app.get("/learner/users-events", response_class=EventSourceResponse)
async def users_as_events(session: SessionDep) -> AsyncIterable[UserOutput]:
    async for user in users_in_pages(session):
        yield user
"""


@pytest.mark.parametrize("path", ["/learner/users.jsonl", "/learner/users-events"])
def test_a_route_that_yields_its_answer_keeps_its_session_until_the_last_row(
    twin_app, engine, path
):
    streams_every_row(twin_app(YIELDED_ANSWERS, DB_POOL_SIZE="1"), engine, path)


SLOW_BESIDE_THE_DATABASE = """

# --- Added by a learner: routes that also wait for something else, such as a mail server -----
import asyncio

from fastapi import BackgroundTasks
from sqlalchemy import text

SLOW = 4.5  # seconds: longer than DB_TIMEOUT, and no wait for the database


@app.post("/learner/slow-signup", status_code=201)
async def slow_signup(user: UserInput, session: SessionDep) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    await asyncio.sleep(SLOW)  # another service, between the add and the commit
    await session.commit()
    return {"saved": True}


@app.post("/learner/slow-after-an-error", status_code=201)
async def slow_after_an_error(user: UserInput, session: SessionDep) -> dict:
    try:
        await session.execute(text("SELECT * FROM learner_no_such_table"))
    except exc.DBAPIError:
        pass  # the learner's choice: go on without it
    await asyncio.sleep(SLOW)
    session.add(UserTable(username=user.username, email=user.email))
    await session.commit()
    return {"saved": True}


@app.post("/learner/slow-after-get-bind", status_code=201)
async def slow_after_get_bind(user: UserInput, session: SessionDep) -> dict:
    database = session.get_bind().dialect.name  # which database: SQLAlchemy's way to ask
    await asyncio.sleep(SLOW)
    session.add(UserTable(username=f"{user.username}", email=user.email))
    await session.commit()
    return {"saved": database}


@app.post("/learner/slow-in-begin", status_code=201)
async def slow_in_begin(user: UserInput, session: SessionDep) -> dict:
    async with session.begin():  # SQLAlchemy's own asyncio examples write it so
        await asyncio.sleep(SLOW)
        session.add(UserTable(username=user.username, email=user.email))
    return {"saved": True}


async def get_transaction(session: SessionDep):
    yield session
    await session.commit()  # FastAPI runs this after the route, once the answer is sent


async def send_welcome() -> None:
    await asyncio.sleep(SLOW)


@app.post("/learner/signup-with-welcome", status_code=202)
async def signup_with_welcome(
    user: UserInput, tasks: BackgroundTasks, session: AsyncSession = Depends(get_transaction)
) -> dict:
    session.add(UserTable(username=user.username, email=user.email))
    tasks.add_task(send_welcome)
    return {"queued": True}
"""


@pytest.mark.parametrize(
    "path, status",
    [
        ("/learner/slow-signup", 201),
        ("/learner/slow-after-an-error", 201),
        ("/learner/slow-after-get-bind", 201),
        ("/learner/slow-in-begin", 201),
        ("/learner/signup-with-welcome", 202),
    ],
)
def test_a_wait_beside_the_database_is_not_bounded_as_one_for_it(twin_app, rows, path, status):
    app = twin_app(SLOW_BESIDE_THE_DATABASE, DB_TIMEOUT=str(BOUND))
    with TestClient(app.app) as client:
        answer = client.post(path, json=ADA)
    assert (answer.status_code, answer.text) == (status, answer.text)
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]


STREAM_WITH_THE_ROUTES_SESSION = """

# --- Added by a learner: a stream that uses the route's session after the answer began --------
from fastapi.responses import StreamingResponse


@app.get("/learner/users.csv")
async def export_users(session: SessionDep) -> StreamingResponse:
    async def lines():
        yield "id,username\\n"
        for user in await session.scalars(select(UserTable).order_by(UserTable.id)):
            yield f"{user.id},{user.username}\\n"

    return StreamingResponse(lines(), media_type="text/csv")
"""


def test_the_session_is_closed_before_the_answer_is_sent(twin_app):
    app = twin_app(STREAM_WITH_THE_ROUTES_SESSION)
    with TestClient(app.app) as client:
        client.post("/users/", json=ADA)
        with pytest.raises(exc.InvalidRequestError, match="closed"):
            client.get("/learner/users.csv")
        checked_out = app.db_engine.pool.checkedout()
    assert checked_out == 0


AFTER_THE_ANSWER = """

# --- Added by a learner: a stream and a background task, each with a session of its own -------
from fastapi import BackgroundTasks
from fastapi.responses import StreamingResponse


@app.get("/learner/users.csv")
async def export_users() -> StreamingResponse:
    async def lines():
        yield "id,username\\n"
        after_id = 0
        while True:  # a page per session: no connection held while the client reads
            async with new_session() as session:
                query = select(UserTable).where(UserTable.id > after_id).order_by(UserTable.id)
                page = (await session.scalars(query.limit(100))).all()
            if not page:
                return
            for user in page:
                yield f"{user.id},{user.username}\\n"
            after_id = page[-1].id

    return StreamingResponse(lines(), media_type="text/csv")


async def remember_visit(user_id: int) -> None:
    async with new_session() as session:
        (await session.get(UserTable, user_id)).email = "visited@example.com"
        await session.commit()


@app.post("/learner/users/{user_id}/visits", status_code=202)
async def visit(user_id: int, background_tasks: BackgroundTasks) -> dict:
    background_tasks.add_task(remember_visit, user_id)
    return {"queued": True}
"""


def test_a_stream_and_a_background_task_with_sessions_of_their_own(twin_app, engine, rows):
    app = twin_app(AFTER_THE_ANSWER, DB_TIMEOUT=str(BOUND))
    with TestClient(app.app) as client:
        user_id = client.post("/users/", json=ADA).json()["id"]
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO users (username, email) VALUES (:name, 'u@example.com')"),
                [{"name": f"user{number:03}"} for number in range(249)],
            )
        with ThreadPoolExecutor(max_workers=16) as pool:
            exports = list(pool.map(lambda _: client.get("/learner/users.csv"), range(16)))
        visit = client.post(f"/learner/users/{user_id}/visits")
        checked_out = app.db_engine.pool.checkedout()
    assert {export.status_code for export in exports} == {200}
    assert {len(export.text.splitlines()) for export in exports} == {251}
    assert visit.status_code == 202 and checked_out == 0
    assert rows()[0] == (user_id, "ada", "visited@example.com")


GATHER = """

# --- Added by a learner: two queries at once on one session (docs/async.md, mistake 3) -------
import asyncio

from sqlalchemy import func, select


@app.get("/learner/two-at-once")
async def two_at_once(session: SessionDep) -> dict:
    count, newest = await asyncio.gather(
        session.scalar(select(func.count()).select_from(UserTable)),
        session.scalar(select(func.max(UserTable.id))),
    )
    return {"count": count, "newest": newest}
"""


def test_a_turn_taken_as_its_wait_ends_is_always_given_back(twin_app):
    assert turns_free_after_a_turn_taken_at_the_last_moment(twin_app(DB_POOL_SIZE="1")) == 1


def test_two_queries_at_once_on_one_session_fail_and_leave_no_connection_behind(twin_app):
    app = twin_app(GATHER, DB_POOL_SIZE="1")
    with TestClient(app.app, raise_server_exceptions=False) as client:
        failed = [client.get("/learner/two-at-once").status_code for _ in range(3)]
        after = client.get("/users/")  # the only connection: free again
        checked_out = app.db_engine.pool.checkedout()
    assert failed == [500] * 3  # "concurrent operations are not permitted": the learner's bug
    assert (after.status_code, checked_out) == (200, 0)


A_WRITE_AND_THE_COMMIT_AT_ONCE = """

# --- Added by a learner: a write and the commit at once, after a first query (mistake 3) -----
import asyncio

from sqlalchemy import func, select, update


@app.post("/learner/write-and-commit-at-once")
async def write_and_commit_at_once(session: SessionDep) -> dict:
    await session.scalar(select(func.count()).select_from(UserTable))  # a connection, in use
    session.add(UserTable(username="grace", email="grace@example.com"))
    change = session.execute(update(UserTable).values(email="changed@example.com"))
    await asyncio.gather(change, session.commit())
    return {"done": True}
"""


@pytest.mark.parametrize("pool_size", ["1", "4"])
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])  # on SQLite: aiosqlite, twice
def test_a_write_and_the_commit_at_once_never_spoil_a_later_request(
    twin_app, engine, rows, driver, pool_size
):
    url = make_url(url_of(engine))
    if url.get_backend_name() == "mysql":
        url = url.set(drivername=f"mysql+{driver}")
    app = twin_app(
        A_WRITE_AND_THE_COMMIT_AT_ONCE,
        database_url=url.render_as_string(False),
        DB_POOL_SIZE=pool_size,  # the pool lends its connections in turn: each is tried next
        DB_TIMEOUT="4",
    )
    names = ["ada", "bob", "carol", "dave", "erin"]

    async def scenario(http) -> tuple:
        with anyio.fail_after(30):  # before, on asyncmy: no answer, ever, and no turn free
            mistake = await http.post("/learner/write-and-commit-at-once")
            created = [await http.post("/users/", json={**ADA, "username": n}) for n in names]
            gone = await http.delete(f"/users/{created[0].json()['id']}")
            read = await http.get(f"/users/{created[-1].json()['id']}")
        return mistake, created, gone, read

    mistake, created, gone, read = on_loop(app, scenario, raise_app_exceptions=False)
    print(f"\n{driver}, {pool_size} connections: the mistake answered {mistake.status_code}")
    assert mistake.status_code in (500, 503)  # the learner's bug, in that request only
    assert [answer.status_code for answer in created] == [201] * 5  # before: 201, ids of 0
    assert (gone.status_code, read.json()) == (204, created[-1].json())  # before: 404, 500
    stored = [row for row in rows() if row[1] in names]
    assert stored == [(a.json()["id"], a.json()["username"], ADA["email"]) for a in created[1:]]


SUB_APP = """

subapi = FastAPI()  # a learner's own app, mounted in the twin's (FastAPI's "Sub Applications")


@subapi.post("/users/", status_code=201, response_model=UserOutput)
async def sub_create_user(user: UserInput, session: SessionDep):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    await session.commit()
    return new_user
"""


def test_a_mounted_apps_route_that_takes_the_session_says_to_add_the_middleware(twin_app):
    app = twin_app(SUB_APP + MOUNTED)
    fix = r"sub_app\.add_middleware\(.*one_session_per_request\)"
    with TestClient(app.app) as client, pytest.raises(RuntimeError, match=fix):
        client.post("/subapi/users/", json=ADA)


def test_a_mounted_app_given_the_middleware_answers_a_taken_username_409(twin_app, rows):
    app = twin_app(SUB_APP + GIVEN_OUR_MIDDLEWARE + MOUNTED)
    answers_201_then_409(app, "/subapi/users/", rows)


# --- A twin learner's new column: the startup line's commands, run as written, bring it -------
def test_a_column_added_to_the_twin_comes_through_the_commands_its_startup_names(engine, tmp_path):
    copy_app(tmp_path)  # main.py, the revisions, alembic.ini: the project as cloned
    source = (ROOT / "main_async.py").read_text()
    (tmp_path / "main_async.py").write_text(placed(source, NEW_COLUMN, "    email: Mapped[str]"))
    env = {**os.environ, "DATABASE_URL": url_of(engine)}
    start = "import main_async, fastapi.testclient as t; t.TestClient(main_async.app).__enter__()"

    def started() -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", start]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)

    unmigrated = (tmp_path / "main_async.py").read_text().replace(NEW_COLUMN, "")
    (tmp_path / "before.py").write_text(unmigrated)  # the twin as it was: its tables, stamped
    run = subprocess.run(
        [sys.executable, "-c", start.replace("main_async", "before")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-1500:]
    stopped = started()
    assert stopped.returncode != 0 and "has no column 'full_name'" in stopped.stderr
    [line] = [line for line in stopped.stderr.splitlines() if "has no column 'full_name'" in line]
    commands = re.findall(r"`(alembic [^`]+)`", line)
    assert any("-x app=main_async" in command for command in commands), line
    for command in commands:  # as the line says, in its order; "..." is the learner's message
        words = [word.replace("...", "add full_name") for word in shlex.split(command)]
        run = subprocess.run(
            [sys.executable, "-m", *words], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, f"{command}: {run.stderr[-1500:]}"
    assert started().returncode == 0, started().stderr[-1500:]
