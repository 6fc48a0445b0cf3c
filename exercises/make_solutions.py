"""Maintainers only: rebuilds exercises/solutions/*.patch from the edits below, against main.py.

python exercises/make_solutions.py      # after changing main.py, then check with pytest
"""

import difflib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def replace(text: str, old: str, new: str) -> str:
    assert old in text, f"not found in main.py: {old!r}"
    return text.replace(old, new, 1)


def after(text: str, anchor: str, addition: str) -> str:
    return replace(text, anchor, anchor + addition)


READ_USER = "    return UserOutput.model_validate(get_user_or_404(session, user_id))\n"
IMPORTS = "from sqlalchemy import Engine,"  # ruff sorts and wraps the names added here


def by_username(src: str) -> str:
    return after(
        src,
        READ_USER,
        '''

@app.get("/users/by-username/{username}", responses=not_found)
def read_user_by_username(username: str, session: SessionDep) -> UserOutput:
    """Read one user by exact username."""
    user = session.scalar(select(UserTable).where(UserTable.username == username))
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")
    return UserOutput.model_validate(user)
''',
    )


def active_and_created_at(src: str) -> str:
    src = after(
        src, "from contextlib import asynccontextmanager\n", "from datetime import UTC, datetime\n"
    )
    src = replace(src, IMPORTS, "from sqlalchemy import DateTime, func, true, Engine,")
    src = replace(src, "EmailStr, Field\n", "EmailStr, Field, field_validator\n")
    src = after(
        src,
        "    email: Mapped[str] = mapped_column(String(120))\n",
        """    # default: what the app writes; server_default: what the table says, so that the
    # migration can fill the rows that exist already (README: Changing the schema).
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())
    # MySQL's DATETIME keeps no time zone: store UTC, and say so when reading it back.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC), server_default=func.now()
    )
""",
    )
    return after(
        src,
        "    username: str\n    email: str\n",
        """    is_active: bool
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def in_utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)
""",
    )


def posts(src: str) -> str:
    src = replace(src, IMPORTS, "from sqlalchemy import ForeignKey, Text, Engine,")
    src = replace(
        src,
        "from sqlalchemy.orm import Mapped, Session, declarative_base, mapped_column",
        "from sqlalchemy.orm import Mapped, Session, declarative_base, mapped_column, relationship",
    )
    src = after(
        src,
        "    email: Mapped[str] = mapped_column(String(120))\n",
        """    posts: Mapped[list["PostTable"]] = relationship(back_populates="user", order_by="PostTable.id")


class PostTable(BaseModelClass):
    __tablename__ = "posts"
    __table_args__ = {"mysql_charset": "utf8mb4"}

    id: Mapped[int] = mapped_column(primary_key=True)
    # ON DELETE CASCADE: deleting a user deletes their posts instead of failing.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    user: Mapped[UserTable] = relationship(back_populates="posts")
""",
    )
    src = after(
        src,
        "    username: str\n    email: str\n",
        """

class PostInput(BaseModel):
    title: str = Field(min_length=1, max_length=200, examples=["Hello"])
    body: str = Field(max_length=10_000, examples=["My first post"])


class PostOutput(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    user_id: int
    title: str
    body: str
""",
    )
    return after(
        src,
        READ_USER,
        '''

@app.post(
    "/users/{user_id}/posts",
    status_code=status.HTTP_201_CREATED,
    responses={**not_found, 400: {}},
)
def create_post(user_id: UserId, post: PostInput, session: SessionDep) -> PostOutput:
    """Write a post for a user."""
    get_user_or_404(session, user_id)
    new_post = PostTable(user_id=user_id, title=post.title, body=post.body)
    session.add(new_post)
    session.commit()
    return PostOutput.model_validate(new_post)


@app.get("/users/{user_id}/posts", responses=not_found)
def read_posts(user_id: UserId, session: SessionDep) -> list[PostOutput]:
    """A user's posts, oldest first: in the order they were written, which is id order."""
    return [PostOutput.model_validate(post) for post in get_user_or_404(session, user_id).posts]
''',
    )


def domain_filter(src: str) -> str:
    src = replace(
        src,
        """    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> list[UserOutput]:""",
        """    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    domain: Annotated[str | None, Query(max_length=255, examples=["example.com"])] = None,
) -> list[UserOutput]:""",
    )
    return after(
        src,
        "    query = select(UserTable).where(UserTable.id > after_id).order_by(UserTable.id)\n",
        """    if domain:
        # EmailStr stores the domain in lower case; autoescape makes % and _ plain characters.
        query = query.where(UserTable.email.endswith("@" + domain.lower(), autoescape=True))
""",
    )


REVISION_0003_PATH = "migrations/versions/2026_12_02_0003_users_is_active_and_created_at.py"
REVISION_0003 = '''"""users: is_active and created_at

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written by `alembic revision --autogenerate`, then reviewed: it had written SQLite's own
    # text for the defaults ("1", "(CURRENT_TIMESTAMP)"); sa.true() and sa.func.now() work on
    # every database. The rows that exist get these defaults: active, and created now (when
    # they were really created was never stored). On SQLite, the batch copies the table.
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                server_default=sa.func.now(),
                nullable=False,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("created_at")
        batch_op.drop_column("is_active")
'''


