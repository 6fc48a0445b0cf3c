"""The app on a real multi-primary cluster: MariaDB Galera, two nodes and an arbitrator, one app
per node (issues 15 and 18).

The cluster (tests/galera.py) starts once for this file, on its own ports and folders. Each
test empties its database, then talks to `uvicorn main:app` on node 1 and on node 2: main.py,
then its async twin, main_async.py (issue 32), in the tests that take `apps` or `app_folder`."""

import os
import re
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from sqlalchemy import create_engine, inspect, text

from conftest import emptied
from tests import galera
from tests.support import UvicornServer, ephemeral_ports, free_port, together

ROUNDS = 5  # each race, this many times in a row


@pytest.fixture(scope="module")
def cluster():
    if not galera.available():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Galera cases. {galera.MISSING}")
        pytest.skip(galera.MISSING)
    started = time.monotonic()
    cluster = galera.GaleraCluster().start()
    print(f"\nGalera cluster of 2 nodes and garbd up in {time.monotonic() - started:.1f} s")
    yield cluster
    cluster.stop()


@pytest.fixture
def engines(cluster):
    """An engine on each node, on an emptied database."""
    made = [create_engine(cluster.url(node), pool_pre_ping=True) for node in cluster.nodes]
    emptied(made[0])  # DDL replicates: the other node is empty too
    yield made
    for engine in made:
        engine.dispose()


class Apps(list):
    """A client for the app on each node; .reruns() counts the requests run again after a
    conflict (RetryOnDeadlock in main.py), from the apps' logs."""

    def __init__(self, servers: list[UvicornServer]):
        limits = httpx2.Limits(max_connections=250, max_keepalive_connections=250)
        super().__init__(server.client(limits=limits) for server in servers)
        self.servers = servers

    def reruns(self) -> int:
        return sum(server.count("running it again") for server in self.servers)

    def causes(self, app: int) -> Counter:
        """The database errors one app answered, by answer and driver error code, from its log."""
        found = (
            re.search(r"answered (\d+) .*?: (\w+ \(\w+\))", line)
            for line in self.servers[app].lines
        )
        return Counter(" ".join(match.groups()) for match in found if match)


@pytest.fixture
def apps(cluster, engines, app_folder):
    """`uvicorn main:app` on each node (the first creates the table), or the twin's."""
    servers = [UvicornServer(cluster.url(n), cwd=app_folder).wait_started() for n in cluster.nodes]
    clients = Apps(servers)
    yield clients
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


def rows(engine, query: str = "SELECT id, username FROM users ORDER BY id") -> list[tuple]:
    """What a node holds, once it has applied every write the cluster committed before."""
    with engine.connect() as connection:
        connection.execute(text("SET SESSION wsrep_sync_wait = 1"))
        return [tuple(row) for row in connection.execute(text(query))]


def test_30_creates_of_one_username_across_nodes_give_one_201(apps, engines):
    seen = []
    for round_number in range(ROUNDS):
        body = {"username": f"popular{round_number}", "email": "a@example.com"}
        statuses = together(30, lambda n, body=body: apps[n % 2].post("/users/", json=body))
        seen.append(Counter(statuses))
        assert Counter(statuses) == {201: 1, 409: 29}, statuses
    names = [f"popular{n}" for n in range(ROUNDS)]
    for engine in engines:
        assert sorted(name for _, name in rows(engine)) == names
    print(
        f"\n30 racing creates, 15 through each node, {ROUNDS} rounds: {seen};"
        f" {apps.reruns()} requests ran again after a conflict at COMMIT"
    )


def test_200_distinct_creates_across_nodes_all_land_on_both_nodes(apps, engines):
    def create(n: int):
        return apps[n % 2].post("/users/", json={"username": f"user{n}", "email": "a@e.com"})

    statuses = together(200, create)
    assert Counter(statuses) == {201: 200}
    first, second = (rows(engine) for engine in engines)
    assert len(first) == 200 and first == second
    with engines[0].connect() as connection:  # Galera's: the cluster's size, garbd counted
        step = connection.scalar(text("SELECT @@auto_increment_increment"))
    remainders = [{i % step for i, name in first if int(name[4:]) % 2 == node} for node in (0, 1)]
    print(f"\n200 creates: {Counter(statuses)}; ids step by {step}, remainders {remainders}")
    assert len(remainders[0]) == len(remainders[1]) == 1 and remainders[0] != remainders[1]


