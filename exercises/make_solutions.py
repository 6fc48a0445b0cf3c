"""Maintainers only: rebuilds exercises/solutions/*.patch, the reference solutions of the course.

Each patch is made against main.py (and test_main.py, and the Alembic revisions) as the patches
before it left them: they apply in file-name order, each on top of the ones before it.

python exercises/make_solutions.py      # after changing main.py, then check with pytest
"""

import dataclasses
import difflib
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def replace(text: str, old: str, new: str) -> str:
    assert old in text, f"not found: {old!r}"
    return text.replace(old, new, 1)


def after(text: str, anchor: str, addition: str) -> str:
    return replace(text, anchor, anchor + addition)


def add_import(text: str, module: str, *names: str) -> str:
    """Adds names to main.py's first `from module import` line; ruff sorts and wraps them."""
    line = f"\nfrom {module} import "
    return replace(text, line, line + "".join(f"{name}, " for name in names))


READ_USER = "def read_user(user_id: UserId, session: SessionDep):\n    return get_user_or_404(session, user_id)\n"
END_OF_MODELS = "\n\n\n# --- Section 4.1"  # after the last table class
END_OF_SCHEMAS = "\n\n\n# --- Section 4.2"  # after the last Pydantic class


# --- Exercise 1 ----------------------------------------------------------------------------
def by_username(src: str) -> str:
    return after(
        src,
        READ_USER,
        '''

# {username:path}: the rest of the path, so that a username with a "/" is found too
@app.get("/users/by-username/{username:path}", response_model=UserOutput, responses=not_found)
def read_user_by_username(username: Username, session: SessionDep):
    """Read one user by exact username, folded as the app folds the names it stores."""
    user = session.scalar(select(UserTable).where(UserTable.username == username))
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "User not found")
    return user
''',
    )


# --- Exercise 2 ----------------------------------------------------------------------------
ANSWER_FIELDS = """        "is_active": new_user.is_active,
        "created_at": new_user.created_at,
"""


def active_and_created_at(src: str) -> str:
    src = after(
        src, "from contextlib import asynccontextmanager\n", "from datetime import UTC, datetime\n"
    )
    src = add_import(src, "sqlalchemy", "DateTime", "func", "true")
    src = after(
        src,
        "    email: Mapped[str] = mapped_column(String(120))\n",
        """    # default: what the app writes; server_default: what the table says, so that the
    # migration can fill the rows that exist already (README: Changing the schema).
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())
    # MySQL's DATETIME keeps no time zone and whole seconds: store UTC to the second (what a
    # POST answers is then what a GET reads back), and say it is UTC when reading it back.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        default=lambda: datetime.now(UTC).replace(microsecond=0),
        server_default=func.now(),
    )
""",
    )
    # create_user answers the tutorial's dict, written out: it gets the new fields too
    src = after(src, '        "email": new_user.email,\n', ANSWER_FIELDS)
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


def whole_answers_with_the_new_fields(tests: str) -> str:
    """test_main.py: the three tests that compare a whole answer with a dict written out."""
    tests = replace(
        tests,
        '    assert user == {"id": user["id"], "username": "ada", "email": "ada@example.com"}\n',
        """    assert user == {
        "id": user["id"],
        "username": "ada",
        "email": "ada@example.com",
        "is_active": True,
        "created_at": user["created_at"],
    }
""",
    )
    tests = replace(
        tests,
        """def test_patch_changes_only_the_given_fields(client, rows):
    user_id = create(client).json()["id"]
""",
        """def test_patch_changes_only_the_given_fields(client, rows):
    created = create(client).json()
    user_id = created["id"]
""",
    )
    tests = replace(
        tests,
        """    assert response.json() == {"id": user_id, "username": "ada", "email": "new@example.com"}
""",
        """    assert response.json() == {**created, "email": "new@example.com"}
""",
    )
    return replace(
        tests,
        """def test_patch_can_change_both_fields(client, rows):
    user_id = create(client).json()["id"]
    body = {"username": "grace", "email": "grace@example.com"}
    assert client.patch(f"/users/{user_id}", json=body).json() == {"id": user_id, **body}
""",
        """def test_patch_can_change_both_fields(client, rows):
    created = create(client).json()
    user_id = created["id"]
    body = {"username": "grace", "email": "grace@example.com"}
    assert client.patch(f"/users/{user_id}", json=body).json() == {**created, **body}
""",
    )


USERS_REVISION = """
def upgrade() -> None:
    # Written by `alembic revision --autogenerate`, then reviewed: it had written SQLite's own
    # text for the defaults ("1", "(CURRENT_TIMESTAMP)"); sa.true() and sa.func.now() work on
    # every database. The rows that exist get these defaults: active, and created now (when
    # they were really created was never stored). On SQLite, the batch copies the table.
    from datetime import UTC, datetime

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
    # NOW() is the server's local time, which is UTC only if the server is set so: write the
    # migration's time in UTC, as the app writes created_at.
    users = sa.table("users", sa.column("created_at", sa.DateTime(timezone=True)))
    op.execute(users.update().values(created_at=datetime.now(UTC).replace(microsecond=0)))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("created_at")
        batch_op.drop_column("is_active")
"""


