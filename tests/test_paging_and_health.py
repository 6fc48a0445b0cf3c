"""Keyset paging by `after_id` with a `Link` header, and the health endpoints (issue 13)."""

import re
import time

from conftest import url_of
from tests.support import UvicornServer


def create(client, number: int) -> int:
    body = {"username": f"user{number}", "email": "a@example.com"}
    return client.post("/users/", json=body).json()["id"]


def next_link(response) -> str | None:
    """The URL of the rel="next" link (RFC 8288), or None on the last page."""
    match = re.fullmatch(r'<([^>]+)>; rel="next"', response.headers.get("link", ""))
    return match.group(1) if match else None


def walk(client, first_url: str, between_pages=lambda: None) -> list[int]:
    ids, url = [], first_url
    while url:
        response = client.get(url)
        assert response.status_code == 200
        ids += [user["id"] for user in response.json()]
        url = next_link(response)
        between_pages()
    return ids


def test_walking_pages_by_the_link_visits_every_user_once_in_order(client):
    ids = [create(client, number) for number in range(25)]
    assert walk(client, "/users/?after_id=0&limit=7") == ids


def test_the_first_page_without_after_id_also_links_to_the_next(client):
    ids = [create(client, number) for number in range(5)]
    first = client.get("/users/", params={"limit": 2})
    assert [user["id"] for user in first.json()] == ids[:2]
    assert next_link(first).endswith(f"/users/?limit=2&after_id={ids[1]}")


def test_the_last_page_has_no_link_even_when_it_is_full(client):
    ids = [create(client, number) for number in range(6)]
    last = client.get("/users/", params={"after_id": ids[2], "limit": 3})
    assert [user["id"] for user in last.json()] == ids[3:]
    assert "link" not in last.headers


def test_an_empty_table_gives_an_empty_page_and_no_link(client):
    response = client.get("/users/", params={"after_id": 0})
    assert response.status_code == 200
    assert response.json() == []
    assert "link" not in response.headers


def test_a_walk_while_users_come_and_go_sees_each_survivor_once_in_order(client):
    ids = [create(client, number) for number in range(30)]
    doomed = set(ids[5::4])  # deleted during the walk: some before, some after their page
    created: list[int] = []
    changes = iter(sorted(doomed))

    def between_pages() -> None:
        created.append(create(client, 1000 + len(created)))
        if (victim := next(changes, None)) is not None:
            assert client.delete(f"/users/{victim}").status_code == 204

    seen = walk(client, "/users/?after_id=0&limit=4", between_pages)
    assert seen == sorted(set(seen)), "a user was seen twice, or out of order"
    survivors = [user_id for user_id in ids if user_id not in doomed]
    assert set(survivors) <= set(seen), "a user that was there all along was skipped"
    assert set(seen) <= set(ids) | set(created)


def test_skip_counts_from_after_id(client):
    ids = [create(client, number) for number in range(5)]
    page = client.get("/users/", params={"after_id": ids[1], "skip": 1})
    assert [user["id"] for user in page.json()] == ids[3:]


def test_a_skip_beyond_any_table_is_a_422_on_both_backends(client):
    # ids are 32-bit: no table holds more rows than that, and MySQL's and SQLite's OFFSET
    # overflow at 2**64 and 2**63.
    assert client.get("/users/", params={"skip": 2**31 - 1}).json() == []
    for value in [2**31, 2**63, 2**64 + 5, 3343204334847826912608256]:
        assert client.get("/users/", params={"skip": value}).status_code == 422, value


def test_the_link_header_is_relative_and_ignores_the_host_header(client):
    ids = [create(client, number) for number in range(2)]
    response = client.get("/users/?limit=1", headers={"Host": "evil.example"})
    assert response.headers["link"] == f'</users/?limit=1&after_id={ids[0]}>; rel="next"'


def test_bad_after_id_is_a_422(client):
    for value in ["-1", "abc", "1.5", str(2**31)]:
        assert client.get("/users/", params={"after_id": value}).status_code == 422, value


def test_livez_and_readyz_answer_200_when_the_database_does(client):
    assert client.get("/livez").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_health_endpoints_are_tagged_health_in_the_docs(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert paths["/livez"]["get"]["tags"] == ["health"]
    assert paths["/readyz"]["get"]["tags"] == ["health"]


def test_health_probes_answer_get_and_refuse_head_with_405(client):  # docs/deploying.md
    for path in ("/livez", "/readyz"):
        assert client.get(path).status_code == 200
        assert client.head(path).status_code == 405


def test_the_slash_redirect_names_the_host_the_client_sent(client):  # docs/deploying.md
    response = client.get("/users", headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "http://evil.example/users/"


def test_readyz_follows_the_database_and_livez_never_does(mysql_engine, make_proxy):
    proxy = make_proxy()
    seen: list[tuple[str, int, int]] = []
    server = UvicornServer(url_of(mysql_engine, proxy), extra_env={"DB_TIMEOUT": "4"})
    with server.wait_started(), server.client() as http:

        def probe(phase: str) -> None:
            ready = http.get("/readyz").status_code
            seen.append((phase, ready, http.get("/livez").status_code))

        probe("up")
        proxy.cut()
        probe("cut")
        proxy.restore()
        probe("restored")
        proxy.stalled = True
        started = time.monotonic()
        stalled = http.get("/readyz")
        stalled_seconds = time.monotonic() - started
        live_while_stalled = http.get("/livez").status_code
        proxy.stalled = False
        probe("after stall")
    print(f"\n{seen}; stalled: readyz {stalled.status_code} after {stalled_seconds:.2f} s")
    assert seen == [
        ("up", 200, 200),
        ("cut", 503, 200),
        ("restored", 200, 200),
        ("after stall", 200, 200),
    ]
    assert stalled.status_code == 503 and stalled_seconds < 4.5  # within DB_TIMEOUT
    assert live_while_stalled == 200
