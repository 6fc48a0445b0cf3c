"""How a request reaches the database: never on the event loop, never stuck waiting for the pool.
The two cases on a server run on main.py and on its async twin (issue 32)."""

import asyncio
import importlib
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from conftest import url_of
from tests.support import UvicornServer


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_no_sql_and_no_connection_handling_runs_on_the_event_loop(engine, client):
    seen: list[tuple[str, bool]] = []
    for name in ("checkout", "checkin", "before_cursor_execute", "commit", "rollback"):
        event.listen(engine, name, lambda *args, name=name: seen.append((name, on_event_loop())))

    body = {"username": "ada", "email": "ada@example.com"}
    user_id = client.post("/users/", json=body).json()["id"]
    client.post("/users/", json=body)  # 409
    client.post("/users/", json={"username": "bob", "email": "bob@example.com"})
    client.get(f"/users/{user_id}")
    client.get("/users/999")  # 404
    client.get("/users/")
    client.patch(f"/users/{user_id}", json={"username": "bob"})  # 409
    client.patch(f"/users/{user_id}", json={"email": "new@example.com"})
    client.delete(f"/users/{user_id}")
    client.delete(f"/users/{user_id}")  # 404

    assert {name for name, _ in seen} >= {"checkout", "checkin", "before_cursor_execute", "commit"}
    assert [name for name, loop in seen if loop] == []


def test_def_routes_and_docs_answer_while_every_database_connection_is_busy(
    mysql_engine, make_proxy, app_folder
):
    # GET / is a plain def route, and the /docs page's files are read in threads too: they
    # need FastAPI's thread pool, which get_session never fills (only DB_POOL_SIZE requests
    # use the database at once), and nothing in main.py shrinks.
    proxy = make_proxy()
    server = UvicornServer(url_of(mysql_engine, proxy), cwd=app_folder)
    with server.wait_started(), server.client() as http:
        user_id = http.post("/users/", json={"username": "ada", "email": "a@example.com"})
        user_id = user_id.json()["id"]
        proxy.latency = 1.0  # each packet to or from the database now waits a second
        with ThreadPoolExecutor(max_workers=8) as pool:
            stalled = [pool.submit(http.get, f"/users/{user_id}") for _ in range(8)]
            time.sleep(0.3)  # by now all 4 connections are busy, and 4 requests wait for one
            root = http.get("/")
            docs = http.get("/docs")
            asset = http.get("/static-offline-docs/swagger-ui-bundle.js")
            still_waiting = not any(f.done() for f in stalled)
            proxy.latency = 0
            statuses = [f.result().status_code for f in stalled]
    assert (root.status_code, docs.status_code, asset.status_code) == (200, 200, 200)
    assert still_waiting, "GET / and /docs waited for the database requests"
    assert statuses == [200] * 8


def test_far_more_concurrent_requests_than_connections_all_succeed(mysql_engine, app_folder):
    # 64 at once, 2 connections, FastAPI's 40 threads: a request that kept its connection while
    # it waited for a thread again (to check the response, to close the session) would wait on
    # threads that all wait for a connection, until the pool's 30 s timeout.
    server = UvicornServer(url_of(mysql_engine), extra_env={"DB_POOL_SIZE": "2"}, cwd=app_folder)
    limits = httpx2.Limits(max_connections=100, max_keepalive_connections=100)
    with server.wait_started(), server.client(limits=limits) as http:
        user_id = http.post("/users/", json={"username": "seed", "email": "a@example.com"})
        user_id = user_id.json()["id"]

        def one(number: int) -> int:
            if number % 2:
                return http.get(f"/users/{user_id}").status_code
            body = {"username": f"user{number}", "email": "a@example.com"}
            return http.post("/users/", json=body).status_code

        with ThreadPoolExecutor(max_workers=64) as pool:
            statuses = list(pool.map(one, range(400)))
    assert sorted(set(statuses)) == [200, 201]


def test_an_app_without_a_body_limit_still_answers(app_module, client, rows, monkeypatch):
    # A project that lifts part 3 into its own app, whose max_body_size is FastAPI's default
    monkeypatch.setattr(app_module.app, "max_body_size", None)
    response = client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    assert response.status_code == 201, response.text
    assert [row[1] for row in rows()] == ["ada"]


@pytest.mark.parametrize("app_name", ["main", "main_async"])
def test_an_upload_without_a_body_limit_is_not_held_in_memory(app_name, monkeypatch):
    # The middleware keeps a body for a second run (a deadlock), but not a large upload's: with
    # FastAPI's default, no limit, a 32 MiB body must pass through, not pile up in memory.
    module = importlib.import_module(app_name)
    monkeypatch.setattr(module.app, "max_body_size", None)
    chunk, chunks, received, sent = 64 * 1024, 512, 0, 0

    async def upload_route(scope, receive, send) -> None:  # reads the body, keeps none of it
        nonlocal received
        more_body = True
        while more_body:
            message = await receive()
            received += len(message["body"])
            more_body = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def from_client() -> dict:  # a chunk at a time, as a client sends a file
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": bytes(chunk), "more_body": sent < chunks}

    async def to_client(message: dict) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/upload", "headers": []}
    tracemalloc.start()
    try:
        anyio.run(module.one_session_per_request(upload_route), scope, from_client, to_client)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"\n{app_name}: {received / 2**20:.0f} MiB passed, peak {peak / 2**20:.1f} MiB traced")
    assert received == chunk * chunks
    assert peak < 4 * 2**20


UPLOAD_ROUTE = """

# --- Added by a learner: a route that takes files, larger than the app's 64 KiB --------------
@app.post("/learner/upload", max_body_size=2**20)
async def upload(request: Request) -> dict:
    return {"bytes": len(await request.body())}
"""


def test_a_route_of_yours_can_take_a_body_larger_than_the_apps_limit(learner_app):
    app = learner_app(UPLOAD_ROUTE)  # as main.py's comment on max_body_size says
    with TestClient(app.app) as client:
        uploaded = client.post("/learner/upload", content=bytes(200 * 1024))
        elsewhere = client.post("/users/", content=bytes(200 * 1024))
    assert (uploaded.status_code, uploaded.json()) == (200, {"bytes": 200 * 1024})
    assert elsewhere.status_code == 413
