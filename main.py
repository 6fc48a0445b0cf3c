"""FastAPI + SQLAlchemy + MySQL: part 1 the tutorial, part 2 more CRUD, part 3 a real service."""

# === Part 1: the tutorial, sections 3 to 8 in its order =====================================
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, status
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, MetaData, String, create_engine
from sqlalchemy.orm import Mapped, Session, declarative_base, mapped_column


# --- Section 3: the database URL, the engine and the model ----------------------------------
class Settings(BaseSettings):  # from the environment, else from .env; a bad value stops the app
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    database_url: str = "sqlite:///./app.db"  # no MySQL needed to start: an SQLite file
    sql_echo: bool = False  # true: print every SQL statement the app sends
    db_pool_size: int = Field(4, ge=1)  # connections each worker process keeps open
    db_timeout: float = Field(10, ge=4)  # seconds a request waits for the database at most


settings = Settings()


def create_db_engine(database_url: str) -> Engine:  # the tests build their engines here too
    return create_engine(
        database_url,
        echo=settings.sql_echo,
        pool_size=settings.db_pool_size,
        pool_pre_ping=True,  # a server restarts, a network drops: test a connection before use
        pool_recycle=3600,  # MySQL closes a connection idle for 8 hours: renew ours sooner
    )


db_engine = create_db_engine(settings.database_url)

# Alembic's naming convention: a constraint has the same name on every database, so that a
# migration can name the one it changes (README: Changing the schema).
naming_convention = {
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(column_0_label)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}
BaseModelClass = declarative_base(metadata=MetaData(naming_convention=naming_convention))


class UserTable(BaseModelClass):
    __tablename__ = "users"
    # utf8mb4: any Unicode, emoji too. utf8mb4_bin: exact, as SQLite (MySQL's default: "A" = "a").
    __table_args__ = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

    # A primary key and a UNIQUE column are indexed already: index=True would add a duplicate.
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    email: Mapped[str] = mapped_column(String(120))


# --- Section 4.1: Pydantic models check what clients send, and shape what they get ----------
# A username: 1 to 50 characters, as the column; no whitespace at either end, no control
# characters. The examples fill the form of "Try it out" in /docs.
visible_text = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
Username = Annotated[str, Field(min_length=1, max_length=50, pattern=visible_text)]
Email = Annotated[EmailStr, Field(max_length=120)]


class UserInput(BaseModel):
    username: Username = Field(examples=["ada"])
    email: Email = Field(examples=["ada@example.com"])