# --- Exercise 3 ----------------------------------------------------------------------------
def posts(src: str) -> str:
    src = add_import(src, "sqlalchemy", "ForeignKey", "Text")
    src = add_import(src, "sqlalchemy.orm", "relationship")
    src = replace(
        src,
        END_OF_MODELS,
        """
    posts: Mapped[list["PostTable"]] = relationship(back_populates="user", order_by="PostTable.id")


class PostTable(BaseModelClass):
    __tablename__ = "posts"
    __table_args__ = {"mysql_charset": "utf8mb4"}

    id: Mapped[int] = mapped_column(primary_key=True)
    # ON DELETE CASCADE: deleting a user deletes their posts instead of failing.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    user: Mapped[UserTable] = relationship(back_populates="posts")
"""
        + END_OF_MODELS,
    )
    src = replace(
        src,
        END_OF_SCHEMAS,
        """


class PostInput(BaseModel):
    title: str = Field(min_length=1, max_length=200, examples=["Hello"])
    body: str = Field(max_length=10_000, examples=["My first post"])


class PostOutput(BaseModel):
    id: int
    user_id: int
    title: str
    body: str
"""
        + END_OF_SCHEMAS,
    )
    return after(
        src,
        READ_USER,
        '''

@app.post(
    "/users/{user_id}/posts",
    response_model=PostOutput,
    status_code=status.HTTP_201_CREATED,
    responses={**not_found, 400: {}},
)
def create_post(user_id: UserId, post: PostInput, session: SessionDep):
    """Write a post for a user."""
    get_user_or_404(session, user_id)
    new_post = PostTable(user_id=user_id, title=post.title, body=post.body)
    session.add(new_post)
    session.commit()
    return new_post


@app.get("/users/{user_id}/posts", response_model=list[PostOutput], responses=not_found)
def read_posts(user_id: UserId, session: SessionDep):
    """A user's posts, oldest first: in the order they were written, which is id order."""
    return get_user_or_404(session, user_id).posts
''',
    )


POSTS_REVISION = """
def upgrade() -> None:
    # Written by `alembic revision --autogenerate`, then reviewed: nothing to change. A new
    # table, so no row of users is touched; the foreign key deletes a user's posts with them.
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_posts_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posts")),
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_posts_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_posts_user_id"))

    op.drop_table("posts")
"""


# --- Exercise 4 ----------------------------------------------------------------------------
def domain_filter(src: str) -> str:
    src = replace(
        src,
        """    limit: Annotated[int, Query(ge=1, le=100)] = 100,
):""",
        """    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    domain: Annotated[str | None, Query(min_length=1, max_length=255, examples=["example.com"])] = None,
):""",
    )
    return after(
        src,
        "    query = select(UserTable).where(UserTable.id > after_id).order_by(UserTable.id)\n",
        """    if domain is not None:
        # EmailStr stores the domain in lower case; autoescape makes % and _ plain characters.
        query = query.where(UserTable.email.endswith("@" + domain.lower(), autoescape=True))
""",
    )


# --- Exercise 5 ----------------------------------------------------------------------------
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


# --- Exercise 6 ----------------------------------------------------------------------------
SIGNATURE_END = re.compile(r"\)( -> .*)?:\n")
SESSION_PARAMETERS = (
    ", session: SessionDep",
    "\n    session: SessionDep,",
    "session: SessionDep",
    "\n    session: Session = Depends(get_session),",
)


def approach_b(src: str) -> str:
    src = replace(src, "from fastapi import Depends, FastAPI\n", "from fastapi import FastAPI\n")
    start, end = src.index("# --- Section 4.2"), src.index("# --- Section 5:")
    src = (
        src[:start]
        + """# --- Section 8, approach B: each route opens its own session --------------------------------
# `with new_session() as session:` (part 3) in the route: the `with` block closes the session on
# every path, errors included, so a failing request leaks no connection. new_session() waits for
# a turn as get_session did, and its commits are known to the app, so a deadlock is still run
# again. A bare sessionmaker would lose both (exercises/README.md, exercise 6).


"""
        + src[end:]
    )
    src = replace(
        src,
        "SessionDep = Annotated[Session, Depends(get_session)]  # shorter to write, the same session\n",
        "",
    )
    # Every route (those of the exercises before too) drops its session parameter and runs its
    # body in a `with` block.
    while (at := min((src.find(p) for p in SESSION_PARAMETERS if p in src), default=-1)) >= 0:
        def_start = src.rindex("\ndef ", 0, at) + 1
        signature_end = SIGNATURE_END.search(src, at).end()  # "):" or ") -> ...:"
        signature = src[def_start:signature_end]
        for parameter in SESSION_PARAMETERS:
            signature = signature.replace(parameter, "", 1)
        body_end = (src + "\n\n").index("\n\n\n", signature_end)  # the next definition, or the end
        lines = src[signature_end:body_end].split("\n")
        first = 0
        if lines[0].lstrip().startswith('"""'):  # keep the docstring first, all its lines
            if lines[0].count('"""') == 1:
                first = next(n for n in range(1, len(lines)) if '"""' in lines[n])
            first += 1
        indented = [("    " + line if line else line) for line in lines[first:]]
        opened = "    with new_session() as session:"
        body = "\n".join([*lines[:first], opened, *indented])
        src = src[:def_start] + signature + body + src[body_end:]
    return src


