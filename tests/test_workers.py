"""Several uvicorn workers starting together on an empty MySQL database all come up: main.py's,
and its twin's."""

from conftest import emptied, url_of
from tests.support import UvicornServer

WORKERS = 4
ROUNDS = 3


def test_all_workers_start_on_an_empty_database_when_their_first_queries_collide(
    mysql_engine, make_proxy, app_folder
):
    for round_number in range(1, ROUNDS + 1):
        emptied(mysql_engine)  # a fresh, empty database each round
        # The proxy holds the workers' first connections and lets them through together, so
        # that every worker's CREATE TABLE reaches the server at the same moment.
        proxy = make_proxy(hold=WORKERS)
        server = UvicornServer(url_of(mysql_engine, proxy), workers=WORKERS, cwd=app_folder)
        with server:
            server.wait_started(timeout=60)
            started = server.count("Application startup complete.")
            assert server.count("Application startup failed.") == 0, "\n".join(server.lines)
            assert started == WORKERS, "\n".join(server.lines)
            waits = [line for line in server.lines if "again in" in line]  # workers that collided
            assert all("or another worker preparing it" in line for line in waits), waits
            with server.client() as http:
                assert (
                    http.post(
                        "/users/", json={"username": "ada", "email": "a@example.com"}
                    ).status_code
                    == 201
                )
        print(
            f"\nround {round_number}: {started}/{WORKERS} workers started;"
            f" {proxy.accepted} first connections held, then released together"
        )
        proxy.close()