RACE_TEST = '''"""Exercise 5: many requests create the same new username at the same moment."""

from concurrent.futures import ThreadPoolExecutor


def test_racing_creates_of_one_username_give_one_201_and_one_row(client, rows):
    body = {"username": "racer", "email": "racer@example.com"}
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda _: client.post("/users/", json=body), range(10)))
    statuses = [response.status_code for response in responses]
    assert sorted(statuses) == [201] + [409] * 9
    assert [row[1] for row in rows()] == ["racer"]
'''


def approach_b(src: str) -> str:
    src = replace(src, "from fastapi import Depends, FastAPI,", "from fastapi import FastAPI,")
    src = replace(
        src, "declarative_base, mapped_column", "declarative_base, mapped_column, sessionmaker"
    )
    start = src.index("# --- Section 4.2")
    session_dep = 'SessionDep = Annotated[Session, Depends(get_session, scope="function")]'
    end = src.index("\n", src.index(session_dep)) + 1
    src = (
        src[:start]
        + """# --- Section 8, approach B: each route opens its own session --------------------------------
# A `with` block closes it on every path, errors included, so a failing request leaks no
# connection, and the connection is back in the pool before the route's thread is free.
SessionLocal = sessionmaker(bind=db_engine, expire_on_commit=False)
"""
        + src[end:]
    )
    # Every route drops its `session: SessionDep` parameter and runs its body in a `with` block.
    for signature in (
        "def create_user(user: UserInput, session: SessionDep) -> UserOutput:",
        "def read_users(\n    session: SessionDep,\n",
        "def read_user(user_id: UserId, session: SessionDep) -> UserOutput:",
        "def update_user(user_id: UserId, changes: UserPatch, session: SessionDep) -> UserOutput:",
        "def delete_user(user_id: UserId, session: SessionDep) -> None:",
        "def readyz(session: SessionDep) -> dict[str, str]:",
    ):
        head, rest = src.split(signature)
        body_end = (rest + "\n\n").index("\n\n\n")  # the next definition, or the end
        body = rest[:body_end]
        new_signature = (
            signature.replace(", session: SessionDep", "")
            .replace("\n    session: SessionDep,", "")
            .replace("session: SessionDep", "")
        )
        lines = body.split("\n")
        first = 1  # the body starts after the signature's last line, `) -> ...:` for read_users
        if signature.startswith("def read_users"):
            first = next(n for n, line in enumerate(lines) if line.startswith(")")) + 1
        if lines[first].lstrip().startswith('"""'):  # keep the docstring first, all its lines
            if lines[first].count('"""') == 1:
                first = next(n for n in range(first + 1, len(lines)) if '"""' in lines[n])
            first += 1
        indented = [("    " + line if line else line) for line in lines[first:]]
        body = "\n".join([*lines[:first], "    with SessionLocal() as session:", *indented])
        src = head + new_signature + body + rest[body_end:]
    return src


SOLUTIONS = {
    "01_by_username": by_username,
    "02_active_and_created_at": active_and_created_at,
    "03_posts": posts,
    "04_domain_filter": domain_filter,
    "05_race_test": None,  # a new file only (NEW_FILES)
    "06_approach_b": approach_b,
}


def formatted(text: str) -> str:
    """The text as ruff leaves it: imports sorted, then formatted."""
    for command in (["check", "--select", "I", "--fix", "--quiet"], ["format"]):
        text = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", "main.py", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    return text


def patch_for(name: str, before: str, after_text: str, path: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after_text.splitlines(keepends=True),
            fromfile=f"a/{path}" if before else "/dev/null",
            tofile=f"b/{path}",
        )
    )


# Files a solution adds, besides its change to main.py.
NEW_FILES = {
    "02_active_and_created_at": {REVISION_0003_PATH: REVISION_0003},
    "05_race_test": {"exercises/student/test_duplicate_race.py": RACE_TEST},
}


def new_file(path: str, text: str) -> str:
    return f"diff --git a/{path} b/{path}\nnew file mode 100644\n" + patch_for("", "", text, path)


def solution_patch(name: str, source: str) -> str:
    """The patch of exercise `name` against main.py's text `source`."""
    edit = SOLUTIONS[name]
    patch = patch_for(name, source, formatted(edit(source)), "main.py") if edit else ""
    for path, text in NEW_FILES.get(name, {}).items():
        patch += new_file(path, text)
    return patch


if __name__ == "__main__":
    source = (ROOT / "main.py").read_text()
    for name in SOLUTIONS:
        (ROOT / "exercises" / "solutions" / f"{name}.patch").write_text(
            solution_patch(name, source)
        )
        print(f"wrote exercises/solutions/{name}.patch")