def test_12_patches_racing_to_one_username_across_nodes_have_one_winner(apps, engines):
    for round_number in range(ROUNDS):
        ids = [
            apps[n % 2]
            .post("/users/", json={"username": f"r{round_number}u{n}", "email": "a@e.com"})
            .json()["id"]
            for n in range(12)
        ]
        name = {"username": f"winner{round_number}"}
        statuses = together(
            12, lambda n, ids=ids, name=name: apps[n % 2].patch(f"/users/{ids[n]}", json=name)
        )
        assert Counter(statuses) == {200: 1, 409: 11}, statuses
    for engine in engines:
        winners = rows(engine, "SELECT id, username FROM users WHERE username LIKE 'winner%'")
        assert len(winners) == ROUNDS
    print(f"\n12 racing PATCHes, {ROUNDS} rounds: one winner each; {apps.reruns()} ran again")


def test_a_patch_racing_a_delete_on_the_other_node_answers_200_or_404(apps, engines):
    seen: Counter = Counter()
    for round_number in range(ROUNDS * 3):
        user_id = (
            apps[0]
            .post("/users/", json={"username": f"doomed{round_number}", "email": "a@e.com"})
            .json()["id"]
        )
        path = f"/users/{user_id}"
        calls = [
            lambda path=path: apps[0].delete(path),
            lambda path=path: apps[1].patch(path, json={"email": "b@e.com"}),
        ]
        deleted, patched = together(2, lambda n, calls=calls: calls[n]())
        assert deleted == 204 and patched in {200, 404}, (deleted, patched)
        seen[patched] += 1
    for engine in engines:
        assert rows(engine) == []
    print(f"\nPATCH racing DELETE across nodes: {dict(seen)}; {apps.reruns()} ran again")


def test_every_table_has_a_primary_key_as_galera_needs(apps, engines):
    # Galera replicates rows by primary key: a table without one cannot be kept in step.
    # The apps created the tables (and Alembic's version table) on the cluster.
    database = inspect(engines[1])
    tables = database.get_table_names()
    assert {"users", "alembic_version"} <= set(tables)
    for table in tables:
        assert database.get_pk_constraint(table)["constrained_columns"], table


def test_a_node_stops_and_rejoins_under_load_and_no_201_is_lost(cluster, apps, engines):
    created: list[tuple[int, int]] = []  # (app, user id) of every 201
    answers: list[tuple[float, int, int, float]] = []  # (when, app, status, seconds)
    stop_writing = threading.Event()

    def writer(app: int, number: int) -> None:
        count = 0
        while not stop_writing.is_set():
            count += 1
            body = {"username": f"w{app}-{number}-{count}", "email": "a@e.com"}
            started = time.monotonic()
            response = apps[app].post("/users/", json=body)
            answers.append((started, app, response.status_code, time.monotonic() - started))
            if response.status_code == 201:
                created.append((app, response.json()["id"]))
            time.sleep(0.01)

    second = cluster.nodes[1]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for app in (0, 1):
            for number in range(2):
                pool.submit(writer, app, number)
        time.sleep(2)
        stopped_at = time.monotonic()
        second.stop()  # a clean shutdown: the node leaves, the other keeps its quorum
        down_for = time.monotonic() - stopped_at
        time.sleep(3)
        restarted_at = time.monotonic()
        second.start()
        rejoin = second.wait_synced(cluster_size=galera.MEMBERS)
        recovered_at = None
        while recovered_at is None and time.monotonic() - restarted_at < 60:
            late = [a for a in answers if a[1] == 1 and a[0] > restarted_at + rejoin]
            if any(status == 201 for _, _, status, _ in late):
                recovered_at = min(when for when, _, status, _ in late if status == 201)
            time.sleep(0.1)
        time.sleep(1)
        stop_writing.set()

    outage = [a for a in answers if stopped_at + down_for < a[0] < restarted_at]
    during = {app: Counter(status for _, a, status, _ in outage if a == app) for app in (0, 1)}
    slowest_503 = max(seconds for _, a, status, seconds in outage if a == 1 and status == 503)
    assert set(during[0]) <= {201}, during  # the other node's app never noticed
    assert set(during[1]) == {503}, during  # this app said so, at once
    assert slowest_503 < 10  # within DB_TIMEOUT
    assert recovered_at is not None, "the app on the rejoined node never answered 201 again"
    ids = sorted(user_id for _, user_id in created)
    for engine in engines:
        stored = {user_id for user_id, _ in rows(engine)}
        assert set(ids) <= stored, f"{len(set(ids) - stored)} created users are missing"
    print(
        f"\nnode 2 stopped in {down_for:.1f} s; during the outage app 1 {dict(during[0])},"
        f" app 2 {dict(during[1])} (slowest 503 {slowest_503 * 1000:.0f} ms); rejoined in"
        f" {rejoin:.1f} s; app 2 answered 201 again {recovered_at - restarted_at:.1f} s after"
        f" the restart; {len(ids)} users created (201), every one on both nodes"
    )


