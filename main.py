"""FastAPI + SQLAlchemy + MySQL: part 1 the tutorial, part 2 more CRUD, part 3 a real service."""

import logging
import pathlib
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
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, MetaData, String, create_engine, delete, event, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Mapped, Session, declarative_base, mapped_column
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import TypedDict  # Pydantic needs this one on Python 3.11

logger = logging.getLogger("uvicorn.error")  # uvicorn prints this logger's lines


# === Part 1: the tutorial ===================================================================
# --- Section 3: the database URL, the engine and the model ----------------------------------
class Settings(BaseSettings):  # from the environment, else from a .env file (.env.example)
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    database_url: str = "sqlite:///./app.db"  # no MySQL needed to start: an SQLite file
    sql_echo: bool = False  # true: log every SQL statement the app sends
    db_pool_size: int = 4  # connections per worker, and sessions at once (README: Performance)
    db_timeout: float = 10  # seconds a request waits for the database before a 503


settings = Settings()
# A stuck server must not hang requests (PyMySQL waits forever by default). Each wait gets half
# of DB_TIMEOUT: a request may wait twice, for a dead connection's ping, then for a new one.
WAIT = settings.db_timeout / 2
limits: dict = {"connect_args": {"timeout": WAIT}}  # an SQLite file: wait for another writer
if not settings.database_url.startswith("sqlite"):  # a server: DB_POOL_SIZE open connections
    limits = {"pool_size": settings.db_pool_size, "max_overflow": 0, "pool_timeout": WAIT}
    waits = ["connect_timeout", "read_timeout", "write_timeout"]
    limits["connect_args"] = dict.fromkeys(waits, WAIT)

db_engine = create_engine(
    settings.database_url,
    echo=settings.sql_echo,
    pool_pre_ping=True,  # a server restarts, a network drops: replace a dead connection first
    pool_recycle=3600,  # MySQL closes a connection idle for 8 hours: renew ours sooner
    pool_reset_on_return=None,  # a Session ends its own transaction: no second ROLLBACK
    **limits,
)

# Alembic's naming convention: one name per constraint on every database, for migrations.
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
    # utf8mb4: any Unicode, emoji too. utf8mb4_bin: exact, as SQLite (MySQL's default: "A" = "a").
    __table_args__ = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

    # A primary key and a UNIQUE column are indexed already: index=True would add a duplicate.
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    email: Mapped[str] = mapped_column(String(120))


# --- Section 4.1: Pydantic models check what clients send, and shape what they get ----------
# No whitespace at either end, no control characters; the examples pre-fill "Try it out".
NO_STRAY = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
Username = Annotated[str, Field(min_length=1, max_length=50, pattern=NO_STRAY, examples=["ada"])]
Email = Annotated[EmailStr, Field(max_length=120, examples=["ada@example.com"])]


class UserInput(BaseModel):
    username: Username
    email: Email


