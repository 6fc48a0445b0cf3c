"""Which asyncio MySQL driver for main_async.py: aiomysql or asyncmy (issue 32), measured.

    BENCH_DATABASE_URL=mysql+pymysql://tutorial:tutorial-pass@127.0.0.1:3306/tutorial_bench \\
        python bench/async_drivers.py --rounds 5

Runs `uvicorn main_async:app` twice at once, on one database, one with each driver (the URL's
driver name picks it), and drives both with wrk in paired slices: each round measures GET /,
POST /users/ and GET /users/{id} on each server in turn, the order turning every round, so
that the machine's drift falls on both alike. Prints each round and the medians of the paired
ratios (asyncmy over aiomysql).
"""

import argparse
import statistics
import sys
from pathlib import Path

from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, App, database_url_for_the_bench, measure, reset_table

DRIVERS = ("aiomysql", "asyncmy")
KINDS = (("root", "GET /"), ("post", "POST /users/"), ("get", "GET /users/{id}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    url = database_url_for_the_bench(args.database_url)
    reset_table(url)
    servers = []
    try:
        for driver in DRIVERS:
            driver_url = make_url(url).set(drivername=f"mysql+{driver}")
            driver_url = driver_url.render_as_string(hide_password=False)
            servers.append(App(driver, ROOT, driver_url, workers=1, module="main_async"))
        servers[0].seed()
        runs: dict[str, list[dict]] = {driver: [] for driver in DRIVERS}
        for number in range(args.rounds):
            order = servers[number % 2 :] + servers[: number % 2]
            measured: dict[str, dict] = {driver: {} for driver in DRIVERS}
            for kind, _ in KINDS:
                for name, result in measure(
                    order, url, kind, args.concurrency, args.duration
                ).items():
                    measured[name][kind] = result
            for driver in DRIVERS:
                runs[driver].append(measured[driver])
            line = "; ".join(
                f"{driver} " + ", ".join(f"{r} {measured[driver][k]['rps']:,.0f}" for k, r in KINDS)
                for driver in DRIVERS
            )
            print(f"round {number + 1} (first: {order[0].name}): {line}", flush=True)
    finally:
        for server in servers:
            server.stop()

    print(f"\n{args.rounds} paired rounds of {args.duration:g} s, {args.concurrency} clients, wrk")
    print("| driver | route | req/s (median) | p50 ms | p99 ms | CPU ms/req | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    for driver in DRIVERS:
        for kind, route in KINDS:
            rounds = [run[kind] for run in runs[driver]]
            rps = statistics.median(r["rps"] for r in rounds)
            p50 = statistics.median(r["p50"] for r in rounds) * 1000
            p99 = statistics.median(r["p99"] for r in rounds) * 1000
            cpu = statistics.median(r["cpu_ms"] for r in rounds)
            non_2xx = sum(r["non_2xx"] for r in rounds)
            print(
                f"| {driver} | {route} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {cpu:.2f}"
                f" | {non_2xx} |"
            )
    print("\nasyncmy / aiomysql, paired by round: median (each round)")
    for kind, route in KINDS:
        paired = [
            b[kind]["rps"] / a[kind]["rps"]
            for a, b in zip(runs["aiomysql"], runs["asyncmy"], strict=True)
        ]
        each = ", ".join(f"{ratio:.2f}" for ratio in paired)
        print(f"{route}: {statistics.median(paired):.2f}x ({each})")


if __name__ == "__main__":
    main()
