"""Benchmark: this app against other apps (--peer DIR) and the raw PyMySQL ceiling, on MySQL.

    python bench/run.py                  # beside the tutorial's code, bench/tutorial/
    python bench/run.py --twin           # and main_async.py, the async twin, beside both

Starts `uvicorn main:app` (the twin: main_async:app) for each app on a free port, drives it
with wrk (a threaded Python client when wrk is missing), alternates the apps round by round so
that the machine's drift cancels out, and prints one table with the ratios. See README.md,
"Performance".
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import venv
from pathlib import Path

import httpx2
import pymysql
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SEED_USERS = 1000

POST_SCRIPT = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("number", threads)
end
function init(args) prefix = args[1] .. "-" .. number end
local n = 0
request = function()
  n = n + 1
  local body = '{"username": "' .. prefix .. '-' .. n .. '", "email": "bench@example.com"}'
  return wrk.format("POST", "/users/", {["Content-Type"] = "application/json"}, body)
end
"""
GET_SCRIPT = f"""
request = function()
  return wrk.format("GET", "/users/" .. math.random(1, {SEED_USERS}))
end
"""


def run_threads(target, count: int) -> float:
    """Runs target(0) ... target(count - 1) in threads; returns the seconds they took."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def python_for(app_dir: Path) -> str:
    """A peer with a requirements.txt gets a venv of its own; others (this project, variants of
    its main.py) run on the current interpreter."""
    if not (app_dir / "requirements.txt").exists() or app_dir == ROOT:
        return sys.executable
    env_dir = HERE / ".venvs" / app_dir.resolve().name
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.create(env_dir, with_pip=True)
        subprocess.run(
            [python, "-m", "pip", "install", "-qq", "-r", app_dir / "requirements.txt"], check=True
        )
    return str(python)


def mysql_connect(url: str):
    parsed = make_url(url)
    return pymysql.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username,
        password=parsed.password or "",
        database=parsed.database,
        autocommit=False,
    )


# Every row the benchmarks write has one of these addresses: a row with another is not theirs.
BENCH_EMAILS = ("seed@example.com", "bench@example.com", "raw@example.com", "b@example.com")
BENCH_EMAILS += ("u@example.com", "s@example.com")
BENCH_TABLES = {"users", "alembic_version"}


def database_url_for_the_bench(url: str | None = None) -> str:
    """BENCH_DATABASE_URL (or url), once it is shown to hold nothing but the benchmarks' rows:
    they drop and refill its tables, so they refuse a database of the app's or of the tests'."""
    url = url or os.environ.get("BENCH_DATABASE_URL")
    if not url:
        sys.exit("Set BENCH_DATABASE_URL to a MySQL database of its own: README, section 2.")
    with mysql_connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        tables = {name for (name,) in cursor.fetchall()}
        if tables - BENCH_TABLES:
            sys.exit(f"Not a benchmark's database: it holds {sorted(tables - BENCH_TABLES)}.")
        if "users" in tables:
            marks = ", ".join(["%s"] * len(BENCH_EMAILS))
            cursor.execute(f"SELECT COUNT(*) FROM users WHERE email NOT IN ({marks})", BENCH_EMAILS)
            if theirs := cursor.fetchone()[0]:
                sys.exit(f"Not a benchmark's database: {theirs} users it did not write.")
    return url


def reset_table(url: str) -> None:
    with mysql_connect(url) as connection, connection.cursor() as cursor:
        # alembic_version too: each app then starts on an empty database, makes its table and
        # stamps it, instead of finding another app's stamp and leaving the table to Alembic.
        cursor.execute("DROP TABLE IF EXISTS users, alembic_version")


def count_rows(url: str) -> int:
    with mysql_connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM users")
        return cursor.fetchone()[0]


class App:
    def __init__(self, name: str, directory: Path, url: str, workers: int, module: str = "main"):
        self.name, self.port = name, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [python_for(directory), "-m", "uvicorn", f"{module}:app"]  # main_async: the twin
        command += ["--port", str(self.port)]
        command += ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
        env = {**os.environ, "DATABASE_URL": url}
        self.process = subprocess.Popen(command, cwd=directory, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx2.get(self.base + "/", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{name} did not start")

    def seed(self) -> None:
        """Users to read back, shared by every app of the run (one database, one table)."""
        with httpx2.Client(base_url=self.base) as client:
            for number in range(SEED_USERS):
                body = {"username": f"seed{number}", "email": "seed@example.com"}
                client.post("/users/", json=body).raise_for_status()

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server and its worker processes so far."""
        pids = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:  # a worker of `--workers N`
                pids.append(int(stat.parent.name))
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def parse_wrk(output: str) -> dict:
    def seconds(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[unit]

    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": seconds(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1)),
        "p99": seconds(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1)),
        "requests": requests,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def drive(base: str, kind: str, concurrency: int, duration: float) -> dict:
    if shutil.which("wrk"):
        script = {"post": POST_SCRIPT, "get": GET_SCRIPT, "root": None}[kind]
        command = ["wrk", f"-t{min(concurrency, 2)}", f"-c{concurrency}", f"-d{duration:g}s"]
        command += ["--latency", base + "/"]
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
            if script:
                lua.write(script)
        if script:
            command[-1:] = ["-s", lua.name, base + "/", "--", uuid.uuid4().hex[:8]]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        os.unlink(lua.name)
        try:
            return parse_wrk(output)
        except AttributeError:
            raise RuntimeError(f"could not read wrk's output:\n{output}") from None
    return drive_with_threads(base, kind, concurrency, duration)