# --- The solutions, in order ----------------------------------------------------------------
@dataclass(frozen=True)
class Revision:
    """A revision a solution adds: its file name's slug, its message, and its code."""

    slug: str
    message: str
    code: str

    def file(self, revision: str, down_revision: str) -> tuple[str, str]:
        path = f"migrations/versions/2026_12_02_{revision}_{self.slug}.py"
        text = f'''"""{self.message}

Revision ID: {revision}
Revises: {down_revision}
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "{revision}"
down_revision: str | Sequence[str] | None = "{down_revision}"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

{self.code}'''
        return path, text


@dataclass(frozen=True)
class Solution:
    main_py: Callable[[str], str] | None = None
    test_main_py: Callable[[str], str] | None = None  # exercise 2: answers with new fields
    revision: Revision | None = None  # a schema change: its revision, after the newest one
    new_files: dict[str, str] = field(default_factory=dict)


SOLUTIONS = {
    "01_by_username": Solution(by_username),
    "02_active_and_created_at": Solution(
        active_and_created_at,
        whole_answers_with_the_new_fields,
        Revision(
            "users_is_active_and_created_at", "users: is_active and created_at", USERS_REVISION
        ),
    ),
    "03_posts": Solution(posts, revision=Revision("posts", "posts", POSTS_REVISION)),
    "04_domain_filter": Solution(domain_filter),
    "05_race_test": Solution(new_files={"exercises/student/test_duplicate_race.py": RACE_TEST}),
    "06_approach_b": Solution(approach_b),
}


@dataclass(frozen=True)
class Tree:
    """The files the solutions change, as the exercises done so far left them."""

    main_py: str
    test_main_py: str
    head: str  # the newest Alembic revision

    @classmethod
    def today(cls) -> "Tree":
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(Config(ROOT / "alembic.ini"))
        return cls(
            (ROOT / "main.py").read_text(),
            (ROOT / "test_main.py").read_text(),
            script.get_current_head(),
        )


def formatted(text: str, name: str) -> str:
    """The text as ruff leaves it: imports sorted, then formatted."""
    for command in (["check", "--select", "I", "--fix", "--quiet"], ["format"]):
        text = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", name, "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    return text


def patch_for(before: str, after_text: str, path: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after_text.splitlines(keepends=True),
            fromfile=f"a/{path}" if before else "/dev/null",
            tofile=f"b/{path}",
        )
    )


def new_file(path: str, text: str) -> str:
    return f"diff --git a/{path} b/{path}\nnew file mode 100644\n" + patch_for("", text, path)


def solution_patch(name: str, tree: Tree) -> tuple[str, Tree]:
    """The patch of exercise `name` against `tree`, and the tree it leaves."""
    solution = SOLUTIONS[name]
    patch, after_it = "", tree
    if solution.main_py:
        main_py = formatted(solution.main_py(tree.main_py), "main.py")
        patch += patch_for(tree.main_py, main_py, "main.py")
        after_it = dataclasses.replace(after_it, main_py=main_py)
    if solution.test_main_py:
        test_main_py = formatted(solution.test_main_py(tree.test_main_py), "test_main.py")
        patch += patch_for(tree.test_main_py, test_main_py, "test_main.py")
        after_it = dataclasses.replace(after_it, test_main_py=test_main_py)
    new_files = dict(solution.new_files)
    if solution.revision:
        revision = f"{int(tree.head) + 1:04d}"
        path, text = solution.revision.file(revision, tree.head)
        new_files[path] = text
        after_it = dataclasses.replace(after_it, head=revision)
    for path, text in new_files.items():
        patch += new_file(path, text)
    return patch, after_it


def solution_chain(tree: Tree) -> dict[str, str]:
    """Every exercise's patch, each made against the tree the ones before it left."""
    patches = {}
    for name in SOLUTIONS:
        patches[name], tree = solution_patch(name, tree)
    return patches


if __name__ == "__main__":
    for name, patch in solution_chain(Tree.today()).items():
        (ROOT / "exercises" / "solutions" / f"{name}.patch").write_text(patch)
        print(f"wrote exercises/solutions/{name}.patch")
