"""Lifecycle of the local single-node KRaft broker: format, start, wait, status, stop.

A broker is identified by its data dir, which holds `server.properties`, the log dirs
(`kafka-logs/`), `broker.pid` and `broker.log`. A pid file whose process is gone (a crashed or
killed run) is stale and is cleared, so it never blocks the next start.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from processors.errors import ChoreoError
from processors.localbroker.jars import LOG4J_CONFIG, KafkaJars, java_major_version
from processors.localbroker.tls import BrokerTls, ensure_broker_tls

DEFAULT_PORT = 9092
DEFAULT_HEAP = "1g"
SCRAM_MECHANISM = "SCRAM-SHA-512"
BROKER_USER = "broker"
ADMIN_USER = "admin"
DEFAULT_SECURED_USERS = ("app",)


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


def server_properties(port: int, controller_port: int, log_dir: Path, security: str | None = None) -> str:
    """Single-node settings under which transactions and consumer groups work: every internal
    topic at replication factor 1 / min ISR 1, and no initial rebalance delay for groups.
    `security` replaces the plaintext client listener (see :func:`secured_properties`)."""
    listener = (
        security
        if security is not None
        else "\n".join(
            [
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
            ]
        )
    )
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            listener,
            "controller.listener.names=CONTROLLER",
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
            # consumer group protocol (KIP-848) groups: the session and heartbeat the engine sets
            # client-side for classic groups (10 s, 1 s), which Kafka 4 keeps broker-side; its
            # defaults (45 s, 5 s) held a killed worker's partitions for 45 s
            "group.consumer.min.session.timeout.ms=6000",
            "group.consumer.session.timeout.ms=10000",
            "group.consumer.min.heartbeat.interval.ms=1000",
            "group.consumer.heartbeat.interval.ms=1000",
            "auto.create.topics.enable=true",
            "delete.topic.enable=true",
            "log.retention.hours=168",
            "",
        ]
    )


def secured_properties(port: int, controller_port: int, tls: BrokerTls, broker_password: str) -> str:
    """The client listener as a production cluster has it: SASL_SSL with SCRAM-SHA-512 users and
    ACLs enforced by the KRaft StandardAuthorizer, nothing allowed without an ACL.

    The controller listener stays PLAINTEXT on 127.0.0.1 (the broker and controller are one
    process; SCRAM cannot authenticate the controller before the metadata holding the credentials
    is read), and its principal, ``User:ANONYMOUS``, is a super user so the broker can register
    with its own controller. The client listener never yields ANONYMOUS: SASL is required there."""
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{BROKER_USER}" password="{broker_password}";'
    )
    return "\n".join(
        [
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=SASL_SSL",
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config={jaas}",
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={tls.keystore}",
            f"ssl.keystore.password={tls.password}",
            f"ssl.key.password={tls.password}",
            "ssl.truststore.type=PKCS12",
            f"ssl.truststore.location={tls.truststore}",
            f"ssl.truststore.password={tls.password}",
            "ssl.client.auth=none",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{BROKER_USER};User:{ADMIN_USER};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=false",
        ]
    )


@dataclass
class LocalBroker:
    """One local broker, owned by `data_dir`.

    ``secured=True`` starts it as a production cluster is run: a SASL_SSL listener (SCRAM-SHA-512),
    a certificate signed by a CA made for this data dir, ACLs enforced, nothing allowed without
    one. The SCRAM users are the super users ``broker`` and ``admin`` plus `users` (no rights until
    an ACL grants them some); their passwords are drawn at first start and kept in the data dir
    (``users.json``, mode 600). :meth:`client_config` gives a user's client settings."""

    data_dir: Path
    port: int = DEFAULT_PORT
    heap: str = DEFAULT_HEAP
    jars: KafkaJars = KafkaJars()
    secured: bool = False
    users: tuple[str, ...] = DEFAULT_SECURED_USERS
    _passwords: dict[str, str] = field(default_factory=dict, repr=False)

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

    @property
    def users_file(self) -> Path:
        return self.data_dir / "users.json"

    @property
    def tls(self) -> BrokerTls:
        """The CA and broker certificate of a secured broker (made on first use)."""
        return ensure_broker_tls(self.data_dir / "tls")

    @property
    def ca_location(self) -> Path:
        return self.tls.ca_pem

    def passwords(self) -> dict[str, str]:
        """SCRAM user -> password of a secured broker (drawn once per data dir, then read back)."""
        if not self._passwords:
            with contextlib.suppress(FileNotFoundError):
                self._passwords.update(json.loads(self.users_file.read_text()))
            wanted = (BROKER_USER, ADMIN_USER, *self.users)
            if any(user not in self._passwords for user in wanted):
                for user in wanted:
                    self._passwords.setdefault(user, secrets.token_hex(12))
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self.users_file.write_text(json.dumps(self._passwords, indent=1) + "\n")
                self.users_file.chmod(0o600)
        return dict(self._passwords)

    def client_config(self, user: str = ADMIN_USER, password: str | None = None) -> dict[str, Any]:
        """confluent-kafka settings for `user` (with their password unless one is given): the
        bootstrap address, and on a secured broker SASL_SSL, SCRAM and the CA to trust."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        if self.secured:
            config.update(
                {
                    "security.protocol": "SASL_SSL",
                    "ssl.ca.location": str(self.ca_location),
                    "sasl.mechanism": SCRAM_MECHANISM,
                    "sasl.username": user,
                    "sasl.password": password if password is not None else self.passwords()[user],
                }
            )
        return config

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
        if not self.secured and self._properties_say_secured():
            self.secured = True  # `choreo broker status` on a data dir started with --secured
        config = {**self.client_config(), "bootstrap.servers": f"127.0.0.1:{port}"}
        return BrokerStatus.RUNNING if _metadata_ok(config, timeout=5) else BrokerStatus.STOPPED

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
        formatted = (self.log_dir / "meta.properties").is_file()
        security = None
        if self.secured:
            if formatted and not self.users_file.is_file():
                raise BrokerError(
                    f"{self.data_dir} holds a broker formatted without SCRAM users: start the secured "
                    f"broker on another data dir (`choreo broker start --secured --data-dir DIR`)"
                )
            security = secured_properties(self.port, controller_port, self.tls, self.passwords()[BROKER_USER])
        self.properties_file.write_text(server_properties(self.port, controller_port, self.log_dir, security))
        self.properties_file.chmod(0o600)  # holds the broker's SCRAM and store passwords when secured
        if not formatted:
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
    def _properties_say_secured(self) -> bool:
        try:
            return "SASL_SSL://" in self.properties_file.read_text()
        except FileNotFoundError:
            return False

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
        if self.secured:  # SCRAM credentials are metadata: bootstrap them into the log (KIP-900)
            for user, password in self.passwords().items():
                cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
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
            if _metadata_ok(self.client_config(), timeout=2):
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


def _metadata_ok(client: Mapping[str, Any], timeout: float) -> bool:
    admin = AdminClient(
        {
            **client,
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
