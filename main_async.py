# === Part 1 of 3: the tutorial, sections 3 to 8 in its order (2: more CRUD, 3: a real service)
# Written for today's SQLAlchemy 2 and Pydantic 2 (requirements.txt), not the tutorial's 1.4.
# Run it: `uvicorn main_async:app`, then open http://127.0.0.1:8000/docs (README, section 1).
# main.py's async twin: the same app on SQLAlchemy's asyncio (`diff main.py main_async.py`).
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, EmailStr, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import URL, String, make_url
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, create_async_engine
from sqlalchemy.orm import Mapped, declarative_base, mapped_column


# --- Section 3: the database URL, the engine and the model ----------------------------------
class Settings(BaseSettings):  # each value from the environment, else from the file .env
    # extra="ignore": .env may hold other lines (TEST_DATABASE_URL for the tests): not an error
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    database_url: str = "sqlite:///./app.db"  # SQLite: a file, no server to install


settings = Settings()  # part 3 reads them again, with the pool's limits added
DB_URL = settings.database_url  # MySQL: DATABASE_URL=mysql+pymysql://user:password@host/db_name


def async_url(database_url: str | URL) -> URL:  # main.py's URL, with an asyncio driver
    url = make_url(database_url)  # mysql+aiomysql:// or +asyncmy:// stay as they are
    if url.get_dialect().is_async:
        return url
    drivers = {"mysql": "aiomysql", "mariadb": "aiomysql", "sqlite": "aiosqlite"}
    backend = url.get_backend_name()
    return url.set(drivername=f"{backend}+{drivers[backend]}") if backend in drivers else url


# The tutorial's engine. Part 3 replaces it, before any connection opens, with one on the same
# URL whose waits are bounded: the code below, run at startup and at each request, uses that one.
db_engine = create_async_engine(async_url(DB_URL))

# AsyncAttrs: `await user.awaitable_attrs.posts` loads a relationship, which `user.posts` cannot.
BaseModelClass = declarative_base(cls=AsyncAttrs)
# The names create_all() gives the keys and indexes it makes (SQLAlchemy fills in each %(...)s),
# the same on MySQL and SQLite, so that a migration can name the key it changes (README: Changing
# the schema). Set before the first table: a table takes its names as its class is defined.
BaseModelClass.metadata.naming_convention = {
    "pk": "pk_%(table_name)s",  # pk_users: the primary key
    "uq": "uq_%(table_name)s_%(column_0_name)s",  # uq_users_username: a unique column
    "ix": "ix_%(column_0_label)s",  # ix_posts_user_id: an index, for a second table
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",  # fk_posts_user_id_users
}


class UserTable(BaseModelClass):
    __tablename__ = "users"
    # MySQL only: store any Unicode (utf8mb4, emoji too), and compare exactly (_bin), so that
    # "Ada" and "ada" are two usernames, as on SQLite. MySQL's default thinks them the same.
    __table_args__ = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
    # SQLite only: never give a deleted user's id to a new one, as MySQL never does
    __table_args__["sqlite_autoincrement"] = True

    # SQLAlchemy 2's Mapped[int] for the tutorial's 1.4 Column(Integer). No index=True: the
    # database indexes a primary key and a UNIQUE column by itself.
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    email: Mapped[str] = mapped_column(String(120))


# --- Section 4.1: Pydantic models check what clients send, and shape what they get ----------
class UserInput(BaseModel):  # each field required; a wrong one is answered 422, saying which
    # `= Field(...)` is no default value: it adds rules, and what /docs shows. max_length=200
    # refuses a huge name at once; check_username() below checks the real limit, 50, on the name
    # as stored, which can be shorter than as sent (an "é" may arrive as "e" plus an accent).
    username: str = Field(max_length=200, description="1 to 50 characters", examples=["ada"])
    # EmailStr: a str that must be an e-mail address, of at most its column's 120 characters.
    email: EmailStr = Field(max_length=120, examples=["ada@example.com"])

    # Pydantic calls it with each username sent, and keeps what it returns. Its rules (part 3,
    # docs/usernames.md) include 1 to 50 characters, no invisible or control character, no space
    # at either end; é typed as one character or as two is one name. A rule broken answers 422.
    @field_validator("username")
    @classmethod  # Pydantic's rule: it checks values before any UserInput exists, so no self
    def check_username(cls, name: str) -> str:
        return username_rules(name)  # part 3's: by the first request, the whole file has run


class UserOutput(BaseModel):  # the tutorial's answer, as a model: /docs shows it
    id: int
    username: str
    email: str


# --- Section 4.2: the session dependency ----------------------------------------------------
# The tutorial's get_session opens a Session at each call, and closes it after the request. Ours
# gives a request one session, however often it is asked for (by a route, and by a function the
# route depends on): part 3's session_of_this_request() opens it, AsyncSession(bind=db_engine), at
# the first ask, and part 3 closes it once the answer is built, even after an error: so no
# try/finally here (README, section 6). `async def` and `await`, here and in every route: while a
# query waits for the database, the event loop serves others. A plain def cannot await: part 3
# refuses one.
async def get_session():
    session = await session_of_this_request()  # part 3: the request's session
    yield session  # as the tutorial's: FastAPI gives the route what get_session yields


# --- Section 5: the application -------------------------------------------------------------
# FastAPI calls lifespan(app) once, as the app starts; the code before `yield` runs then, the
# code after it at shutdown. FastAPI wants it written this way, `async def` and the decorator.
@asynccontextmanager
async def lifespan(app: FastAPI):
    try:  # a startup that fails closes its connections too (an unclosed one warns, in async)
        await prepare_database(app)  # part 3: wait for the database, then create_tables()
        yield
    finally:
        await db_engine.dispose()  # close our connections, so the server logs no error


# FastAPI, whose page /docs lists the routes and tries them; Offline: the page's files come from
# the app, not the Internet. `responses` adds to that list what any route may answer: a 503.
app = FastAPIOffline(lifespan=lifespan, responses={503: {"description": "Database busy or down"}})


@app.get("/")
async def read_root():
    return {"message": "Hello, World!"}


# --- Section 5.1: create the tables ---------------------------------------------------------
async def create_tables():  # creates the tables that are missing, never changes one
    async with db_engine.begin() as connection:
        await connection.run_sync(BaseModelClass.metadata.create_all)


