"""A learner installs the app, not the test lab (issue 20): requirements.txt alone, in a fresh
virtual environment, runs `uvicorn main:app` and the README's schema-change steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, UvicornServer, copy_app

TEST_TOOLS = {"pytest", "httpx2", "schemathesis", "hypothesis", "pytest-alembic", "playwright"}
LIMIT_MB = 150  # the app's install, site-packages included, at most
INSTALL_SKIPPED = "Install cases skipped: pip could not install requirements.txt"


def run(python: Path, *args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], capture_output=True, text=True, **options)


@pytest.fixture(scope="module")
def app_python(tmp_path_factory) -> Path:
    """The Python of a new virtual environment with requirements.txt installed, nothing else."""
    folder = tmp_path_factory.mktemp("app-env")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    pip = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]
    installed = run(python, *pip, "-r", str(ROOT / "requirements.txt"))
    if installed.returncode != 0:  # no package index here
        message = f"{INSTALL_SKIPPED}: {installed.stderr.strip().splitlines()[-1:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def size_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def test_the_apps_requirements_hold_no_test_tool_and_install_under_150_mb(app_python):
    listed = run(app_python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check")
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    site = Path(
        run(
            app_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
        ).stdout.strip()
    )
    environment = app_python.parent.parent
    print(
        f"\nrequirements.txt: {len(names)} packages, site-packages {size_mb(site):.0f} MB,"
        f" the whole environment {size_mb(environment):.0f} MB"
    )
    assert not names & TEST_TOOLS, names & TEST_TOOLS
    assert size_mb(site) <= LIMIT_MB
    check = run(app_python, "-m", "pip", "check", "--disable-pip-version-check")
    assert check.returncode == 0, check.stdout


def test_uvicorn_main_app_serves_from_the_apps_requirements(app_python, tmp_path):
    copy_app(tmp_path)
    server = UvicornServer(None, cwd=tmp_path, python=app_python)
    with server.wait_started(), server.client() as http:
        response = http.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    assert response.status_code == 201, "\n".join(server.lines)


def test_alembic_revision_autogenerate_works_from_the_apps_requirements(app_python, tmp_path):
    # Exercise 2's documented steps, where no test tool (ruff) is installed.
    copy_app(tmp_path)
    source = (tmp_path / "main.py").read_text()
    column = "    email: Mapped[str] = mapped_column(String(120))\n"
    nickname = "    nickname: Mapped[str | None] = mapped_column(String(20))\n"
    (tmp_path / "main.py").write_text(source.replace(column, column + nickname))
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}
    upgrade = run(app_python, "-m", "alembic", "upgrade", "head", cwd=tmp_path, env=env)
    assert upgrade.returncode == 0, upgrade.stderr
    message = ["-m", "alembic", "revision", "--autogenerate", "-m", "users: nickname"]
    revision = run(app_python, *message, cwd=tmp_path, env=env)
    print(f"\n{revision.stdout}{revision.stderr}")
    assert revision.returncode == 0, revision.stdout + revision.stderr
    [written] = (tmp_path / "migrations" / "versions").glob("*_users_nickname.py")
    assert "nickname" in written.read_text()