class UserOutput(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # model_validate() reads a UserTable row
    id: int
    username: str
    email: str


class Message(BaseModel):  # an error answer, as /docs shows it: {"detail": "..."}
    detail: str


# --- Section 4.2: one Session per request, always closed ------------------------------------
async def get_session() -> AsyncIterator[Session]:
    # For a route of your own: a plain `def` route (FastAPI runs it in a thread, so its SQL
    # never blocks other requests) that takes `session: SessionDep`, or the tutorial's
    # `Depends(get_session)`. A deadlock before its first commit() runs the request once more
    # (part 3): call other services (e-mail, payments) after commit(), not before.
    with Session(db_engine, expire_on_commit=False) as session:  # what we wrote stays readable
        async with database_turn(session):  # part 3: one request per connection at a time
            yield session


# "function": the session closes when the route returns, before the answer is sent.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# --- Section 5: the application -------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # FastAPI runs this once: the part before `yield` at startup, the rest at shutdown.
    prepare_database()  # part 3: waits for the database, then create_tables() (section 5.1)
    yield
    db_engine.dispose()  # close our connections: the server logs no "Aborted connection"


# FastAPI, with /docs served by the app itself (no CDN, works offline).
app = FastAPIOffline(
    title="Users API: the FastAPI + SQLAlchemy + MySQL reference app",
    description="Follows the tutorial *Databases and ORM in FastAPI*. Try **POST /users/** first.",
    lifespan=lifespan,
    max_body_size=64 * 1024,  # a user is a few hundred bytes: a larger body is refused unread
    # An answer any route may give, listed in /docs: the database is unavailable or busy.
    responses={503: {"model": Message, "description": "Database unavailable or busy"}},
)


@app.get("/", tags=["hello"])
def read_root() -> dict[str, str]:
    return {"message": "Hello, World!"}


# --- Section 5.1: create the tables ---------------------------------------------------------
def create_tables() -> None:  # creates the tables that are missing, never changes one
    BaseModelClass.metadata.create_all(db_engine)


# --- Section 8: create a user, approach A (the session comes from the dependency) -----------
@app.post(
    "/users/",
    status_code=status.HTTP_201_CREATED,
    responses={400: {"model": Message}, 409: {"model": Message}},  # body not JSON, name taken
    tags=["users"],
)
def create_user(user: UserInput, session: SessionDep) -> UserOutput:
    """Create a user. A username that is already taken answers 409."""
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()  # a taken username: the unique index says no, and part 3 answers 409
    return UserOutput.model_validate(new_user)


# === Part 2: more CRUD =======================================================================
from fastapi import HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm.exc import StaleDataError
from typing_extensions import TypedDict  # Pydantic needs this one on Python 3.11


class UserPatch(TypedDict, total=False):  # a field may be left out, but not be null
    username: Username
    email: Email


UserId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # the id column is a 32-bit INT
not_found = {404: {"model": Message, "description": "User not found"}}


def get_user_or_404(session: Session, user_id: int) -> UserTable:
    user = session.get(UserTable, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")
    return user


@app.get("/users/", tags=["users"])
def read_users(
    session: SessionDep,
    request: Request,
    response: Response,
    after_id: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    skip: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,  # no table has more rows
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> list[UserOutput]:
    """Users in id order: page with **`after_id`** (next page: the `Link` header), or `skip`."""
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
        next_page = request.url.remove_query_params("skip")
        next_page = next_page.include_query_params(after_id=users[-1].id)
        response.headers["Link"] = f'<{request.url.path}?{next_page.query}>; rel="next"'
    return [UserOutput.model_validate(user) for user in users]


@app.get("/users/{user_id}", responses=not_found, tags=["users"])
def read_user(user_id: UserId, session: SessionDep) -> UserOutput:
    return UserOutput.model_validate(get_user_or_404(session, user_id))


@app.patch(
    "/users/{user_id}",
    responses={**not_found, 400: {"model": Message}, 409: {"model": Message}},
    tags=["users"],
)
def update_user(user_id: UserId, changes: UserPatch, session: SessionDep) -> UserOutput:
    """Change the fields you send; leave a field out to keep it."""
    user = get_user_or_404(session, user_id)
    for field, value in changes.items():
        setattr(user, field, value)
    try:
        session.commit()  # sends the UPDATE; a taken username answers 409, as in create_user
    except StaleDataError:  # another request deleted the row since we read it
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found") from None
    return UserOutput.model_validate(user)


@app.delete("/users/{user_id}", status_code=204, responses=not_found, tags=["users"])
def delete_user(user_id: UserId, session: SessionDep) -> None:
    # One DELETE that counts the rows it removed: no SELECT first, no race with another DELETE.
    deleted = session.execute(delete(UserTable).where(UserTable.id == user_id)).rowcount
    session.commit()
    if deleted == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")


# === Part 3: what a real service adds =======================================================
import logging
import pathlib
import sqlite3
import time

import anyio
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from anyio.lowlevel import RunVar
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Dialect, event, inspect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("uvicorn.error")  # uvicorn prints this logger's lines
# The longest one wait for the database may take: half of DB_TIMEOUT, since a request may
# wait twice (for the ping of a pooled connection that died, then for a new connection).
WAIT_SECONDS = settings.db_timeout / 2


# --- Bounded waits: PyMySQL waits for a stuck server forever, InnoDB for a lock 50 s ---------
def limit_waits(engine: Engine) -> Engine:  # db_engine's, and the tests' engines (conftest.py)
    @event.listens_for(engine, "do_connect")
    def add_timeouts(dialect: Dialect, record: object, args: list, options: dict) -> None:
        if dialect.name == "sqlite":  # another writer holds the file: wait this long
            options["timeout"] = WAIT_SECONDS
        else:  # to connect, and for each answer: a stalled server must not hang a request
            for timeout in ("connect_timeout", "read_timeout", "write_timeout"):
                options[timeout] = WAIT_SECONDS

    # The server ends a lock wait or a statement a second before we would give up: its error
    # then answers 503 busy, and nothing of ours keeps running there.
    @event.listens_for(engine, "connect")
    def set_up(dbapi_connection: sqlite3.Connection, record: object) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):  # SQLite obeys foreign keys only
            dbapi_connection.execute("PRAGMA foreign_keys = ON")  # if asked
            return
        seconds = WAIT_SECONDS - 1
        statement = f"max_execution_time = {seconds * 1000:.0f}"  # MySQL: a SELECT's, in ms
        if "MariaDB" in dbapi_connection.get_server_info():
            statement = f"max_statement_time = {seconds}"  # MariaDB: any statement's
        with dbapi_connection.cursor() as cursor:  # a row lock, a table lock, a statement
            locks = f"innodb_lock_wait_timeout = {seconds:.0f}, lock_wait_timeout = {seconds:.0f}"
            cursor.execute(f"SET SESSION {locks}, {statement}")

    return engine


limit_waits(db_engine)


# --- Turns: at most DB_POOL_SIZE sessions at once -------------------------------------------
# A read route's session keeps its connection until it closes, after FastAPI has checked the
# answer in another thread: with more sessions than connections, threads would wait for
# connections held by requests that wait for threads. A turn comes with a free connection.
turns_of_this_loop: RunVar[anyio.Semaphore] = RunVar("turns")  # one loop per uvicorn worker
# What database_turn() notes on a database error, for database_error(): may it run again?
NOTHING_COMMITTED, COMMITTED = "nothing committed yet", "the request had committed already"


@asynccontextmanager
async def database_turn(session: Session) -> AsyncIterator[None]:
    if (turns := turns_of_this_loop.get(None)) is None:
        turns_of_this_loop.set(turns := anyio.Semaphore(settings.db_pool_size))
    try:
        with anyio.fail_after(WAIT_SECONDS):  # waited for on the event loop, not in a thread
            await turns.acquire()
    except TimeoutError:  # every turn is taken: the app's own limit, not the database
        logger.warning("No database turn free in %g s: answered 503 busy", WAIT_SECONDS)
        raise HTTPException(503, "Database busy, try again", {"Retry-After": "1"}) from None
    event.listen(session, "after_commit", remember_commit)
    try:
        yield
    except DBAPIError as error:
        error.add_note(COMMITTED if session.info.get("committed") else NOTHING_COMMITTED)
        raise
    finally:  # closed before the next request gets the turn
        try:
            if session.in_transaction():  # after a read: a ROLLBACK, which waits for the server
                await run_in_threadpool(session.close)
            else:  # after a commit, closing sends nothing
                session.close()
        except DBAPIError as error:  # the connection died: the server rolls back by itself
            logger.warning("Closing a session: %s", describe(error))
        finally:
            turns.release()


def remember_commit(session: Session) -> None:
    session.info["committed"] = True


# --- A deadlock: the request runs once more, unless it has committed something --------------
# MySQL breaks a deadlock (Galera, a clash of nodes' writes) by undoing one transaction: run
# again, it meets the winner's rows, and a racing create gets its 409. Not after a commit: that
# part would be written twice (database_error() answers 500).
class RunAgain(Exception):
    pass


KEPT_BODY_BYTES = 1024 * 1024  # a larger body is not kept: its deadlock answers 503 busy


def run_again_after_deadlock(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        scope["can_run_again"], body = True, []  # the body, as the route read it: replayed

        async def receive_and_keep() -> dict:
            message = await receive()
            if message["type"] == "http.request" and scope["can_run_again"]:
                body.append(message)
                if sum(len(kept.get("body", b"")) for kept in body) > KEPT_BODY_BYTES:
                    scope["can_run_again"], body[:] = False, []
            return message

        try:
            return await app(scope, receive_and_keep, send)
        except RunAgain:
            replay = iter(body)

        async def receive_again() -> dict:  # the same body, then what the client sends
            return next(replay, None) or await receive()

        await app({**scope, "can_run_again": False}, receive_again, send)

    return middleware


app.add_middleware(run_again_after_deadlock)


# --- Database errors: an honest answer for each, the real cause in the log -------------------
# Refused, gone, lost, too many connections, shutting down; Galera without quorum (1047, 1180).
UNAVAILABLE_CODES = {2002, 2003, 2006, 2013, 2055, 1040, 1053, 1047, 1180, "SQLITE_CANTOPEN"}
# A deadlock (on Galera, also a lost clash), a lock held too long, a statement too long.
BUSY_CODES = {1213, 1205, 1969, 3024, "SQLITE_BUSY"}
UNIQUE_CODES = {1062, "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
CONFLICT_CODES = UNIQUE_CODES | {1451, 1452, "SQLITE_CONSTRAINT_FOREIGNKEY"}  # foreign keys


def driver_code(error: Exception) -> int | str | None:  # MySQL's number, SQLite's name
    cause = getattr(error, "orig", None)  # none: the pool had no free connection
    return cause and (getattr(cause, "sqlite_errorname", None) or cause.args[0])


def describe(error: Exception) -> str:  # for the log: the driver's words, never the SQL
    cause = getattr(error, "orig", error)
    return f"{type(cause).__name__} ({driver_code(error)}) {cause.args[-1]}"


@app.exception_handler(DBAPIError)
@app.exception_handler(PoolTimeoutError)
async def database_error(request: Request, error: Exception) -> JSONResponse:
    code, cause, where = driver_code(error), describe(error), f"{request.method} {request.url.path}"
    notes = getattr(error, "__notes__", [])  # database_turn()'s: none for a session of yours
    if code == 1213 and NOTHING_COMMITTED in notes and request.scope.get("can_run_again"):
        logger.warning("Database error on %s, running it again: %s", where, cause)
        raise RunAgain  # run_again_after_deadlock() runs the request a second time
    # A taken username (the message ends with users.username, or 'uq_users_username'): the
    # unique index decides, not a SELECT first, which two racing requests would both pass.
    if isinstance(error, IntegrityError) and code in UNIQUE_CODES and "username" in cause[-20:]:
        return JSONResponse({"detail": "Username already taken"}, status.HTTP_409_CONFLICT)
    retry_after = None
    if isinstance(error, IntegrityError) and code in CONFLICT_CODES:  # another rule: a bug
        status_code, detail = 409, "Conflicts with existing data"
    elif (code in BUSY_CODES and COMMITTED not in notes) or isinstance(error, PoolTimeoutError):
        status_code, detail, retry_after = 503, "Database busy, try again", "1"  # send it again
    elif code in UNAVAILABLE_CODES or error.connection_invalidated:
        status_code, detail, retry_after = 503, "Database unavailable", "5"
    else:  # the schema and the model disagree, a bug, or busy after a commit: see the log
        status_code, detail = 500, "Internal Server Error"
        cause += f"; not run again: {COMMITTED}" if COMMITTED in notes else ""
    logger.error("Database error on %s, answered %s %s: %s", where, status_code, detail, cause)
    headers = {"Retry-After": retry_after} if retry_after else None
    return JSONResponse({"detail": detail}, status_code, headers=headers)


# --- Health probes, for a load balancer or an orchestrator (README: Deploying) --------------
@app.get("/livez", tags=["health"])
async def livez() -> dict[str, str]:
    """The app runs. Never touches the database: a database blip must not restart the app."""
    return {"status": "alive"}


@app.get("/readyz", tags=["health"])
def readyz(session: SessionDep) -> dict[str, str]:
    """The users table answers a read within DB_TIMEOUT: send this app traffic."""
    # A table, not `SELECT 1`, which a Galera node without quorum still answers.
    session.scalar(select(UserTable.id).limit(1))  # a database error answers 503
    return {"status": "ready"}


# --- Startup: wait for the database, create the tables, tell Alembic ------------------------
STARTUP_WAIT_SECONDS = 15  # a database still starting (a reboot, compose): tries this long
REFUSED_AT_ONCE = {1044, 1045, 1049, "SQLITE_CANTOPEN"}  # a login, a name: no use waiting


def prepare_database() -> None:
    url = db_engine.url.render_as_string(hide_password=True)
    logger.info("Database: %s", url)
    deadline, pause = time.monotonic() + STARTUP_WAIT_SECONDS, 0.25
    while True:  # workers starting together may also meet here: each tries again
        try:
            create_managed_tables()
            return check_tables()
        except (OperationalError, IntegrityError) as error:
            if driver_code(error) in REFUSED_AT_ONCE or (left := deadline - time.monotonic()) <= 0:
                message = f"Cannot use the database {url}: {error.orig}. Check that the server"
                raise RuntimeError(f"{message} is running and DATABASE_URL is right.") from None
            logger.warning("Database not ready (%s): again in %.2f s", describe(error), pause)
            time.sleep(min(pause, left))
            pause *= 2


def create_managed_tables() -> None:
    # Alembic manages a database once it has its alembic_version table: create_all leaves it
    # alone. Tables that create_all makes from nothing are what the newest revision describes.
    database = inspect(db_engine)
    if database.has_table("alembic_version"):
        return
    none_yet = not any(map(database.has_table, BaseModelClass.metadata.tables))
    create_tables()
    migrations = pathlib.Path(__file__).with_name("migrations")  # none beside a copied main.py
    if none_yet and migrations.is_dir():
        with db_engine.begin() as connection:
            MigrationContext.configure(connection).stamp(ScriptDirectory(str(migrations)), "head")


def check_tables() -> None:
    # create_all never changes a table that exists: stop if one lacks what the models declare.
    database = inspect(db_engine)
    for table in BaseModelClass.metadata.sorted_tables:
        if not database.has_table(table.name):
            problem = "is missing"
        else:
            existing = {column["name"] for column in database.get_columns(table.name)}
            missing = [repr(column.name) for column in table.columns if column.name not in existing]
            if not missing:
                continue
            problem = f"has no column {', '.join(missing)}"
        raise RuntimeError(
            f"Table '{table.name}' {problem}, which the models declare. Unless a revision has"
            ' it already, write one: `alembic revision --autogenerate -m "..."`; then run'
            " `alembic upgrade head` (README: Changing the schema)."
        )
