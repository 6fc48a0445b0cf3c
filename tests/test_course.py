"""The six exercises as a course (issue 26): done in order on one main.py and one database.

A learner starts the app on today's main.py and creates users; then applies each reference
solution (exercises/solutions/, in file-name order, each on top of the ones before), runs the
commands its exercise's text gives (`alembic upgrade head` where it says so), and starts
`uvicorn main:app` again: the app must start, and every user, and every post once posts exist,
must still be there with the same id and values. This runs on a SQLite file (the app's default,
app.db beside main.py) and on the MySQL test database.

After each step, test_main.py and the check of every exercise done so far run in the same folder,
beside the learner's app.db: on SQLite right away, on MySQL after the learner's run on MySQL is
over (the checks empty the database they test on, and there is one MySQL test database).

`pytest -s tests/test_course.py` prints each step, with the row counts before and after each
migration.
"""

import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, pool, text

from conftest import MYSQL_SKIPPED, MYSQL_URL, make_engine
from tests.support import ROOT, UvicornServer
from tests.test_exercises import EXERCISES, app_copy, run_check

STEPS = ["00_todays_app", *EXERCISES]
BACKENDS = ["sqlite", "mysql"]
TITLED = "id, user_id, title, body"  # a post's columns
# The learner's own rows: created on today's app, posts once the app has them.
USERS = [
    ("ada.lovelace", "ada@example.com"),
    ("Grace Hopper", "grace@navy.example"),
    ("Zoë Ångström", "zoe@example.org"),
]
POSTS = {
    "ada.lovelace": [("Notes", "On the Analytical Engine"), ("G", "Note G, the first program")],
    "Zoë Ångström": [("Hej", "Unicode in a title: ✓")],
}


def exercise_text(exercise: str) -> str:
    """The exercise's section of exercises/README.md."""
    readme = (ROOT / "exercises" / "README.md").read_text()
    number = int(exercise[:2])
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", readme, re.M | re.S)
    assert match, f"exercises/README.md has no section ## {number}."
    return match.group(0)


def migrates(exercise: str) -> bool:
    """Whether the exercise tells the learner to run the migration."""
    return "alembic upgrade head" in exercise_text(exercise)


@dataclass
class Learner:
    """One learner's database, and what the app answered for it so far."""

    backend: str
    url: str | None  # None: the app's default, sqlite:///./app.db beside main.py
    engine: Engine
    users: dict[str, dict] = field(default_factory=dict)  # by username: the answer, pinned
    posts: dict[str, list[dict]] = field(default_factory=dict)  # by username
    problems: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    tables: dict[str, list[tuple]] = field(default_factory=dict)  # at the end, as stored

    def env(self) -> dict:
        env = {**os.environ, "DATABASE_URL": self.url or ""}
        if self.url is None:
            del env["DATABASE_URL"]
        return env


def table_rows(engine: Engine) -> tuple[str | None, dict[str, int]]:
    """The Alembic revision the database is at, and the rows of each of its tables."""
    tables = sorted(inspect(engine).get_table_names())
    with engine.connect() as connection:
        counts = {
            table: connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
            for table in tables
            if table != "alembic_version"
        }
        revision = (
            connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            if "alembic_version" in tables
            else None
        )
    return revision, counts


def pinned(learner: Learner, what: str, before: dict, now: dict) -> None:
    """Every field the app answered before is still there, with the same value; new fields are
    pinned from their first answer on."""
    for key, value in before.items():
        if now.get(key, "<missing>") != value:
            learner.problems.append(f"{what}: {key} was {value!r}, now {now.get(key)!r}")
    before.update({key: value for key, value in now.items() if key not in before})


