"""The database goes away and comes back: the app (main.py, or its twin) answers 503 meanwhile
and recovers alone."""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from conftest import url_of
from tests.support import UvicornServer, other_connection_ids

SECRET = "tutorial-pass"


def mixed_requests(http, count: int) -> list:
    calls = [
        lambda n: http.get("/users/"),
        lambda n: http.post(
            "/users/", json={"username": f"u{n}-{time.monotonic_ns()}", "email": "a@example.com"}
        ),
        lambda n: http.get("/users/1"),
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda n: calls[n % 3](n), range(count)))


def assert_clean_503(response) -> None:
    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable"}
    for secret in (SECRET, "127.0.0.1", "SELECT", "INSERT", "mysql"):
        assert secret not in response.text


def test_network_cut_gives_503_then_recovers_without_restart(mysql_engine, make_proxy, app_folder):
    proxy = make_proxy()
    with (
        UvicornServer(url_of(mysql_engine, proxy), cwd=app_folder).wait_started() as server,
        server.client() as http,
    ):
        assert {r.status_code for r in mixed_requests(http, 30)} <= {200, 201, 404}

        proxy.cut()
        during_cut = mixed_requests(http, 30)
        for response in during_cut:
            assert_clean_503(response)

        proxy.restore()
        restored_at = time.monotonic()
        while http.get("/users/").status_code != 200:
            assert time.monotonic() - restored_at < 5, "no recovery within 5 s"
            time.sleep(0.05)
        recovery = time.monotonic() - restored_at
        assert {r.status_code for r in mixed_requests(http, 30)} <= {200, 201, 404}
    print(f"\ncut: {len(during_cut)} requests, all 503; recovered {recovery:.2f} s after restore")


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_pooled_connections_the_server_ended_while_idle_are_replaced_unseen(
    mysql_engine, make_proxy, app_folder, reset
):
    # A server ends a connection idle for its wait_timeout (8 hours by default), with an orderly
    # close, or a reset from a firewall or a restarted balancer: the next requests never see it.
    proxy = make_proxy()
    with (
        UvicornServer(url_of(mysql_engine, proxy), cwd=app_folder).wait_started() as server,
        server.client() as http,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):

        def read(client, n: int) -> tuple[int, str]:
            answer = client.get("/users/")
            return answer.status_code, answer.text if answer.status_code != 200 else "a list"

        assert set(pool.map(read, [http] * 40, range(40))) == {(200, "a list")}  # several pooled
        proxy.drop_open(reset)
        time.sleep(0.2)  # the app's side has seen the end before the next request comes
        with server.client() as fresh:  # new HTTP connections: none that uvicorn closes meanwhile
            answers = Counter(pool.map(read, [fresh] * 40, range(40)))
    # Served by uvicorn with uvloop: a probe once saw the twin's ping of a reset connection raise
    # uvloop's RuntimeError (a plain-text 500); not seen since, in 12 rounds of 40: kept as a guard.
    assert set(answers) == {(200, "a list")}, answers


def test_a_server_that_resets_each_connection_as_it_opens_is_answered_503(
    mysql_engine, make_proxy, app_folder
):
    proxy = make_proxy()
    with (
        UvicornServer(url_of(mysql_engine, proxy), cwd=app_folder).wait_started() as server,
        server.client() as http,
    ):
        assert http.get("/users/").status_code == 200
        proxy.resetting = True  # each new connection: accepted, then reset at once
        proxy.cut()  # and the pooled ones are gone
        proxy.restore()
        with ThreadPoolExecutor(max_workers=64) as pool:  # busy: the driver meets the reset late
            answers = list(pool.map(lambda n: http.get("/users/"), range(400)))
        statuses = Counter((answer.status_code, answer.text) for answer in answers)
        proxy.resetting = False
        assert http.get("/users/").status_code == 200
    # Before, on the twin: 469 of 2000 answered a plain-text 500 (the driver's RuntimeError,
    # "Transport does not expose socket instance"), and 433 lost their HTTP connection.
    assert set(statuses) <= {
        (503, '{"detail":"Database unavailable"}'),
        (503, '{"detail":"Database busy, try again"}'),
    }, statuses
    assert server.count("Traceback") == 0
    print(f"\n400 requests while each connection is reset as it opens: {dict(statuses)}")