# --- Section 8.2: create a user, approach A (the session comes from the dependency) ---------
# response_model: FastAPI checks the dict returned against UserOutput; /docs shows it. 201:
# Created. `responses`: the other answers /docs lists for it, each with its standard text ({}):
# 400, a body that is not UTF-8 text, and 409, a username already taken; part 3 sends them.
@app.post("/users/", response_model=UserOutput, status_code=201, responses={400: {}, 409: {}})
async def create_user(
    user: UserInput,
    session: AsyncSession = Depends(get_session),
):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    await session.commit()  # a taken username: the unique index says no, and part 3 answers 409
    # No session.refresh(new_user), as the tutorial has: commit() filled in the id, and part 3's
    # sessions keep the rest after a commit (expire_on_commit=False): one query saved.
    return {
        "id": new_user.id,
        "username": new_user.username,
        "email": new_user.email,
    }


# === Part 2: more CRUD =======================================================================
from typing import Annotated, get_type_hints

from fastapi import HTTPException, Path, Query, Request, Response, status
from pydantic import AfterValidator, with_config
from sqlalchemy import delete, select
from sqlalchemy.orm.exc import StaleDataError
from typing_extensions import TypedDict  # Pydantic needs this one on Python 3.11

SessionDep = Annotated[AsyncSession, Depends(get_session)]  # shorter to write, the same session
# UserInput's fields as types, with its rules, for a username or an e-mail address sent elsewhere
Username = Annotated[
    str, UserInput.model_fields["username"], AfterValidator(UserInput.check_username)
]
Email = Annotated[EmailStr, UserInput.model_fields["email"]]


# extra="forbid": a misspelt field is a 422, not a change silently left undone. The example that
# /docs fills in changes one field: the ones left out stay as they are.
@with_config(extra="forbid", json_schema_extra={"examples": [{"email": "ada@example.org"}]})
class UserPatch(TypedDict, total=False):  # a field may be left out, but not be null
    username: Username
    email: Email


UserId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # the id column is a 32-bit INT
not_found = {404: {"description": "User not found"}}
link_header = {"description": 'The next page: `<...>; rel="next"`, none on the last', "schema": {}}
next_page_link = {200: {"headers": {"Link": link_header}}}  # what /docs says of the answer's header


async def get_user_or_404(session: AsyncSession, user_id: int) -> UserTable:
    # populate_existing: from the database, though the session may hold the row already
    user = await session.get(UserTable, user_id, populate_existing=True)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")
    return user


# response_model: FastAPI answers with the fields of each row returned that UserOutput names
@app.get("/users/", response_model=list[UserOutput], responses=next_page_link)
async def read_users(
    session: SessionDep,
    request: Request,
    response: Response,
    after_id: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    skip: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,  # no table has more rows
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
):
    """Users in id order: page with **`after_id`** (next page: the `Link` header), or `skip`."""
    # after_id: the primary key's index finds the start. skip: rows read, then thrown away.
    query = select(UserTable).where(UserTable.id > after_id).order_by(UserTable.id)
    users = list(await session.scalars(query.offset(skip).limit(limit + 1)))  # a next page?
    if len(users) > limit:
        users.pop()
        # A relative link (RFC 8288): never built from the Host header, which the client chose.
        next_page = request.url.remove_query_params("skip")
        next_page = next_page.include_query_params(after_id=users[-1].id)
        response.headers["Link"] = f'<{request.url.path}?{next_page.query}>; rel="next"'
    return users


@app.get("/users/{user_id}", response_model=UserOutput, responses=not_found)
async def read_user(user_id: UserId, session: SessionDep):
    return await get_user_or_404(session, user_id)


@app.patch("/users/{user_id}", response_model=UserOutput, responses={**not_found, 400: {}, 409: {}})
async def update_user(user_id: UserId, changes: UserPatch, session: SessionDep):
    """Change the fields you send; leave a field out to keep it."""
    user = await get_user_or_404(session, user_id)
    for field, value in changes.items():
        setattr(user, field, value)
    try:
        await session.commit()  # sends the UPDATE; a taken username: 409, as in create_user
    except StaleDataError:  # another request deleted the row since we read it
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found") from None
    # Read again: another request may have changed another field since, and the answer is the row
    return await get_user_or_404(session, user_id)


@app.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=not_found)
async def delete_user(user_id: UserId, session: SessionDep) -> None:
    # One DELETE that counts the rows it removed: no SELECT first, no race with another DELETE.
    deleted = (await session.execute(delete(UserTable).where(UserTable.id == user_id))).rowcount
    await session.commit()
    if deleted == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")


# === Part 3: what a real service adds =======================================================
import asyncio
import contextlib
import json
import logging
import math
import pathlib
import time
import unicodedata
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from inspect import (
    isasyncgenfunction,
    isclass,
    iscoroutinefunction,
    isgeneratorfunction,
    isroutine,
)

import anyio
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from anyio.lowlevel import RunVar
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.middleware import Middleware
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import Connection, Dialect, Engine, ExceptionContext, event, exc, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, StaticPool
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose


class ServiceSettings(Settings):  # part 1's, and the limits of a service (.env.example)
    # The "pool": connections kept open, each lent to one request at a time. ge=: at least this.
    db_pool_size: int = Field(default=4, ge=1)
    # Seconds a request may wait for the database. It waits twice (for a free connection, then
    # for its query's answer), so each wait gets half; past that, the answer is 503 (Service
    # Unavailable: try again). ge=4, le=3600: from 4 s (2 s a wait) to an hour.
    db_timeout: float = Field(default=10, ge=4, le=3600)


