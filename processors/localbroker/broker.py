"""Lifecycle of the local single-node KRaft broker: format, start, wait, status, stop.

A broker is identified by its data dir, which holds `server.properties`, the log dirs
(`kafka-logs/`), `broker.pid` and `broker.log`. A pid file whose process is gone (a crashed or
killed run) is stale and is cleared, so it never blocks the next start.
"""

from __future__ import annotations

import enum
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from processors.errors import ChoreoError
from processors.localbroker.jars import LOG4J_CONFIG, KafkaJars, java_major_version

DEFAULT_PORT = 9092
DEFAULT_HEAP = "1g"


class BrokerError(ChoreoError, RuntimeError):
    """The broker could not be started or stopped; the message says why and what to do."""


class BrokerStatus(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"


def default_data_dir() -> Path:
    """`CHOREO_BROKER_DIR`, else `.choreo/broker` under the current directory."""
    return Path(os.environ.get("CHOREO_BROKER_DIR", ".choreo/broker")).resolve()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for tests that need their own broker)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    """Single-node settings under which transactions and consumer groups work: every internal
    topic at replication factor 1 / min ISR 1, and no initial rebalance delay for groups."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={log_dir}",
            "num.partitions=1",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=10",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "delete.topic.enable=true",
            "log.retention.hours=168",
            "",
        ]
    )


@dataclass
class LocalBroker:
    """One local broker, owned by `data_dir`."""

    data_dir: Path
    port: int = DEFAULT_PORT
    heap: str = DEFAULT_HEAP
    jars: KafkaJars = KafkaJars()

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()

    # ------------------------------------------------------------------ paths
    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "kafka-logs"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ state
    def running_pid(self) -> int | None:
        """The pid of our broker on this data dir, or None; a stale pid file is removed."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        if _is_our_broker(pid, self.data_dir):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def recorded_port(self) -> int | None:
        """The port the running broker was started with (it may differ from `self.port`)."""
        try:
            parts = self.pid_file.read_text().split()
            return int(parts[1]) if len(parts) > 1 else None
        except (FileNotFoundError, ValueError):
            return None

    def status(self) -> BrokerStatus:
        pid = self.running_pid()
        if pid is None:
            return BrokerStatus.STOPPED
        port = self.recorded_port() or self.port
        return BrokerStatus.RUNNING if _metadata_ok(f"127.0.0.1:{port}", timeout=5) else BrokerStatus.STOPPED

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 90.0) -> bool:
        """Start the broker and wait until a client gets metadata.

        Returns False when our broker already runs on this data dir (nothing to do)."""
        if self.running_pid() is not None:
            self.port = self.recorded_port() or self.port
            return False
        java_major_version()
        if not port_is_free(self.port):
            raise BrokerError(
                f"port {self.port} on 127.0.0.1 is already in use by another process: stop it, "
                f"or start on another port with `choreo broker start --port N`"
            )
        controller_port = self._controller_port()
        classpath = self.jars.classpath()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(server_properties(self.port, controller_port, self.log_dir))
        if not (self.log_dir / "meta.properties").is_file():
            self._format(classpath)
        proc = self._spawn(classpath)
        self.pid_file.write_text(f"{proc.pid} {self.port}\n")
        self._wait_ready(proc, timeout)
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout`. Returns False when it was not running."""
        pid = self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    # ------------------------------------------------------------------ internals
    def _controller_port(self) -> int:
        candidate = self.port + 1
        return candidate if port_is_free(candidate) else free_port()

    def _java_base(self, classpath: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            classpath,
        ]

    def _format(self, classpath: str) -> None:
        cluster_id = kraft_cluster_id()
        cmd = self._java_base(classpath) + [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.properties_file),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise BrokerError(f"formatting the KRaft log dir {self.log_dir} failed:\n{tail}")

    def _spawn(self, classpath: str) -> subprocess.Popen[bytes]:
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        try:
            return subprocess.Popen(
                self._java_base(classpath) + ["kafka.Kafka", str(self.properties_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.data_dir,
            )
        finally:
            log.close()

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"the broker exited with code {proc.returncode} during start-up; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}"
                )
            if _metadata_ok(self.bootstrap, timeout=2):
                return
            time.sleep(0.5)
        self.stop(timeout=10)
        raise BrokerError(
            f"the broker did not answer metadata requests within {timeout:.0f}s; "
            f"last lines of {self.log_file}:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log written)"


def kraft_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars). One that
    begins with '-' (1 in 64) would be read by the storage tool's argument parser as an option,
    so such ids are drawn again, as Kafka's own ``Uuid.randomUuid`` does."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is as good as dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """True when `pid` is alive and is a kafka.Kafka process started on this data dir, so a
    recycled pid of an unrelated process is never mistaken for our broker."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    args = [part.decode(errors="replace") for part in cmdline]
    return "kafka.Kafka" in args and str(data_dir / "server.properties") in args


def _metadata_ok(bootstrap: str, timeout: float) -> bool:
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.connection.setup.timeout.ms": 2000,
            "log_level": 0,
            # confluent-kafka's stub types AdminClient's config values as str | int | float | bool;
            # the client also takes a logger object here (documented, and what the Producer stub allows).
            "logger": _silent_logger,  # type: ignore[dict-item]
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return bool(metadata.brokers)


class _SilentLogger:
    """librdkafka logs connection refusals while we poll a starting broker; they are expected."""

    def log(self, *args: object, **kwargs: object) -> None:
        return None

    def __getattr__(self, name: str):  # debug/info/warning/error/critical
        return self.log


_silent_logger = _SilentLogger()
