"""Honest database errors and bounded waits (issue 12): each kind of trouble gets its own answer,
and the server log names the real cause."""

import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, text

import main
from conftest import url_of
from tests.support import (
    ROOT,
    TcpProxy,
    UvicornServer,
    apply_solutions,
    copy_app,
    deadlocked,
    other_connection_ids,
)

BOUND = 4.0  # DB_TIMEOUT for these tests, the least allowed: each wait 2 s, the server's 1 s
MARGIN = 1.0  # for the machine: thread start-up, the client, a busy CI runner


def timed(call) -> tuple[float, object]:
    started = time.monotonic()
    result = call()
    return time.monotonic() - started, result


def log_lines(server: UvicornServer, text: str) -> list[str]:
    return [line for line in server.lines if text in line]


# --- A stalled database: connections stay open, nothing comes back --------------------------
def test_stalled_database_answers_503_within_the_bound_then_recovers(mysql_engine, make_proxy):
    proxy = make_proxy()
    server = UvicornServer(url_of(mysql_engine, proxy), extra_env={"DB_TIMEOUT": str(BOUND)})
    with server.wait_started(), server.client(timeout=60) as http:
        user_id = http.post("/users/", json={"username": "ada", "email": "a@example.com"})
        user_id = user_id.json()["id"]
        assert http.get(f"/users/{user_id}").status_code == 200

        proxy.stalled = True
        alone, response = timed(lambda: http.get(f"/users/{user_id}"))
        assert response.status_code == 503, response.text
        assert response.json() == {"detail": "Database unavailable"}
        assert response.headers["Retry-After"]
        assert alone <= BOUND + MARGIN

        def one(number: int) -> tuple[float, int]:
            if number % 2:
                seconds, answer = timed(lambda: http.get(f"/users/{user_id}"))
            else:
                body = {"username": f"user{number}", "email": "a@example.com"}
                seconds, answer = timed(lambda: http.post("/users/", json=body))
            return seconds, answer.status_code

        with ThreadPoolExecutor(max_workers=64) as pool:
            waiting = pool.map(one, range(64))
            time.sleep(0.5)
            root_seconds, root = timed(lambda: http.get("/"))  # while 64 wait on the database
            results = list(waiting)
        proxy.stalled = False
        after = http.get(f"/users/{user_id}")

    slowest = max(seconds for seconds, _ in results)
    print(
        f"\nstalled: one request 503 after {alone:.2f} s;"
        f" 64 at once: {dict(Counter(s for _, s in results))}"
        f", slowest {slowest:.2f} s (bound {BOUND:g} s); GET / meanwhile {root_seconds * 1000:.0f}"
        f" ms; after the stall: {after.status_code}"
    )
    assert Counter(status for _, status in results) == {503: 64}
    assert slowest <= 2 * BOUND + MARGIN
    assert root.status_code == 200 and root_seconds < BOUND / 4  # less than one wait: not queued
    assert after.status_code == 200
    [line, *_] = log_lines(server, "answered 503 Database unavailable")
    assert "OperationalError" in line and "2013" in line, line  # lost: timed out
    assert mysql_engine.url.password not in "\n".join(server.lines)


# --- A lock, a long statement, the app's own limit: busy, and nothing left on the server ------
def app_statements(admin) -> list[str]:
    """The statements the app's connections to admin's database are running on the server now.

    Only this database's: CI runs two suites at once as the same user, on two databases."""
    query = (
        "SELECT info FROM information_schema.PROCESSLIST WHERE user = SUBSTRING_INDEX(USER(), '@',"
        " 1) AND db = DATABASE() AND id <> CONNECTION_ID() AND info IS NOT NULL"
    )
    return list(admin.exec_driver_sql(query).scalars())