settings = ServiceSettings()  # a bad value stops the app here, with a message that names it
logger = logging.getLogger("uvicorn.error")  # uvicorn prints this logger's lines
# A user is a few hundred bytes: a larger body is refused unread (413). A route of yours that
# takes files sets its own: @app.post(..., max_body_size=10 * 2**20).
app.max_body_size = 64 * 1024
app.title = "Users API: the FastAPI + SQLAlchemy + MySQL reference app"  # /docs shows these
app.description = "Follows the tutorial *Databases and ORM in FastAPI*. Try **POST /users/** first."
WAIT_SECONDS = settings.db_timeout / 2  # one wait; a request may wait for a ping, then a connect
# Database errors by MySQL's number or SQLite's name. Unavailable: refused, gone, lost, too many
# connections, shutting down, Galera without quorum, and a login, a name or TLS that startup refuses
# at once. Busy: a deadlock, a lock, a long statement, a statement an operator stopped (KILL QUERY).
REFUSED_AT_ONCE = {1044, 1045, 1049, 2026, "SQLITE_CANTOPEN"}  # at startup: a login, a name, TLS
UNAVAILABLE_CODES = {2002, 2003, 2006, 2013, 2055, 1040, 1053, 1047, 1180} | REFUSED_AT_ONCE
BUSY_CODES = {1213, 1205, 1969, 3024, 1317, "SQLITE_BUSY"}
UNIQUE_CODES = {1062, "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
CONFLICT_CODES = UNIQUE_CODES | {1451, 1452, "SQLITE_CONSTRAINT_FOREIGNKEY"}  # and foreign keys
# A value its column refuses: out of range, too long, not one it allows, against a CHECK (422)
REFUSED_VALUE_CODES = {1264, 1406, 1265, 3819, 4025, "SQLITE_CONSTRAINT_CHECK"}
this_request: ContextVar["RequestWork"] = ContextVar("this_request")  # set by the middleware
in_a_new_session = ContextVar("in_a_new_session", default=False)  # set by new_session()
turns_of_this_loop: RunVar[anyio.Semaphore] = RunVar("turns")  # one loop per uvicorn worker
preparing_of_this_loop: RunVar[anyio.Lock] = RunVar("preparing")  # and one lock per loop
closer_of_this_loop: RunVar[AsyncIterator[None]] = RunVar("closer")  # see close_at_loop_end


# --- Usernames (docs/usernames.md): the rules check_username() applies, for a new name or a change
# Invisible too, though not Cf (Unicode's other "default ignorable" characters, which PRECIS, RFC
# 8264, refuses as well): a grapheme joiner, Hangul fillers (NFKC makes U+3164 one), variation
# selectors (U+FE0F, which asks for an emoji's colour form, too).
IGNORABLE = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, *range(0x180B, 0x1810), *range(0xFE00, 0xFE10)}
IGNORABLE |= set(range(0xE0100, 0xE01F0)) | {0x2800}  # more selectors; a blank Braille cell


def joins(name: str, at: int) -> bool:
    """The (non-)joiner at name[at] changes how its neighbours look, as PRECIS (RFC 8264) allows:
    after a virama (Hindi's क्\u200dष), the joiner between emoji (👩\u200d💻), the non-joiner
    between two Arabic letters (Persian has it inside words). Anywhere else it is invisible."""
    before, after = name[at - 1 : at], name[at + 1 : at + 2]  # "" at an end
    if name[at] not in "\u200c\u200d" or not (before and after):
        return False
    if unicodedata.combining(before) == 9:  # 9: a virama
        return True
    if name[at] == "\u200d":
        return {unicodedata.category(before), unicodedata.category(after)} <= {"So", "Sk"}
    return all(unicodedata.name(c, "").startswith("ARABIC LETTER") for c in (before, after))


def username_rules(name: str) -> str:
    """The name in one Unicode spelling, as stored (NFKC: é typed as one character or as e and an
    accent, ﬁ or fi, are one name), if it is a name; else a ValueError, which is answered 422."""
    name = unicodedata.normalize("NFKC", name)
    kinds = {c: unicodedata.category(c) for c in name}  # Cc: control, Cf: invisible
    invisible = [i for i, c in enumerate(name) if kinds[c] == "Cf" or ord(c) in IGNORABLE]
    if hidden := dict.fromkeys(f"U+{ord(name[i]):04X}" for i in invisible if not joins(name, i)):
        raise ValueError(f"invisible or direction-changing characters: {', '.join(hidden)}")
    if any(kind in ("Cc", "Zl", "Zp") for kind in kinds.values()):  # Zl, Zp: line breaks too
        raise ValueError("control characters (a tab, a new line...) are not allowed")
    # Unassigned: NFKC may fold such a character once Unicode assigns it: one name, two spellings
    if unassigned := [f"U+{ord(c):04X}" for c, kind in kinds.items() if kind == "Cn"]:
        raise ValueError(f"characters Unicode has not assigned yet: {', '.join(unassigned)}")
    if not 1 <= len(name) <= 50:
        raise ValueError(f"a username has 1 to 50 characters, not {len(name)}")
    if kinds[name[0]].startswith("M"):  # Mn, Mc, Me: Unicode's combining marks
        raise ValueError("a combining mark (an accent...) first has no letter to sit on")
    if name != name.strip():
        raise ValueError("no space at the start or the end")
    return name


