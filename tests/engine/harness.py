"""Helpers of the engine integration tests: per-test contracts and topics, bulk loading, worker
subprocesses and reading everything back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.localbroker import LocalBroker
from processors.localbroker.broker import free_port
from processors.runtime import App
from processors.runtime.testing import ReadRecord, read_topic
from tests.engine.app import build_app, write_contracts

REPO = Path(__file__).resolve().parents[2]


@dataclass
class EngineEnv:
    bootstrap: str
    prefix: str
    contracts: Path
    schemas: Path
    tmp: Path

    def app(self, **kwargs) -> App:
        return build_app(self.prefix, self.contracts, self.schemas, **kwargs)

    def topic(self, event_type: str) -> str:
        return f"{self.prefix}.{event_type}"

    @property
    def audit_topic(self) -> str:
        return f"{self.prefix}.audit.record"

    def create_topics(self, app: App) -> None:
        """Every topic the app's agents need, as the worker would create them (so producers that
        start before the worker do not auto-create inputs with the broker's default partitions)."""
        from processors.runtime.topics import ensure_topics, plan_topics

        ensure_topics(AdminClient({"bootstrap.servers": self.bootstrap}), plan_topics(app, app.agents.values(), {}))

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "ENGINE_APP_ID": self.prefix,
                "ENGINE_CONTRACTS_DIR": str(self.contracts),
                "ENGINE_SCHEMAS_DIR": str(self.schemas),
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            }
        )
        env.update(extra)
        return env

    def start_worker(
        self,
        worker_id: str | None,
        guarantee: str,
        state_dir: Path,
        agents: str = "counter",
        log: Path | None = None,
        args: tuple[str, ...] = (),
        **extra: str,
    ) -> subprocess.Popen:
        """A ``choreo worker`` process; ``worker_id`` None leaves the id to the worker's default."""
        log = log or (self.tmp / f"worker-{worker_id or 'default'}-{uuid.uuid4().hex[:4]}.log")
        identity = ("--worker-id", worker_id) if worker_id is not None else ()
        # the child gets its own copy of the file descriptor: ours can close at once
        with open(log, "wb") as out:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "processors.cli.main",
                    "worker",
                    "--app",
                    "tests.engine.app:app",
                    "--agents",
                    agents,
                    *identity,
                    "--guarantee",
                    guarantee,
                    "--state-dir",
                    str(state_dir),
                    *args,
                ],
                cwd=REPO,
                env=self.worker_env(**extra),
                stdout=out,
                stderr=subprocess.STDOUT,
            )


def make_env(bootstrap: str, tmp: Path, name: str) -> EngineEnv:
    prefix = "e" + uuid.uuid4().hex[:10]
    contracts, schemas = write_contracts(tmp / "contracts-data", prefix)
    return EngineEnv(bootstrap, prefix, contracts, schemas, tmp)


def load_counter_events(env: EngineEnv, app: App, keys: int, per_key: int, by: int = 1) -> list[Envelope]:
    """Produce keys*per_key counter.incremented events, interleaved across keys; returns envelopes."""
    producer = Producer(
        {
            "bootstrap.servers": env.bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 20,
        }
    )
    topic = env.topic("counter.incremented")
    out = []
    for _ in range(per_key):
        for k in range(keys):
            name = f"key-{k}"
            e = Envelope.new("counter.incremented", "/test/load")
            producer.produce(
                topic,
                app.codec.encode("counter.incremented", {"name": name, "by": by}),
                name,
                headers=produce_headers(e.to_headers()),
            )
            out.append(e)
            if len(out) % 10000 == 0:
                producer.flush()
    producer.flush(60)
    return out


def count_committed(bootstrap: str, topic: str) -> int:
    """Records visible to a read_committed reader right now."""
    return len(read_topic(bootstrap, topic, None, timeout=30))


