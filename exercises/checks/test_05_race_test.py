"""Exercise 5: your own concurrency test for a duplicate username, in
exercises/student/test_duplicate_race.py. It must pass against the app, and fail against an app
that checks for the name with a SELECT before inserting (the race the unique index prevents)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUDENT_TEST = ROOT / "exercises" / "student" / "test_duplicate_race.py"


def run_student_test(*extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    command += [str(STUDENT_TEST)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def student_test() -> Path:
    assert STUDENT_TEST.exists(), f"write your test in {STUDENT_TEST.relative_to(ROOT)}"
    return STUDENT_TEST


def test_your_race_test_passes_against_the_app(student_test):
    result = run_student_test()
    assert result.returncode == 0, result.stdout[-2000:]
    assert " passed" in result.stdout


def test_your_race_test_catches_an_app_that_checks_before_inserting(student_test):
    result = run_student_test("-p", "exercises.checks.racy_app")
    assert result.returncode == 1, (
        "your test passed against the racy app:\n" + result.stdout[-2000:]
    )