def drive_with_threads(base: str, kind: str, concurrency: int, duration: float) -> dict:
    """The fallback when wrk is missing: keep-alive clients in threads (slower than wrk)."""
    latencies: list[float] = []
    non_2xx = 0
    stop_at = time.monotonic() + duration
    prefix = uuid.uuid4().hex[:8]

    def client(number: int) -> None:
        nonlocal non_2xx
        import random

        count = 0
        with httpx2.Client(base_url=base) as http:
            while time.monotonic() < stop_at:
                count += 1
                started = time.perf_counter()
                if kind == "post":
                    body = {"username": f"{prefix}-{number}-{count}", "email": "b@example.com"}
                    response = http.post("/users/", json=body)
                elif kind == "get":
                    response = http.get(f"/users/{random.randint(1, SEED_USERS)}")
                else:
                    response = http.get("/")
                latencies.append(time.perf_counter() - started)
                non_2xx += not response.is_success

    elapsed = run_threads(client, concurrency)
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / elapsed,
        "p50": quantiles[49],
        "p99": quantiles[98],
        "requests": len(latencies),
        "non_2xx": non_2xx,
        "socket_errors": "",
    }


def raw_driver(url: str, kind: str, threads: int, duration: float) -> dict:
    """The ceiling: the same INSERT + COMMIT or point SELECT, straight through PyMySQL."""
    counts = [0] * threads
    stop_at = time.monotonic() + duration
    prefix = uuid.uuid4().hex[:8]

    def work(number: int) -> None:
        import random

        connection = mysql_connect(url)
        with connection.cursor() as cursor:
            while time.monotonic() < stop_at:
                if kind == "post":
                    cursor.execute(
                        "INSERT INTO users (username, email) VALUES (%s, %s)",
                        (f"raw-{prefix}-{number}-{counts[number]}", "raw@example.com"),
                    )
                    connection.commit()
                else:
                    cursor.execute(
                        "SELECT id, username, email FROM users WHERE id = %s",
                        (random.randint(1, SEED_USERS),),
                    )
                    cursor.fetchall()
                    connection.commit()
                counts[number] += 1
        connection.close()

    elapsed = run_threads(work, threads)
    return {"rps": sum(counts) / elapsed}