def test_a_row_lock_answers_503_busy_keeps_the_connection_and_leaves_nothing_waiting(
    mysql_engine,
):
    server = UvicornServer(url_of(mysql_engine), extra_env={"DB_TIMEOUT": str(BOUND)})
    with server.wait_started(), server.client() as http, mysql_engine.connect() as admin:
        user_id = http.post("/users/", json={"username": "ada", "email": "a@example.com"})
        user_id = user_id.json()["id"]
        app_connections = set(other_connection_ids(admin))
        holder = mysql_engine.connect()  # another client holds the row
        holder.execute(text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
        change = {"email": "new@example.com"}
        seconds, response = timed(lambda: http.patch(f"/users/{user_id}", json=change))
        left_on_server = app_statements(admin)
        holder.rollback()
        holder.close()
        after = http.patch(f"/users/{user_id}", json=change)
        still_connected = set(other_connection_ids(admin))
    print(f"\nrow lock: {response.status_code} {response.json()} after {seconds:.2f} s")
    assert response.status_code == 503
    assert response.json() == {"detail": "Database busy, try again"}
    assert response.headers["Retry-After"] == "1"
    assert seconds < BOUND / 2, "the client gave up before the server did"
    assert left_on_server == []
    assert app_connections <= still_connected, "the app threw its connection away"
    assert after.status_code == 200
    [line] = log_lines(server, "answered 503 Database busy")
    # MariaDB ends the lock wait and the statement in the same second, and says either, whichever
    # it meets first: most often 1969, 1205 on a busy machine (docs/reliability.md); MySQL: 1205
    codes = ("(1969)", "(1205)") if mysql_engine.dialect.is_mariadb else ("(1205)",)
    assert any(code in line for code in codes), line


def test_a_query_an_operator_kills_answers_503_busy(mysql_engine, app_folder):
    server = UvicornServer(url_of(mysql_engine), cwd=app_folder)
    with server.wait_started(), server.client() as http, mysql_engine.connect() as admin:
        user_id = http.post("/users/", json={"username": "ada", "email": "a@example.com"})
        user_id = user_id.json()["id"]
        holder = mysql_engine.connect()  # another client holds the row: the PATCH waits
        holder.execute(text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
        change = {"email": "new@example.com"}
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(http.patch, f"/users/{user_id}", json=change)
            while not (updates := waiting_updates(admin)):
                time.sleep(0.05)
            admin.exec_driver_sql(f"KILL QUERY {updates[0]}")  # as a DBA stops a query
            response = waiting.result()
        holder.rollback()
        holder.close()
        after = http.patch(f"/users/{user_id}", json=change)
    print(f"\nKILL QUERY: {response.status_code} {response.json()}")
    assert response.status_code == 503
    assert response.json() == {"detail": "Database busy, try again"}
    assert response.headers["Retry-After"] == "1"
    assert after.status_code == 200
    [line] = log_lines(server, "answered 503 Database busy")
    assert "(1317)" in line, line


def waiting_updates(admin) -> list[int]:
    """Server-side ids of the app's connections running an UPDATE of users in admin's database."""
    query = (
        "SELECT id FROM information_schema.PROCESSLIST WHERE user = SUBSTRING_INDEX(USER(), '@',"
        " 1) AND db = DATABASE() AND id <> CONNECTION_ID() AND info LIKE 'UPDATE users%%'"
    )
    return list(admin.exec_driver_sql(query).scalars())


LONG_REPORT = """

from sqlalchemy import text


@app.get("/learner/report")
def learner_report(session: SessionDep) -> dict:
    return {"slept": session.execute(text("SELECT SLEEP(30)")).scalar()}
"""


def test_a_statement_longer_than_the_bound_is_stopped_on_the_server(mysql_engine, tmp_path):
    copy_app(tmp_path, LONG_REPORT)
    server = UvicornServer(url_of(mysql_engine), cwd=tmp_path, extra_env={"DB_TIMEOUT": str(BOUND)})
    with server.wait_started(), server.client() as http, mysql_engine.connect() as admin:
        seconds, response = timed(lambda: http.get("/learner/report"))
        left_on_server = app_statements(admin)
    print(f"\nSELECT SLEEP(30): {response.status_code} {response.json()} after {seconds:.2f} s")
    assert response.status_code == 503
    assert response.json() == {"detail": "Database busy, try again"}
    assert seconds < BOUND / 2
    assert left_on_server == []


SQLITE_LONG_REPORT = """

from sqlalchemy import text


@app.get("/learner/report")
def learner_report(session: SessionDep) -> dict:
    # counts to 30 million: some 8 s, the database file's read lock held all along
    count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3e7)"
    return {"count": session.scalar(text(count + " SELECT COUNT(*) FROM c"))}
"""


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_a_sqlite_statement_longer_than_the_bound_is_stopped(learner_app):
    learner = learner_app(SQLITE_LONG_REPORT, DB_TIMEOUT=str(BOUND))
    with TestClient(learner.app) as http:
        seconds, response = timed(lambda: http.get("/learner/report"))
        write = http.post("/users/", json={"username": "ada", "email": "a@example.com"})
    print(f"\nSQLite, 30 million steps: {response.status_code} after {seconds:.2f} s")
    assert (response.status_code, response.json()) == (503, {"detail": "Database busy, try again"})
    assert seconds < BOUND / 2
    assert write.status_code == 201


SLOW_READER = """

import time

from sqlalchemy import text


@app.get("/learner/slow-reader")
def slow_reader(session: SessionDep) -> dict:
    numbers = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)"
    total = 0
    for row in session.execute(text(numbers + " SELECT x FROM c")):  # read as it is needed
        total += row.x
        if row.x % 1000 == 0:
            time.sleep(0.1)  # the route's own work between rows: 2 s in all, not the database's
    return {"total": total}
"""


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_a_route_that_reads_its_rows_slowly_is_not_stopped_by_the_statement_bound(learner_app):
    learner = learner_app(SLOW_READER, DB_TIMEOUT=str(BOUND))
    with TestClient(learner.app) as http:
        seconds, response = timed(lambda: http.get("/learner/slow-reader"))
    print(f"\nSQLite, 20,000 rows read over 2 s: {response.status_code} after {seconds:.2f} s")
    assert (response.status_code, response.json()) == (200, {"total": 20000 * 20001 // 2})


def test_a_row_lock_in_process_answers_busy_too(mysql_engine, monkeypatch):
    # conftest.py builds the tests' engines with main's own function, so the in-process tests
    # (TestClient) meet the same limits as `uvicorn main:app`.
    monkeypatch.setattr(main, "db_engine", mysql_engine)
    with TestClient(main.app) as client, mysql_engine.connect() as holder:
        user_id = client.post("/users/", json={"username": "ada", "email": "a@example.com"})
        user_id = user_id.json()["id"]
        holder.execute(text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
        seconds, response = timed(
            lambda: client.patch(f"/users/{user_id}", json={"email": "new@example.com"})
        )
        holder.rollback()
    assert response.status_code == 503
    assert response.json() == {"detail": "Database busy, try again"}
    assert seconds < main.settings.db_timeout / 2


def test_more_requests_than_turns_is_busy_and_an_unreachable_database_unavailable(
    mysql_engine, make_proxy
):
    # One turn. The first request takes it and meets a stalled database: unavailable. The
    # second waits for the turn, and the app's own limit runs out first: busy.
    proxy = make_proxy()
    extra_env = {"DB_TIMEOUT": str(BOUND), "DB_POOL_SIZE": "1"}
    server = UvicornServer(url_of(mysql_engine, proxy), extra_env=extra_env)
    with server.wait_started(), server.client() as http:
        assert http.get("/users/").status_code == 200
        proxy.stalled = True
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(http.get, "/users/")
            time.sleep(0.2)
            second = pool.submit(http.get, "/users/")
            first, second = first.result(), second.result()
        proxy.stalled = False
    print(f"\nturn holder: {first.json()}; waiting for its turn: {second.json()}")
    assert (first.status_code, first.json()) == (503, {"detail": "Database unavailable"})
    assert (second.status_code, second.json()) == (503, {"detail": "Database busy, try again"})
    assert second.headers["Retry-After"] == "1"


def test_default_bound_is_10_seconds_and_set_in_dotenv_example():
    assert main.ServiceSettings.model_fields["db_timeout"].default == 10
    assert "DB_TIMEOUT=10" in (ROOT / ".env.example").read_text()


# --- 503 means unavailable, and nothing else --------------------------------------------------
def test_schema_error_at_runtime_answers_500_and_logs_the_cause(engine, tmp_path):
    with UvicornServer(url_of(engine)).wait_started() as server, server.client() as http:
        assert http.post("/users/", json={"username": "ada", "email": "a@example.com"})
        with engine.begin() as connection:  # the table no longer matches the model
            connection.execute(text("ALTER TABLE users DROP COLUMN email"))
        response = http.get("/users/")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    [line] = log_lines(server, "answered 500 Internal Server Error")
    expected = "no such column" if engine.dialect.name == "sqlite" else "(1054) Unknown column"
    assert "OperationalError" in line and expected in line and "email" in line, line
    assert "FROM users" not in response.text and "FROM users" not in line  # no SQL
    print(f"\nlog: {line}")


def deadlocked_creates(engine, http) -> list:
    body = {"username": "x", "email": "a@example.com"}
    return deadlocked(engine, http.post, [{"url": "/users/", "json": body}] * 2)


def test_deadlock_is_run_again_once_and_then_meets_the_unique_index(mysql_engine):
    # The victim runs again, sees the winner's row, and gets the 409 it deserves.
    with UvicornServer(url_of(mysql_engine)).wait_started() as server, server.client() as http:
        responses = deadlocked_creates(mysql_engine, http)
    assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
    assert [r.json() for r in responses if r.status_code == 409] == [
        {"detail": "Username already taken"}
    ]
    [line] = log_lines(server, "running it again")
    assert "(1213) Deadlock found" in line, line
    print(f"\nlog: {line}")


@pytest.mark.parametrize("opened_with", ["new_session()", "a bare SessionLocal"])
def test_exercise_6_keeps_the_rerun_with_new_session_and_loses_it_without(
    mysql_engine, tmp_path, opened_with
):
    # Exercise 6's reference solution opens each session in the route with new_session(); its
    # README says a bare sessionmaker loses the rerun: a deadlock then answers 503.
    apply_solutions(copy_app(tmp_path), up_to="06")
    if opened_with == "a bare SessionLocal":
        app = (tmp_path / "main.py").read_text()
        app = app.replace("with new_session() as session:", "with SessionLocal() as session:")
        app += "\nSessionLocal = sessionmaker(bind=db_engine, expire_on_commit=False)\n"
        (tmp_path / "main.py").write_text(app)
    with (
        UvicornServer(url_of(mysql_engine), cwd=tmp_path).wait_started() as server,
        server.client() as http,
    ):
        responses = deadlocked_creates(mysql_engine, http)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == ([201, 409] if opened_with == "new_session()" else [201, 503]), statuses
    print(f"\nexercise 6, sessions from {opened_with}: a deadlock answers {statuses}")


def test_locked_sqlite_file_answers_503_busy(tmp_path):
    url = f"sqlite:///{tmp_path}/app.db"
    holder_engine = create_engine(url)
    body = {"username": "ada", "email": "a@example.com"}
    with (
        UvicornServer(url, extra_env={"DB_TIMEOUT": str(BOUND)}).wait_started() as server,
        holder_engine.connect() as holder,
        server.client() as http,
    ):
        holder.exec_driver_sql("BEGIN IMMEDIATE")  # holds the write lock on the file
        seconds, response = timed(lambda: http.post("/users/", json=body))
        holder.rollback()
        after = http.post("/users/", json=body)
    holder_engine.dispose()
    assert response.status_code == 503 and seconds < BOUND / 2 + MARGIN
    assert response.json() == {"detail": "Database busy, try again"}
    assert after.status_code == 201
    [line] = log_lines(server, "answered 503 Database busy")
    assert "database is locked" in line, line


def write_lock_free(engine: Engine) -> bool:
    """Another program (a viewer, a backup) may write to the SQLite file at once."""
    probe = sqlite3.connect(engine.url.database, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_a_commit_refused_while_another_program_reads_the_file_is_undone_at_once(
    engine, client, rows
):
    # A program reading the file (a viewer, a backup) keeps COMMIT from writing it: SQLite then
    # keeps the transaction, with its INSERT, open. Undone at once, it locks out no one, and the
    # next request on that connection never saves it.
    assert client.post("/users/", json={"username": "ada", "email": "a@example.com"}).status_code
    reader = sqlite3.connect(engine.url.database, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM users").fetchall()  # a read lock on the file, until COMMIT
    refused = client.post("/users/", json={"username": "zed", "email": "z@example.com"})
    reader.execute("COMMIT")
    reader.close()
    lock_free = write_lock_free(engine)
    after = client.post("/users/", json={"username": "bob", "email": "b@example.com"})
    assert (refused.status_code, refused.json()) == (503, {"detail": "Database busy, try again"})
    assert lock_free
    assert after.status_code == 201
    assert [row[1] for row in rows()] == ["ada", "bob"]


def test_deleting_a_user_that_other_rows_refer_to_is_409_saying_so(engine, client, rows):
    user = client.post("/users/", json={"username": "ada", "email": "a@example.com"}).json()
    with engine.begin() as connection:  # a learner's second table, its rows referring to users
        connection.execute(text("CREATE TABLE notes (user_id INTEGER REFERENCES users (id))"))
        connection.execute(text(f"INSERT INTO notes VALUES ({user['id']})"))
    response = client.delete(f"/users/{user['id']}")
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE notes"))
    assert response.status_code == 409
    assert response.json() == {"detail": "Other rows still refer to it"}  # before: "Conflicts..."
    assert [row[1] for row in rows()] == ["ada"]


def test_another_unique_rule_is_409_with_its_own_detail_and_logged(engine, client, caplog):
    with engine.begin() as connection:  # a rule the model does not know about
        connection.execute(text("CREATE UNIQUE INDEX uq_users_email ON users (email)"))
    assert client.post("/users/", json={"username": "ada", "email": "a@example.com"})
    response = client.post("/users/", json={"username": "grace", "email": "a@example.com"})
    assert response.status_code == 409
    assert response.json() == {"detail": "Conflicts with existing data"}
    [record] = [r for r in caplog.records if "answered 409" in r.getMessage()]
    assert "IntegrityError" in record.getMessage() and "email" in record.getMessage()


def test_a_taken_username_is_still_409_username_taken_beside_another_rule(engine, client):
    with engine.begin() as connection:
        connection.execute(text("CREATE UNIQUE INDEX uq_users_email ON users (email)"))
    client.post("/users/", json={"username": "ada", "email": "a@example.com"})
    response = client.post("/users/", json={"username": "ada", "email": "b@example.com"})
    assert response.json() == {"detail": "Username already taken"}


# --- A model column missing from an existing table --------------------------------------------
def test_missing_column_stops_startup_with_one_line_naming_it(engine, tmp_path):
    # Exercise 2 the way a student first does it: the new columns in the model, the old table.
    with UvicornServer(url_of(engine)).wait_started() as server:  # creates today's table
        pass
    apply_solutions(copy_app(tmp_path), up_to="02")
    server = UvicornServer(url_of(engine), cwd=tmp_path)
    code = server.process.wait(timeout=30)
    server.stop()
    [line] = log_lines(server, "has no column")
    assert code != 0
    assert "'users'" in line and "'is_active'" in line and "'created_at'" in line
    assert "alembic upgrade head" in line
    print(f"\n{engine.dialect.name}: {line}")


NEW_TABLE = """

class NoteTable(BaseModelClass):  # a learner's second table, with no revision yet
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
"""


def test_a_missing_table_stops_startup_naming_it_and_the_two_commands(engine, tmp_path):
    with UvicornServer(url_of(engine)).wait_started():  # creates today's table, stamped
        pass
    copy_app(tmp_path, NEW_TABLE)
    server = UvicornServer(url_of(engine), cwd=tmp_path)
    code = server.process.wait(timeout=30)
    server.stop()
    [line] = log_lines(server, "'notes'")
    print(f"\n{engine.dialect.name}: {line}")
    assert code != 0
    assert "is missing" in line and "has no column" not in line
    assert "alembic revision --autogenerate" in line and "alembic upgrade head" in line


NEW_COLUMN = """    full_name: Mapped[str | None] = mapped_column(String(100))  # a new column
"""


def test_on_a_database_alembic_has_not_seen_the_commands_named_work_in_their_order(
    engine, tmp_path
):
    main.BaseModelClass.metadata.create_all(engine)  # a seed script's create_tables(): unstamped
    copy_app(tmp_path, NEW_COLUMN, after="    email: Mapped[str]")  # then a column added
    server = UvicornServer(url_of(engine), cwd=tmp_path)
    try:
        server.process.wait(timeout=30)
    finally:
        server.stop()  # a server that started after all is not left running
    [line] = log_lines(server, "has no column 'full_name'")
    commands = re.findall(r"`(alembic [^`]+)`", line)
    print(f"\n{engine.dialect.name}: {line}")
    env = {**os.environ, "DATABASE_URL": url_of(engine)}
    for command in commands:  # as the line says, in its order; "..." is the learner's message
        words = [word.replace("...", "add full_name") for word in shlex.split(command)]
        run = subprocess.run(
            [sys.executable, "-m", *words], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, f"{command}: {run.stderr[-1500:]}"
    with UvicornServer(url_of(engine), cwd=tmp_path).wait_started() as server:
        started = server.count("Application startup complete.")
    assert started == 1, "\n".join(server.lines)


# --- Clean shutdown and long-lived connections ------------------------------------------------
def aborted_clients(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")).one()[1])


def test_sigterm_after_load_aborts_no_connection(mysql_engine):
    before = aborted_clients(mysql_engine)
    server = UvicornServer(url_of(mysql_engine)).wait_started()
    with server.client() as http, ThreadPoolExecutor(max_workers=8) as pool:
        statuses = Counter(
            pool.map(
                lambda n: (
                    http.post(
                        "/users/", json={"username": f"u{n}", "email": "a@example.com"}
                    ).status_code
                ),
                range(200),
            )
        )
    server.stop()  # SIGTERM
    mysql_engine.dispose()
    after = aborted_clients(mysql_engine)
    print(f"\nAborted_clients {before} -> {after} after {dict(statuses)} and SIGTERM")
    assert statuses == {201: 200}
    assert after - before == 0


def test_requests_in_flight_at_sigterm_finish(mysql_engine, make_proxy):
    proxy = make_proxy(latency=0.1)  # each request now takes several tenths of a second
    server = UvicornServer(url_of(mysql_engine, proxy)).wait_started()
    with server.client() as http, ThreadPoolExecutor(max_workers=4) as pool:
        assert http.get("/users/").status_code == 200  # the pool holds connections now
        in_flight = [
            pool.submit(http.post, "/users/", json={"username": f"u{n}", "email": "a@e.com"})
            for n in range(4)
        ]
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        statuses = [future.result().status_code for future in in_flight]
        server.process.wait(timeout=30)
    server.stop()
    assert statuses == [201] * 4


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_connection_the_server_dropped_while_idle_is_replaced_unseen(engine, client):
    # MySQL closes a connection idle for wait_timeout (8 hours by default): here, 1 second.
    engine.dispose()  # the pool then holds only the connection below
    with engine.connect() as connection:
        connection.exec_driver_sql("SET SESSION wait_timeout = 1")
    time.sleep(2)  # the pool still holds it; pool_pre_ping finds it dead and connects again
    assert client.get("/users/").status_code == 200


@contextmanager
def through_a_proxy(engine, client, monkeypatch) -> Iterator[tuple[TcpProxy, Engine]]:
    """The app's engine, main's or the twin's, reaching the test's server through a TcpProxy."""
    proxy = TcpProxy(engine.url.host, engine.url.port or 3306)
    try:
        monkeypatch.setattr(main, "db_engine", create_engine(url_of(engine, proxy)))
        app_engine = getattr(main.db_engine, "sync_engine", main.db_engine)  # the twin's too
        if app_engine is main.db_engine:  # main's, guarded as main.py guards its own
            main.guard_engine(app_engine)
        yield proxy, app_engine
    finally:
        if hasattr(main.db_engine, "sync_engine"):  # the twin's: closed on the app's own loop
            client.portal.call(main.db_engine.dispose)
        else:
            main.db_engine.dispose()
        proxy.close()


def test_a_connection_lost_as_a_read_closes_still_answers_the_read(engine, client, monkeypatch):
    # The read has its row; then the network drops, and the session's closing ROLLBACK meets a
    # dead connection: the answer is the row, the log says why, the next request connects again.
    if engine.dialect.name != "mysql":
        pytest.skip("a network between the app and its server: MySQL")
    user = client.post("/users/", json={"username": "ada", "email": "a@example.com"}).json()
    cuts = []
    with through_a_proxy(engine, client, monkeypatch) as (proxy, app_engine):

        @event.listens_for(app_engine, "after_cursor_execute")
        def cut_after_the_select(connection: object, cursor: object, statement: str, *_) -> None:
            if statement.startswith("SELECT users.id") and not cuts:  # the route's SELECT
                cuts.append(statement)
                proxy.cut()  # PyMySQL and aiomysql have read the whole answer already

        read = client.get(f"/users/{user['id']}")
        proxy.restore()
        again = client.get(f"/users/{user['id']}")
        checked_out = app_engine.pool.checkedout()
    assert (read.status_code, read.json()) == (200, user)
    assert again.status_code == 200
    assert checked_out == 0


def test_a_commit_whose_answer_is_lost_answers_500_saved_or_not_never_503(
    engine, client, monkeypatch, caplog
):
    # The COMMIT is sent, then the network drops: the server may have done it or not, and no one
    # can tell. A 503 would say "nothing saved, send it again": a resend could write it twice.
    if engine.dialect.name != "mysql":
        pytest.skip("a network between the app and its server: MySQL")
    cuts = []
    with through_a_proxy(engine, client, monkeypatch) as (proxy, app_engine):

        @event.listens_for(app_engine, "commit")  # as the COMMIT is about to be sent
        def cut_at_the_commit(connection: object) -> None:
            if not cuts:
                cuts.append(connection)
                proxy.cut()

        created = client.post("/users/", json={"username": "ada", "email": "a@example.com"})
        proxy.restore()
        checked_out = app_engine.pool.checkedout()
    assert created.status_code == 500, created.text
    assert created.json() == {"detail": "Saved or not is unknown: the database went away"}
    assert "Retry-After" not in created.headers
    assert "its COMMIT's answer was lost" in caplog.text
    assert checked_out == 0


def test_a_database_that_refuses_the_app_at_runtime_answers_503_unavailable(
    engine, client, monkeypatch, caplog
):
    # The app ran, then its login was refused: a password changed (MySQL), a file gone out of
    # reach (SQLite). Startup would stop on it; a running or mounted app answers 503 and logs why.
    if engine.dialect.name == "mysql":
        refused, cause = engine.url.set(password="not-the-password"), "Access denied"
    else:
        refused, cause = "sqlite:////no-such-folder/app.db", "unable to open database file"
    monkeypatch.setattr(main, "db_engine", create_engine(refused))
    response = client.get("/users/")
    assert (response.status_code, response.json()) == (503, {"detail": "Database unavailable"})
    assert response.headers["Retry-After"] == "5"
    assert cause in caplog.text
