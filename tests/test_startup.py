"""Started against a database it cannot use, the app exits at once with one clear line. The cases
on a MySQL server run on main.py and on its twin (conftest.py's `app_folder`)."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import url_of
from tests.support import ROOT, UvicornServer, free_port

TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()
BREAK = {
    "wrong password": lambda url: url.set(password="wrong-s3cret"),
    "unknown database": lambda url: url.set(database="no_such_db"),
}


def exit_of(server: UvicornServer, timeout: float) -> tuple[int, float, list[str]]:
    """Waits for the app to stop; its exit code, the seconds since it was started, its lines."""
    started = time.monotonic()
    try:
        code = server.process.wait(timeout=timeout)
    finally:
        server.stop()  # an app that started after all is not left running
    return code, time.monotonic() - started, server.lines


def clear_line(lines: list[str], password: str) -> str:
    [line] = [line for line in lines if "Cannot use the database" in line]
    assert "127.0.0.1" in line and "***" in line, line
    assert "Check that the server is running" in line
    assert password not in "\n".join(lines) and "wrong-s3cret" not in "\n".join(lines)
    return line


def tries(lines: list[str]) -> list[str]:
    """The lines where the app said it would try the database again (it does for 15 s)."""
    return [line for line in lines if "not ready" in line]


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("wrong password", "Access denied"),
        # MySQL says "Unknown database" to a user allowed to see it, else "Access denied".
        ("unknown database", "database 'no_such_db'"),
    ],
)
def test_a_refused_login_or_an_unknown_database_stops_the_app_at_once(
    mysql_engine, problem, expected, app_folder
):
    url = BREAK[problem](mysql_engine.url.set(host="127.0.0.1"))
    server = UvicornServer(url.render_as_string(hide_password=False), cwd=app_folder)
    code, seconds, lines = exit_of(server, timeout=20)
    line = clear_line(lines, mysql_engine.url.password)
    print(f"\n{problem}: exit code {code} after {seconds:.1f} s: {line}")
    assert code != 0
    assert expected in line
    assert not tries(lines), "waited for a database that can never let it in"


def test_a_database_that_never_comes_up_stops_the_app_within_25_seconds(mysql_engine, app_folder):
    url = mysql_engine.url.set(host="127.0.0.1", port=free_port())  # nothing listens there
    server = UvicornServer(url.render_as_string(hide_password=False), cwd=app_folder)
    code, seconds, lines = exit_of(server, timeout=40)
    line = clear_line(lines, mysql_engine.url.password)
    print(f"\nrefused: exit code {code} after {seconds:.1f} s, {len(tries(lines))} tries: {line}")
    assert code != 0
    assert "Connection refused" in line
    assert 10 < seconds < 25
    assert len(tries(lines)) >= 4


def test_a_host_name_that_does_not_resolve_is_named_as_such_while_the_app_waits(
    mysql_engine, app_folder
):
    url = mysql_engine.url.set(host="db.invalid")  # .invalid never resolves (RFC 2606)
    server = UvicornServer(url.render_as_string(hide_password=False), cwd=app_folder)
    deadline = time.monotonic() + 10
    while not tries(server.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.process.kill()  # the first try says it; the others, for 15 s, would say it again
    server.stop()
    [line, *_] = tries(server.lines)
    print(f"\n{line}")
    assert "not known" in line, line  # glibc: "Name or service not known"


def another_service(banner: bytes) -> int:
    """A port where another kind of server answers first, with its banner: SSH's, say, as on a
    DATABASE_URL with the wrong port. Its port; the connections stay open, as that server's do."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            connection, _ = listener.accept()
            connection.sendall(banner)
            held.append(connection)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def test_a_port_where_another_kind_of_server_answers_stops_the_app_at_once(app_folder):
    port = another_service(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    url = f"mysql+pymysql://tutorial:wrong-s3cret@127.0.0.1:{port}/tutorial"
    code, seconds, lines = exit_of(UvicornServer(url, cwd=app_folder), timeout=30)
    line = clear_line(lines, "wrong-s3cret")
    print(f"\nan SSH server's port: exit code {code} after {seconds:.1f} s: {line}")
    assert code != 0
    assert "Packet sequence number wrong" in line  # the driver read something not MySQL's
    assert "`Cannot use the database ...: Packet sequence number wrong" in TROUBLESHOOTING
    assert not any("sqlalchemy.exc" in line for line in lines), "\n".join(lines)  # its one line
    assert not tries(lines), "waited for a server that is not MySQL's"


def test_an_app_started_before_its_database_waits_for_it_and_serves(
    mysql_engine, make_proxy, app_folder
):
    # As a compose file or a reboot starts them: the app first, the database 4 s later.
    proxy = make_proxy()
    proxy.cut()
    server = UvicornServer(url_of(mysql_engine, proxy), cwd=app_folder)
    time.sleep(4)
    proxy.restore()
    with server.wait_started(timeout=30), server.client() as http:
        response = http.post("/users/", json={"username": "ada", "email": "a@example.com"})
    waits = tries(server.lines)
    print(f"\n{len(waits)} tries while the database was down; then {response.status_code}")
    assert response.status_code == 201, "\n".join(server.lines)
    assert waits and "Connection refused" in waits[0]


@pytest.mark.parametrize(
    "setting, value, expected",
    [
        ("DB_POOL_SIZE", "0", "greater than or equal to 1"),
        ("DB_TIMEOUT", "0", "greater than or equal to 4"),
        ("DB_TIMEOUT", "soon", "valid number"),
        ("DB_POOL_SIZE", "many", "valid integer"),
        ("DB_TIMEOUT", "inf", "less than or equal to 3600"),  # no wait is forever
        ("DB_TIMEOUT", "1e10", "less than or equal to 3600"),  # past what PyMySQL accepts
    ],
)
def test_a_bad_setting_stops_the_app_with_a_message_naming_it(
    tmp_path, app_folder, setting, value, expected
):
    database = f"sqlite:///{tmp_path}/app.db"
    server = UvicornServer(database, extra_env={setting: value}, cwd=app_folder)
    code, _, lines = exit_of(server, timeout=30)
    output = "\n".join(lines)
    print(f"\n{setting}={value}: exit code {code}: {output.splitlines()[-1]}")
    assert code != 0
    assert setting.lower() in output.lower() and expected in output, output[-2000:]
    assert not (tmp_path / "app.db").exists(), "the app touched the database first"


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


@pytest.mark.parametrize("module", ["main", "main_async"])
def test_an_in_memory_sqlite_url_imports_then_stops_startup_saying_to_name_a_file(module):
    # Each connection to sqlite:// opens a new, empty database: the tables the app makes on one
    # would be missing on the others. It imports (a tool may import the app to read its routes)
    # and refuses to start, with what to write instead.
    code = f"import {module}, fastapi.testclient as t; t.TestClient({module}.app).__enter__()"
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": "sqlite://"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "in-memory SQLite database: give it a file instead" in run.stderr, run.stderr[-1500:]


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://tutorial:pass@127.0.0.1/tutorial", "No module named 'MySQLdb'"),
        ("mysql+aiomysql://tutorial:pass@127.0.0.1/tutorial", "Pool class QueuePool cannot be"),
        ("sqlite+aiosqlite:///./app.db", "Pool class QueuePool cannot be"),
    ],
)
def test_a_url_for_another_driver_stops_main_py_as_troubleshooting_says(tmp_path, url, message):
    # The twin reads these (docs/async.md); main.py needs mysql+pymysql:// or sqlite:///.
    run = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); import main"],
        cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and message in run.stderr, run.stderr[-1500:]
    assert f"`{message}" in (ROOT / "docs" / "troubleshooting.md").read_text()