def lesson(app: Path, learner: Learner, step: str) -> None:
    """The learner's part of one step: the migration if the text says so, then the app."""
    if step != STEPS[0] and migrates(step):
        before = table_rows(learner.engine)
        command = [sys.executable, "-m", "alembic", "upgrade", "head"]
        result = subprocess.run(
            command, cwd=app, env=learner.env(), capture_output=True, text=True, timeout=300
        )
        after = table_rows(learner.engine)
        learner.log.append(
            f"{step} {learner.backend}: alembic upgrade head {before[0]} -> {after[0]};"
            f" rows before {before[1]}, after {after[1]}"
        )
        if result.returncode:
            learner.problems.append(f"{step}: alembic upgrade head failed: {result.stderr[-1500:]}")
        for table, count in before[1].items():
            if after[1].get(table) != count:
                learner.problems.append(f"{step}: {table} had {count} rows, now {after[1]}")
    with UvicornServer(learner.url, cwd=app) as server:
        server.wait_started()
        if not server.count("Application startup complete."):
            output = "\n".join(server.lines[-8:])
            learner.problems.append(f"{step}: uvicorn main:app did not start:\n{output}")
            learner.log.append(f"{step} {learner.backend}: the app did not start")
            return
        with server.client() as http:
            if not learner.users:  # the first start: the learner's users
                for username, email in USERS:
                    response = http.post("/users/", json={"username": username, "email": email})
                    assert response.status_code == 201, response.text
                    learner.users[username] = response.json()
            for username, before in learner.users.items():
                response = http.get(f"/users/{before['id']}")
                pinned(learner, f"{step}: user {username}", before, response.json())
            ada = learner.users[USERS[0][0]]["id"]
            if not learner.posts and http.get(f"/users/{ada}/posts").status_code == 200:
                for username, posts in POSTS.items():  # posts, once the app has them
                    user_id = learner.users[username]["id"]
                    for title, body in posts:
                        response = http.post(
                            f"/users/{user_id}/posts", json={"title": title, "body": body}
                        )
                        assert response.status_code == 201, response.text
                        learner.posts.setdefault(username, []).append(response.json())
            for username, posts in learner.posts.items():
                answer = http.get(f"/users/{learner.users[username]['id']}/posts").json()
                if len(answer) != len(posts):
                    learner.problems.append(f"{step}: {username}'s posts are now {answer}")
                for before, now in zip(posts, answer, strict=False):
                    pinned(learner, f"{step}: post {before['id']}", before, now)
            listed = [user["id"] for user in http.get("/users/").json()]
            if listed != sorted(user["id"] for user in learner.users.values()):
                learner.problems.append(f"{step}: GET /users/ lists the ids {listed}")
    revision, counts = table_rows(learner.engine)
    learner.log.append(f"{step} {learner.backend}: the app started; at {revision}, rows {counts}")


@dataclass
class Run:
    """One pytest run of test_main.py and the checks done so far, in one step's folder."""

    step: str
    backend: str
    seconds: float
    returncode: int
    output: str
    cases: dict[str, dict[str, str]]  # by file stem: outcome by test name

    def outcome(self, stem: str) -> str:
        """passed, or what went wrong, for one file's cases in this run."""
        cases = self.cases.get(stem, {})
        if not cases:
            return f"no case ran (pytest exit {self.returncode}): {self.output[-2000:]}"
        bad = {name: result for name, result in cases.items() if result != "passed"}
        return "passed" if not bad else f"{bad}\n{self.output[-3000:]}"


def checks_in(app: Path, step: str, backend: str, report: Path) -> Run:
    done = EXERCISES[: EXERCISES.index(step) + 1]
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    if backend == "sqlite":  # the MySQL half runs later, on the MySQL test database
        env.pop("TEST_DATABASE_URL", None)
        env.pop("CI", None)  # which would fail the MySQL cases left out here
    else:
        env.update(TEST_DATABASE_URL=MYSQL_URL, CI="true")
    other = "mysql" if backend == "sqlite" else "sqlite"
    args = ("-k", f"not {other}", f"--junitxml={report}", "test_main.py")
    start = time.monotonic()
    result = run_check(app, *done, args=args, env=env)
    seconds = time.monotonic() - start
    cases: dict[str, dict[str, str]] = {}
    if report.exists():
        for case in ElementTree.parse(report).iter("testcase"):
            stem = case.get("classname", "").rpartition(".")[2]
            found = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            cases.setdefault(stem, {})[case.get("name")] = found[0] if found else "passed"
    return Run(step, backend, seconds, result.returncode, result.stdout, cases)


