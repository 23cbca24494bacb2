"""Time to resume after a SIGKILL, with and without warm standbys (``standby_replicas``).

Two ``choreo worker`` processes run the engine test app's counter agent (2 partitions, one each).
A load of counter events fills each partition's changelog (about two changelog records an event:
the key's state and the event's seen key, plus a batch marker per batch) while both run. Then
the worker that does not hold partition 0 is killed with SIGKILL and probe events are sent to its
partition every 20 ms; the time to resume is from the kill to the first probe output the survivor
commits (read_committed, as a consumer sees it). The survivor's own log says how its takeover
began: a standby store handed over, and how many changelog records the restore then read.

    python benchmarks/failover.py                 # 30,000 events a partition, both modes
    python benchmarks/failover.py --quick         # 5,000 events a partition
    python benchmarks/failover.py --bootstrap 127.0.0.1:19250 --standby 1

Without ``--bootstrap`` (or ``KAFKA_BOOTSTRAP_SERVERS``) a local broker is started in a temporary
directory. The kill is found by the group only at the session timeout (``session.timeout.ms``,
10 s by the engine's default), which both modes pay; what a standby changes is what follows it.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from processors.contracts import Envelope  # noqa: E402
from processors.kafka_types import produce_headers  # noqa: E402
from processors.partitioner import partition_for  # noqa: E402
from processors.runtime.topics import ensure_topics, plan_topics  # noqa: E402
from tests.engine.app import build_app, write_contracts  # noqa: E402

PARTITIONS = 2
KEYS = 500  # distinct counter keys of the load


@dataclass
class Failover:
    standby_replicas: int
    events_per_partition: int
    changelog_records: int  # of the killed worker's partition, at the kill
    resume_s: float  # kill -> first committed output of the taken-over partition
    assigned_to_output_s: float  # the survivor's assignment of it -> that output (what follows the detection)
    handed_over: bool  # the survivor started from a standby copy
    restore_records: int  # changelog records the survivor's restore read for the partition
    restore_s: float  # how long that restore took (0: none was needed)


class _Run:
    """One failover run's topics, workers and logs."""

    def __init__(self, bootstrap: str, tmp: Path, standby: int, guarantee: str, ports: tuple[int, int]) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.standby = standby
        self.guarantee = guarantee
        self.prefix = "fo" + uuid.uuid4().hex[:8]
        self.contracts, self.schemas = write_contracts(tmp / "contracts", self.prefix, partitions=PARTITIONS)
        self.app = build_app(self.prefix, self.contracts, self.schemas, with_pingpong=False)
        self.ports = {"a": ports[0], "b": ports[1]}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = {name: tmp / f"worker-{name}.log" for name in self.ports}
        from confluent_kafka.admin import AdminClient

        ensure_topics(
            AdminClient({"bootstrap.servers": bootstrap}), plan_topics(self.app, self.app.agents.values(), {})
        )

    def topic(self, event_type: str) -> str:
        return f"{self.prefix}.{event_type}"

    def start(self, name: str) -> None:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "ENGINE_APP_ID": self.prefix,
            "ENGINE_CONTRACTS_DIR": str(self.contracts),
            "ENGINE_SCHEMAS_DIR": str(self.schemas),
            "CHOREO_STANDBY_REPLICAS": str(self.standby),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        with open(self.logs[name], "wb") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "processors.cli.main", "worker", "--app", "tests.engine.app:app",
                 "--agents", "counter", "--worker-id", f"fo-{name}", "--guarantee", self.guarantee,
                 "--state-dir", str(self.tmp / f"state-{name}"), "--metrics-port", str(self.ports[name])],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def metric(self, name: str, metric: str, **labels: str) -> float | None:
        """A sample from a worker's /metrics (None: not there, or the worker not answering)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(metric + "{"):
                series, _, value = line.rpartition(" ")
                got = ",".join(sorted(series[len(metric) + 1 : -1].split(",")))
                if got == want:
                    return float(value)
        return None

    def log_lines(self, name: str) -> list[dict]:
        out = []
        for line in self.logs[name].read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def owned(self, name: str) -> set[int]:
        assigned = [r for r in self.log_lines(name) if r.get("msg") == "partitions assigned"]
        revoked = [r for r in self.log_lines(name) if r.get("msg") == "partitions revoked"]
        owned: set[int] = set()
        for r in sorted(assigned + revoked, key=lambda r: r["ts"]):
            if r["msg"] == "partitions assigned":
                owned |= set(r["partitions"])
            else:
                owned -= set(r["partitions"])
        return owned

    def wait(self, what: str, condition, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for name, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                    raise SystemExit(f"worker {name} exited with {proc.returncode}; see {self.logs[name]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _assigned(run: _Run, name: str) -> float:
    return run.metric(name, "choreo_assigned_partitions", agent="counter") or 0.0


def _produce(producer: Producer, run: _Run, key: str) -> None:
    value = run.app.codec.encode("counter.incremented", {"name": key, "by": 1})
    headers = produce_headers(Envelope.new("counter.incremented", "/bench/failover").to_headers())
    while True:
        try:
            producer.produce(run.topic("counter.incremented"), value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.1)


def _load(run: _Run, events_per_partition: int) -> None:
    producer = Producer({"bootstrap.servers": run.bootstrap, "partitioner": "murmur2_random", "linger.ms": 20})
    for i in range(events_per_partition * PARTITIONS):
        _produce(producer, run, f"key-{i % KEYS}")
    producer.flush(120)


def _inputs_done(run: _Run) -> bool:
    """The agent's group has committed every input event produced so far."""
    consumer = Consumer({"bootstrap.servers": run.bootstrap, "group.id": run.app.group_id("counter")})
    try:
        tps = [TopicPartition(run.topic("counter.incremented"), p) for p in range(PARTITIONS)]
        committed = consumer.committed(tps, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return all(c.offset >= end for c, end in zip(committed, ends, strict=True))
    finally:
        consumer.close()


def _changelog_end(run: _Run, partition: int) -> int:
    consumer = Consumer({"bootstrap.servers": run.bootstrap, "group.id": "bench-failover"})
    try:
        tp = TopicPartition(run.app.changelog_topic("counter"), partition)
        return consumer.get_watermark_offsets(tp, timeout=10)[1]
    finally:
        consumer.close()


def _probe_keys(partition: int, n: int) -> list[str]:
    keys: list[str] = []
    i = 0
    while len(keys) < n:
        key = f"probe-{i}"
        if partition_for(key.encode(), PARTITIONS) == partition:
            keys.append(key)
        i += 1
    return keys


def _first_output(
    run: _Run, partition: int, ready: threading.Event, stop: threading.Event, seen: dict[str, float]
) -> None:
    """Follow the output partition from its end; note when the first probe output arrives."""
    consumer = Consumer(
        {"bootstrap.servers": run.bootstrap, "group.id": "bench-failover", "isolation.level": "read_committed"}
    )
    tp = TopicPartition(run.topic("counter.total"), partition)
    tp.offset = consumer.get_watermark_offsets(tp, timeout=10)[1]
    consumer.assign([tp])
    ready.set()  # from the end as it is now: whatever comes is new
    try:
        while not stop.is_set():
            msg = consumer.poll(0.05)
            if msg is not None and msg.error() is None and (msg.key() or b"").startswith(b"probe-"):
                seen["at"] = time.time()
                return
    finally:
        consumer.close()


def _epoch(ts: str) -> float:
    """A log line's ``ts`` (UTC, milliseconds) as seconds since the epoch."""
    whole, _, ms = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(ms or 0) / 1000


def failover(
    bootstrap: str, standby: int, events_per_partition: int, guarantee: str, ports: tuple[int, int]
) -> Failover:
    """One run: two workers, a load, one SIGKILL; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="choreo-failover-") as tmp:
        run = _Run(bootstrap, Path(tmp), standby, guarantee, ports)
        try:
            run.start("a")
            run.wait("worker a to own every partition", lambda: _assigned(run, "a") == PARTITIONS)
            run.start("b")
            run.wait("one partition each", lambda: _assigned(run, "a") == 1 and _assigned(run, "b") == 1)
            _load(run, events_per_partition)
            run.wait("the load to be processed", lambda: _inputs_done(run), 600)
            victim = "a" if 0 not in run.owned("a") else "b"
            survivor = "b" if victim == "a" else "a"
            (partition,) = run.owned(victim)
            if standby:
                labels = {"agent": "counter", "partition": str(partition)}
                run.wait(
                    "the survivor's standby copy to catch up",
                    lambda: run.metric(survivor, "choreo_standby_lag_records", **labels) == 0,
                    120,
                )
            end = _changelog_end(run, partition)
            ready, stop = threading.Event(), threading.Event()
            seen: dict[str, float] = {}
            follower = threading.Thread(target=_first_output, args=(run, partition, ready, stop, seen), daemon=True)
            follower.start()
            if not ready.wait(30):
                raise SystemExit("the output follower did not find the end of its partition")
            producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 0})
            killed_log = len(run.log_lines(survivor))
            run.procs[victim].send_signal(signal.SIGKILL)
            killed = time.time()
            for key in _probe_keys(partition, 3000):
                if "at" in seen or time.time() - killed > 120:
                    break
                _produce(producer, run, key)
                producer.poll(0)
                time.sleep(0.02)
            producer.flush(30)
            follower.join(5)
            stop.set()
            if "at" not in seen:
                raise SystemExit("no output of the taken-over partition within 120 s")
            after = run.log_lines(survivor)[killed_log:]
            restores = [r for r in after if r.get("msg") == "store restored" and r.get("partition") == partition]
            assigned = [r for r in after if r.get("msg") == "partitions assigned" and partition in r["partitions"]]
            assigned_at = _epoch(assigned[0]["ts"]) if assigned else killed
            handed = any(r.get("msg") == "standby store handed over" and r.get("partition") == partition for r in after)
            return Failover(
                standby_replicas=standby,
                events_per_partition=events_per_partition,
                changelog_records=end,
                resume_s=round(seen["at"] - killed, 2),
                assigned_to_output_s=round(seen["at"] - assigned_at, 2),
                handed_over=handed,
                restore_records=sum(int(r.get("records", 0)) for r in restores),
                restore_s=round(sum(float(r.get("seconds", 0)) for r in restores), 3),
            )
        finally:
            run.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 events a partition")
    parser.add_argument("--events", type=int, default=None, help="events a partition (default 30,000)")
    parser.add_argument("--standby", type=int, choices=(0, 1), action="append", help="only this mode (repeatable)")
    parser.add_argument("--guarantee", default="exactly_once", choices=("exactly_once", "at_least_once"))
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--metrics-port", type=int, default=19270, help="worker a's metrics port; b takes the next")
    parser.add_argument("--runs", type=int, default=1, help="runs of each mode (each its own topics and workers)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON lines")
    args = parser.parse_args()
    events = args.events or (5_000 if args.quick else 30_000)
    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        from processors.localbroker import LocalBroker
        from processors.localbroker.broker import free_port

        broker = LocalBroker(data_dir=Path(tempfile.mkdtemp(prefix="choreo-failover-kafka-")), port=free_port())
        broker.start()
        bootstrap = broker.bootstrap
    try:
        results = [
            failover(bootstrap, s, events, args.guarantee, (args.metrics_port, args.metrics_port + 1))
            for _ in range(args.runs)
            for s in args.standby or (0, 1)
        ]
    finally:
        if broker is not None:
            broker.stop()
    if args.json:
        for r in results:
            print(json.dumps(asdict(r)))
        return
    print(f"failover after SIGKILL: 2 workers, {PARTITIONS} partitions, {args.guarantee}, {events:,} events/partition")
    print(
        "| standby_replicas | changelog records | standby handed over | restore read | restore s "
        "| assigned → output s | kill → output s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.standby_replicas} | {r.changelog_records:,} | {'yes' if r.handed_over else 'no'} "
            f"| {r.restore_records:,} | {r.restore_s} | {r.assigned_to_output_s} | {r.resume_s} |"
        )


if __name__ == "__main__":
    main()
