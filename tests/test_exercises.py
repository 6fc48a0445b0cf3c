"""Every exercise check passes on its reference solution and fails on the unchanged app."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need
from exercises.make_solutions import solution_patch
from tests.support import ROOT, copy_app

EXERCISES = sorted(path.stem for path in (ROOT / "exercises" / "solutions").glob("*.patch"))
COPIED = [
    "conftest.py",
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


def run_check(app: Path, exercise: str) -> subprocess.CompletedProcess:
    [check] = (app / "exercises" / "checks").glob(f"test_{exercise}.py")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(check)]
    return subprocess.run(
        command, cwd=app, capture_output=True, text=True, timeout=600, env=os.environ
    )


def test_there_are_five_to_seven_exercises():
    assert 5 <= len(EXERCISES) <= 7
    for exercise in EXERCISES:
        assert (ROOT / "exercises" / "checks" / f"test_{exercise}.py").exists()


@pytest.mark.parametrize("exercise", EXERCISES)
def test_solution_patch_is_rebuilt_from_todays_main_py(exercise):
    need("ruff")  # the patches are formatted as ruff leaves them
    patch = (ROOT / "exercises" / "solutions" / f"{exercise}.patch").read_text()
    expected = solution_patch(exercise, (ROOT / "main.py").read_text())
    assert patch == expected, "main.py changed: run python exercises/make_solutions.py"


@pytest.mark.parametrize("exercise", EXERCISES)
def test_check_fails_on_the_unchanged_app(tmp_path, exercise):
    result = run_check(app_copy(tmp_path), exercise)
    assert result.returncode == 1, result.stdout[-3000:]
    assert " failed" in result.stdout or " error" in result.stdout


@pytest.mark.parametrize("exercise", EXERCISES)
def test_check_passes_on_the_reference_solution(tmp_path, exercise):
    app = app_copy(tmp_path)
    patch = app / "exercises" / "solutions" / f"{exercise}.patch"
    subprocess.run(["git", "apply", str(patch)], cwd=app, check=True, capture_output=True)
    result = run_check(app, exercise)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "skipped" not in result.stdout or not os.environ.get("CI"), result.stdout[-3000:]
