"""Started against a database it cannot use, the app exits at once with one clear line."""

import time

import pytest

from tests.support import UvicornServer, free_port

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