# --- The engine: bounded waits, and each connection noted for the request that takes it -----
# The tutorial's engine (part 1) waits 30 s for a free connection, and for ever for a stuck
# server. This one takes its place before either opens a connection: the same URL, waits bounded.
db_engine = create_async_engine(
    async_url(DB_URL),
    # A pool that keeps pool_size connections, each lent to one request at a time. SQLAlchemy
    # picks this kind by itself for MySQL and a SQLite file; for "sqlite://" (in memory), one
    # without pool_timeout: create_async_engine() would fail here, before prepare_app() says
    # what to do.
    poolclass=AsyncAdaptedQueuePool,
    pool_size=settings.db_pool_size,
    pool_timeout=WAIT_SECONDS,  # for a free connection: the query's answer gets its own
    pool_pre_ping=True,  # test a kept connection before use: the server may have restarted
)
guarded_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def guard_engine(engine: Engine) -> None:  # db_engine's, and one a test puts in its place
    if engine in guarded_engines:  # once: prepare_app() guards the engine in use now
        return
    guarded_engines.add(engine)

    @event.listens_for(engine, "checkout")  # by any session: its commits may not be known
    def note_checkout(*_: object) -> None:
        if work := this_request.get(None):
            work.connections += 1

    @event.listens_for(engine, "commit")  # a COMMIT sent: if its answer is lost, done or not?
    def note_commit_sent(*_: object) -> None:
        if work := this_request.get(None):
            work.commits_sent += 1
            work.unsaved.clear()

    @event.listens_for(engine, "rollback")  # writes undone on purpose: no commit forgotten
    def note_rollback(*_: object) -> None:
        if work := this_request.get(None):
            work.unsaved.clear()

    @event.listens_for(engine, "before_execute")  # an INSERT, UPDATE or DELETE: saved at COMMIT
    def note_write(connection: Connection, statement: object, *_: object) -> None:
        if getattr(statement, "is_dml", False) and (work := this_request.get(None)):
            work.unsaved.add(statement.table.name)

    # aiomysql waits for a stuck server forever, InnoDB for a lock 50 s: bound every wait. A
    # statement waits in the request's bound (bound_wait, below), which cancels the request once
    # it passes.
    @event.listens_for(engine, "before_cursor_execute")  # each statement's wait: its cursor's
    def start_wait(connection: Connection, cursor: object, *_: object) -> None:
        bound_wait(cursor)

    @event.listens_for(engine, "after_cursor_execute")
    def end_wait(connection: Connection, cursor: object, *_: object) -> None:
        bound_wait(cursor, None)

    @event.listens_for(engine, "handle_error")  # the statement failed: its wait is over
    def end_failed_wait(context: ExceptionContext) -> None:
        if execution := context.execution_context:  # (a connection's: its own wrapper ends it)
            bound_wait(execution.cursor, None)

    # So does getting a connection, a session's or Core's (a free one, a ping, a new one), in one
    # wait, as the turn before it: a stall answers 503 within DB_TIMEOUT. No SQLAlchemy event
    # comes before it, so the pool's own method is wrapped: the pool an engine of
    # db_engine.execution_options() shares too, and the new one that dispose() puts in its place.
    @event.listens_for(engine, "engine_disposed")
    def bound_taking_a_connection(engine: Engine) -> None:
        take = engine.pool.connect

        def take_within_the_bound() -> PoolProxiedConnection:
            bound_wait(this_wait := object())
            try:
                return take()
            finally:
                bound_wait(this_wait, None)

        engine.pool.connect = take_within_the_bound

    bound_taking_a_connection(engine)

    @event.listens_for(engine, "invalidate")  # a connection dropped, as a cancelled query's is
    def roll_back_first(dbapi_connection: object, *_: object) -> None:
        # A cancelled query runs on in aiosqlite's thread, the file locked (and a ROLLBACK
        # queued behind it waits) unless interrupted: what aiosqlite's interrupt() calls, which
        # sqlite3 allows from any thread. Then SQLite's close() leaves the file locked while the
        # query's cursor lives (until Python's garbage collector runs): a ROLLBACK unlocks it.
        if engine.dialect.name == "sqlite":
            with contextlib.suppress(Exception, asyncio.CancelledError):  # closed already: done
                dbapi_connection.driver_connection._conn.interrupt()
                dbapi_connection.rollback()

    # A COMMIT or a ROLLBACK, which this engine's dialect sends, waits alone: past its bound the
    # connection is dropped, not the request. A COMMIT so lost answers "Saved or not is unknown";
    # the ROLLBACK the pool sends as it takes a connection back (after a COMMIT too) leaves the
    # answer as it was: a 201 for a row saved, as main.py's read_timeout makes it, never a 500
    # (tests/test_outages.py). A connection kept after one (Core's) holds no bound over the
    # route's next await, another service's. SQLite: no network, and a lock has its timeout.
    def bounded_alone(send: Callable[[PoolProxiedConnection], None]) -> Callable[..., None]:
        def send_within_the_bound(connection: PoolProxiedConnection) -> None:
            dbapi_connection = connection.dbapi_connection
            drop = asyncio.get_running_loop().call_later(WAIT_SECONDS, dbapi_connection.terminate)
            try:
                send(connection)
            finally:
                drop.cancel()

        return send_within_the_bound

    if engine.dialect.name != "sqlite":
        for sends in ("do_commit", "do_rollback"):
            setattr(engine.dialect, sends, bounded_alone(getattr(engine.dialect, sends)))

    @event.listens_for(engine, "handle_error")  # sqlite3's number too large is not a DBAPI error
    def number_too_large(context: ExceptionContext) -> exc.DataError | None:
        if isinstance(error := context.original_exception, OverflowError):
            return exc.DataError(context.statement, context.parameters, error)  # answered 422
        return None

    @event.listens_for(engine, "handle_error")  # a COMMIT refused (a reader held the file, say)
    def undo_refused_commit(context: ExceptionContext) -> None:
        # SQLite keeps that transaction open; SQLAlchemy counts it ended and lends the connection
        # on, the file locked for all, its write saved by the next request's COMMIT: undo it now
        if context.dialect.name == "sqlite" and context.statement is None and context.connection:
            context.connection.connection.dbapi_connection.rollback()

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Dialect, record: object, args: list, options: dict) -> object | None:
        if dialect.name == "sqlite":  # another writer holds the file: wait, a second less than us
            options["timeout"] = WAIT_SECONDS - 1
            connection = dialect.connect(*args, **options)
            connection.cursor().execute("PRAGMA foreign_keys = ON")  # obeyed only if asked
            return connection
        if "ssl" in options:  # ssl_ca=... in DATABASE_URL: aiomysql, on a server without TLS,
            # would go on in plain text, where PyMySQL refuses: so the twin refuses the URL
            raise RuntimeError(
                "DATABASE_URL asks for TLS (ssl_...), which main_async.py's driver cannot promise:"
                " it would talk to a server without TLS in plain text. Use main.py for it."
            )
        options["connect_timeout"] = WAIT_SECONDS  # its only timeout: the bound covers the rest
        # The server ends a lock wait or a statement a second before we give up (503 busy, and
        # nothing of ours keeps running). /*M! is read by MariaDB only, /*!50708 by MySQL only.
        seconds = WAIT_SECONDS - 1
        locks = f"innodb_lock_wait_timeout = {seconds:.0f}, lock_wait_timeout = {seconds:.0f}"
        mariadb, mysql = f"max_statement_time = {seconds}", f"max_execution_time = {seconds:.0f}000"
        options["init_command"] = f"SET SESSION {locks} /*M!, {mariadb} */ /*!50708 , {mysql} */"
        try:
            return dialect.connect(*args, **options)
        except RuntimeError as error:  # a connection reset as it opens: the driver's own bug
            if "does not expose socket" not in str(error):
                raise
            lost = dialect.loaded_dbapi.OperationalError(2013, f"Lost connection: {error}")
            raise lost from None  # as the driver's own error: answered 503, not 500


guard_engine(db_engine.sync_engine)


# --- Turns: at most DB_POOL_SIZE sessions at once, each closed with one ROLLBACK at most -----
# No thread waits here. Without turns the pool alone would bound the sessions, but unfairly: a
# request that comes as a connection is given back takes it before one that has waited (a p99
# of 0.8 s at 32 clients). Turns are taken in order, first come, first served.
async def take_turn(work: "RequestWork | None" = None) -> anyio.Semaphore:
    if (turns := turns_of_this_loop.get(None)) is None:  # the first turn on this event loop
        turns_of_this_loop.set(turns := anyio.Semaphore(settings.db_pool_size))
        closer_of_this_loop.set(closer := close_at_loop_end(db_engine))
        await anext(closer)  # started: it finishes when the loop ends
    waited = turns.value == 0
    with anyio.move_on_after(WAIT_SECONDS) as wait:
        await turns.acquire()
    if wait.cancelled_caught:
        raise exc.TimeoutError(f"No database turn free in {WAIT_SECONDS:g} s")  # answered 503 busy
    try:  # a turn taken is given back, whatever happens next (else it is lost, for good)
        if waited and work and await work.client_gone():  # it waited: is its client still there?
            logger.info("%s: the client was gone before its turn came, not run", work.where)
            raise HTTPException(499, "Client closed the request")
    except BaseException:
        turns.release()
        raise
    return turns