def measure(apps: list["App"], url: str, kind: str, concurrency: int, duration: float) -> dict:
    """One slice: each app in turn, the same route, the same clients, for `duration` seconds."""
    results = {}
    for app in apps:
        rows_before = count_rows(url) if kind == "post" else 0
        cpu_before = app.cpu_seconds()
        result = drive(app.base, kind, concurrency, duration)
        result["cpu_ms"] = (app.cpu_seconds() - cpu_before) * 1000 / max(result["requests"], 1)
        if kind == "post":
            created = result["requests"] - result["non_2xx"]
            # wrk does not count requests still in flight when it stops, but their rows may
            # land: more rows than 201s is fine, fewer would be a lost write.
            result["lost"] = max(0, created - (count_rows(url) - rows_before))
        results[app.name] = result
    return results


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def memory_check(url: str, total: int) -> None:
    """Resident memory of one worker after 10% of `total` requests and after all of them."""
    reset_table(url)
    app = App("this app", ROOT, url, workers=1)
    try:
        app.seed()
        marks = {}
        done = 0
        for target in (total // 10, total):
            while done < target:
                result = drive(app.base, "post" if done % 2 else "get", 32, 2)
                done += result["requests"]
            marks[done] = rss_kib(app.process.pid)
        (first_n, first), (last_n, last) = marks.items()
        print(
            f"\nMemory (1 worker): {first / 1024:.1f} MiB after {first_n:,} requests,"
            f" {last / 1024:.1f} MiB after {last_n:,} ({(last - first) / first:+.1%})"
        )
    finally:
        app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument(
        "--peer", action="append", type=Path, help="another app's dir (default: bench/tutorial)"
    )
    parser.add_argument("--twin", action="store_true", help="also main_async.py, the async twin")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--memory-requests", type=int, default=100_000, help="0 skips the check")
    args = parser.parse_args()
    args.database_url = database_url_for_the_bench(args.database_url)
    peers = args.peer or [HERE / "tutorial"]
    apps = [("this app", ROOT, "main")] + [("async twin", ROOT, "main_async")] * args.twin
    apps += [(f"peer {p.name}", p.resolve(), "main") for p in peers]
    wrk = shutil.which("wrk") or "no wrk: Python threads (slower)"
    rounds = f"{args.rounds} rounds of {args.duration:g} s"
    print(f"Load generator: {wrk}; {rounds}; {os.cpu_count()} cores")

    rows = []
    for workers in map(int, args.workers.split(",")):
        for concurrency in map(int, args.concurrency.split(",")):
            # Every app runs at once, on one database (this app makes the table and seeds it);
            # the measurements alternate in short slices, the order turning each round, so
            # that the machine's drift falls on every app alike.
            reset_table(args.database_url)
            servers = []
            try:
                for name, directory, module in apps:
                    servers.append(App(name, directory, args.database_url, workers, module))
                servers[0].seed()
                runs: dict[str, list[dict]] = {name: [] for name, *_ in apps}
                raw = {"post": [], "get": []}
                for number in range(args.rounds):
                    order = servers[number % len(servers) :] + servers[: number % len(servers)]
                    measured = {name: {} for name, *_ in apps}
                    for kind in ("root", "post", "get"):
                        for name, result in measure(
                            order, args.database_url, kind, concurrency, args.duration
                        ).items():
                            measured[name][kind] = result
                    for name, *_ in apps:
                        runs[name].append(measured[name])
                    for kind in raw:
                        raw[kind].append(
                            raw_driver(args.database_url, kind, concurrency, args.duration)["rps"]
                        )
            finally:
                for server in servers:
                    server.stop()
            rows.append(
                (workers, concurrency, runs, {k: statistics.median(v) for k, v in raw.items()})
            )
    print_table(rows, apps)
    if args.memory_requests:
        memory_check(args.database_url, args.memory_requests)


def median(runs: list[dict], kind: str, field: str) -> float:
    return statistics.median(run[kind][field] for run in runs)


def print_table(rows, apps) -> None:
    header = (
        "| workers | conc. | app | route | req/s | p50 ms | p99 ms | CPU ms/req | non-2xx"
        " | lost writes | of GET / | vs raw PyMySQL |"
    )
    print("\n" + header + "\n" + re.sub(r"[^|]", "-", header))
    for workers, concurrency, runs, raw in rows:
        for name, *_ in apps:
            ceiling = median(runs[name], "root", "rps")
            for kind, route in (
                ("post", "POST /users/"),
                ("get", "GET /users/{id}"),
                ("root", "GET /"),
            ):
                rps = median(runs[name], kind, "rps")
                lost = sum(run[kind].get("lost", 0) for run in runs[name]) if kind == "post" else ""
                non_2xx = sum(run[kind]["non_2xx"] for run in runs[name])
                versus_raw = f"{rps / raw[kind]:.2f}" if kind in raw else ""
                p50 = median(runs[name], kind, "p50") * 1000
                p99 = median(runs[name], kind, "p99") * 1000
                cpu = median(runs[name], kind, "cpu_ms")
                print(
                    f"| {workers} | {concurrency} | {name} | {route} | {rps:,.0f} | {p50:.1f}"
                    f" | {p99:.1f} | {cpu:.2f} | {non_2xx} | {lost} | {rps / ceiling:.2f}"
                    f" | {versus_raw} |"
                )
        raw_rps = f"{raw['post']:,.0f} / {raw['get']:,.0f}"
        empty = " |" * 8
        print(f"| {workers} | {concurrency} | raw PyMySQL | INSERT / SELECT | {raw_rps} |{empty}")
    print("\nRatios of requests/s: the median of the rounds' paired ratios (each round measured")
    print("every app in turn), then each round's ratio in order; CPU: the other app's CPU time")
    print("per request over this app's, the median of the rounds (above 1: this app uses less).")
    pairs = [(a, b) for index, (a, *_) in enumerate(apps) for b, *_ in apps[index + 1 :]]
    for workers, concurrency, runs, _raw in rows:
        for ours, name in pairs:  # this app vs each other; with --twin, the twin vs the peers too
            ratios = []
            for kind, route in (("post", "POST"), ("get", "GET {id}"), ("root", "GET /")):
                paired = [
                    a[kind]["rps"] / b[kind]["rps"]
                    for a, b in zip(runs[ours], runs[name], strict=True)
                ]
                each = ", ".join(f"{ratio:.2f}" for ratio in paired)
                ratios.append(f"{route} {statistics.median(paired):.2f}x ({each})")
            where = f"workers {workers}, concurrency {concurrency}"
            print(f"{where}: {ours} vs {name}: {'; '.join(ratios)}")


if __name__ == "__main__":
    main()
