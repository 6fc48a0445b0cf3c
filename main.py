# === Part 1 of 3: the tutorial, sections 3 to 8 in its order (2: more CRUD, 3: a real service)
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, status
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, MetaData, String, create_engine
from sqlalchemy.orm import Mapped, Session, declarative_base, mapped_column


# --- Section 3: the database URL, the engine and the model ----------------------------------
class Settings(BaseSettings):  # read from the environment, else from a .env file (.env.example)
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")  # and .env's other lines
    database_url: str = "sqlite:///./app.db"  # the tutorial's DB_URL; SQLite needs no server
    db_pool_size: int = Field(4, ge=1)  # connections kept open per worker process; ge: at least
    db_timeout: float = Field(10, ge=4)  # seconds a request may wait for the database (part 3)


settings = Settings()  # a bad value stops the app here, with a message that names the setting


def create_db_engine(database_url: str) -> Engine:  # the tests build their engines here too
    return create_engine(
        database_url,
        pool_size=settings.db_pool_size,
        pool_pre_ping=True,  # a server restarts, a network drops: test a connection before use
        pool_recycle=3600,  # MySQL closes connections idle for 8 hours: renew ours every hour
    )


db_engine = create_db_engine(settings.database_url)

# Alembic changes tables that hold rows (README: Changing the schema). It needs every index and
naming_convention = {  # constraint named alike on every database: these patterns name them
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(column_0_label)s",  # a column's label: its table's name, then its own
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}
BaseModelClass = declarative_base(metadata=MetaData(naming_convention=naming_convention))


class UserTable(BaseModelClass):
    __tablename__ = "users"
    # utf8mb4: any Unicode, emoji too. utf8mb4_bin: exact, as SQLite (MySQL's default: "A" = "a").
    __table_args__ = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

    # SQLAlchemy 2's typed Column(...). A key or a UNIQUE column has its index: no index=True.
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    email: Mapped[str] = mapped_column(String(120))


# --- Section 4.1: Pydantic models check what clients send, and shape what they get ----------
def one_spelling(name: str) -> str:  # a username is text, not code points (README: Usernames)
    folded = unicodedata.normalize("NFKC", name)  # é, or e and an accent; ﬁ or fi: one spelling
    invisible = {f"U+{ord(c):04X}" for c in folded if unicodedata.category(c) == "Cf"}
    if refused := sorted(invisible - {"U+200C", "U+200D"}):  # these join emoji, and some letters
        raise ValueError(f"invisible or direction-changing characters: {', '.join(refused)}")
    return folded


# Annotated: a type with its rules, for UserInput and UserPatch (part 2): 200 characters as sent
# at most (NFKC's work grows with them), then 1 to 50; no space at either end, no control codes.
name_pattern = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
FoldedName = Annotated[str, Field(max_length=200), AfterValidator(one_spelling)]
Username = Annotated[FoldedName, Field(min_length=1, max_length=50, pattern=name_pattern)]
Email = Annotated[EmailStr, Field(max_length=120)]


class UserInput(BaseModel):  # both required; the examples fill /docs' form, to try the API
    username: Username = Field(examples=["ada"])
    email: Email = Field(examples=["ada@example.com"])


class UserOutput(BaseModel):  # what a client gets back: the tutorial's dict, as a model
    model_config = ConfigDict(from_attributes=True)  # model_validate() reads a UserTable row
    id: int
    username: str
    email: str


# --- Section 4.2: one Session per request, always closed ------------------------------------
async def get_session() -> AsyncIterator[Session]:
    # For a route of your own: a plain `def` route (FastAPI runs it in a thread, so its SQL
    # never blocks other requests) taking `session: SessionDep`, or the tutorial's
    # `Depends(get_session)`. Call other services (e-mail, payments) after commit(): when two
    # requests wait for each other's rows, the database undoes one, and part 3 runs it again.
    with Session(db_engine, expire_on_commit=False) as session:  # readable after commit()
        # async: it waits on the event loop, not in a thread, for one of DB_POOL_SIZE turns.
        async with database_turn(session):  # part 3: a turn comes with a free connection
            yield session


# "function": closed when the route returns; by default, only once a slow client has it all.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# --- Section 5: the application -------------------------------------------------------------
@asynccontextmanager  # turns the function below into the `with` block FastAPI wraps around it
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    prepare_database()  # at startup (part 3): wait for the database, then create_tables()
    yield  # the app serves requests here
    db_engine.dispose()  # at shutdown: close our connections, so the server logs no error


