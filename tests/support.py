"""Test machinery: a TCP proxy between the app and the database, and a real uvicorn server."""

import contextlib
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent


def copy_app(folder: Path, learner_code: str = "", after: str | None = None) -> Path:
    """main.py with what it needs beside it (its Alembic revisions), copied into folder, and
    with a learner's code (routes, a model) appended to it, as a student adds them, or put
    right after the line that starts with `after`."""
    (folder / "main.py").write_text(placed((ROOT / "main.py").read_text(), learner_code, after))
    shutil.copy(ROOT / "alembic.ini", folder / "alembic.ini")
    shutil.copytree(ROOT / "migrations", folder / "migrations", ignore=IGNORED)
    return folder


def twin_folder(
    folder: Path, learner_code: str = "", name: str = "main.py", after: str | None = None
) -> Path:
    """main_async.py, with a learner's code appended (or put after a line, as copy_app does),
    copied into folder as `name` (main.py: `uvicorn main:app` starts the twin), with the Alembic
    revisions beside it."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(placed((ROOT / "main_async.py").read_text(), learner_code, after))
    shutil.copytree(ROOT / "migrations", folder / "migrations", ignore=IGNORED)
    return folder


IGNORED = shutil.ignore_patterns("__pycache__")


def placed(source: str, learner_code: str, after: str | None) -> str:
    """The source with the learner's code at its end, or right after the line starting `after`."""
    if after is None:
        return source + learner_code
    end_of_line = source.index("\n", source.index("\n" + after) + 1) + 1
    return source[:end_of_line] + learner_code + source[end_of_line:]


def apply_solutions(folder: Path, up_to: str) -> None:
    """The exercises' reference solutions, in order, up to the one named (a course's step),
    applied to the app copied into folder (test_main.py's part of them is not copied)."""
    for patch in sorted((ROOT / "exercises" / "solutions").glob("*.patch")):
        command = ["git", "apply", "--exclude=test_main.py", str(patch)]
        subprocess.run(command, cwd=folder, check=True, capture_output=True)
        if patch.stem.startswith(up_to):
            return


