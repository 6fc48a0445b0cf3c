"""A MariaDB Galera cluster on this machine, for the tests: two nodes from Debian's galera-4 and
rsync, and the arbitrator garbd (galera-arbitrator-4) as a third voting member.

Three votes are what lets the cluster survive a crash: the members that remain keep the
Primary Component only while they are a majority of the last one, and one of two is not. The
arbitrator votes and relays, but stores no data, so it costs almost nothing.

Each node has its own folder (data, socket, log, config) and its own loopback ports for
MySQL, group communication, incremental state transfer (IST) and rsync state transfer (SST).
The main MariaDB server, its datadir and its port are never touched.

    python -m tests.galera      # starts a cluster, prints its URLs, stops it on Enter
"""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import ROOT, free_port

PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
MARIADB = shutil.which("mariadb") or "/usr/bin/mariadb"
GARBD = shutil.which("garbd") or "/usr/bin/garbd"
MISSING = (
    "Galera cases skipped: install galera-4, galera-arbitrator-4 and rsync"
    " (apt-get install galera-4 galera-arbitrator-4 rsync)"
)
GROUP = "reference-app-tests"
MEMBERS = 3  # two nodes and the arbitrator

CONFIG = """[mariadbd]
datadir = {folder}/data
socket = {folder}/mysqld.sock
pid-file = {folder}/mysqld.pid
log-error = {folder}/error.log
port = {port}
bind-address = 127.0.0.1
skip-name-resolve
innodb_buffer_pool_size = 64M
innodb_log_file_size = 16M
# What Galera requires: row-based replication, InnoDB, interleaved AUTO_INCREMENT locks.
binlog_format = ROW
default_storage_engine = InnoDB
innodb_autoinc_lock_mode = 2
wsrep_on = ON
wsrep_provider = {provider}
wsrep_cluster_name = {group}
wsrep_cluster_address = gcomm://{peers}
wsrep_node_name = node{number}
wsrep_node_address = 127.0.0.1
wsrep_provider_options = "gmcast.listen_addr=tcp://127.0.0.1:{gcomm};ist.recv_addr=127.0.0.1:{ist};gcache.size=32M"
wsrep_sst_method = rsync
wsrep_sst_receive_address = 127.0.0.1:{sst}
"""


def available() -> bool:
    tools = (PROVIDER, Path(MARIADBD), Path(GARBD))
    return all(tool.exists() for tool in tools) and shutil.which("rsync") is not None


class Member:
    """A process of the cluster: a node or the arbitrator."""

    name: str
    log: Path
    process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_running(self) -> None:
        """An error naming this member, with its own log, if its process has exited."""
        if self.process and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")

    def log_tail(self) -> str:
        lines = self.log.read_text().splitlines()[-30:] if self.log.exists() else ["(no log)"]
        return "\n".join(lines)

    def kill(self) -> None:
        """A crash (SIGKILL): the others learn of it only when it stops answering."""
        self.process.kill()
        self.process.wait()
        self.process = None


class Node(Member):
    def __init__(self, folder: Path, number: int):
        self.folder, self.number = folder, number
        self.name, self.log = f"node{number}", folder / "error.log"
        self.port, self.gcomm, self.ist, self.sst = (free_port() for _ in range(4))

    def configure(self, peers: str) -> None:
        self.folder.mkdir(parents=True)
        shutil.chown(self.folder, "mysql", "mysql")  # mariadbd runs as mysql: its files too
        (self.folder / "my.cnf").write_text(
            CONFIG.format(
                folder=self.folder,
                port=self.port,
                provider=PROVIDER,
                peers=peers,
                group=GROUP,
                number=self.number,
                gcomm=self.gcomm,
                ist=self.ist,
                sst=self.sst,
            )
        )
        subprocess.run(
            [INSTALL_DB, f"--defaults-file={self.folder / 'my.cnf'}", "--user=mysql"],
            check=True,
            capture_output=True,
        )

    def start(self, *extra: str) -> None:
        command = [MARIADBD, f"--defaults-file={self.folder / 'my.cnf'}", "--user=mysql", *extra]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): the node leaves the cluster and can rejoin later."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.process = None

    def sql(self, statements: str) -> str:
        """Runs SQL as root over the node's own socket, with the mariadb client, as CI does."""
        command = [MARIADB, f"--socket={self.folder / 'mysqld.sock'}", "-uroot", "-N", "-B"]
        result = subprocess.run(command, input=statements, capture_output=True, text=True)
        return result.stdout if result.returncode == 0 else ""

    def status(self, name: str) -> str | None:
        row = self.sql(f"SHOW GLOBAL STATUS LIKE '{name}'").split()
        return row[1] if len(row) == 2 else None

    def synced(self, cluster_size: int) -> bool:
        """Whether this node is Synced in a cluster of cluster_size members."""
        in_step = self.status("wsrep_local_state_comment") == "Synced"
        return in_step and self.status("wsrep_cluster_size") == str(cluster_size)

    def wait_synced(self, cluster_size: int, timeout: float = 120) -> float:
        """Seconds until this node is Synced in a cluster of cluster_size nodes."""
        return wait_until_synced([self], cluster_size, timeout)


