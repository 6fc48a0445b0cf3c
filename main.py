"""The reference app: FastAPI + SQLAlchemy + MySQL, in the tutorial's order. See README.md."""

import logging
import pathlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import (
    MetaData,
    String,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Mapped, Session, declarative_base, mapped_column
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Receive, Scope, Send

# uvicorn prints its own logger's INFO lines; a logger of our own would stay silent.
logger = logging.getLogger("uvicorn.error")


# --- Settings: from the environment, else from a .env file (see .env.example) --------------
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    database_url: str = "sqlite:///./app.db"  # no MySQL needed to start: an SQLite file
    sql_echo: bool = False  # true: log every SQL statement the app sends
    db_pool_size: int = 4  # connections per worker, and sessions at once (README: Performance)
    db_timeout: float = 10  # seconds a request waits for the database before a 503


settings = Settings()
IS_SQLITE = settings.database_url.startswith("sqlite")
MIGRATIONS = ScriptDirectory(str(pathlib.Path(__file__).with_name("migrations")))


# --- Section 3: the engine and the model ----------------------------------------------------
# A stalled server must not hang requests (PyMySQL waits forever by default): each wait gets
# half of DB_TIMEOUT, as a request may wait twice, for a failed ping, then a new connection.
WAIT = settings.db_timeout / 2
if IS_SQLITE:  # a file: how long to wait while another connection writes
    options: dict = {"connect_args": {"timeout": WAIT}}
else:  # a server: one connection per session that get_session lets in, kept open
    options = {"pool_size": settings.db_pool_size, "max_overflow": 0, "pool_timeout": WAIT}
    timeouts = ["connect_timeout", "read_timeout", "write_timeout"]
    options["connect_args"] = dict.fromkeys(timeouts, WAIT)

db_engine = create_engine(
    settings.database_url,
    echo=settings.sql_echo,
    # Servers restart and networks drop connections: a ping before each use replaces a dead
    # connection instead of failing the request with it.
    pool_pre_ping=True,
    # MySQL closes a connection idle for wait_timeout (8 hours by default): renew ours sooner.
    pool_recycle=3600,
    # A Session always ends its transaction itself: a second ROLLBACK on return is a wasted trip.
    pool_reset_on_return=None,
    **options,
)


@event.listens_for(db_engine, "connect")
def enforce_foreign_keys(dbapi_connection: object, connection_record: object) -> None:
    # SQLite ignores FOREIGN KEY clauses unless each new connection turns them on. Only the
    # app's own connections: Alembic's batch migrations need them off (migrations/env.py).
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA foreign_keys = ON")


# Alembic's naming convention: every constraint and index gets the same name on every database,
# so that a migration can name the one it changes (README: Changing the schema).
NAMES = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
BaseModelClass = declarative_base(metadata=MetaData(naming_convention=NAMES))


class UserTable(BaseModelClass):
    __tablename__ = "users"
    # utf8mb4 stores any Unicode text, emoji too. The binary collation compares usernames
    # exactly, as SQLite does; MySQL's default ones say "Alice" = "alice" and "José" = "Jose".
    __table_args__ = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

    # A primary key and a UNIQUE column are indexed already: index=True would add a duplicate.
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    email: Mapped[str] = mapped_column(String(120))


# --- Section 4.1: Pydantic models validate what clients send --------------------------------
# No whitespace at either end, no control characters: a pattern also shows in /docs.
NO_STRAY_CHARACTERS = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
# The examples pre-fill "Try it out" in /docs with a user that is valid as it stands.
Username = Annotated[
    str, Field(min_length=1, max_length=50, pattern=NO_STRAY_CHARACTERS, examples=["ada"])
]
Email = Annotated[EmailStr, Field(max_length=120, examples=["ada@example.com"])]


class UserInput(BaseModel):
    username: Username
    email: Email


class UserPatch(BaseModel):
    # Leave a field out to keep it; null is refused (the columns are NOT NULL) and not documented.
    username: Username | SkipJsonSchema[None] = None
    email: Email | SkipJsonSchema[None] = None

    @field_validator("username", "email")
    @classmethod
    def not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class Message(BaseModel):
    detail: str


class UserOutput(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read the fields from a UserTable
    id: int
    username: str
    email: str


# --- Section 4.2: one Session per request, always closed ------------------------------------
async def get_session(request: Request) -> AsyncIterator[Session]:
    # At most DB_POOL_SIZE requests hold a session at once; the others wait here, on the event
    # loop, without a thread. So a session always finds a free connection, and no thread waits
    # for one while the request that holds it waits for a thread: no deadlock, whatever the
    # route does. The one rule: a route takes its session from here (README: Where the SQL runs).
    turns: anyio.Semaphore = request.state.sessions
    try:
        with anyio.fail_after(WAIT):
            await turns.acquire()
    except TimeoutError:  # none free for that long: the database is stuck
        logger.error("%s %s answered 503: no free connection within %g s", *where(request), WAIT)
        raise HTTPException(503, "Database unavailable", headers={"Retry-After": "5"}) from None
    session = Session(db_engine, expire_on_commit=False)  # what we wrote stays readable
    watch_commits(session, request)
    try:
        yield session
    finally:
        try:
            if session.in_transaction():  # ending it sends a ROLLBACK: not on the event loop
                await run_in_threadpool(session.close)
            else:  # committed, or never used: nothing to send
                session.close()
        except DBAPIError as error:  # the connection died: the server rolls back by itself
            logger.warning("Closing a session: %s", driver_error(error)[1])
        finally:
            turns.release()


SessionDep = Annotated[Session, Depends(get_session)]


# --- Section 5: the application -------------------------------------------------------------
def create_tables() -> None:
    """Section 5.1 for a first run; a database that Alembic manages is left to Alembic."""
    database = inspect(db_engine)
    if database.has_table("alembic_version"):
        return  # `alembic upgrade head` changes this database: create_all must not
    new = not database.get_table_names()
    BaseModelClass.metadata.create_all(db_engine)
    if new:  # made from today's models, which Alembic's newest revision describes: say so
        with db_engine.begin() as connection:
            MigrationContext.configure(connection).stamp(MIGRATIONS, "head")


def check_columns() -> None:
    """create_all never changes an existing table: stop if one lacks a column the model has."""
    database = inspect(db_engine)
    for table in BaseModelClass.metadata.sorted_tables:
        found = database.get_columns(table.name) if database.has_table(table.name) else []
        if missing := [c.name for c in table.columns if c.name not in {f["name"] for f in found}]:
            raise RuntimeError(
                f"Table '{table.name}' has no column {', '.join(map(repr, missing))}, which the"
                " model declares. Run `alembic upgrade head` to bring the database up to date"
                " (README: Changing the schema), or delete the SQLite file to start over."
            )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict]:
    url = db_engine.url.render_as_string(hide_password=True)
    logger.info("Database: %s", url)
    for attempt in (1, 2, 3):  # `--workers 4`, or apps on several nodes: another can be quicker
        try:
            create_tables()
            break
        except (OperationalError, IntegrityError) as exc:
            if attempt == 3:  # stop with one clear line, not a driver traceback
                raise RuntimeError(
                    f"Cannot use the database {url}: {exc.orig}. Check that the server is running "
                    "and that DATABASE_URL has the right host, port, user, password and database."
                ) from None
    check_columns()
    # /readyz's engine: one connection of its own, pinged, with 1 s timeouts (2 s at worst).
    sqlite = db_engine.dialect.name == "sqlite"
    quick = {"timeout": 1} if sqlite else {"connect_timeout": 1, "read_timeout": 1}
    one = {"poolclass": QueuePool, "pool_size": 1, "max_overflow": 0, "pool_timeout": 1}
    probe = create_engine(db_engine.url, pool_pre_ping=True, connect_args=quick, **one)
    # The app's state, seen as request.state: the turns that get_session hands out, the probe.
    yield {"sessions": anyio.Semaphore(settings.db_pool_size), "probe": probe}
    probe.dispose()  # both say goodbye to the server: no "Aborted connection" in its log
    db_engine.dispose()


# FastAPIOffline is FastAPI whose /docs and /redoc load Swagger UI and ReDoc from the app
# itself (files shipped in the fastapi-offline package) instead of a CDN: they work offline.
app = FastAPIOffline(
    title="Users API: the FastAPI + SQLAlchemy + MySQL reference app",
    description="Follows the tutorial *Databases and ORM in FastAPI*. Try **POST /users/** first.",
    version="1.0.0",
    openapi_tags=[
        {"name": "users", "description": "Create, read, update and delete users"},
        {"name": "health", "description": "Probes for a load balancer: liveness and readiness"},
    ],
    lifespan=lifespan,
    max_body_size=64 * 1024,  # a user is a few hundred bytes: a larger body is refused unread
)


ERRORS = {
    400: "Body is not UTF-8 JSON",
    404: "User not found",
    409: "Username already taken",
    503: "Database unavailable, or busy: try again after Retry-After seconds",
}


def errors(*codes: int) -> dict:
    """A route's error answers for the OpenAPI schema (/docs); any route can meet a 503."""
    return {code: {"model": Message, "description": ERRORS[code]} for code in (*codes, 503)}


# --- Database errors: an honest answer for each, and the real cause in the log ---------------
# Cannot reach it, or it takes no work: refused, gone, lost, too many connections, shutting
# down; a Galera node outside the Primary Component (1047, and 1180 at COMMIT).
UNAVAILABLE = {2002, 2003, 2006, 2013, 2055, 1040, 1053, 1047, 1180, "SQLITE_CANTOPEN"}
DEADLOCK = 1213  # also, on a Galera cluster, a write that lost to another node's
BUSY = {DEADLOCK, 1205, "SQLITE_BUSY"}  # a deadlock, or a lock held too long: try again
DUPLICATE = {1062, "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
FOREIGN_KEY = {1451, 1452, "SQLITE_CONSTRAINT_FOREIGNKEY"}


def driver_error(exc: Exception) -> tuple[object, str]:
    """The driver's error code and message: what decides the answer, and what the log shows
    (SQLAlchemy's own message would add the SQL statement)."""
    error = getattr(exc, "orig", None)
    if error is None:  # the pool found no free connection in time
        return None, f"{type(exc).__name__}: no free connection within {WAIT:g} s"
    code = getattr(error, "sqlite_errorname", None) or error.args[0]  # SQLite's, or MySQL's
    return code, f"{type(error).__name__} ({code}) {error.args[-1]}"


def username_taken(error: IntegrityError) -> bool:
    code, message = driver_error(error)  # ends with the rule broken: users.username, 'username'
    return code in DUPLICATE and "username" in message.split()[-1]


class RetryRequest(Exception):
    """The database broke a deadlock by rolling this request's transaction back."""


def watch_commits(session: Session, request: Request) -> None:
    """Notes on the request whether its session committed: after that, it never runs again."""
    request.state.committed = False

    def committed(session: Session) -> None:
        request.state.committed = True

    event.listen(session, "after_commit", committed)


class RetryOnDeadlock:
    """Runs a request once more, from the start, after a deadlock, if its session had not
    committed: the database rolled back all it wrote, and the second run meets the rows the
    winner wrote, so a racing create of a taken username gets its 409 (README: Reliability).
    The body is kept as the route reads it, within the route's own size limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        kept: list[dict] = []

        async def receive_and_keep() -> dict:
            kept.append(await receive())
            return kept[-1]

        try:
            await self.app(scope, receive_and_keep, send)
        except RetryRequest:
            unread = iter(kept)

            async def receive_again() -> dict:  # the kept body, then what comes next
                return next(unread, None) or await receive()

            await self.app({**scope, "retried": True}, receive_again, send)


app.add_middleware(RetryOnDeadlock)


def where(request: Request) -> tuple[str, str]:
    return request.method, request.url.path


@app.exception_handler(DBAPIError)
@app.exception_handler(PoolTimeoutError)
async def database_error(request: Request, exc: Exception) -> JSONResponse:
    code, cause = driver_error(exc)
    committed = getattr(request.state, "committed", True)  # no session from get_session: as if
    if code == DEADLOCK and not committed and not request.scope.get("retried"):
        logger.warning("Database error on %s %s, running it again: %s", *where(request), cause)
        raise RetryRequest  # RetryOnDeadlock, above, catches it
    if code == DEADLOCK and committed:  # a second run would write the committed part again
        answer, headers = (500, "Internal Server Error"), None
        cause += "; not run again: the request had committed already"
    elif isinstance(exc, IntegrityError) and code in DUPLICATE | FOREIGN_KEY:
        # A rule of the schema that the route does not handle, such as a second unique column.
        answer, headers = (409, "Conflicts with existing data"), None
    elif code in BUSY:  # the same request, sent again, is likely to succeed
        answer, headers = (503, "Database busy, try again"), {"Retry-After": "1"}
    elif code in UNAVAILABLE or getattr(exc, "connection_invalidated", code is None):
        answer, headers = (503, "Database unavailable"), {"Retry-After": "5"}
    else:  # the model and the schema disagree, or a bug: a 500, and the cause in the log
        answer, headers = (500, "Internal Server Error"), None
    logger.error("Database error on %s %s, answered %s %s: %s", *where(request), *answer, cause)
    return JSONResponse({"detail": answer[1]}, answer[0], headers=headers)


# The id column is a 32-bit INT; a bigger number is refused (422) before it reaches SQL.
UserId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def get_user_or_404(session: Session, user_id: int) -> UserTable:
    user = session.get(UserTable, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, ERRORS[404])
    return user


@app.get("/", tags=["hello"])
def read_root() -> dict[str, str]:
    return {"message": "Hello, World!"}


# --- Health: for a load balancer or an orchestrator (README: Deploying) ----------------------
@app.get("/livez", tags=["health"])
async def livez() -> dict[str, str]:
    """The app runs. Never touches the database: a database blip must not restart the app."""
    return {"status": "alive"}


@app.get("/readyz", tags=["health"], responses=errors())
def readyz(request: Request) -> dict[str, str]:
    """The database answers `SELECT 1` within about 2 s: send this app traffic."""
    # Its own connection, with short timeouts: the check never waits for, nor takes, one that
    # requests need. A database error answers 503 (database_error).
    with request.state.probe.connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"status": "ready"}


# --- Section 8: CRUD ------------------------------------------------------------------------
@app.post(
    "/users/",
    response_model=UserOutput,
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, 409),
    tags=["users"],
)
def create_user(user: UserInput, session: SessionDep) -> UserTable:
    """Create a user. A username that is already taken answers 409."""
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    try:
        session.commit()
    except IntegrityError as error:
        if not username_taken(error):
            raise  # another rule: database_error() answers it
        # The unique index decides, not a SELECT beforehand: two requests racing for the same
        # username would both pass such a check, and one of them would then get a 500.
        raise HTTPException(status.HTTP_409_CONFLICT, ERRORS[409]) from None
    return new_user


@app.get("/users/", response_model=list[UserOutput], responses=errors(), tags=["users"])
def read_users(
    session: SessionDep,
    request: Request,
    response: Response,
    after_id: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    skip: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,  # no table has more rows
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> list[UserTable]:
    """List users in id order (the order they were created), `limit` (at most 100) at a time.

    Page with **`after_id`**: the users after that id. It costs the same at any depth, and
    the next page's URL comes in the `Link: <...>; rel="next"` header (none on the last page).
    **`skip`** works too, but the database reads and drops every skipped row: deep pages get slow.
    """
    if skip is not None and after_id is not None:  # a 422 in FastAPI's own shape, as for any query
        message, where = "Use skip or after_id, not both", ("query", "after_id")
        problem = {"type": "value_error", "loc": where, "msg": message, "input": after_id}
        raise RequestValidationError([problem])
    query = select(UserTable).order_by(UserTable.id).limit(limit + 1)  # one more: is there a next?
    if after_id is not None:
        query = query.where(UserTable.id > after_id)  # the primary key's index finds the start
    else:
        query = query.offset(skip or 0)
    users = list(session.scalars(query))
    if len(users) > limit:
        users.pop()
        # A relative link (RFC 8288): never built from the Host header, which the client chose.
        query = request.url.remove_query_params("skip").include_query_params(after_id=users[-1].id)
        response.headers["Link"] = f'<{request.url.path}?{query.query}>; rel="next"'
    return users


@app.get("/users/{user_id}", response_model=UserOutput, responses=errors(404), tags=["users"])
def read_user(user_id: UserId, session: SessionDep) -> UserTable:
    return get_user_or_404(session, user_id)


@app.patch(
    "/users/{user_id}", response_model=UserOutput, responses=errors(400, 404, 409), tags=["users"]
)
def update_user(user_id: UserId, changes: UserPatch, session: SessionDep) -> UserTable:
    """Change the fields you send; leave a field out to keep it."""
    user = get_user_or_404(session, user_id)
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(user, field, value)
    try:
        session.commit()  # sends the UPDATE
    except IntegrityError as error:
        if not username_taken(error):
            raise
        raise HTTPException(status.HTTP_409_CONFLICT, ERRORS[409]) from None
    except StaleDataError:  # another request deleted the row since we read it
        raise HTTPException(status.HTTP_404_NOT_FOUND, ERRORS[404]) from None
    return user


@app.delete(
    "/users/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(404),
    tags=["users"],
)
def delete_user(user_id: UserId, session: SessionDep) -> None:
    # One DELETE that counts the rows it removed: no SELECT first, no race with another DELETE.
    deleted = session.execute(delete(UserTable).where(UserTable.id == user_id)).rowcount
    session.commit()
    if deleted == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, ERRORS[404])