def together(count: int, call) -> list[int]:
    """Runs call(0) ... call(count - 1) in threads released at the same instant."""
    start = threading.Barrier(count)

    def run(number: int) -> int:
        start.wait()
        return call(number).status_code

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections (Linux; elsewhere, a safe guess)."""
    ports = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low, high = map(int, ports.read_text().split()) if ports.exists() else (32768, 65535)
    return range(low, high + 1)


HANDED_OUT: set[int] = set()
PICK = random.SystemRandom()  # never the seeded sequence of another process: CI runs three


def free_port() -> int:
    """A port nothing listens on, and one no outgoing connection can take. Ports from the
    ephemeral range may be in use by the time a server restarts on them (a Galera node after a
    crash), and the server then exits at once with "Address already in use"."""
    below = ephemeral_ports().start
    candidates = range(max(1024, below - 12000), below)  # 12,000 ports, none privileged
    while True:
        port = PICK.choice(candidates)
        if port in HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        HANDED_OUT.add(port)
        return port


def other_connection_ids(admin) -> list[int]:
    """Server-side ids of the connections of admin's user to admin's database, but its own."""
    query = (
        "SELECT id FROM information_schema.PROCESSLIST"
        " WHERE user = SUBSTRING_INDEX(USER(), '@', 1) AND db = DATABASE()"
        " AND id <> CONNECTION_ID()"
    )
    return list(admin.exec_driver_sql(query).scalars())


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a database server, and can misbehave on purpose.

    cut() closes the listener and every open connection (a server restart or a network cut);
    restore() listens again on the same port. `latency` delays every chunk in each direction.
    `stalled = True` keeps every connection open, and accepts new ones, but forwards nothing
    until it is set back to False (a stuck server, or a network that swallows packets).
    drop_open() ends the open connections but keeps listening (a server's idle timeout).
    `hold` keeps the first N connections waiting until all N have arrived, then lets them go
    together, so that N processes really race. `resetting = True` accepts each new connection and
    resets it at once (a server that crashes as it accepts, or a balancer with no server behind).
    stall_open() stalls the connections open now, for good, and no new one (a pooled connection
    that a NAT or a failover dropped silently). `garble_next = True` misnumbers the next packet
    the server sends: an answer that arrives, but that the driver cannot read (a corrupted
    network, or a proxy's bug).
    """

    def __init__(self, target_host: str, target_port: int, latency: float = 0.0, hold: int = 0):
        self.target = (target_host, target_port)
        self.latency = latency
        self.port = free_port()
        self.accepted = 0
        self.stalled = False
        self.resetting = False
        self.garble_next = False
        self._stalled_sockets: set[socket.socket] = set()
        self._hold = hold
        self._released = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        if not hold:
            self._released.set()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread waiting in accept()
        self._listener.close()
        self.drop_open(reset=False)

    close = cut

    def drop_open(self, reset: bool) -> None:
        """Ends every open connection but keeps listening, as a server does with a connection idle
        for its wait_timeout: an orderly end (FIN), or, with reset, a reset (RST)."""
        with self._lock:
            doomed = list(self._sockets)
            self._sockets.clear()
        for sock in doomed:
            if reset:  # a linger of 0 s: close() sends a reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def stall_open(self) -> None:
        with self._lock:
            self._stalled_sockets |= self._sockets

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was cut
            self.accepted += 1
            if self.accepted >= self._hold:
                self._released.set()
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if self.resetting:  # a linger of 0 s: close() sends a reset (RST), not an orderly end
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        self._released.wait(timeout=30)
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.update((client, upstream))
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        from_server = source.getpeername()[1] == self.target[1]
        try:
            while data := source.recv(65536):
                if from_server and self.garble_next and len(data) > 3:
                    self.garble_next = False  # byte 3: the packet's number, never 0 here
                    data = data[:3] + bytes([(data[3] + 7) % 256 or 1]) + data[4:]
                if self.latency:
                    time.sleep(self.latency)
                while self.stalled or source in self._stalled_sockets:
                    time.sleep(0.01)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class UvicornServer:
    """`uvicorn main:app` in a child process, on a free port, with its own DATABASE_URL (None:
    none at all, so main.py's default)."""

    def __init__(
        self,
        database_url: str | None,
        workers: int = 1,
        extra_env: dict | None = None,
        cwd: Path = ROOT,
        python: Path | str = sys.executable,
    ):
        self.workers = workers
        self._env = {**os.environ, "DATABASE_URL": database_url or "", **(extra_env or {})}
        if database_url is None:
            del self._env["DATABASE_URL"]
        self._cwd, self._python = cwd, python
        self._start()

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(self._python), "-m", "uvicorn", "main:app", "--port", str(self.port)]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(
            command,
            cwd=self._cwd,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def wait_started(self, timeout: float = 30) -> "UvicornServer":
        """Waits until every worker reported startup complete and the port is bound (or startup
        failed, or the process ended); a port another process took meanwhile: again on another."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            started = self.count("Application startup complete.") >= self.workers
            listening = self.workers > 1 or self.count("Uvicorn running on")  # bound after startup
            if started and listening:
                break
            if self.count("Application startup failed.") or self.count("Child process died"):
                break
            time.sleep(0.05)
        if self.process.poll() is not None and self.count("address already in use"):
            self._reader.join(timeout=5)  # another process took the port first: another port
            self.process.stdout.close()
            self._start()
            return self.wait_started(max(1.0, deadline - time.monotonic()))
        if not self.count("Application startup complete."):  # shown if the test then fails
            print(f"uvicorn on port {self.port} did not start:", *self.lines[-20:], sep="\n")
        return self

    def client(self, **kwargs) -> httpx2.Client:
        return httpx2.Client(base_url=self.url, **{"timeout": 30, **kwargs})

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        self.process.stdout.close()

    def __enter__(self) -> "UvicornServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def deadlocked(engine, post, sends: list[dict], held: str = "x", pause: float = 0.5) -> list:
    """InnoDB's textbook deadlock: a holder inserts the username `held` and keeps it uncommitted;
    the requests (`post(**send)` each, at once) insert it too and wait for its lock; the holder
    rolls back, and the waiters deadlock. Their answers, in the order of `sends`."""
    holder = engine.connect()
    holder.execute(
        text("INSERT INTO users (username, email) VALUES (:name, 'h@example.com')"), {"name": held}
    )
    with ThreadPoolExecutor(max_workers=len(sends)) as pool:
        waiting = [pool.submit(post, **send) for send in sends]
        time.sleep(pause)  # every request now waits for the holder's lock
        holder.rollback()
        holder.close()
        return [future.result() for future in waiting]
