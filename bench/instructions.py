"""Instructions per request, counted by valgrind's callgrind: the same for the same code, however
busy the machine is (wall-clock benchmarks here drift by 10 to 20% from one round to the next).

    BENCH_DATABASE_URL=mysql+pymysql://tutorial:tutorial-pass@127.0.0.1:3306/tutorial_bench \\
      python bench/instructions.py main.py path/to/other/main.py

Each app runs in this process, without a server: a request is sent straight to its ASGI
callable, its SQL goes to the database as usual, and every thread is counted. Each count is two
runs of valgrind, one with 200 more requests than the other, so that startup cancels out. Needs
`apt-get install valgrind`; the database is emptied, as bench/run.py does.
"""

import asyncio
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from run import database_url_for_the_bench, reset_table

ROUTES = {
    "GET /": ("GET", "/"),
    "GET /users/1": ("GET", "/users/1"),
    "POST /users/": ("POST", "/users/"),
}
REQUESTS = 200


async def send_requests(app_path: str, route: str, count: int) -> None:
    spec = importlib.util.spec_from_file_location("app_under_test", app_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    async with module.app.router.lifespan_context(module.app):
        method, path = ROUTES[route]
        await one(module.app, "POST", "/users/", {"username": f"seed{os.getpid()}"})
        for number in range(20 + count):  # 20 to warm up, in both runs
            body = {"username": f"u{os.getpid()}-{number}"} if method == "POST" else None
            await one(module.app, method, path, body)
    module.db_engine.dispose()


async def one(app, method: str, path: str, body: dict | None) -> None:
    content = json.dumps({**body, "email": "u@example.com"}).encode() if body else b""

    async def receive() -> dict:
        return {"type": "http.request", "body": content, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] < 400, message

    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)


def instructions(app_path: str, route: str, count: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    command += [__file__, "--child", app_path, route, str(count)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # dict layouts, so counts, alike in every run
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stderr
    return int(re.search(r"Collected : (\d+)", output).group(1))


def main() -> None:
    if sys.argv[1] == "--child":
        return asyncio.run(send_requests(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    url = database_url_for_the_bench()
    os.environ["DATABASE_URL"] = url
    apps = [str(Path(path).resolve()) for path in sys.argv[1:]]
    print(f"Instructions per request (callgrind, {REQUESTS} requests, in-process, one database)")
    print("\n| route | " + " | ".join(apps) + " |\n|---|" + "---|" * len(apps))
    for route in ROUTES:
        counts = []
        for app in apps:
            reset_table(url)
            counts.append(instructions(app, route, REQUESTS) - instructions(app, route, 0))
        cells = [f"{count / REQUESTS / 1e6:.3f} M ({count / counts[0]:.3f})" for count in counts]
        print(f"| {route} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
