"""Every exercise check fails on the unchanged app, and passes on its reference solution done
alone on today's main.py. The stored patches are the course, each made on top of the ones
before it: tests/test_course.py applies them in order."""

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need
from exercises.make_solutions import Tree, solution_chain, solution_patch
from tests.support import ROOT, copy_app

EXERCISES = sorted(path.stem for path in (ROOT / "exercises" / "solutions").glob("*.patch"))
COPIED = [
    "conftest.py",
    "test_main.py",  # exercise 2's patch updates it
    "pyproject.toml",
    "tests/__init__.py",
    "tests/support.py",
    "tests/galera.py",
]


def app_copy(tmp_path: Path) -> Path:
    copy_app(tmp_path)
    for name in COPIED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "exercises", tmp_path / "exercises", ignore=shutil.ignore_patterns("student")
    )
    return tmp_path


def run_check(
    app: Path, *exercises: str, args: tuple = (), env: dict | None = None
) -> subprocess.CompletedProcess:
    """Runs the checks of the exercises named, in one pytest, in the app's folder."""
    checks = []
    for exercise in exercises:
        [check] = (app / "exercises" / "checks").glob(f"test_{exercise}.py")
        checks.append(str(check))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *checks]
    return subprocess.run(
        command, cwd=app, capture_output=True, text=True, timeout=900, env=env or os.environ
    )


def test_there_are_five_to_seven_exercises():
    assert 5 <= len(EXERCISES) <= 7
    for exercise in EXERCISES:
        assert (ROOT / "exercises" / "checks" / f"test_{exercise}.py").exists()


@functools.cache
def todays_course() -> dict[str, str]:
    return solution_chain(Tree.today())


@pytest.mark.parametrize("exercise", EXERCISES)
def test_solution_patch_is_rebuilt_from_todays_main_py(exercise):
    need("ruff")  # the patches are formatted as ruff leaves them
    patch = (ROOT / "exercises" / "solutions" / f"{exercise}.patch").read_text()
    assert patch == todays_course()[exercise], (
        "main.py, test_main.py or the revisions changed: run python exercises/make_solutions.py"
    )


@pytest.mark.parametrize("exercise", EXERCISES)
def test_check_fails_on_the_unchanged_app(tmp_path, exercise):
    result = run_check(app_copy(tmp_path), exercise)
    assert result.returncode == 1, result.stdout[-3000:]
    assert " failed" in result.stdout or " error" in result.stdout


@pytest.mark.parametrize("exercise", EXERCISES)
def test_check_passes_on_the_exercise_done_alone(tmp_path, exercise):
    # A teacher may give one exercise alone: its solution, made against today's main.py.
    need("ruff")
    (tmp_path / "app").mkdir()
    app = app_copy(tmp_path / "app")
    patch, _ = solution_patch(exercise, Tree.today())
    (tmp_path / "alone.patch").write_text(patch)
    subprocess.run(["git", "apply", str(tmp_path / "alone.patch")], cwd=app, check=True)
    result = run_check(app, exercise)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "skipped" not in result.stdout or not os.environ.get("CI"), result.stdout[-3000:]


# A plausible slip in each reference solution, which its check must catch: (file, old, new).
SLIPS = {
    "01_by_username": ("main.py", "/{username:path}", "/{username}"),  # "a/b" is then a 404
    "02_active_and_created_at": ("main.py", "datetime.now(UTC)", "datetime.now()"),  # local time
    "03_posts": ("main.py", 'max_length=200, examples=["Hello"]', 'examples=["Hello"]'),
    "05_race_test": (
        "exercises/student/test_duplicate_race.py",
        "    assert sorted(statuses) == [201] + [409] * 9\n",
        "    print(statuses)  # sends the requests, checks nothing\n",
    ),
    "06_approach_b": ("main.py", "session.commit()  # sends the UPDATE", "session.flush()  #"),
}


@pytest.mark.parametrize("exercise", sorted(SLIPS))
def test_check_fails_on_a_slip_in_the_solution(tmp_path, exercise):
    need("ruff")
    app = app_copy(tmp_path)
    patch, _ = solution_patch(exercise, Tree.today())
    (tmp_path / "alone.patch").write_text(patch)
    subprocess.run(["git", "apply", str(tmp_path / "alone.patch")], cwd=app, check=True)
    name, old, new = SLIPS[exercise]
    code = (app / name).read_text()
    assert old in code, f"the slip's text is not in the reference solution: {old!r}"
    (app / name).write_text(code.replace(old, new, 1))
    result = run_check(app, exercise)
    assert result.returncode == 1, result.stdout[-3000:]