# A connection works only on the event loop that opened it, and TestClient without `with` runs
# each request on a loop of its own. An ending loop first finishes the async generators it
# started: this one closes, on that loop, the connections it opened.
async def close_at_loop_end(engine: AsyncEngine) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await engine.dispose()


# --- Bounds: each wait for the database ends within WAIT_SECONDS ------------------------------
# The middleware runs each request in a cancel scope; a wait that outlasts its bound cancels it,
# and SQLAlchemy drops the connection it was using: the server rolls its transaction back.
def bound_wait(wait: object, seconds: float | None = WAIT_SECONDS) -> None:  # None: it is over
    if (work := this_request.get(None)) and wait is not None:
        if seconds is None:
            work.deadlines.pop(wait, None)
        else:
            work.deadlines[wait] = anyio.current_time() + seconds
        # Waits at once (tasks of asyncio.gather): each ends within its own bound
        work.waits.deadline = min(work.deadlines.values(), default=math.inf)


def no_answer() -> exc.OperationalError:  # the bound fired: answered 503
    if db_engine.dialect.name == "sqlite":  # no network: a statement too long, MySQL's 1969 (busy)
        cause = TimeoutError(1969, "A statement ran past its bound: interrupted")
    else:  # unavailable
        cause = TimeoutError(2013, "No answer from the database within its bound: dropped")
    return exc.OperationalError(None, None, cause, connection_invalidated=True)


# The sessions of part 3: readable after commit(), unusable once closed (never a connection
# outside a turn).
class RequestSession(Session):
    """Their sync half: their listeners are registered on it, once, not on every Session."""


session_factory = async_sessionmaker(
    sync_session_class=RequestSession, expire_on_commit=False, close_resets_only=False
)


@event.listens_for(RequestSession, "after_begin")
def remember_connection(session: Session, transaction: object, connection: Connection) -> None:
    session.info["connection"] = connection  # to end a read with one ROLLBACK (close_session)
    if work := this_request.get(None):
        work.own_connections += 1


@event.listens_for(RequestSession, "after_commit")
def note_commit(session: Session) -> None:
    if work := this_request.get(None):
        work.commits += 1


def end_transaction(session: Session) -> None:  # run_sync'ed: in SQLAlchemy's greenlet
    if session.is_active and "connection" in session.info:  # close() alone: two ROLLBACKs
        session.info["connection"].close()  # ends the transaction with one
    session.close()


async def close_session(session: AsyncSession, in_doubt: bool = False) -> None:
    """However the request ended, cancelled too: its transaction ends, and its connection goes
    back to the pool or, if the server does not answer in time, is dropped."""
    if in_doubt and "connection" in session.info:  # in the middle of an answer, maybe: never
        with anyio.CancelScope(shield=True):  # lent to another request (docs/async.md)
            return await session.invalidate()
    if not session.in_transaction():  # after a commit, or no SQL: nothing to wait for
        return session.sync_session.close()
    with anyio.CancelScope(shield=True):  # a cancelled request still closes its session
        with anyio.move_on_after(WAIT_SECONDS):
            while True:
                try:
                    return await session.run_sync(end_transaction)  # a ROLLBACK: a wait
                except exc.IllegalStateChangeError:  # a task the route left running (its
                    await anyio.sleep(0.01)  # asyncio.gather failed) uses it: let it end
                except exc.DBAPIError as error:  # the connection died: the server rolls back
                    logger.warning("Closing a session: %s", error.orig)
                    break
        with contextlib.suppress(exc.ResourceClosedError):  # the error closed it already
            await session.invalidate()  # no answer, or an error: drop the connection


@asynccontextmanager
async def new_session() -> AsyncIterator[AsyncSession]:
    """A session and a turn of its own, for work after a request's own code: a streamed answer,
    a background task, a WebSocket's message (README, section 6). Use it in an async def."""
    work = this_request.get(None)  # in a request that holds a turn (its route, or a task behind
    in_its_turn = work is not None and work.turns is not None  # a late commit): runs in that one
    inside_another = in_a_new_session.get()  # a helper's, say: in the turn of the one around it
    turns = None if in_its_turn or inside_another else await take_turn()
    session = session_factory(bind=db_engine)
    in_a_new_session.set(True)
    try:
        yield session
    finally:
        in_a_new_session.set(inside_another)
        await close_session(session)
        if turns is not None:
            turns.release()


# --- One request, one session: opened at the first ask, closed before the answer is sent -----
async def session_of_this_request() -> AsyncSession:
    if (work := this_request.get(None)) is None:  # a route of an app without our middleware
        mount = f'parent.mount("/api", {__name__}.app)'  # its routes, in a bigger app
        # a route of your app: ours first, so that yours (CORS...) wrap it and its answers
        add = f"app.add_middleware({__name__}.one_session_per_request) before any other"
        raise RuntimeError(
            f"The session needs our middleware, which this app lacks: {mount} or {add}"
        )
    return await work.open_session()


