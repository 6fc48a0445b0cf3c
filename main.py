"""A FastAPI + SQLAlchemy + MySQL reference app that follows the tutorial section by section.

Run it with `uvicorn main:app` and open http://127.0.0.1:8000/docs.
"""

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import String, create_engine, delete, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Mapped, Session, declarative_base, mapped_column
from sqlalchemy.orm.exc import StaleDataError

# uvicorn shows its own logger's INFO lines; a logger of our own would stay silent by default.
logger = logging.getLogger("uvicorn.error")


# --- Settings: read from the environment, or from a .env file -------------------------------
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Without a .env the app runs on an embedded SQLite file, so it starts on any machine.
    database_url: str = "sqlite:///./app.db"
    sql_echo: bool = False  # SQL_ECHO=true prints every SQL statement the app sends


settings = Settings()


# --- Section 3: the engine and the model ----------------------------------------------------
db_engine = create_engine(
    settings.database_url,
    echo=settings.sql_echo,
    # MySQL closes connections that sit idle (wait_timeout) or survive a server restart;
    # a cheap ping before each use replaces a dead pooled connection instead of failing.
    pool_pre_ping=True,
    # SQLite connections refuse to be used from another thread unless told otherwise, and
    # FastAPI runs each request in a worker thread.
    connect_args={"check_same_thread": False} if settings.database_url.startswith("sqlite") else {},
)

BaseModelClass = declarative_base()


class UserTable(BaseModelClass):
    __tablename__ = "users"
    # utf8mb4 stores any Unicode text (emoji too). The binary collation makes MySQL compare
    # usernames exactly, as SQLite does: its default collations treat "Alice" = "alice" and
    # "José" = "Jose". SQLite ignores these MySQL-only options.
    __table_args__ = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

    # A primary key is always indexed, and so is a UNIQUE column: index=True on either would
    # only add a second, identical index. UNIQUE inside CREATE TABLE also leaves no moment when
    # the table exists without it.
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    email: Mapped[str] = mapped_column(String(120))


# --- Section 4.1: Pydantic models validate what clients send --------------------------------
# No whitespace of any kind at either end, no control characters anywhere. A pattern (rather
# than a Python function) also shows in the OpenAPI schema, so clients see the rule in /docs.
NO_STRAY_CHARACTERS = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
Username = Annotated[str, Field(min_length=1, max_length=50, pattern=NO_STRAY_CHARACTERS)]
Email = Annotated[EmailStr, Field(max_length=120)]


class UserInput(BaseModel):
    username: Username
    email: Email


class UserPatch(BaseModel):
    # Leave a field out to keep its value. null is refused, as both columns are NOT NULL;
    # SkipJsonSchema keeps null out of the documented schema too.
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
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str


# --- Section 4.2: one Session per request, always closed ------------------------------------
def get_session() -> Iterator[Session]:
    # expire_on_commit=False keeps the values we just wrote readable after commit, so the
    # response needs no extra SELECT (the tutorial's refresh() costs one round trip).
    with Session(db_engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


# --- Section 5: the application -------------------------------------------------------------
def create_tables() -> None:
    # Creates the tables that do not exist yet (section 5.1); existing ones are left alone.
    try:
        BaseModelClass.metadata.create_all(db_engine)
    except OperationalError:
        # With `uvicorn --workers 4` every worker runs this at once: when another worker
        # created the table first, our CREATE TABLE fails, and looking again finds it there.
        BaseModelClass.metadata.create_all(db_engine)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = db_engine.url.render_as_string(hide_password=True)
    logger.info("Database: %s", url)
    try:
        create_tables()
    except OperationalError as exc:  # stop at once with one clear line, not a driver traceback
        raise RuntimeError(
            f"Cannot use the database {url}: {exc.orig}. Check that the server is running "
            "and that DATABASE_URL has the right host, port, user, password and database."
        ) from None
    yield


app = FastAPI(lifespan=lifespan)


# The database is down or unreachable: say so with 503 (try again later) instead of a 500,
# and never echo the driver's message, which can contain SQL or the server's address.
@app.exception_handler(OperationalError)
@app.exception_handler(InterfaceError)
@app.exception_handler(PoolTimeoutError)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.error("Database unavailable: %s", exc.__class__.__name__)
    return JSONResponse({"detail": "Database unavailable"}, status.HTTP_503_SERVICE_UNAVAILABLE)


USER_NOT_FOUND = "User not found"
# Error answers listed in the OpenAPI schema, so /docs shows what can go wrong.
UNREADABLE = {400: {"model": Message, "description": "The body is not UTF-8 JSON"}}
NOT_FOUND = {404: {"model": Message, "description": "No user with this id"}}
CONFLICT = {409: {"model": Message, "description": "The username is taken"}}
UNAVAILABLE = {503: {"model": Message, "description": "The database cannot be reached"}}
# The id column is a 32-bit INT; a bigger number is refused (422) before it reaches SQL.
UserId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def commit_or_409(session: Session) -> None:
    # The unique index decides, not a SELECT beforehand: two requests racing for the same
    # username would both pass such a check, and one of them would then get a 500.
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken") from None
    except StaleDataError:  # another request deleted the row while we were updating it
        session.rollback()
        raise HTTPException(status.HTTP_404_NOT_FOUND, USER_NOT_FOUND) from None


def get_user_or_404(session: Session, user_id: int) -> UserTable:
    user = session.get(UserTable, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, USER_NOT_FOUND)
    return user


@app.get("/")
def read_root() -> dict[str, str]:
    return {"message": "Hello, World!"}


# --- Section 8: CRUD ------------------------------------------------------------------------
@app.post(
    "/users/",
    response_model=UserOutput,
    status_code=status.HTTP_201_CREATED,
    responses={**UNREADABLE, **CONFLICT, **UNAVAILABLE},
)
def create_user(user: UserInput, session: SessionDep) -> UserTable:
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    commit_or_409(session)
    return new_user


@app.get("/users/", response_model=list[UserOutput], responses=UNAVAILABLE)
def read_users(
    session: SessionDep,
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> list[UserTable]:
    return list(session.scalars(select(UserTable).order_by(UserTable.id).offset(skip).limit(limit)))


@app.get("/users/{user_id}", response_model=UserOutput, responses={**NOT_FOUND, **UNAVAILABLE})
def read_user(user_id: UserId, session: SessionDep) -> UserTable:
    return get_user_or_404(session, user_id)


@app.patch(
    "/users/{user_id}",
    response_model=UserOutput,
    responses={**UNREADABLE, **NOT_FOUND, **CONFLICT, **UNAVAILABLE},
)
def update_user(user_id: UserId, changes: UserPatch, session: SessionDep) -> UserTable:
    user = get_user_or_404(session, user_id)
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(user, field, value)
    commit_or_409(session)
    return user


@app.delete(
    "/users/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **UNAVAILABLE},
)
def delete_user(user_id: UserId, session: SessionDep) -> None:
    # One DELETE that reports how many rows it removed: no SELECT first, and a user that
    # another request deleted a moment ago is simply not found.
    if session.execute(delete(UserTable).where(UserTable.id == user_id)).rowcount == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, USER_NOT_FOUND)
    session.commit()


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