def test_connections_killed_by_the_server_are_replaced_on_the_next_request(
    mysql_engine, app_folder
):
    server = UvicornServer(url_of(mysql_engine), cwd=app_folder)
    with server.wait_started(), server.client() as http:
        mixed_requests(http, 30)  # several pooled connections now sit idle in the app
        with mysql_engine.connect() as admin:
            ids = other_connection_ids(admin)
            for connection_id in ids:
                admin.execute(text(f"KILL {int(connection_id)}"))
        assert ids, "the app held no connection to kill"
        assert http.get("/users/").status_code == 200
        response = http.post("/users/", json={"username": "after-kill", "email": "a@example.com"})
        assert response.status_code == 201
    print(f"\nkilled {len(ids)} connections; the next requests answered 200 and 201")


# --- A stall in the instant between a COMMIT's answer and the pool's ROLLBACK ----------------
BOUND = 4.0  # DB_TIMEOUT: each wait 2 s


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_stall_after_the_commits_answer_still_answers_201_within_the_bound(
    learner_app, engine, make_proxy, rows
):
    proxy = make_proxy()
    app = learner_app(DATABASE_URL=url_of(engine, proxy), DB_TIMEOUT=str(BOUND))
    answers_201_through_a_stall_after_the_commit(app, proxy, rows)


def answers_201_through_a_stall_after_the_commit(app: ModuleType, proxy, rows) -> None:  # both
    """The row is saved: the pool's ROLLBACK that follows, as it takes the connection back, may
    fail (the connection is dropped), but the answer says what happened, 201, not 500."""
    stall_next_reset = threading.Event()
    engine = getattr(app.db_engine, "sync_engine", app.db_engine)  # the twin's: its sync half

    @event.listens_for(engine, "reset")  # the pool's ROLLBACK is next: the network stalls now
    def stall(*_: object) -> None:
        if stall_next_reset.is_set():
            stall_next_reset.clear()
            proxy.stalled = True

    with TestClient(app.app) as client:
        stall_next_reset.set()
        started = time.monotonic()
        created = client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
        seconds = time.monotonic() - started
        stalled, proxy.stalled = proxy.stalled, False
        after = client.get("/users/1")
        checked_out = app.db_engine.pool.checkedout()
    print(f"\na stall after the COMMIT's answer: {created.status_code} after {seconds:.2f} s")
    assert stalled, "the test's stall never came"
    assert (created.status_code, created.json()) == (
        201,
        {"id": 1, "username": "ada", "email": "ada@example.com"},
    )
    assert seconds <= BOUND / 2 + 0.5  # the ROLLBACK's one wait
    assert [row[1] for row in rows()] == ["ada"]
    assert (after.status_code, checked_out) == (200, 0)


# --- A COMMIT whose answer arrives unreadable: saved or not, the client cannot be told ---------
@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_commit_whose_answer_arrives_unreadable_is_answered_saved_or_not_unknown(
    learner_app, engine, make_proxy, rows
):
    proxy = make_proxy()
    app = learner_app(DATABASE_URL=url_of(engine, proxy), DB_TIMEOUT=str(BOUND))
    answers_unknown_when_the_commits_answer_is_unreadable(app, proxy, rows)


def answers_unknown_when_the_commits_answer_is_unreadable(app: ModuleType, proxy, rows) -> None:
    """The server committed, its answer came back misnumbered: a 503 would invite the client to
    send it again, and a plain 500 would hide that the row may be there."""
    garble_next_commit = threading.Event()
    engine = getattr(app.db_engine, "sync_engine", app.db_engine)  # the twin's: its sync half

    @event.listens_for(engine, "commit")  # the COMMIT goes out now: its answer comes back garbled
    def garble(*_: object) -> None:
        if garble_next_commit.is_set():
            garble_next_commit.clear()
            proxy.garble_next = True

    with TestClient(app.app) as client:
        garble_next_commit.set()
        created = client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
        after = client.get("/users/1")
    assert not proxy.garble_next, "the test's garbled answer never came"
    assert (created.status_code, created.json()) == (
        500,
        {"detail": "Saved or not is unknown: the database went away"},
    )
    assert [row[1] for row in rows()] == ["ada"]  # it was saved
    assert after.status_code == 200