class RequestWork:
    """One run of a request: its session and turn, its commits and its answer. The body it read
    is kept for a second run."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, kept: list, first: bool) -> None:
        self.scope, self.from_client, self.to_client, self.kept = scope, receive, send, kept
        self.can_run_again = first and scope["type"] == "http"  # once, for HTTP
        self.session, self.turns, self.answered, self.sent_whole = None, None, False, False
        self.app = scope.get("app")  # ours: an app mounted in it answers its own errors
        self.waits = anyio.CancelScope()  # the bound of its waits for the database
        self.delivered = self.connections = self.own_connections = 0
        self.deadlines: dict[object, float] = {}  # each wait's for the database, until it ends
        self.in_doubt = False  # a bug ended it: what its connection was saying is unknown
        self.commits_sent = self.commits = 0  # COMMITs sent, and those the server said were done
        self.unsaved: set[str] = set()  # tables written since the last COMMIT
        self.body_dropped = False  # too large to keep: an error's answer cannot read it

    @property
    def where(self) -> str:  # for the log
        return f"{self.scope.get('method', 'WebSocket')} {self.scope['path']}"

    async def open_session(self) -> AsyncSession:
        if self.session is None:
            if self.scope.get("app") is not self.app:  # a 409 or a 503 would be its 500
                fix = f"sub_app.add_middleware({__name__}.one_session_per_request)"
                raise RuntimeError(
                    f"{self.where}: an app mounted in this one takes the session. Give it our"
                    f" middleware first ({fix}), or make it an APIRouter (app.include_router)."
                )
            problem = None
            if db_engine not in prepared_engines:  # mounted in a bigger app: no lifespan ran
                problem = await prepare_app(self.app)
            if problem:  # what would stop startup (a table missing, say) answers each request
                logger.error("%s: %s", self.where, problem)
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, problem)
            self.turns = await take_turn(self if self.scope["type"] == "http" else None)
            self.session = session_factory(bind=db_engine)
        return self.session

    def needed_after_the_answer(self) -> bool:  # (not by a WebSocket: it would hold a turn idle)
        if not isinstance(route := self.scope.get("route"), APIRoute):
            return False
        # A route that yields its answer: FastAPI runs it as it sends it (README, section 6)
        streams = isgeneratorfunction(route.endpoint) or isasyncgenfunction(route.endpoint)
        if streams and asks_for_the_session(route.dependant):
            return True
        return commits_after_the_answer(route.dependant)

    async def close(self) -> None:  # before the answer is sent: a slow client holds no turn
        if self.turns is not None:
            turns, self.turns = self.turns, None
            try:  # after a commit closing sends nothing; after a read, a ROLLBACK
                await close_session(self.session, self.in_doubt)
            finally:
                turns.release()
                self.deadlines.clear()  # every wait of its session is over, even one cancelled
                self.waits.deadline = math.inf

    async def receive(self) -> Message:
        if self.delivered == len(self.kept):
            message = await self.from_client()
            if message["type"] != "http.request" or not self.can_run_again:
                self.body_dropped |= message["type"] == "http.request"  # a part not kept
                return message
            self.kept.append(message)  # for a second run: at most the app's limit, and 1 MiB
            limit = min(app.max_body_size or 2**20, 2**20)  # a larger upload is never run again
            self.can_run_again = sum(len(part["body"]) for part in self.kept) <= limit
        self.delivered += 1
        return self.kept[self.delivered - 1]

    async def client_gone(self) -> bool:  # looks at what has arrived, without waiting
        message: Message = {}
        with anyio.CancelScope() as peek:
            peek.cancel()
            while (message := await self.from_client())["type"] == "http.request":
                self.kept.append(message)  # the route's, to be read
        return message.get("type") == "http.disconnect"

    def warn_of_changes_never_saved(self, status: int) -> None:  # closing drops them
        pending = self.session and [*self.session.new, *self.session.dirty, *self.session.deleted]
        tables = self.unsaved | {row.__table__.name for row in pending or ()}  # flushed, or not
        if tables:
            logger.warning(
                "%s answered %s, but its changes to %s were never saved: a commit() forgotten,"
                " or not awaited?",
                self.where,
                status,
                ", ".join(sorted(tables)),
            )

    async def send(self, message: Message) -> None:
        if not self.answered and message["type"] in ("http.response.start", "websocket.accept"):
            self.answered = True  # the answer is built: an idle socket or a slow client holds
            if not self.needed_after_the_answer():  # no turn, nor a background task after it
                if message.get("status", 500) < 400:  # a success, and nothing saved: a bug
                    self.warn_of_changes_never_saved(message["status"])
                await self.close()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.sent_whole = True  # all of it: a later error cannot cut it short
        await self.to_client(message)


def commits_after_the_answer(dependant: Dependant) -> bool:
    """A dependency of yours with `yield` that takes the session (README, section 6): FastAPI runs
    its code after `yield` once the answer is sent (unless scope="function"), and it may commit."""
    for sub in dependant.dependencies:
        calls = (sub.call, sub.call.__call__)  # a function, or an object whose method yields
        has_yield = any(isgeneratorfunction(call) or isasyncgenfunction(call) for call in calls)
        late = has_yield and sub.scope != "function" and sub.call is not get_session
        if (late and asks_for_the_session(sub)) or commits_after_the_answer(sub):
            return True
    return False


def asks_for_the_session(dependant: Dependant) -> bool:  # directly, or through another
    calls = [sub.call for sub in dependant.dependencies]
    return get_session in calls or any(map(asks_for_the_session, dependant.dependencies))


def one_session_per_request(inner: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await inner(scope, receive, send)
        kept: list[Message] = []  # the body the route read, for a second run
        for run, first in ((scope, True), (dict(scope), False)):  # the second: the scope as it came
            work = RequestWork(run, receive, send, kept, first)
            token = this_request.set(work)
            try:
                with work.waits:  # cancelled when a wait for the database outlasts its bound
                    return await inner(run, work.receive, work.send)
                raise no_answer()
            except (exc.DBAPIError, exc.TimeoutError) as error:
                answer = database_error(error, work)  # None: run it again, after a deadlock
            except ResponseValidationError:  # a row returned unsaved: no id, and its check fails
                work.warn_of_changes_never_saved(500)
                work.in_doubt = True  # a 500, as any bug below
                raise
            except BaseException:  # a bug (a 500): a task it left may still use its connection
                work.in_doubt = True
                raise
            finally:
                await work.close()  # if a session was opened and not yet closed
                this_request.reset(token)
            if answer is not None:  # the body again, for a handler of yours that reads it
                again = [{"type": "http.request", "body": b""}] if work.body_dropped else kept
                return await answer(
                    run, RequestWork(run, receive, send, again, False).receive, send
                )

    return middleware


# The innermost of the app's middleware, as if given to FastAPIOffline(middleware=[...]): yours
# (CORS, added right after `app = ...`) then wraps ours, and adds its headers to our 409s too.
app.user_middleware.append(Middleware(one_session_per_request))


# --- Database errors: an honest answer for each, the real cause in the log -------------------
def database_error(error: Exception, work: RequestWork) -> ASGIApp | None:
    """The answer to a database error, or None: run the request again."""
    cause = getattr(error, "orig", None)  # the driver's error; none: no turn or connection free
    code = cause and (getattr(cause, "sqlite_errorname", None) or cause.args[0])
    refused_value = code in REFUSED_VALUE_CODES or isinstance(cause, OverflowError)
    cause = f"{type(error).__name__} ({code}) {(cause or error).args[-1]}"  # never the SQL
    committed = work.commits > 0
    if work.scope["type"] == "websocket":
        logger.error("Database error on %s, closed with 1011: %s", work.where, cause)
        return WebSocketClose(status.WS_1011_INTERNAL_ERROR)
    if work.sent_whole:  # a late commit: this line only (a traceback prints the SQL, e-mails)
        logger.error("Database error on %s, after the answer was sent: %s", work.where, cause)
        return nothing_more
    if work.answered:  # a streamed answer has begun: nothing more can be said to the client
        logger.error("Database error on %s, after the answer began: %s", work.where, cause)
        raise error  # the answer cut short: the client sees it broken, not complete
    # MySQL (or Galera, for a clash of nodes' writes) undoes one transaction of a deadlock: run
    # again, it meets the winner's rows. After a commit that part would be written twice: a 500.
    # A connection that was not a session of ours may have committed: then it is not run again.
    only_ours = work.connections == work.own_connections
    if code == 1213 and not committed and only_ours and work.can_run_again:
        logger.warning("Database error on %s, running it again: %s", work.where, cause)
        return None
    # A taken username: the unique index decides, not a SELECT first, which races would pass.
    conflict = isinstance(error, exc.IntegrityError) and code in CONFLICT_CODES
    # A COMMIT sent, its answer never read (2xxx: the driver's own codes; a text: garbled, unread)
    server_answered = (isinstance(code, int) and not 2000 <= code < 3000) or "SQLITE" in str(code)
    unknown = work.commits_sent > work.commits and not server_answered  # done? no one can tell
    if committed:  # a part is saved: a 409 or a 503 would say nothing was, and invite a resend
        status_code, detail = 500, "Internal Server Error"
        cause += "; not run again: the request had committed already"
    elif unknown:
        status_code, detail = 500, "Saved or not is unknown: the database went away"
        cause += "; not run again: its COMMIT's answer was lost"
    elif refused_value:  # the client's value: MySQL's message names its column
        said = str(error.orig.args[-1]).split(" at row ")[0].split(" for `")[0]
        status_code, detail = 422, f"The database refuses a value: {said}"
    elif conflict and "username" in cause[-20:]:
        return the_apps_answer_to(HTTPException(status.HTTP_409_CONFLICT, "Username already taken"))
    elif conflict and code in (1451, 1452, "SQLITE_CONSTRAINT_FOREIGNKEY"):  # a foreign key
        # MySQL's codes tell the two sides apart; on SQLite, the statement: a DELETE was refused
        referred = code == 1451 or (error.statement or "").startswith("DELETE")
        status_code, detail = 409, "Refers to a row that does not exist"
        if referred:
            detail = "Other rows still refer to it"
    elif conflict:  # another rule: a bug, logged
        status_code, detail = 409, "Conflicts with existing data"
    elif code in BUSY_CODES or isinstance(error, exc.TimeoutError):
        status_code, detail = 503, "Database busy, try again"  # sent again, it is likely to work
    elif code in UNAVAILABLE_CODES or error.connection_invalidated:
        status_code, detail = 503, "Database unavailable"
    else:  # the schema and the model disagree, or a bug: see the log
        status_code, detail = 500, "Internal Server Error"
    logger.error("Database error on %s, answered %s %s: %s", work.where, status_code, detail, cause)
    retry_after = {"Database busy, try again": "1", "Database unavailable": "5"}.get(detail)
    headers = {"Retry-After": retry_after} if retry_after else None
    return the_apps_answer_to(HTTPException(status_code, detail, headers=headers))


async def nothing_more(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to an error after the answer was sent whole: none, the client has it."""


