"""The reference app: FastAPI + SQLAlchemy + MySQL, in the tutorial's order. See README.md."""

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, String, create_engine, delete, event, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Mapped, Session, declarative_base, mapped_column
from sqlalchemy.orm.exc import StaleDataError

# uvicorn prints its own logger's INFO lines; a logger of our own would stay silent.
logger = logging.getLogger("uvicorn.error")


# --- Settings: from the environment, else from a .env file (see .env.example) --------------
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    database_url: str = "sqlite:///./app.db"  # no MySQL needed to start: an SQLite file
    sql_echo: bool = False  # true: log every SQL statement the app sends
    db_pool_size: int = 4  # connections per worker, and sessions at once (README: Performance)


settings = Settings()
IS_SQLITE = settings.database_url.startswith("sqlite")


# --- Section 3: the engine and the model ----------------------------------------------------
db_engine = create_engine(
    settings.database_url,
    echo=settings.sql_echo,
    # MySQL drops idle connections (wait_timeout, restarts): a ping before each use replaces
    # a dead one instead of failing the request.
    pool_pre_ping=True,
    # A Session always ends its transaction itself: a second ROLLBACK on return is a wasted trip.
    pool_reset_on_return=None,
    # One connection per session that get_session lets in, kept open. SQLite keeps its pool.
    **({} if IS_SQLITE else {"pool_size": settings.db_pool_size, "max_overflow": 0}),
)


@event.listens_for(Engine, "connect")
def enforce_foreign_keys(dbapi_connection: object, connection_record: object) -> None:
    # SQLite ignores FOREIGN KEY clauses unless each new connection turns them on.
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA foreign_keys = ON")


BaseModelClass = declarative_base()


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
    # route does. This is why a route must take its session from here (README: Sessions).
    async with request.state.sessions:
        session = Session(db_engine, expire_on_commit=False)  # what we wrote stays readable
        try:
            yield session
        finally:
            if session.in_transaction():  # ending it sends a ROLLBACK: not on the event loop
                await run_in_threadpool(session.close)
            else:  # committed, or never used: nothing to send
                session.close()


SessionDep = Annotated[Session, Depends(get_session)]


# --- Section 5: the application -------------------------------------------------------------
def create_tables() -> None:  # section 5.1: creates missing tables, leaves existing ones alone
    try:
        BaseModelClass.metadata.create_all(db_engine)
    except OperationalError:  # `--workers 4`: another worker created the table a moment ago
        BaseModelClass.metadata.create_all(db_engine)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict]:
    url = db_engine.url.render_as_string(hide_password=True)
    logger.info("Database: %s", url)
    try:
        create_tables()
    except OperationalError as exc:  # stop at once with one clear line, not a driver traceback
        raise RuntimeError(
            f"Cannot use the database {url}: {exc.orig}. Check that the server is running "
            "and that DATABASE_URL has the right host, port, user, password and database."
        ) from None
    # The app's state, reached as request.state.sessions: the turns that get_session hands out.
    yield {"sessions": anyio.Semaphore(settings.db_pool_size)}


# FastAPIOffline is FastAPI whose /docs and /redoc load Swagger UI and ReDoc from the app
# itself (files shipped in the fastapi-offline package) instead of a CDN: they work offline.
app = FastAPIOffline(
    title="Users API: the FastAPI + SQLAlchemy + MySQL reference app",
    description="Follows the tutorial *Databases and ORM in FastAPI*. Try **POST /users/** first.",
    version="1.0.0",
    openapi_tags=[{"name": "users", "description": "Create, read, update and delete users"}],
    lifespan=lifespan,
)


ERRORS = {
    400: "Body is not UTF-8 JSON",
    404: "User not found",
    409: "Username already taken",
    503: "Database unavailable",
}


def errors(*codes: int) -> dict:
    """A route's error answers for the OpenAPI schema (/docs); any route can meet a 503."""
    return {code: {"model": Message, "description": ERRORS[code]} for code in (*codes, 503)}


# The database is down or unreachable: say so with 503 (try again later) instead of a 500,
# and never echo the driver's message, which can contain SQL or the server's address.
@app.exception_handler(OperationalError)
@app.exception_handler(InterfaceError)
@app.exception_handler(PoolTimeoutError)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.error("Database unavailable: %s", exc.__class__.__name__)
    return JSONResponse({"detail": ERRORS[503]}, status.HTTP_503_SERVICE_UNAVAILABLE)


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
    except IntegrityError:
        # The unique index decides, not a SELECT beforehand: two requests racing for the same
        # username would both pass such a check, and one of them would then get a 500.
        raise HTTPException(status.HTTP_409_CONFLICT, ERRORS[409]) from None
    return new_user


@app.get("/users/", response_model=list[UserOutput], responses=errors(), tags=["users"])
def read_users(
    session: SessionDep,
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> list[UserTable]:
    """List users in the order they were created, `limit` (at most 100) at a time."""
    query = select(UserTable).order_by(UserTable.id).offset(skip).limit(limit)
    return list(session.scalars(query))


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
    except IntegrityError:
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
