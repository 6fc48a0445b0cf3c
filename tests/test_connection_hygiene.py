"""After thousands of mixed requests, outages included, every connection is back in the pool: in
main.py, and in its async twin."""

import importlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from conftest import url_of
from tests.support import other_connection_ids


@pytest.fixture(params=["main", "main_async"])
def app_via_proxy(request, mysql_engine, make_proxy):
    """main.py (or its twin) imported afresh with DATABASE_URL pointing at a proxy: its own
    engine and pool. The client's shutdown disposes that engine."""
    module = importlib.import_module(request.param)
    proxy = make_proxy()
    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url_of(mysql_engine, proxy)
    importlib.reload(module)
    try:
        with TestClient(module.app) as client:
            yield client, proxy, module
    finally:
        if saved is None:
            del os.environ["DATABASE_URL"]
        else:
            os.environ["DATABASE_URL"] = saved
        importlib.reload(module)


def one_request(client, number: int):
    kind = number % 5
    if kind == 0:
        return client.post("/users/", json={"username": f"user{number}", "email": "a@example.com"})
    if kind == 1:
        return client.post("/users/", json={"username": "taken", "email": "a@example.com"})
    if kind == 2:
        return client.get(f"/users/{10**6 + number}")  # 404
    if kind == 3:
        return client.post("/users/", json={"username": " bad ", "email": "a@example.com"})
    return client.get("/users/", params={"limit": 5})


def burst(client, numbers) -> Counter:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return Counter(
            response.status_code for response in pool.map(lambda n: one_request(client, n), numbers)
        )


def test_2000_mixed_requests_leave_no_connection_checked_out_or_in_a_transaction(
    app_via_proxy, mysql_engine
):
    client, proxy, module = app_via_proxy
    seen = burst(client, range(900))
    proxy.cut()
    during_cut = burst(client, range(900, 1100))
    proxy.restore()
    seen += during_cut + burst(client, range(1100, 2000))

    assert during_cut == {503: 160, 422: 40}  # only the 422s need no database
    assert set(seen) == {200, 201, 404, 409, 422, 503}
    assert sum(seen.values()) == 2000
    pool = module.db_engine.pool
    assert pool.checkedout() == 0

    mysql_engine.dispose()  # the test's own engine keeps nothing open either
    with mysql_engine.connect() as admin:
        app_connections = other_connection_ids(admin)
        # A transaction that ever touched `users` holds a metadata lock on it until it ends, so
        # LOCK TABLES ... WRITE (which needs that table to itself) fails if one is still open.
        # (information_schema.INNODB_TRX would say it directly, but needs the PROCESS privilege.)
        admin.execute(text("SET SESSION lock_wait_timeout = 2"))
        admin.execute(text("LOCK TABLES users WRITE"))
        admin.execute(text("UNLOCK TABLES"))
    assert len(app_connections) <= pool.size()

    statuses = burst(client, range(5000, 5030))  # 30 more, all creates and reads
    assert not set(statuses) & {500, 503}
    print(
        f"\n2000 requests: {dict(sorted(seen.items()))}; app connections on the server"
        f" afterwards: {len(app_connections)} (pool size {pool.size()}), none in a transaction"
    )
