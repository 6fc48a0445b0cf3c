"""Concurrent requests against a real uvicorn server: the database, not luck, keeps order."""

from collections import Counter

import httpx2
import pytest
from sqlalchemy import func, select

from conftest import make_engine, url_of
from main import UserTable
from tests.support import TcpProxy, UvicornServer, together

LATENCY = 0.002  # seconds added to every packet each way: widens every window a race needs


@pytest.fixture(params=["sqlite", "mysql", "mysql+latency"])
def live(request, tmp_path, app_folder):
    """A real server (main.py, or its twin) on an empty database, and an engine to look at it."""
    engine = make_engine(request.param.split("+")[0], tmp_path)
    proxy = None
    if request.param.endswith("latency"):
        proxy = TcpProxy(engine.url.host, engine.url.port or 3306, latency=LATENCY)
    with UvicornServer(url_of(engine, proxy), cwd=app_folder).wait_started() as server:
        limits = httpx2.Limits(max_connections=250, max_keepalive_connections=250)
        with server.client(limits=limits) as http:
            yield http, engine
    if proxy:
        proxy.close()
    engine.dispose()


def count_rows(engine, username: str | None = None) -> int:
    query = select(func.count()).select_from(UserTable)
    if username is not None:
        query = query.where(UserTable.username == username)
    with engine.connect() as connection:
        return connection.scalar(query)


def new_user(http, username: str) -> int:
    return http.post("/users/", json={"username": username, "email": "a@example.com"}).json()["id"]


def test_30_concurrent_creates_of_one_username_give_one_201(live):
    http, engine = live
    body = {"username": "popular", "email": "a@example.com"}
    statuses = together(30, lambda _: http.post("/users/", json=body))
    assert Counter(statuses) == {201: 1, 409: 29}
    assert count_rows(engine) == 1


def test_200_concurrent_creates_of_distinct_usernames_all_succeed(live):
    http, engine = live
    statuses = together(
        200, lambda n: http.post("/users/", json={"username": f"user{n}", "email": "a@example.com"})
    )
    assert Counter(statuses) == {201: 200}
    assert count_rows(engine) == 200


def test_concurrent_patches_to_one_username_have_one_winner(live):
    http, engine = live
    ids = [new_user(http, f"user{n}") for n in range(20)]
    statuses = together(20, lambda n: http.patch(f"/users/{ids[n]}", json={"username": "winner"}))
    assert Counter(statuses) == {200: 1, 409: 19}
    assert count_rows(engine, "winner") == 1
    assert count_rows(engine) == 20


def racing_a_delete(http, user_id: int) -> list:
    path = f"/users/{user_id}"
    return [
        lambda: http.delete(path),
        lambda: http.get(path),
        lambda: http.patch(path, json={"email": "b@example.com"}),
        lambda: http.get(path),
        lambda: http.patch(path, json={"username": f"renamed{user_id}"}),
    ]


def test_reads_and_patches_racing_a_delete_answer_200_or_404(live):
    http, engine = live
    seen: Counter = Counter()
    for round_number in range(15):
        calls = racing_a_delete(http, new_user(http, f"doomed{round_number}"))
        statuses = together(len(calls), lambda n, calls=calls: calls[n]())
        assert statuses[0] == 204
        assert set(statuses[1:]) <= {200, 404}, statuses
        seen.update(statuses[1:])
    assert count_rows(engine) == 0
    print(f"\nGET/PATCH racing DELETE: {dict(seen)}")