def wait_for_count(
    bootstrap: str, topic: str, at_least: int, timeout: float, proc: subprocess.Popen | None = None
) -> int:
    """Follow a topic (read_committed) until at least ``at_least`` records are visible."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"wait-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < at_least and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    seen += 1
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"worker exited early with {proc.returncode}")
    finally:
        consumer.close()
    return seen


def stop_worker(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout)


def totals_by_key(records: list[ReadRecord]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for r in records:
        out.setdefault(r.value["name"], []).append((r.value["seq"], r.value["total"]))
    return out


def assert_exact_outputs(records: list[ReadRecord], keys: int, per_key: int) -> None:
    """Exactly one counter.total per (key, seq) for seq 1..per_key, with total == seq."""
    pairs = Counter((r.value["name"], r.value["seq"]) for r in records)
    dupes = {p: n for p, n in pairs.items() if n > 1}
    assert not dupes, f"duplicate outputs: {list(dupes.items())[:5]} (total {len(dupes)})"
    expected = {(f"key-{k}", s) for k in range(keys) for s in range(1, per_key + 1)}
    missing = expected - set(pairs)
    assert not missing, f"missing outputs: {sorted(missing)[:5]} ({len(missing)} missing)"
    assert set(pairs) == expected
    assert all(r.value["total"] == r.value["seq"] for r in records), "a total disagrees with its sequence"


def assert_no_duplicate_effects(records: list[ReadRecord], keys: int, per_key: int) -> int:
    """At-least-once: outputs may repeat, but only as identical copies (same idempotency key, same
    value): every (key, seq) is present, no increment was applied twice. Returns repeated copies."""
    by_idem: dict[str, tuple] = {}
    for r in records:
        sig = (r.value["name"], r.value["seq"], r.value["total"])
        idem = r.headers["ce_idempotencykey"]
        assert by_idem.setdefault(idem, sig) == sig, f"idempotency key {idem} carries two different values"
    distinct = set(by_idem.values())
    expected = {(f"key-{k}", s, s) for k in range(keys) for s in range(1, per_key + 1)}
    assert distinct == expected, (
        f"missing {sorted(expected - distinct)[:5]}, unexpected {sorted(distinct - expected)[:5]}"
    )
    return len(records) - len(distinct)


def stoppable_broker(tmp_path_factory, purpose: str) -> Iterator[LocalBroker]:
    """A broker of one test module alone, for tests that stop and start it (`yield from` it in a
    module-scoped fixture). An existing cluster (KAFKA_BOOTSTRAP_SERVERS) cannot be stopped: skip."""
    import pytest

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip(f"{purpose} tests need a broker they can stop (unset KAFKA_BOOTSTRAP_SERVERS)")
    broker = LocalBroker(data_dir=tmp_path_factory.mktemp(f"{purpose}-kafka"), port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class WorkerPool:
    """The worker processes of a fault run, by name (``make chaos``, the commerce fault run): each
    started from ``command(name)`` with ``env(name)``, its output appended to ``<log_dir>/<name>.log``;
    SIGKILLed and restarted, stopped, and watched for exits nobody asked for (each one counted in
    ``unexpected_exits`` with a note, and the worker restarted so the run goes on)."""

    command: Callable[[str], list[str]]
    env: Callable[[str], dict[str, str]]
    log_dir: Path
    cwd: Path = REPO
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    sigkills: int = 0
    unexpected_exits: int = 0
    notes: list[str] = field(default_factory=list)
    _ending: set[str] = field(default_factory=set)  # workers being stopped or killed right now

    def start(self, name: str) -> None:
        # the child gets its own copy of the file descriptor: ours can close at once
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                self.command(name), cwd=self.cwd, env=self.env(name), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self._ending.discard(name)

    def kill(self, name: str, before_restart: Callable[[], None] | None = None) -> None:
        """SIGKILL ``name`` (no chance to commit or close anything), then start it again;
        ``before_restart`` runs in between (e.g. wipe its state directory)."""
        self._ending.add(name)
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        self.sigkills += 1
        if before_restart is not None:
            before_restart()
        self.start(name)

    def stop(self, name: str, timeout: float = 120) -> int:
        """SIGTERM and wait: a worker that does not exit 0 counts as an unexpected exit."""
        self._ending.add(name)
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            self.notes.append(f"{name} did not stop within {timeout:g}s of SIGTERM (killed)")
        if code != 0:
            self.unexpected_exits += 1
            self.notes.append(f"{name} stopped with {code}")
        return code

    def stop_all(self, timeout: float = 120) -> None:
        for name in list(self.procs):
            self.stop(name, timeout)

    def check(self) -> None:
        """Count and restart workers that ended when nobody stopped them."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None and name not in self._ending:
                self.unexpected_exits += 1
                self.notes.append(f"{name} exited by itself with {proc.returncode}")
                self.start(name)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` in short steps, checking the workers at each."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check()
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def kill_leftovers(self) -> None:
        """The run's ``finally``: whatever still runs is killed (a failed run leaves no process)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