app = FastAPIOffline(  # FastAPI, with /docs served by the app itself: no CDN, works offline
    lifespan=lifespan,
    max_body_size=64 * 1024,  # a user is a few hundred bytes: a larger body is refused unread
    responses={503: {"description": "Database unavailable or busy"}},  # for /docs, on any route
)


@app.get("/")
def read_root() -> dict[str, str]:
    return {"message": "Hello, World!"}


# --- Section 5.1: create the tables ---------------------------------------------------------
def create_tables() -> None:  # creates the tables that are missing, never changes one
    BaseModelClass.metadata.create_all(db_engine)


# --- Section 8: create a user, approach A (the session comes from the dependency) -----------
# 201 Created, for a new row. /docs also lists 400 (a body that is not JSON) and 409 (taken).
@app.post("/users/", status_code=status.HTTP_201_CREATED, responses={400: {}, 409: {}})
def create_user(user: UserInput, session: SessionDep) -> UserOutput:
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()  # a taken username: the unique index says no, and part 3 answers 409
    return UserOutput.model_validate(new_user)  # the new id is there: no refresh() needed


# === Part 2: more CRUD =======================================================================
from fastapi import HTTPException, Path, Query, Request, Response
from sqlalchemy import delete, select
from sqlalchemy.orm.exc import StaleDataError
from typing_extensions import TypedDict  # Pydantic needs this one on Python 3.11


class UserPatch(TypedDict, total=False):  # a field may be left out, but not be null
    username: Username
    email: Email


UserId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # the id column is a 32-bit INT
not_found = {404: {"description": "User not found"}}