def the_apps_answer_to(error: HTTPException) -> ASGIApp:
    """What the app's handler for HTTPException answers, as for a route's own: FastAPI's, a
    {"detail": ...}, or yours (@app.exception_handler), so that every error has one shape."""

    async def raise_it(scope: Scope, receive: Receive, send: Send) -> None:
        raise error

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        handlers = scope["app"].exception_handlers  # the app that ran it: ours, or one of yours
        await ExceptionMiddleware(raise_it, handlers=handlers)(scope, receive, send)

    return answer


# --- Input that cannot be sent back: half a UTF-16 pair ("\ud800"), NaN, or nested too deep ---
@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, error: RequestValidationError) -> Response:
    try:  # FastAPI's own 422, which shows each wrong value as sent, in UTF-8
        return await request_validation_exception_handler(request, error)
    except UnicodeEncodeError:  # no UTF-8 for half a pair: the same 422, escaped as JSON allows
        body = json.dumps({"detail": jsonable_encoder(error.errors())})
    except (RecursionError, ValueError):  # a value nested deeper than Python recurses (3.13
        # parses it), or NaN or Infinity, which JSON cannot write: the same 422, without the value
        errors = [{**mistake, "input": "(not shown)"} for mistake in error.errors()]
        body = json.dumps({"detail": jsonable_encoder(errors)})
    return Response(body, status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


# --- Health probes, for a load balancer or an orchestrator (docs/deploying.md) -------------
@app.get("/livez", tags=["health"])
async def livez() -> dict[str, str]:
    """The app runs. Never touches the database: a database blip must not restart the app."""
    return {"status": "alive"}


for route in app.routes:  # / and /livez never use the database: /docs lists no 503 for them
    if getattr(route, "endpoint", None) in (read_root, livez):
        route.responses.pop(503, None)  # None: no 503 there (part 3 pasted in your app)


@app.get("/readyz", tags=["health"])
async def readyz(session: SessionDep) -> dict[str, str]:
    """Every table is there and answers within DB_TIMEOUT: send traffic."""
    if problem := await (await session.connection()).run_sync(schema_problem):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, problem)
    await session.scalar(select(UserTable.id).limit(1))  # a row: SELECT 1 passes without quorum
    return {"status": "ready"}


# --- Startup: wait for the database, create the tables, tell Alembic ------------------------
MIGRATIONS = pathlib.Path(__file__).with_name("migrations")  # none beside main.py alone
prepared_engines: weakref.WeakSet[AsyncEngine] = weakref.WeakSet()  # once per process, engine


async def prepare_database(app: FastAPI) -> None:  # at startup, which prepares again
    url = db_engine.url.render_as_string(hide_password=True)
    prepared_engines.discard(db_engine)
    deadline, pause = time.monotonic() + 15, 0.25  # a database still starting: try for 15 s
    while db_engine not in prepared_engines:  # workers starting together may also meet here
        try:
            if problem := await prepare_app(app):
                raise RuntimeError(problem)  # the app stops, saying what to do
        except exc.DBAPIError as error:  # else (the wrong port's server, say): it stops at once
            passing = isinstance(error, (exc.OperationalError, exc.IntegrityError))
            refused = getattr(error.orig, "sqlite_errorname", error.orig.args[0]) in REFUSED_AT_ONCE
            why = error.orig  # aiomysql keeps the system's reason (refused, no route) apart
            if isinstance(reason := why.__cause__, OSError) and reason.strerror:
                why = f"{why} ({reason.strerror})"  # Connection refused, Name or service not known
            if refused or not passing or (left := deadline - time.monotonic()) <= 0:
                message = f"Cannot use the database {url}: {why}. Check that the server"
                raise RuntimeError(f"{message} is running and DATABASE_URL is right.") from None
            waiting = "Database not ready, or another worker preparing it (%s): again in %.2f s"
            logger.warning(waiting, why, pause)
            await anyio.sleep(min(pause, left))
            pause *= 2


