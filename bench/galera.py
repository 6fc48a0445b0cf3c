"""Throughput on a two-node Galera cluster: one app on one node, against one app on each node.

    python bench/galera.py    # needs galera-4, galera-arbitrator-4 and rsync (apt-get install)

Starts the tests' cluster (tests/galera.py) on its own ports and folders, then, round by round,
drives POST /users/ and GET /users/{id} with wrk at 32 connections in all: 32 to the app on
node 1 alone, then 16 to each of the two apps at the same time. Prints the medians.
See README.md, "Scaling out".
"""

import argparse
import statistics
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import run  # noqa: E402
from run import SEED_USERS, drive  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402

from conftest import emptied  # noqa: E402
from tests.galera import GaleraCluster  # noqa: E402
from tests.support import UvicornServer  # noqa: E402


def seed(servers: list[UvicornServer]) -> None:
    """SEED_USERS users through each app, and GET asks for their ids. (Galera hands out ids
    with gaps, odd on one node and even on the other: 1 to SEED_USERS are not all there.)"""
    ids = []
    for index, server in enumerate(servers):
        with server.client() as http:
            for number in range(SEED_USERS):
                body = {"username": f"seed{index}-{number}", "email": "seed@example.com"}
                ids.append(http.post("/users/", json=body).json()["id"])
    run.GET_SCRIPT = f"""
local ids = {{{", ".join(map(str, ids))}}}
request = function()
  return wrk.format("GET", "/users/" .. ids[math.random(#ids)])
end
"""


def together(servers: list[UvicornServer], kind: str, connections: int, seconds: float) -> float:
    """Requests/s summed over servers, each driven by its own wrk at the same time."""
    results: list[dict] = []

    def one(server: UvicornServer) -> None:
        results.append(drive(server.url, kind, connections, seconds))

    threads = [threading.Thread(target=one, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result["non_2xx"] == 0 for result in results), results
    return sum(result["rps"] for result in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    args = parser.parse_args()
    cluster = GaleraCluster().start()
    try:
        engine = create_engine(cluster.url(cluster.nodes[0], "tutorial"))
        emptied(engine)
        servers = [UvicornServer(cluster.url(node, "tutorial")) for node in cluster.nodes]
        for server in servers:
            server.wait_started()
        seed(servers)
        runs: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for kind in ("post", "get"):
                runs.setdefault(("1 app, node 1", kind), []).append(
                    together(servers[:1], kind, 32, args.duration)
                )
                runs.setdefault(("2 apps, one per node", kind), []).append(
                    together(servers, kind, 16, args.duration)
                )
        for server in servers:
            server.stop()
        engine.dispose()
    finally:
        cluster.stop()
    print(f"\n{args.rounds} rounds of {args.duration:g} s, 32 connections in all, medians:\n")
    print("| apps | POST /users/ req/s | GET /users/{id} req/s |")
    print("|---|---|---|")
    for setup in ("1 app, node 1", "2 apps, one per node"):
        post = statistics.median(runs[(setup, "post")])
        get = statistics.median(runs[(setup, "get")])
        print(f"| {setup} | {post:,.0f} | {get:,.0f} |")


if __name__ == "__main__":
    main()