@dataclass
class Course:
    learners: dict[str, Learner]
    runs: list[Run]
    applied: dict[str, str]  # by exercise: "" or git apply's complaint


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("course")
    (folder / "app").mkdir()
    app = app_copy(folder / "app")
    learners = {"sqlite": Learner("sqlite", None, create_engine(f"sqlite:///{app}/app.db"))}
    if MYSQL_URL:
        emptied = make_engine("mysql", folder)  # the MySQL test database, emptied
        emptied.dispose()
        engine = create_engine(MYSQL_URL, poolclass=pool.NullPool)
        learners["mysql"] = Learner("mysql", MYSQL_URL, engine)
    runs: list[Run] = []
    applied: dict[str, str] = {}
    snapshots: dict[str, Path] = {}
    for step in STEPS:
        if step != STEPS[0]:
            patch = app / "exercises" / "solutions" / f"{step}.patch"
            result = subprocess.run(
                ["git", "apply", str(patch)], cwd=app, capture_output=True, text=True
            )
            applied[step] = result.stderr if result.returncode else ""
            if result.returncode:
                for learner in learners.values():
                    learner.problems.append(f"{step}: git apply failed: {result.stderr}")
        for learner in learners.values():
            lesson(app, learner, step)
        if step != STEPS[0]:
            report = folder / f"{step}-sqlite.xml"
            runs.append(checks_in(app, step, "sqlite", report))
            snapshots[step] = folder / f"after-{step}"
            shutil.copytree(app, snapshots[step], ignore=shutil.ignore_patterns("*.db*"))
    for learner in learners.values():  # at the end of the course, straight from the database
        tables = inspect(learner.engine).get_table_names()
        with learner.engine.connect() as connection:
            for table, columns in (("users", "id, username, email"), ("posts", TITLED)):
                query = text(f"SELECT {columns} FROM {table} ORDER BY id")
                rows = connection.execute(query) if table in tables else []
                learner.tables[table] = [tuple(row) for row in rows]
    for step, snapshot in snapshots.items() if MYSQL_URL else ():  # the learner's run is over
        runs.append(checks_in(snapshot, step, "mysql", folder / f"{step}-mysql.xml"))
    print()
    for learner in learners.values():
        print("\n".join(learner.log))
        print(f"at the end, {learner.backend}: {learner.tables}")
    for run in runs:
        outcomes = {stem: run.outcome(stem) == "passed" for stem in sorted(run.cases)}
        print(f"after {run.step}, {run.backend}: {run.seconds:.0f} s, passed: {outcomes}")
    print(f"the course took {time.monotonic() - started:.0f} s")
    yield Course(learners, runs, applied)
    for learner in learners.values():
        learner.engine.dispose()


def need_backend(course: Course, backend: str) -> Learner:
    if backend not in course.learners:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MySQL cases. {MYSQL_SKIPPED}")
        pytest.skip(MYSQL_SKIPPED)
    return course.learners[backend]


def test_the_solutions_apply_in_order(course):
    assert course.applied == dict.fromkeys(EXERCISES, ""), course.applied


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_learners_rows_survive_every_step(course, backend):
    learner = need_backend(course, backend)
    assert not learner.problems, "\n".join(learner.problems)
    assert learner.tables["users"] == [
        (answer["id"], answer["username"], answer["email"]) for answer in learner.users.values()
    ]
    assert learner.tables["posts"] == sorted(
        (post["id"], post["user_id"], post["title"], post["body"])
        for posts in learner.posts.values()
        for post in posts
    )
    assert sum(map(len, learner.posts.values())) == 3, "the posts were never created"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exercise", EXERCISES)
def test_a_check_passes_after_its_exercise_and_every_later_one(course, exercise, backend):
    need_backend(course, backend)
    runs = [run for run in course.runs if run.backend == backend]
    assert len(runs) == len(EXERCISES)
    stem = f"test_{exercise}"
    failed = {
        run.step: run.outcome(stem)
        for run in runs[EXERCISES.index(exercise) :]
        if run.outcome(stem) != "passed"
    }
    assert not failed, "\n\n".join(f"after {step}: {why}" for step, why in failed.items())


@pytest.mark.parametrize("backend", BACKENDS)
def test_test_main_py_passes_after_every_step(course, backend):
    need_backend(course, backend)
    failed = {
        run.step: run.outcome("test_main")
        for run in course.runs
        if run.backend == backend and run.outcome("test_main") != "passed"
    }
    assert not failed, "\n\n".join(f"after {step}: {why[:3000]}" for step, why in failed.items())


@pytest.mark.parametrize("exercise", EXERCISES)
def test_a_schema_change_says_so_and_ships_its_revision(exercise):
    patch = (ROOT / "exercises" / "solutions" / f"{exercise}.patch").read_text()
    ships = "+++ b/migrations/versions/" in patch
    says = [
        command in exercise_text(exercise)
        for command in ("alembic revision --autogenerate -m", "alembic upgrade head")
    ]
    assert says == [ships, ships], f"revision in the patch: {ships}; the commands named: {says}"


def test_no_advice_deletes_a_learners_database():
    readme = (ROOT / "exercises" / "README.md").read_text()
    assert not re.search(r"\brm\b[^`\n]*\.db|delete (your )?app\.db", readme)
    assert "mv app.db app.db.old" in readme