def get_user_or_404(session: Session, user_id: int) -> UserTable:
    user = session.get(UserTable, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")
    return user


@app.get("/users/")
def read_users(
    session: SessionDep,
    request: Request,
    response: Response,
    after_id: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    skip: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,  # no table has more rows
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> list[UserOutput]:
    """Users in id order: page with **`after_id`** (next page: the `Link` header), or `skip`."""
    # after_id: the primary key's index finds the start. skip: rows read, then thrown away.
    query = select(UserTable).where(UserTable.id > after_id).order_by(UserTable.id)
    users = list(session.scalars(query.offset(skip).limit(limit + 1)))  # one more: a next page?
    if len(users) > limit:
        users.pop()
        # A relative link (RFC 8288): never built from the Host header, which the client chose.
        next_page = request.url.remove_query_params("skip")
        next_page = next_page.include_query_params(after_id=users[-1].id)
        response.headers["Link"] = f'<{request.url.path}?{next_page.query}>; rel="next"'
    return [UserOutput.model_validate(user) for user in users]


@app.get("/users/{user_id}", responses=not_found)
def read_user(user_id: UserId, session: SessionDep) -> UserOutput:
    return UserOutput.model_validate(get_user_or_404(session, user_id))


@app.patch("/users/{user_id}", responses={**not_found, 400: {}, 409: {}})
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


@app.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=not_found)
def delete_user(user_id: UserId, session: SessionDep) -> None:
    # One DELETE that counts the rows it removed: no SELECT first, no race with another DELETE.
    deleted = session.execute(delete(UserTable).where(UserTable.id == user_id)).rowcount
    session.commit()
    if deleted == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")


# === Part 3: what a real service adds =======================================================
import logging
import pathlib
import time

import anyio
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from anyio.lowlevel import RunVar
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Dialect, event, exc, inspect
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("uvicorn.error")  # uvicorn prints this logger's lines
app.title = "Users API: the FastAPI + SQLAlchemy + MySQL reference app"  # /docs shows these
app.description = "Follows the tutorial *Databases and ORM in FastAPI*. Try **POST /users/** first."
WAIT_SECONDS = settings.db_timeout / 2  # one wait; a request may wait for a ping, then a connect
# Database errors by MySQL's number or SQLite's name. Unavailable: refused, gone, lost, too many
# connections, shutting down, Galera without quorum. Busy: a deadlock, a lock, a long statement.
UNAVAILABLE_CODES = {2002, 2003, 2006, 2013, 2055, 1040, 1053, 1047, 1180, "SQLITE_CANTOPEN"}
BUSY_CODES = {1213, 1205, 1969, 3024, "SQLITE_BUSY"}
UNIQUE_CODES = {1062, "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
CONFLICT_CODES = UNIQUE_CODES | {1451, 1452, "SQLITE_CONSTRAINT_FOREIGNKEY"}  # and foreign keys
REFUSED_AT_ONCE = {1044, 1045, 1049, "SQLITE_CANTOPEN"}  # at startup: a login, a name
# database_turn() notes on a database error whether get_session's session had committed.
NOTHING_COMMITTED, COMMITTED = "nothing committed yet", "the request had committed already"
turns_of_this_loop: RunVar[anyio.Semaphore] = RunVar("turns")  # one loop per uvicorn worker


# --- Bounded waits: PyMySQL waits for a stuck server forever, InnoDB for a lock 50 s ---------
def limit_waits(engine: Engine) -> None:  # db_engine's, and the tests' engines (conftest.py)
    @event.listens_for(engine, "do_connect")
    def connect(dialect: Dialect, record: object, args: list, options: dict) -> object | None:
        if dialect.name == "sqlite":  # another writer holds the file: wait this long
            options["timeout"] = WAIT_SECONDS
            connection = dialect.connect(*args, **options)
            connection.execute("PRAGMA foreign_keys = ON")  # SQLite obeys them only if asked
            return connection
        for timeout in ("connect_timeout", "read_timeout", "write_timeout"):
            options[timeout] = WAIT_SECONDS  # a stalled server must not hang a request
        # The server ends a lock wait or a statement a second before we give up (503 busy, and
        # nothing of ours keeps running). /*M! is read by MariaDB only, /*!50708 by MySQL only.
        seconds = WAIT_SECONDS - 1
        locks = f"innodb_lock_wait_timeout = {seconds:.0f}, lock_wait_timeout = {seconds:.0f}"
        mariadb, mysql = f"max_statement_time = {seconds}", f"max_execution_time = {seconds:.0f}000"
        options["init_command"] = f"SET SESSION {locks} /*M!, {mariadb} */ /*!50708 , {mysql} */"


limit_waits(db_engine)


# --- Turns: at most DB_POOL_SIZE sessions at once -------------------------------------------
# A read keeps its connection until FastAPI, in another thread, has checked its answer: with more
# sessions than connections, threads would wait for connections held by requests waiting for them.
@asynccontextmanager
async def database_turn(session: Session) -> AsyncIterator[None]:
    if (turns := turns_of_this_loop.get(None)) is None:
        turns_of_this_loop.set(turns := anyio.Semaphore(settings.db_pool_size))
    try:
        with anyio.fail_after(WAIT_SECONDS):
            await turns.acquire()
    except TimeoutError:  # every turn is taken: the app's own limit, not the database
        logger.warning("No database turn free in %g s: answered 503 busy", WAIT_SECONDS)
        raise HTTPException(503, "Database busy, try again", {"Retry-After": "1"}) from None

    @event.listens_for(session, "after_commit")
    def remember_commit(session: Session) -> None:
        session.info["committed"] = True

    try:
        yield
    except exc.DBAPIError as error:
        error.add_note(COMMITTED if session.info.get("committed") else NOTHING_COMMITTED)
        raise
    finally:  # closed before the next request's turn; after a read closing sends a ROLLBACK,
        try:  # which waits for the server: in a thread. After a commit it sends nothing.
            await run_in_threadpool(session.close) if session.in_transaction() else session.close()
        except exc.DBAPIError as error:  # the connection died: the server rolls back by itself
            logger.warning("Closing a session: %s", error.orig)
        finally:
            turns.release()


# --- A deadlock: the request runs once more, unless it has committed something --------------
# MySQL (or Galera, for a clash of nodes' writes) undoes one transaction of a deadlock: run again,
# it meets the winner's rows. After a commit that part would be written twice: then a 500.
class RunAgain(Exception):
    pass


def run_again_after_deadlock(inner: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        as_it_came, body = dict(scope), []  # a second run gets these: the scope, the body read
        scope["can_run_again"] = True

        async def receive_and_keep() -> dict:
            message = await receive()
            if message["type"] == "http.request" and scope["can_run_again"]:
                body.append(message)  # over the app's limit, Starlette refuses a second run
                kept = sum(len(part.get("body", b"")) for part in body)
                scope["can_run_again"] = kept <= app.max_body_size
            return message

        try:
            return await inner(scope, receive_and_keep, send)
        except RunAgain:
            replay = iter(body)

        async def receive_again() -> dict:  # the same body, then what the client sends
            return next(replay, None) or await receive()

        await inner({**as_it_came, "can_run_again": False}, receive_again, send)

    return middleware


app.add_middleware(run_again_after_deadlock)


# --- Database errors: an honest answer for each, the real cause in the log -------------------
def driver_code(error: Exception) -> int | str | None:  # MySQL's number, SQLite's name
    cause = getattr(error, "orig", None)  # none: the pool had no free connection
    return cause and (getattr(cause, "sqlite_errorname", None) or cause.args[0])


@app.exception_handler(exc.DBAPIError)
@app.exception_handler(exc.TimeoutError)  # the pool's
async def database_error(request: Request, error: Exception) -> JSONResponse:
    code, where = driver_code(error), f"{request.method} {request.url.path}"
    cause = f"{type(error).__name__} ({code}) {getattr(error, 'orig', error).args[-1]}"  # no SQL
    notes = getattr(error, "__notes__", [])  # database_turn()'s: none for a session of yours
    if code == 1213 and NOTHING_COMMITTED in notes and request.scope.get("can_run_again"):
        logger.warning("Database error on %s, running it again: %s", where, cause)
        raise RunAgain  # run_again_after_deadlock() runs the request a second time
    # A taken username: the unique index decides, not a SELECT first, which races would pass.
    conflict = isinstance(error, exc.IntegrityError) and code in CONFLICT_CODES
    if conflict and "username" in cause[-20:]:
        return JSONResponse({"detail": "Username already taken"}, status.HTTP_409_CONFLICT)
    if conflict:  # another rule: a bug, logged
        status_code, detail = 409, "Conflicts with existing data"
    elif (code in BUSY_CODES and COMMITTED not in notes) or isinstance(error, exc.TimeoutError):
        status_code, detail = 503, "Database busy, try again"  # sent again, it is likely to work
    elif code in UNAVAILABLE_CODES or error.connection_invalidated:
        status_code, detail = 503, "Database unavailable"
    else:  # the schema and the model disagree, a bug, or busy after a commit: see the log
        status_code, detail = 500, "Internal Server Error"
        cause += f"; not run again: {COMMITTED}" if COMMITTED in notes else ""
    logger.error("Database error on %s, answered %s %s: %s", where, status_code, detail, cause)
    retry_after = {"Database busy, try again": "1", "Database unavailable": "5"}.get(detail)
    headers = {"Retry-After": retry_after} if retry_after else None
    return JSONResponse({"detail": detail}, status_code, headers=headers)


# --- Health probes, for a load balancer or an orchestrator (docs/deploying.md) -------------
@app.get("/livez", tags=["health"])
async def livez() -> dict[str, str]:
    """The app runs. Never touches the database: a database blip must not restart the app."""
    return {"status": "alive"}


@app.get("/readyz", tags=["health"])
def readyz(session: SessionDep) -> dict[str, str]:
    """A table answers within DB_TIMEOUT: send traffic. (`SELECT 1` passes without quorum.)"""
    session.scalar(select(UserTable.id).limit(1))
    return {"status": "ready"}


# --- Startup: wait for the database, create the tables, tell Alembic ------------------------
def prepare_database() -> None:
    url = db_engine.url.render_as_string(hide_password=True)
    logger.info("Database: %s", url)
    deadline, pause = time.monotonic() + 15, 0.25  # a database still starting: try for 15 s
    while True:  # workers starting together may also meet here: each tries again
        try:
            return prepare_tables()
        except (exc.OperationalError, exc.IntegrityError) as error:
            if driver_code(error) in REFUSED_AT_ONCE or (left := deadline - time.monotonic()) <= 0:
                message = f"Cannot use the database {url}: {error.orig}. Check that the server"
                raise RuntimeError(f"{message} is running and DATABASE_URL is right.") from None
            logger.warning("Database not ready (%s): again in %.2f s", error.orig, pause)
            time.sleep(min(pause, left))
            pause *= 2


def prepare_tables() -> None:
    # Alembic manages a database with an alembic_version table: create_all leaves it alone.
    database = inspect(db_engine)
    if not database.has_table("alembic_version"):
        none_yet = not any(map(database.has_table, BaseModelClass.metadata.tables))
        create_tables()
        migrations = pathlib.Path(__file__).with_name("migrations")  # none beside main.py alone
        if none_yet and migrations.is_dir():  # made from nothing: the newest revision's tables
            with db_engine.begin() as connection:
                context = MigrationContext.configure(connection)
                context.stamp(ScriptDirectory(str(migrations)), "head")
    # create_all never changes a table that exists: stop if one lacks what the models declare.
    database = inspect(db_engine)
    for table in BaseModelClass.metadata.sorted_tables:
        there = database.has_table(table.name)
        existing = {column["name"] for column in database.get_columns(table.name)} if there else ()
        if missing := [
            repr(column.name) for column in table.columns if column.name not in existing
        ]:
            problem = f"has no column {', '.join(missing)}" if there else "is missing"
            raise RuntimeError(
                f"Table '{table.name}' {problem}, which the models declare. If no revision has"
                ' it yet, write one (`alembic revision --autogenerate -m "..."`), then run'
                " `alembic upgrade head` (README: Changing the schema)."
            )
