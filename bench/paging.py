"""Offset paging against keyset paging, at several depths of a big users table, on MySQL.

    BENCH_DATABASE_URL=mysql+pymysql://tutorial:tutorial-pass@127.0.0.1:3306/tutorial_bench \\
        python bench/paging.py --users 200000

Empties the `users` table of the benchmarks' own database (bench/run.py checks that it holds
nothing else), fills it with SQL (not through the API), starts `uvicorn main:app` on it, and
times `GET /users/?skip=N&limit=100` against `GET /users/?after_id=<id N rows in>&limit=100`:
the median of --repeat requests each, one at a time, through HTTP as a client sees it. See
docs/performance.md, "Paging through many users".
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from run import database_url_for_the_bench  # noqa: E402
from support import UvicornServer  # noqa: E402


def fill(url: str, count: int) -> list[int]:
    """A fresh users table with `count` rows, inserted 10,000 at a time; returns their ids."""
    engine = create_engine(url)
    subprocess.run(  # the app's own CREATE TABLE, so the table is exactly what main.py makes
        [sys.executable, "-c", "import main; main.create_tables()"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM users"))
        insert = text("INSERT INTO users (username, email) VALUES (:username, :email)")
        for start in range(0, count, 10_000):
            rows = [
                {"username": f"user{number}", "email": "bench@example.com"}
                for number in range(start, min(start + 10_000, count))
            ]
            connection.execute(insert, rows)
    with engine.connect() as connection:
        ids = list(connection.execute(text("SELECT id FROM users ORDER BY id")).scalars())
    engine.dispose()
    return ids


def median_ms(http: httpx2.Client, url: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = http.get(url)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200 and len(response.json()) > 0, url
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args()
    args.database_url = database_url_for_the_bench(args.database_url)
    started = time.monotonic()
    ids = fill(args.database_url, args.users)
    print(f"{len(ids):,} users inserted with SQL in {time.monotonic() - started:.1f} s")
    depths = [0, 1_000, 10_000, 50_000, 100_000, len(ids) - 100]
    rows = []
    with UvicornServer(args.database_url).wait_started() as server, server.client() as http:
        for depth in depths:
            after = ids[depth - 1] if depth else 0
            offset = median_ms(http, f"/users/?skip={depth}&limit=100", args.repeat)
            keyset = median_ms(http, f"/users/?after_id={after}&limit=100", args.repeat)
            rows.append((depth, offset, keyset))
    print(f"\nMedian of {args.repeat} requests each, 100 users a page, {len(ids):,} users:\n")
    print("| rows skipped | offset (`skip`) ms | keyset (`after_id`) ms | offset / keyset |")
    print("|---|---|---|---|")
    for depth, offset, keyset in rows:
        print(f"| {depth:,} | {offset:.1f} | {keyset:.1f} | {offset / keyset:.1f}x |")
    first, last = rows[0][2], rows[-1][2]
    print(f"\nkeyset: last page / first page = {last / first:.2f}")
    print(f"offset: last page / first page = {rows[-1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