@pytest.mark.parametrize("ending", ["", "/"])
def test_a_url_that_names_no_database_stops_the_app_saying_so(mysql_engine, app_folder, ending):
    url = mysql_engine.url.set(host="127.0.0.1").render_as_string(hide_password=False)
    server = UvicornServer(url.rsplit("/", 1)[0] + ending, cwd=app_folder)  # mysql://...@host
    code, seconds, lines = exit_of(server, timeout=30)
    [line] = [line for line in lines if "DATABASE_URL names no database" in line] or [
        "\n".join(lines)
    ]
    print(f"\nno database named: exit code {code} after {seconds:.1f} s: {line}")
    assert code != 0
    assert "such as mysql+pymysql://user:password@host/tutorial" in line
    assert mysql_engine.url.password not in "\n".join(lines)
    assert not tries(lines), "waited, though the URL can never work"
    assert "| `DATABASE_URL names no database: end it with one`, at once |" in TROUBLESHOOTING


@pytest.mark.parametrize("app_folder", ["main"], indirect=True)  # the twin refuses ssl_... itself
def test_a_tls_setting_the_server_cannot_meet_stops_the_app_at_once(mysql_engine, app_folder):
    url = mysql_engine.url.set(
        host="127.0.0.1", query={"ssl_ca": "/etc/ssl/certs/ca-certificates.crt"}
    )
    server = UvicornServer(url.render_as_string(hide_password=False), cwd=app_folder)
    code, seconds, lines = exit_of(server, timeout=30)
    line = clear_line(lines, mysql_engine.url.password)
    print(f"\nTLS the server lacks: exit code {code} after {seconds:.1f} s: {line}")
    assert code != 0
    assert "(2026" in line and "SSL" in line
    assert '`Cannot use the database ...: (2026, "SSL is required' in TROUBLESHOOTING
    assert not tries(lines), "waited for a server that cannot meet the URL's TLS setting"
