"""Started against a database it cannot use, the app exits at once with one clear line."""

import shutil
import time

import pytest

from tests.support import ROOT, UvicornServer, free_port

BREAK = {
    "refused": lambda url: url.set(port=free_port()),  # nothing listens there
    "wrong password": lambda url: url.set(password="wrong-s3cret"),
    "unknown database": lambda url: url.set(database="no_such_db"),
}


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("refused", "Connection refused"),
        ("wrong password", "Access denied"),
        # MySQL says "Unknown database" to a user allowed to see it, else "Access denied".
        ("unknown database", "database 'no_such_db'"),
    ],
)
def test_startup_with_unusable_database_exits_with_one_clear_line(mysql_engine, problem, expected):
    url = BREAK[problem](mysql_engine.url.set(host="127.0.0.1"))
    started = time.monotonic()
    server = UvicornServer(url.render_as_string(hide_password=False))
    code = server.process.wait(timeout=20)
    seconds = time.monotonic() - started
    server.stop()
    output = "\n".join(server.lines)
    [line] = [line for line in server.lines if "Cannot use the database" in line]
    assert code != 0
    assert expected in line and "127.0.0.1" in line and "***" in line
    assert "Check that the server is running" in line
    assert "wrong-s3cret" not in output and mysql_engine.url.password not in output
    print(f"\n{problem}: exit code {code} after {seconds:.1f} s: {line}")


def test_main_py_copied_alone_into_an_empty_folder_starts_and_serves(tmp_path):
    # A copy-paster's first step: no migrations folder, no .env, no DATABASE_URL.
    shutil.copy(ROOT / "main.py", tmp_path / "main.py")
    with UvicornServer(None, cwd=tmp_path).wait_started() as server, server.client() as http:
        created = http.post("/users/", json={"username": "ada", "email": "ada@example.com"})
        listed = http.get("/users/")
        docs = http.get("/docs")
    assert created.status_code == 201, "\n".join(server.lines)
    assert listed.json() == [created.json()]
    assert docs.status_code == 200
    assert (tmp_path / "app.db").exists()  # the SQLite default, in the working directory
    assert "Database: sqlite:///./app.db" in "\n".join(server.lines)