def wait_until_synced(
    nodes: list[Node], cluster_size: int, timeout: float = 120, watched: tuple = ()
) -> float:
    """Seconds until every one of nodes is Synced in a cluster of cluster_size members. These
    and the watched members are checked all along, so one that exits is named at once."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for member in (*nodes, *watched):
            member.check_running()
        if all(node.synced(cluster_size) for node in nodes):
            return time.monotonic() - started
        time.sleep(0.2)
    late = [node for node in nodes if not node.synced(cluster_size)]
    logs = "\n".join(f"{node.name}:\n{node.log_tail()}" for node in late)
    raise RuntimeError(f"not synced after {timeout} s: {logs}")


class Arbitrator(Member):
    """garbd: a voting member of the group that keeps no data."""

    def __init__(self, folder: Path):
        self.name, self.log, self.folder = "garbd", folder / "garbd.log", folder
        self.gcomm = free_port()

    def start(self, peers: str) -> None:
        command = [GARBD, "--group", GROUP, "--address", f"gcomm://{peers}", "--log", self.log]
        command += ["--options", f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm}"]
        self.process = subprocess.Popen(  # in its folder: it writes gvwstate.dat where it runs
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.folder
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


class GaleraCluster:
    """node1 bootstraps the cluster, node2 joins it by state transfer (rsync), garbd votes."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="galera-"))
        shutil.chown(self.folder, "mysql", "mysql")
        self.nodes = [Node(self.folder / f"node{number}", number) for number in (1, 2)]
        self.arbitrator = Arbitrator(self.folder)
        self.peers = ",".join(f"127.0.0.1:{node.gcomm}" for node in self.nodes)
        for node in self.nodes:
            node.configure(self.peers)

    def start(self) -> "GaleraCluster":
        first, second = self.nodes
        first.start("--wsrep-new-cluster")
        first.wait_synced(cluster_size=1)
        # The same user and databases as on a single server (README: Use MySQL); Galera
        # replicates these statements to every node.
        first.sql((ROOT / "scripts" / "mysql-setup.sql").read_text())
        second.start()
        second.wait_synced(cluster_size=2)
        self.arbitrator.start(self.peers)
        wait_until_synced(self.nodes, cluster_size=MEMBERS, watched=(self.arbitrator,))
        return self

    def restore(self) -> float:
        """After crashes: seconds until every member is back, Synced, in one Primary Component.
        A node left alone without a majority (non-Primary) is told to form one by itself."""
        started = time.monotonic()
        first, second = self.nodes
        if first.status("wsrep_cluster_status") != "Primary":
            first.sql("SET GLOBAL wsrep_provider_options = 'pc.bootstrap = YES'")
            first.wait_synced(cluster_size=2 if second.running else 1)
        if not self.arbitrator.running:
            self.arbitrator.start(self.peers)
        if not second.running:
            second.start()
        wait_until_synced(self.nodes, cluster_size=MEMBERS, watched=(self.arbitrator,))
        return time.monotonic() - started

    def url(self, node: Node, database: str = "tutorial_test") -> str:
        return f"mysql+pymysql://tutorial:tutorial-pass@127.0.0.1:{node.port}/{database}"

    def stop(self) -> None:
        self.arbitrator.stop()
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    cluster = GaleraCluster().start()
    try:
        for node in cluster.nodes:
            print(f"node{node.number}: {cluster.url(node)}")
        input("Press Enter to stop the cluster.")
    finally:
        cluster.stop()
