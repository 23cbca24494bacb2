"""The chaos run (``make chaos``): the ledger of :mod:`tests.engine.ledger` through 20,000 postings
while its workers are SIGKILLed again and again, scaled 1 → 3 → 2, one loses its state directory
and the broker restarts; under one guarantee or both.

It starts a broker of its own (it must stop it), loads the postings while the faults happen, waits
until every posting has a terminal audit record, then compares everything with an independent
computation of the ledger (the same postings applied in order, per account) and prints:

* ``lost``: postings with no outcome (neither a PROCESSED nor a DEAD_LETTERED audit record);
* ``duplicated``: effects applied twice (more distinct balance outputs than applied postings; under
  exactly_once also any repeated copy of an output, DLQ or audit record);
* ``wrong_state``: accounts whose balances (every one, in sequence) differ from the computation,
  plus postings decided the other way (applied instead of refused, or refused instead of applied);
* ``unexpected_exits``: workers that ended when nobody stopped them, or stopped with a non-zero code;
* ``visibility_stalls``: times a read_committed reader of the balances saw nothing new for longer
  than ``--stall-s`` while work was pending (outside the broker outage and its recovery window),
  plus a final lag: outputs still invisible 10 s after the last posting was audited.

Exit 0 only when all are 0. ``--json`` prints the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.localbroker import LocalBroker
from processors.localbroker.broker import free_port
from processors.runtime.testing import read_topic
from processors.runtime.topics import ensure_topics, plan_topics
from tests.engine.harness import WorkerPool
from tests.engine.ledger import build_ledger_app, write_ledger_contracts

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("PROCESSED", "DEAD_LETTERED")


@dataclass
class Figures:
    guarantee: str
    events: int
    lost: int = 0
    duplicated: int = 0
    wrong_state: int = 0
    unexpected_exits: int = 0
    visibility_stalls: int = 0
    # context, not failures
    applied: int = 0
    refused: int = 0
    sigkills: int = 0
    repeated_copies: int = 0  # at_least_once: identical copies of an output (allowed)
    longest_gap_s: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong_state or self.unexpected_exits or self.visibility_stalls)


def postings(n: int, accounts: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        account = f"acct-{rng.randrange(accounts):04d}"
        amount = rng.randint(1, 100) if rng.random() < 0.6 else -rng.randint(1, 150)
        out.append((account, amount))
    return out


def expected_ledger(events: list[tuple[str, int]]) -> tuple[dict[str, list[int]], list[bool]]:
    """Balances after each applied posting, per account, and whether each posting is applied."""
    balances: dict[str, list[int]] = defaultdict(list)
    applied = []
    for account, amount in events:
        now = balances[account][-1] if balances[account] else 0
        ok = now + amount >= 0
        applied.append(ok)
        if ok:
            balances[account].append(now + amount)
    return balances, applied


class Run:
    def __init__(self, guarantee: str, events: int, work: Path, stall_s: float, outage_s: float) -> None:
        self.guarantee = guarantee
        self.work = work
        self.stall_s = stall_s
        self.outage_s = outage_s
        self.figures = Figures(guarantee, events)
        self.broker = LocalBroker(data_dir=work / "kafka", port=free_port())
        self.prefix = "chaos" + uuid.uuid4().hex[:8]
        self.contracts, self.schemas = write_ledger_contracts(work / "contracts", self.prefix)
        self.app = build_ledger_app(self.prefix, self.contracts, self.schemas)
        self.events = postings(events, 200, seed=18)
        self.pool = WorkerPool(self.worker_command, self.worker_env, work)
        self.outage_start: float | None = None
        self.outage_end: float | None = None
        self.done = threading.Event()
        self.visible = 0
        self.last_progress = time.monotonic()
        self.gaps: list[float] = []

    # ------------------------------------------------------------------ workers
    def topic(self, event_type: str) -> str:
        return f"{self.prefix}.{event_type}"

    def worker_command(self, name: str) -> list[str]:
        state_dir = str(self.work / f"state-{name}")
        return [sys.executable, "-m", "processors.cli.main", "worker", "--app", "tests.engine.ledger:app",
                "--agents", "ledger", "--guarantee", self.guarantee, "--state-dir", state_dir]  # fmt: skip

    def worker_env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
                "LEDGER_APP_ID": self.prefix,
                "LEDGER_CONTRACTS_DIR": str(self.contracts),
                "LEDGER_SCHEMAS_DIR": str(self.schemas),
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            }
        )
        return env

    def start_worker(self, name: str) -> None:
        self.pool.start(name)

    def kill(self, name: str, wipe: bool = False) -> None:
        # a wiped state directory: the restarted worker restores from the changelog
        wipe_state = (lambda: shutil.rmtree(self.work / f"state-{name}", ignore_errors=True)) if wipe else None
        self.pool.kill(name, before_restart=wipe_state)

    def stop(self, name: str) -> None:
        self.pool.stop(name)

    def restart_broker(self) -> None:
        self.outage_start = time.monotonic()
        self.broker.stop()
        self.wait(self.outage_s)
        self.broker.start()
        self.outage_end = time.monotonic()

    def wait(self, seconds: float) -> None:
        self.pool.wait(seconds)

    # ------------------------------------------------------------------ load and follow
    def load(self) -> None:
        producer = Producer(
            {"bootstrap.servers": self.broker.bootstrap, "enable.idempotence": True, "linger.ms": 20,
             "partitioner": "murmur2_random", "message.timeout.ms": 600_000, "log_level": 0}
        )  # fmt: skip
        topic = self.topic("ledger.posted")
        self.ids: list[str] = []
        for i, (account, amount) in enumerate(self.events):
            e = Envelope.new("ledger.posted", "/chaos/load")
            value = self.app.codec.encode("ledger.posted", {"account": account, "amount": amount})
            while True:
                try:
                    producer.produce(topic, value, account, headers=produce_headers(e.to_headers()))
                    break
                except BufferError:
                    producer.poll(0.1)
            self.ids.append(e.id)
            if i % 250 == 249:
                producer.poll(0)
                time.sleep(1.0)  # ~250 postings a second: the load spans the faults
        while producer.flush(5):
            pass

    def follow(self) -> None:
        """A downstream read_committed reader of the balances: when did it last see progress."""
        consumer = Consumer(
            {"bootstrap.servers": self.broker.bootstrap, "group.id": f"chaos-follow-{uuid.uuid4().hex[:6]}",
             "auto.offset.reset": "earliest", "isolation.level": "read_committed", "enable.auto.commit": False,
             "log_level": 0}
        )  # fmt: skip
        consumer.subscribe([self.topic("ledger.balance")])
        try:
            while not self.done.is_set():
                got = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
                now = time.monotonic()
                if got:
                    gap = now - self.last_progress
                    if not self._in_outage(self.last_progress, now):
                        self.gaps.append(gap)
                    self.visible += len(got)
                    self.last_progress = now
        finally:
            consumer.close()

    def _in_outage(self, start: float, end: float) -> bool:
        """The gap overlaps the broker outage or the time a group needs to settle after it."""
        if self.outage_start is None:
            return False
        up = self.outage_end if self.outage_end is not None else float("inf")
        return start < up + 45 and end > self.outage_start

    # ------------------------------------------------------------------ the run
    def run(self) -> Figures:
        t0 = time.monotonic()
        self.broker.start()
        try:
            ensure_topics(AdminClient({"bootstrap.servers": self.broker.bootstrap}),
                          plan_topics(self.app, self.app.agents.values(), {}))  # fmt: skip
            follower = threading.Thread(target=self.follow, daemon=True)
            loader = threading.Thread(target=self.load, daemon=True)
            self.start_worker("w1")
            follower.start()
            loader.start()
            self.wait(6)
            self.kill("w1")
            self.wait(6)
            self.start_worker("w2")
            self.start_worker("w3")  # 1 -> 3
            self.wait(10)
            self.kill("w2")
            self.wait(8)
            self.kill("w3", wipe=True)  # a wiped state directory: restored from the changelog
            self.wait(8)
            self.restart_broker()
            self.wait(15)
            self.kill("w1")
            self.wait(8)
            self.stop("w3")  # 3 -> 2
            self.wait(6)
            self.kill("w2")
            self.wait(6)
            self.kill("w1")
            self.wait(6)
            self.kill("w2")
            loader.join(600)
            self.await_outcomes(600)
            final_wait = time.monotonic()
            expected_outputs = sum(self.expected_applied)
            while time.monotonic() - final_wait < 60 and self.visible < expected_outputs:
                self.wait(0.5)
            if self.visible < expected_outputs and time.monotonic() - final_wait >= 10:
                self.figures.visibility_stalls += 1
                self.figures.notes.append(f"{expected_outputs - self.visible} outputs invisible after all were audited")
            self.pool.stop_all()
            self.done.set()
            follower.join(10)
            self.measure()
        finally:
            self.pool.kill_leftovers()
            self.broker.stop()
            self.figures.sigkills = self.pool.sigkills
            self.figures.unexpected_exits += self.pool.unexpected_exits
            self.figures.notes += self.pool.notes
        self.figures.seconds = round(time.monotonic() - t0, 1)
        return self.figures

    @property
    def expected_applied(self) -> list[bool]:
        return expected_ledger(self.events)[1]

    def await_outcomes(self, timeout: float) -> None:
        """Until every posting has a terminal audit record (PROCESSED or DEAD_LETTERED)."""
        deadline = time.monotonic() + timeout
        wanted = set(self.ids)
        while time.monotonic() < deadline:
            audit = read_topic(self.broker.bootstrap, self.topic("audit.record"), None, app=self.app, timeout=120)
            terminal = {a.value["input_event_id"] for a in audit if a.value["outcome"] in TERMINAL}
            if wanted <= terminal:
                return
            self.wait(3)

    def measure(self) -> None:
        f = self.figures
        bootstrap, app = self.broker.bootstrap, self.app
        audit = read_topic(bootstrap, self.topic("audit.record"), None, app=app, timeout=120)
        outputs = read_topic(bootstrap, self.topic("ledger.balance"), None, app=app, timeout=120)
        dlq = read_topic(bootstrap, self.topic("ledger.posted") + ".dlq", None, timeout=120)
        expected, applied = expected_ledger(self.events)
        f.applied, f.refused = sum(applied), len(applied) - sum(applied)
        terminal: dict[str, Counter] = defaultdict(Counter)
        for a in audit:
            terminal[a.value["input_event_id"]][a.value["outcome"]] += 1
        for event_id, ok in zip(self.ids, applied, strict=True):
            outcomes = terminal.get(event_id, Counter())
            if not (outcomes["PROCESSED"] or outcomes["DEAD_LETTERED"]):
                f.lost += 1
                continue
            decided_applied = outcomes["PROCESSED"] > 0
            if decided_applied != ok or (outcomes["PROCESSED"] and outcomes["DEAD_LETTERED"]):
                f.wrong_state += 1
            if self.guarantee == "exactly_once" and outcomes["PROCESSED"] + outcomes["DEAD_LETTERED"] > 1:
                f.duplicated += 1
        by_idem: dict[str, tuple[str, int, int]] = {}
        copies = 0
        for r in outputs:
            sig = (r.value["account"], r.value["seq"], r.value["balance"])
            idem = r.headers["ce_idempotencykey"]
            if idem in by_idem:
                copies += 1
                if by_idem[idem] != sig:
                    f.wrong_state += 1
            by_idem[idem] = sig
        per_account: dict[str, dict[int, int]] = defaultdict(dict)
        for account, seq, balance in by_idem.values():
            if seq in per_account[account]:
                f.duplicated += 1  # two different outputs for one sequence number: applied twice
            per_account[account][seq] = balance
        for account in set(expected) | set(per_account):
            seen = [per_account[account][s] for s in sorted(per_account[account])]
            if seen != expected.get(account, []):
                f.wrong_state += 1
        extra = len(by_idem) - f.applied
        if extra > 0:
            f.duplicated += extra
        if self.guarantee == "exactly_once":
            f.duplicated += copies
            dlq_ids = Counter(r.headers.get("ce_id") for r in dlq)
            f.duplicated += sum(n - 1 for n in dlq_ids.values() if n > 1)
        else:
            f.repeated_copies = copies
        stalls = [g for g in self.gaps if g > self.stall_s]
        f.visibility_stalls += len(stalls)
        f.longest_gap_s = round(max(self.gaps, default=0.0), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guarantee", choices=["exactly_once", "at_least_once", "both"], default="both")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--stall-s", type=float, default=30.0, help="longest acceptable gap in downstream visibility")
    parser.add_argument("--outage-s", type=float, default=15.0, help="how long the broker stays down")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    guarantees = ["exactly_once", "at_least_once"] if args.guarantee == "both" else [args.guarantee]
    results = []
    for guarantee in guarantees:
        work = Path(tempfile.mkdtemp(prefix=f"chaos-{guarantee}-"))
        try:
            figures = Run(guarantee, args.events, work, args.stall_s, args.outage_s).run()
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        results.append(figures)
        if not args.json:
            print_figures(figures, work if args.keep else None)
    if args.json:
        print(orjson.dumps([{**asdict(f), "ok": f.ok} for f in results]).decode())
    return 0 if all(f.ok for f in results) else 1


def print_figures(f: Figures, work: Path | None) -> None:
    verdict = "OK" if f.ok else "FAILED"
    print(
        f"chaos {f.guarantee}: {verdict} — {f.events} postings ({f.applied} applied, {f.refused} refused), "
        f"{f.sigkills} SIGKILLs, 1 -> 3 -> 2 workers, a wiped state dir, a broker restart, {f.seconds} s"
    )
    print(
        f"  lost {f.lost}  duplicated {f.duplicated}  wrong state {f.wrong_state}  "
        f"unexpected worker exits {f.unexpected_exits}  visibility stalls {f.visibility_stalls}"
    )
    print(f"  longest downstream gap outside the outage {f.longest_gap_s} s; repeated copies {f.repeated_copies}")
    for note in f.notes:
        print(f"  note: {note}")
    if work is not None:
        print(f"  worker logs in {work}")


if __name__ == "__main__":
    sys.exit(main())