def test_two_apps_with_two_workers_each_start_together_on_an_empty_database(
    cluster, engines, app_folder
):
    for _ in range(ROUNDS):
        emptied(engines[0])
        servers = [
            UvicornServer(cluster.url(node), workers=2, cwd=app_folder) for node in cluster.nodes
        ]
        try:
            for server in servers:
                server.wait_started(timeout=60)
            counts = [server.count("Application startup complete.") for server in servers]
            failed = sum(server.count("Application startup failed.") for server in servers)
            output = "\n".join(line for server in servers for line in server.lines)
            assert counts == [2, 2] and failed == 0, output
            with servers[1].client() as http:
                response = http.post("/users/", json={"username": "ada", "email": "a@e.com"})
            assert response.status_code == 201
        finally:
            for server in servers:
                server.stop()
    print(f"\n{ROUNDS} rounds: 2 apps x 2 workers, one app per node, all 4 workers started")


# --- A crash, then the loss of quorum (issue 18). These kill members: they come last, and each
# leaves the cluster whole again.
SAVED_OR_NOT = "Saved or not is unknown: the database went away"  # 500: never sent again


class Writers:
    """Clients that create users through one app, one request after another, until stopped."""

    def __init__(self, app: httpx2.Client, clients: int):
        self.app = app
        self.created: list[int] = []  # the id of every 201
        self.unknown: list[str] = []  # the username of every "saved or not"
        self.answers: list[tuple[float, object]] = []  # (when answered, status or "timeout")
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=clients)
        for number in range(clients):
            self.pool.submit(self.write, number)

    def write(self, number: int) -> None:
        count = 0
        while not self.stopping.is_set():
            count += 1
            body = {"username": f"w{number}-{count}-{time.monotonic()}", "email": "a@e.com"}
            try:
                response = self.app.post("/users/", json=body)
            except httpx2.TimeoutException:
                self.answers.append((time.monotonic(), "timeout"))
                continue
            status = response.status_code
            if status == 500 and response.json() == {"detail": SAVED_OR_NOT}:
                status = "saved or not"  # its COMMIT was sent, and its answer lost
                self.unknown.append(body["username"])
            self.answers.append((time.monotonic(), status))
            if response.status_code == 201:
                self.created.append(response.json()["id"])

    def stop(self) -> None:
        self.stopping.set()
        self.pool.shutdown()

    def since(self, moment: float) -> Counter:
        return Counter(status for when, status in self.answers if when >= moment)


def test_a_node_crash_under_load_costs_a_few_503s_and_no_acknowledged_write(cluster, apps, engines):
    writers = Writers(apps[0], clients=8)
    time.sleep(3)
    killed_at = time.monotonic()
    cluster.nodes[1].kill()  # SIGKILL: node 2 vanishes without a word
    time.sleep(20)
    writers.stop()
    after, late = writers.since(killed_at), writers.since(killed_at + 15)
    failures = [when - killed_at for when, status in writers.answers if status != 201]
    last_failure = max(failures, default=0.0)
    missing = set(writers.created) - {user_id for user_id, _ in rows(engines[0])}
    saved = set(writers.unknown) & {username for _, username in rows(engines[0])}
    rejoined = cluster.restore()
    print(
        f"\nnode 2 SIGKILLed under 8 writers on app 1: answered after the kill {dict(after)},"
        f" the last failure {last_failure:.1f} s after it; {len(writers.created)} acknowledged"
        f" writes, {len(missing)} missing on node 1; of the {len(writers.unknown)} answered"
        f" 'saved or not', {len(saved)} saved; node 2 restarted and Synced in"
        f" {rejoined:.1f} s; app 1's log: {dict(apps.causes(0))}"
    )
    assert set(after) <= {201, 503, "saved or not"}, after
    assert set(late) == {201}, late
    assert not missing
    assert set(writers.created) <= {user_id for user_id, _ in rows(engines[1])}  # caught up