async def prepare_app(app: FastAPI) -> str | None:  # at startup, or a mounted app's first request
    """Creates the tables that are missing, then checks them and the app's routes (ours, or an
    app of yours that takes our lifespan): a problem found, or None."""
    guard_engine(db_engine.sync_engine)  # a test's, put in place of ours (README, section 6)
    # "sqlite://" gets here because our engine names its pool, not a TypeError about pool_timeout
    in_memory = db_engine.url.database in (None, "", ":memory:")  # on SQLite, that is
    shared = isinstance(db_engine.pool, StaticPool)  # one connection for all: a test's engine
    if db_engine.dialect.name == "sqlite" and in_memory and not shared:
        raise RuntimeError(  # each connection would open a new, empty database of its own
            "DATABASE_URL names an in-memory SQLite database: give it a file instead,"
            " such as sqlite:///./app.db (a test's engine: poolclass=StaticPool)"
        )
    if db_engine.dialect.name != "sqlite" and not db_engine.url.database:  # ...@host, or @host/
        raise RuntimeError(
            "DATABASE_URL names no database: end it with one, such as"
            " mysql+pymysql://user:password@host/tutorial"
        )
    for route in iter_route_contexts(app.routes):  # an included APIRouter's routes too
        # a plain def runs in a thread, where nothing awaits the session
        for name in plain_defs_taking_the_session(getattr(route, "dependant", Dependant())):
            raise RuntimeError(
                f"{route.path}: {name}() is a plain def that takes the session, whose calls"
                " must be awaited. Write it as `async def`, and `await` each call on the"
                " session: `user = await session.get(UserTable, user_id)` (README, section 6)."
            )
    if (preparing := preparing_of_this_loop.get(None)) is None:
        preparing_of_this_loop.set(preparing := anyio.Lock())  # concurrent first requests wait
    with anyio.move_on_after(WAIT_SECONDS) as waited:  # another request prepares: one wait
        await preparing.acquire()
    if waited.cancelled_caught:
        raise exc.TimeoutError(f"The tables were still being prepared after {WAIT_SECONDS:g} s")
    try:
        with anyio.move_on_after(settings.db_timeout) as bound:  # aiomysql would wait forever
            if db_engine not in prepared_engines:
                if problem := await prepare_tables():
                    return problem
                for handler in app.router.on_startup + app.router.on_shutdown:  # @app.on_event's
                    logger.warning(
                        "%s() is an @app.on_event handler: FastAPI never runs one in an app"
                        " with a lifespan, as this one has. Move its code into lifespan()"
                        " (README, section 5).",
                        handler.__qualname__,
                    )
                prepared_engines.add(db_engine)
                logger.info("Database: %s", db_engine.url.render_as_string(hide_password=True))
    finally:
        preparing.release()
    if bound.cancelled_caught:
        raise no_answer()
    return None


async def prepare_tables() -> str | None:  # prepare_app's, under its lock: creates, then checks
    # Alembic manages a database with an alembic_version table: create_all leaves it alone.
    async with db_engine.connect() as connection:
        tables = set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    if "alembic_version" not in tables:
        none_yet = not tables & set(BaseModelClass.metadata.tables)
        await create_tables()
        if none_yet and MIGRATIONS.is_dir():  # made from nothing: the newest revision's
            async with db_engine.begin() as connection:
                await connection.run_sync(stamp_head, ScriptDirectory(str(MIGRATIONS)))
    async with db_engine.connect() as connection:  # create_all never changes a table that exists
        for check in (schema_problem, revision_problem):
            if problem := await connection.run_sync(check):
                return problem
    return None


def stamp_head(connection: Connection, revisions: ScriptDirectory) -> None:
    MigrationContext.configure(connection).stamp(revisions, "head")


def plain_defs_taking_the_session(dependant: Dependant) -> Iterator[str]:
    call = dependant.call  # the route's function, then its dependencies', however they are typed
    if callable(call) and not (isroutine(call) or isclass(call) or iscoroutinefunction(call)):
        call = call.__call__  # an object that is called: its method
    hints = {}
    with contextlib.suppress(TypeError, NameError):  # no hints, or one naming what is not there
        hints = get_type_hints(call)
    # From get_session, or typed AsyncSession: handed it by a dependency of yours with `yield`;
    # or in an object of a class of yours that keeps it (a repository's)
    subs = [*dependant.dependencies]
    subs += [sub for keeper in subs if isclass(keeper.call) for sub in keeper.dependencies]
    asks = get_session in [sub.call for sub in subs]
    is_plain = isroutine(call) and not (iscoroutinefunction(call) or isasyncgenfunction(call))
    if is_plain and (asks or AsyncSession in hints.values()):
        yield call.__qualname__
    for sub_dependant in dependant.dependencies:
        yield from plain_defs_taking_the_session(sub_dependant)


def revision_problem(connection: Connection) -> str | None:
    """A database that Alembic manages, at a revision older than the newest beside main.py: a
    revision may change rows, not only tables (0002 folds the usernames stored before it)."""
    if not MIGRATIONS.is_dir():
        return None
    current = MigrationContext.configure(connection).get_current_revision()
    script = ScriptDirectory(str(MIGRATIONS))
    older = {revision.revision for revision in script.walk_revisions()} - set(script.get_heads())
    if current not in older:  # the newest, or none, or one this folder does not have
        return None
    newest = ", ".join(script.get_heads())
    return (
        f"The database is at revision {current}, older than this app's newest, {newest}: run"
        " `alembic upgrade head` (README: Changing the schema)."
    )


def schema_problem(bind: Connection) -> str | None:
    """A table or a column that the models declare and the database lacks, and what to do."""
    database = inspect(bind)
    for table in BaseModelClass.metadata.sorted_tables:
        there = database.has_table(table.name)
        existing = {column["name"] for column in database.get_columns(table.name)} if there else ()
        missing = [repr(column.name) for column in table.columns if column.name not in existing]
        if missing:
            problem = f"has no column {', '.join(missing)}" if there else "is missing"
            adopted = database.has_table("alembic_version")  # else made by create_all alone
            first = "" if adopted else "Run `alembic upgrade head` first (Alembic adopts it). "
            return (
                f"Table '{table.name}' {problem}, which the models declare. {first}If no"
                " revision has it yet, write one from this file's models (`alembic -x"
                ' app=main_async revision --autogenerate -m "..."`), then run `alembic upgrade'
                " head` (README: Changing the schema)."
            )
    return None