class UserOutput(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read the fields from a UserTable
    id: int
    username: str
    email: str


class Message(BaseModel):
    detail: str


ERRORS = {
    400: "Body is not UTF-8 JSON",
    404: "User not found",
    409: "Username already taken",
    503: "Database unavailable, or busy: try again after Retry-After seconds",
}


def errors(*codes: int) -> dict:  # a route's error answers, for /docs; 503 can meet any route
    return {code: {"model": Message, "description": ERRORS[code]} for code in (*codes, 503)}


# --- Section 4.2: one Session per request, always closed ------------------------------------
async def get_session(request: Request) -> AsyncIterator[Session]:
    # For a route of your own: take the session from here (SessionDep, or the tutorial's
    # Depends(get_session)) in a plain `def` route, which FastAPI runs in a thread, off the
    # event loop. A deadlock before its first commit runs the route once more (part 3): call
    # other services after commit().
    session = Session(db_engine, expire_on_commit=False)  # what we wrote stays readable
    watch_commits(session, request)  # part 3: the deadlock rerun
    async with database_turn(request, session):  # part 3: waits for a connection, then closes
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


# --- Section 5: the application -------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict]:
    # Startup runs up to `yield`, shutdown after it. Requests see what it yields as request.state.
    logger.info("Database: %s", db_engine.url.render_as_string(hide_password=True))
    prepare_database()  # part 3: create_tables() (section 5.1), tried again if it must be
    probe = readiness_engine()
    yield {"db_turns": anyio.Semaphore(settings.db_pool_size), "probe": probe}
    probe.dispose()  # both say goodbye to the server: no "Aborted connection" in its log
    db_engine.dispose()


# FastAPI whose /docs and /redoc load their files from the app, not from a CDN: no internet.
app = FastAPIOffline(
    title="Users API: the FastAPI + SQLAlchemy + MySQL reference app",
    description="Follows the tutorial *Databases and ORM in FastAPI*. Try **POST /users/** first.",
    version="1.0.0",
    lifespan=lifespan,
    max_body_size=64 * 1024,  # a user is a few hundred bytes: a larger body is refused unread
)


@app.get("/", tags=["hello"])
def read_root() -> dict[str, str]:
    return {"message": "Hello, World!"}


# --- Section 5.1: create the tables ---------------------------------------------------------
def create_tables() -> None:
    """create_all creates the tables that are missing and never changes one that exists."""
    database = inspect(db_engine)
    if database.has_table("alembic_version"):
        return  # Alembic manages this database: `alembic upgrade head` changes it, not create_all
    new = not database.get_table_names()
    BaseModelClass.metadata.create_all(db_engine)
    if new:
        record_newest_revision()  # part 3: Alembic learns that these tables are up to date


# --- Section 8: create a user, approach A (the session comes from the dependency) -----------
@app.post(
    "/users/", status_code=status.HTTP_201_CREATED, responses=errors(400, 409), tags=["users"]
)
def create_user(user: UserInput, session: SessionDep) -> UserOutput:
    """Create a user. A username that is already taken answers 409."""
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()  # a taken username: the unique index says no, and part 3 answers 409
    return UserOutput.model_validate(new_user)  # the row's fields that the client gets


# === Part 2: more CRUD =======================================================================
class UserPatch(TypedDict, total=False):  # a field may be left out, but not be null
    username: Username
    email: Email


UserId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # the id column is a 32-bit INT


def get_user_or_404(session: Session, user_id: int) -> UserTable:
    user = session.get(UserTable, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, ERRORS[404])
    return user


@app.get("/users/", responses=errors(), tags=["users"])
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
        query = request.url.remove_query_params("skip").include_query_params(after_id=users[-1].id)
        response.headers["Link"] = f'<{request.url.path}?{query.query}>; rel="next"'
    return [UserOutput.model_validate(user) for user in users]


@app.get("/users/{user_id}", responses=errors(404), tags=["users"])
def read_user(user_id: UserId, session: SessionDep) -> UserOutput:
    return UserOutput.model_validate(get_user_or_404(session, user_id))


@app.patch("/users/{user_id}", responses=errors(400, 404, 409), tags=["users"])
def update_user(user_id: UserId, changes: UserPatch, session: SessionDep) -> UserOutput:
    """Change the fields you send; leave a field out to keep it."""
    user = get_user_or_404(session, user_id)
    for field, value in changes.items():
        setattr(user, field, value)
    try:
        session.commit()  # sends the UPDATE; a taken username answers 409, as in create_user
    except StaleDataError:  # another request deleted the row since we read it
        raise HTTPException(status.HTTP_404_NOT_FOUND, ERRORS[404]) from None
    return UserOutput.model_validate(user)


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


# === Part 3: what a real service adds =======================================================
# --- Turns: at most DB_POOL_SIZE sessions at once ---------------------------------------------
# A session keeps its connection until it closes, after FastAPI checked the answer in another
# thread. With more sessions than connections, threads would wait for connections held by
# requests that wait for threads. A turn, awaited on the event loop, comes with a connection.
@asynccontextmanager
async def database_turn(request: Request, session: Session) -> AsyncIterator[None]:
    try:
        with anyio.fail_after(WAIT):
            await request.state.db_turns.acquire()
    except TimeoutError:  # no turn, no connection: the pool's own answer (database_error)
        raise PoolTimeoutError("no turn") from None
    try:
        yield
    finally:  # close the session before another request gets the turn
        try:
            if session.in_transaction():  # after a read: a ROLLBACK, which waits for the server
                await run_in_threadpool(session.close)
            else:  # after a commit, closing sends nothing
                session.close()
        except DBAPIError as error:  # the connection died: the server rolls back by itself
            logger.warning("Closing a session: %s", driver_error(error)[1])
        finally:
            request.state.db_turns.release()


# --- Database errors: an honest answer for each, the real cause in the log -------------------
# Refused, gone, lost, too many connections, shutting down; Galera without quorum (1047, 1180).
UNAVAILABLE = {2002, 2003, 2006, 2013, 2055, 1040, 1053, 1047, 1180, "SQLITE_CANTOPEN"}
BUSY = {1213, 1205, "SQLITE_BUSY"}  # a deadlock (on Galera also a lost clash), a lock held long
UNIQUE = {1062, "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
CONFLICT = UNIQUE | {1451, 1452, "SQLITE_CONSTRAINT_FOREIGNKEY"}  # and the foreign keys


def driver_error(error: Exception) -> tuple[object, str]:  # decide the answer, fill the log
    if (cause := getattr(error, "orig", None)) is None:  # the pool had no free connection
        return None, f"{type(error).__name__}: no free connection in {WAIT:g} s"
    code = getattr(cause, "sqlite_errorname", None) or cause.args[0]  # SQLite's, or MySQL's
    return code, f"{type(cause).__name__} ({code}) {cause.args[-1]}"


@app.exception_handler(DBAPIError)
@app.exception_handler(PoolTimeoutError)
async def database_error(request: Request, error: Exception) -> JSONResponse:
    (code, cause), where = driver_error(error), f"{request.method} {request.url.path}"
    committed = getattr(request.state, "committed", None)  # None: no session from get_session
    if code == 1213 and committed is False and not request.scope.get("rerun"):  # a deadlock
        logger.warning("Database error on %s, running it again: %s", where, cause)
        raise RunAgain(await request.body())  # the body the route read (cached): run it again
    # A taken username (the message ends with users.username, or 'username'): the unique index
    # decides, not a SELECT first, which two racing requests would both pass.
    if isinstance(error, IntegrityError) and code in UNIQUE and "username" in cause.split()[-1]:
        return JSONResponse({"detail": ERRORS[409]}, status.HTTP_409_CONFLICT)
    if isinstance(error, IntegrityError) and code in CONFLICT:  # another rule: a bug, logged
        answer = 409, "Conflicts with existing data", None
    elif code in BUSY and not committed:  # the same request, sent again, is likely to succeed
        answer = 503, "Database busy, try again", "1"
    elif code is None or code in UNAVAILABLE or error.connection_invalidated:
        answer = 503, "Database unavailable", "5"
    else:  # the schema and the model disagree, a bug, or busy after a commit: see the log
        answer = 500, "Internal Server Error", None
        cause += "; not run again: the request had committed already" if code in BUSY else ""
    logger.error("Database error on %s, answered %s %s: %s", where, *answer[:2], cause)
    headers = {"Retry-After": answer[2]} if answer[2] else None
    return JSONResponse({"detail": answer[1]}, answer[0], headers=headers)


# --- A deadlock: the request runs once more, unless it has committed something --------------
# MySQL breaks a deadlock (Galera, a clash of nodes' writes) by undoing one transaction: run
# again, it meets the winner's rows, and a racing create gets its 409. Not after a commit: that
# part would be written twice, so database_error() answers 500.
def watch_commits(session: Session, request: Request) -> None:
    request.state.committed = False

    def committed(session: Session) -> None:
        request.state.committed = True

    event.listen(session, "after_commit", committed)


class RunAgain(Exception):
    pass


def run_again_after_deadlock(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except RunAgain as again:
            body = [{"type": "http.request", "body": again.args[0]}]

            async def receive_again() -> dict:  # the same body, then what the client sends
                return body.pop() if body else await receive()

            await app({**scope, "rerun": True}, receive_again, send)

    return middleware


app.add_middleware(run_again_after_deadlock)


# --- Health probes, for a load balancer or an orchestrator (README: Deploying) --------------
@app.get("/livez", tags=["health"])
async def livez() -> dict[str, str]:
    """The app runs. Never touches the database: a database blip must not restart the app."""
    return {"status": "alive"}


@app.get("/readyz", tags=["health"], responses=errors())
def readyz(request: Request) -> dict[str, str]:
    """The database answers `SELECT 1` within about 2 s: send this app traffic."""
    with request.state.probe.connect() as connection:  # a database error answers 503
        connection.execute(text("SELECT 1"))
    return {"status": "ready"}


def readiness_engine() -> Engine:
    # One connection of its own, pinged, 1 s timeouts: it never waits for one requests need.
    sqlite = db_engine.dialect.name == "sqlite"
    quick = {"timeout": 1} if sqlite else {"connect_timeout": 1, "read_timeout": 1}
    one = {"poolclass": QueuePool, "pool_size": 1, "max_overflow": 0, "pool_timeout": 1}
    return create_engine(db_engine.url, pool_pre_ping=True, connect_args=quick, **one)


# --- Startup: the tables, whoever else is starting -----------------------------------------
def prepare_database() -> None:
    # Other workers, or apps on other nodes, may be creating the same tables now: three tries.
    for attempt in (1, 2, 3):
        try:
            create_tables()
            break
        except (OperationalError, IntegrityError) as error:
            if attempt == 3:  # one clear line, not a driver traceback
                url = db_engine.url.render_as_string(hide_password=True)
                message = f"Cannot use the database {url}: {error.orig}. Check that the server"
                raise RuntimeError(f"{message} is running and DATABASE_URL is right.") from None
    # create_all never changes an existing table: stop if one lacks a column the model has.
    database = inspect(db_engine)
    for table in BaseModelClass.metadata.sorted_tables:
        there = database.get_columns(table.name) if database.has_table(table.name) else []
        if missing := [c.name for c in table.columns if c.name not in {t["name"] for t in there}]:
            columns, hint = ", ".join(map(repr, missing)), "README: Changing the schema"
            raise RuntimeError(
                f"Table '{table.name}' has no column {columns}, which the model"
                f" declares. Run `alembic upgrade head` ({hint})."
            )


def record_newest_revision() -> None:
    # create_all just made what the newest revision describes: `stamp head` tells Alembic.
    if (migrations := pathlib.Path(__file__).with_name("migrations")).is_dir():
        with db_engine.begin() as connection:
            MigrationContext.configure(connection).stamp(ScriptDirectory(str(migrations)), "head")


# --- SQLite obeys foreign keys only if asked: the app's connections do (Alembic's must not) --
@event.listens_for(db_engine, "connect")
def enforce_foreign_keys(dbapi_connection: object, connection_record: object) -> None:
    if db_engine.dialect.name == "sqlite":
        dbapi_connection.execute("PRAGMA foreign_keys = ON")