def test_without_quorum_every_database_route_and_readyz_answer_503(cluster, apps, engines):
    user_id = apps[0].post("/users/", json={"username": "ada", "email": "a@e.com"}).json()["id"]
    first = cluster.nodes[0]
    writers = Writers(apps[0], clients=2)  # writes in flight as the quorum goes
    time.sleep(1)
    cluster.nodes[1].kill()
    cluster.arbitrator.kill()  # node 1 is now one of three: no majority
    lost_at = time.monotonic()
    while first.status("wsrep_cluster_status") != "non-Primary":
        assert time.monotonic() - lost_at < 60, "node 1 never noticed"
        time.sleep(0.2)
    noticed = time.monotonic() - lost_at
    time.sleep(1)
    writers.stop()
    calls = {
        "POST /users/": lambda: apps[0].post(
            "/users/", json={"username": "bo", "email": "b@e.com"}
        ),
        "GET /users/": lambda: apps[0].get("/users/"),
        "GET /users/{id}": lambda: apps[0].get(f"/users/{user_id}"),
        "PATCH /users/{id}": lambda: apps[0].patch(f"/users/{user_id}", json={"email": "c@e.com"}),
        "DELETE /users/{id}": lambda: apps[0].delete(f"/users/{user_id}"),
        "GET /readyz": lambda: apps[0].get("/readyz"),
    }
    answers = {name: call() for name, call in calls.items()}
    live = apps[0].get("/livez")
    restored = cluster.restore()
    after = apps[0].get(f"/users/{user_id}")
    print(
        f"\nquorum lost: node 1 non-Primary after {noticed:.1f} s;"
        f" { ({name: r.status_code for name, r in answers.items()}) }; /livez {live.status_code};"
        f" the writers meanwhile {dict(writers.since(lost_at))}; whole again after"
        f" {restored:.1f} s, then GET {after.status_code}; app 1's log: {dict(apps.causes(0))}"
    )
    for name, response in answers.items():
        assert response.status_code == 503, (name, response.text)
        assert response.headers["Retry-After"], name
    assert answers["GET /users/"].json() == {"detail": "Database unavailable"}
    assert live.status_code == 200
    assert set(writers.since(lost_at)) <= {201, 503, "saved or not"}
    assert after.status_code == 200


# --- The cluster's own machinery. A CI run once hung here for 120 s: node 2, restarted after a
# crash, found its group port taken by an outgoing connection (the kernel hands its ephemeral
# ports to any connect) and exited at once, while restore() waited on node 1 and blamed it.
def test_no_port_of_the_test_machinery_is_one_the_kernel_hands_to_outgoing_connections():
    ports = [free_port() for _ in range(50)]
    assert not set(ports) & set(ephemeral_ports()), ephemeral_ports()
    assert len(set(ports)) == len(ports)  # and none handed out twice


def test_a_member_that_cannot_start_again_is_named_with_its_own_log(cluster, engines):
    first, second = cluster.nodes
    second.kill()
    cluster.arbitrator.kill()  # as in the quorum test: node 1 alone, then told to bootstrap
    while first.status("wsrep_cluster_status") != "non-Primary":
        time.sleep(0.2)
    with socket.socket() as squatter:  # something else now listens on node 2's group port
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", second.gcomm))
        squatter.listen()
        with pytest.raises(RuntimeError) as failure:
            cluster.restore()
    assert str(failure.value).startswith("node2 exited"), str(failure.value)[:200]
    assert "Address already in use" in str(failure.value)
    cluster.restore()  # the port is free again: node 2 rejoins
    assert second.status("wsrep_cluster_size") == str(galera.MEMBERS)
