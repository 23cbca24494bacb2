"""A deterministic run of the real :class:`Processor` over every kind of input, serialised.

The per-event path is optimised by hand (direct slot setting, cached headers, a compiled audit
writer, per-batch metrics); this scenario pins what it produces, byte for byte: every record (topic,
key, value bytes, headers in order), every store write (in order), the audit dict, the emitted
events and the dead-letter reasons, for processed, duplicate, ignored and dead-lettered inputs,
timers, PII redaction, tenants, trace context, JSON audit records and the bench workloads.
``tests/data/golden/processor_records.json`` was recorded from the implementation before the
optimisation; ``test_engine_golden`` replays the scenario and compares. Re-recorded once since, on
an intended change: an input dead-lettered by its handler (refused, failed, retries exhausted)
now writes its seen key with the decision, so a replay does not judge it again (4 steps gained
that one write; every record, audit and other write stayed byte-identical). Re-recorded again
when inputs became checked for where they belong (``misrouted``): the scenario's records now sit
on the partition Kafka's default partitioner gives their key, as a producer of ours puts them
(partition and offset numbers in audit records and DLQ headers changed with that, and the fixed
clock sequence behind ``ctx.now_dt`` shifted by the one step that no longer runs its handler), the
"odd key bytes" step is dead-lettered ``misrouted``, and the hop-count message names its bound.
Re-recorded when follow-ups began to carry the flow's root time (``ce_roottime``, the envelope's
``root_time_ms``): each emitted record gained that one last header and each emitted envelope that
field; with both removed the recording is identical to the one before. Re-recorded when timers
began to keep the flow's root time (``root_time_ms`` in a scheduled timer's record, so a flow a
timer ends is timed from its start): the timer writes gained that field, nothing else changed.

Everything that varies between runs is fixed: input envelopes carry fixed ids and times, the
processor's clock is set per step, the wall clock behind ``ctx.now_dt`` and timer envelopes is
replaced by a fixed sequence, retries back off by a deterministic amount.

Regenerate only on an intended change of output::

    .venv/bin/python -m tests.unit.engine_golden --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from processors.contracts import Envelope
from processors.partitioner import partition_for
from processors.runtime import App
from processors.runtime import _processor as processor_module
from processors.runtime import context as context_module
from processors.runtime._processor import HandleResult, Processor
from processors.runtime.state import BatchView, MemoryStore

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden" / "processor_records.json"
BASE_MS = 1_763_780_400_123  # 2025-11-22T03:00:00.123Z
UTC = dt.UTC


class FrozenWallClock:
    """Stands in for ``datetime.datetime.now`` in the runtime modules: a fixed sequence of UTC
    datetimes, some on a whole millisecond (formatted with milliseconds), most not."""

    def __init__(self) -> None:
        self.step = 0

    def now(self, tz: dt.tzinfo | None = None) -> dt.datetime:
        self.step += 1
        micro = (self.step * 7919) % 1_000_000
        if self.step % 5 == 0:
            micro -= micro % 1000
        base = dt.datetime(2025, 11, 22, 3, 0, 0, tzinfo=UTC) + dt.timedelta(seconds=self.step * 0.37)
        value = base.replace(microsecond=micro)
        return value if tz is None or tz is UTC else value.astimezone(tz)


@contextmanager
def frozen_wall_clock() -> Iterator[FrozenWallClock]:
    clock = FrozenWallClock()
    shim = SimpleNamespace(
        datetime=SimpleNamespace(now=clock.now), timezone=dt.timezone, UTC=dt.UTC, timedelta=dt.timedelta
    )
    saved = (context_module.dt, processor_module.dt)
    context_module.dt = shim  # type: ignore[assignment]
    processor_module.dt = shim  # type: ignore[assignment]
    try:
        yield clock
    finally:
        context_module.dt, processor_module.dt = saved


# ---------------------------------------------------------------------------- apps
def engine_app() -> App:
    from tests.engine.app import build_app

    return build_app()


def bench_counter_app() -> App:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_engine import build_app

    from tests.engine.app import CONTRACTS, SCHEMAS

    return build_app("golden-bench", CONTRACTS, SCHEMAS)


def order_app() -> App:
    """The load-benchmark workload (benchmarks/workload.py) with a fixed ``confirmed_at``."""
    app = App("golden-orders", contracts_dir=REPO / "contracts", schemas_dir=REPO / "schemas")

    @app.agent("order-totals", consumes=["order.created"], produces=["order.confirmed"], version="1", routing="key")
    def order_totals(event: Any, ctx: Any) -> None:
        order = event.value
        state = ctx.state
        state["orders"] = state.get("orders", 0) + 1
        state["total_minor"] = state.get("total_minor", 0) + order["total_minor"]
        state["customer_email"] = order["customer_email"]  # PII: redacted in the audit record
        state["address"] = order["shipping_address"]  # PII, nested: redacted whole
        state["recent"] = (
            [{"order": order["order_id"], "card_token": order["card_token"], "n": [1, {"x": None}]}]
            + state.get("recent", [])
        )[:2]
        ctx.emit(
            "order.confirmed",
            event.key,
            {
                "order_id": order["order_id"],
                "total_minor": order["total_minor"],
                "currency": order["currency"],
                "confirmed_at": 1_763_780_400_000 + state["orders"],
            },
        )

    return app


def json_audit_app() -> App:
    app = engine_app()
    app.audit_event_type = "no.such.type"
    return app


# ---------------------------------------------------------------------------- serialising
def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    return value


def serialise(result: HandleResult | None, writes: dict[bytes, bytes | None]) -> dict[str, Any]:
    if result is None:
        return {"result": None, "writes": [[_hex(k), _hex(v)] for k, v in writes.items()]}
    return {
        "outcome": result.outcome,
        "event_type": result.event_type,
        "reason": result.reason,
        "key": _hex(result.key),
        "failure": None
        if result.failure is None
        else [
            result.failure.reason,
            result.failure.error_class,
            result.failure.message,
            result.failure.attempts,
            result.failure.first_failure_ms,
            result.failure.last_failure_ms,
        ],
        "records": [
            {
                "kind": r.kind,
                "topic": r.topic,
                "key": _hex(r.key),
                "value": _hex(r.value),
                "headers": [[name, _hex(v) if not isinstance(v, str) else {"str": v}] for name, v in r.headers],
                "event_type": r.event_type,
                "partition": r.partition,
            }
            for r in result.records
        ],
        "emitted": [
            {
                "event_type": e.event_type,
                "topic": e.topic,
                "key": e.key,
                "value": _plain(e.value),
                "data": e.data.hex(),
                "id": e.id,
                "idempotency_key": e.idempotency_key,
                "envelope": _plain({f: getattr(e.envelope, f) for f in Envelope.__slots__}),
            }
            for e in result.emitted
        ],
        "audit": _plain(result.audit),
        "writes": [[_hex(k), _hex(v)] for k, v in writes.items()],
    }


# ---------------------------------------------------------------------------- scenario
class Harness:
    """One processor over one in-memory store; the clock moves only when told (and on backoff)."""

    def __init__(self, app: App, agent: str, worker_id: str = "golden-worker") -> None:
        self.app = app
        self.now_ms = BASE_MS
        self.mono = 0.0
        self.store = MemoryStore()
        self.offsets: dict[tuple[str, int], int] = {}
        spec = app.select([agent])[0]
        self.processor = Processor(
            app,
            spec,
            worker_id,
            metrics=None,
            clock_ms=lambda: self.now_ms,
            sleep=self._sleep,
            monotonic=lambda: self.mono,
            rng=lambda a, b: (a + b) / 2,
            breaker_clock=lambda: self.mono,
        )
        self.out: list[dict[str, Any]] = []

    def _sleep(self, seconds: float) -> None:
        self.mono += seconds
        self.now_ms += int(seconds * 1000)

    def raw(
        self,
        label: str,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, Any]] | None,
        partition: int | None = None,
        advance_ms: int = 137,
    ) -> None:
        """One record; on ``partition``, else where Kafka's default partitioner puts its key."""
        if partition is None:
            partition = self.home(topic, key)
        self.now_ms += advance_ms
        off = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = off + 1
        view = BatchView(self.store)
        result = self.processor.handle(view, topic, partition, off, key, value, headers, self.now_ms - 5)
        self.store.apply(view.writes)
        self.out.append({"label": label, **serialise(result, view.writes)})

    def send(
        self,
        label: str,
        event_type: str,
        value: dict[str, Any],
        key: str | None,
        env: Envelope,
        extra_headers: list[tuple[str, Any]] | None = None,
    ) -> None:
        """An event as a producer of ours sends it: on the partition of its key (of its key field
        when it has no key)."""
        contract = self.app.registry.get(event_type)
        data = self.app.codec.encode(event_type, value)
        routing = key if key is not None else str(value[contract.key_field])
        self.raw(
            label,
            contract.topic,
            None if key is None else key.encode(),
            data,
            env.to_headers() + (extra_headers or []),
            self.home(contract.topic, routing.encode()),
        )

    def home(self, topic: str, key: bytes | None) -> int:
        count = self.processor.partitions.get(topic)
        return 0 if key is None or not count else partition_for(key, count)

    def fire_due(self, label: str, advance_ms: int) -> None:
        self.now_ms += advance_ms
        for _, tk in self.store.due_timers(self.now_ms, 1000):
            view = BatchView(self.store)
            result = self.processor.fire_timer(view, tk, 0)
            self.store.apply(view.writes)
            self.out.append({"label": f"{label} {tk.hex()}", **serialise(result, view.writes)})


def envelope(i: int, event_type: str, **kw: Any) -> Envelope:
    """A fixed input envelope: id, time and key from ``i`` unless given."""
    micro = 0 if i % 3 == 0 else (i * 104_729) % 1_000_000
    fields: dict[str, Any] = {
        "id": f"00000000-0000-4000-8000-{i:012d}",
        "type": event_type,
        "source": "/golden/load",
        "time": dt.datetime(2025, 11, 22, 2, 59, i % 60, micro, tzinfo=UTC),
        "idempotency_key": f"idem-{i}",
        "correlation_id": f"corr-{i % 7}",
    }
    fields.update(kw)
    return Envelope(**fields)


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def counter_scenario(out: list[dict[str, Any]]) -> None:
    h = Harness(engine_app(), "counter")
    rnd = random.Random(7)
    i = 0
    for n in range(40):
        i += 1
        name = f"k{rnd.randrange(6)}"
        value: dict[str, Any] = {"name": name, "by": rnd.randrange(1, 50)}
        kw: dict[str, Any] = {}
        if n % 4 == 1:
            value["email"] = f"user{n}@example.com"
        if n % 5 == 2:
            kw["tenant"] = f"tenant-{n % 3}"
        if n % 6 == 3:
            kw["traceparent"] = TRACEPARENT
            kw["tracestate"] = "vendor=1"
        if n % 7 == 4:
            kw["correlation_id"] = None
        if n % 8 == 5:
            kw["hop_count"] = 3
        if n % 9 == 6:
            kw["causation_id"] = "cause-1"
        h.send(
            f"counter {n}",
            "counter.incremented",
            value,
            name if n % 10 else None,
            envelope(i, "counter.incremented", **kw),
        )
        if n % 11 == 7:  # the same input again: a duplicate
            h.send(f"counter dup {n}", "counter.incremented", value, name, envelope(i, "counter.incremented", **kw))
    # non-ASCII state and key, a key of odd bytes
    i += 1
    h.send(
        "unicode",
        "counter.incremented",
        {"name": "ключ✓", "by": 3, "email": "ü@example.com"},
        "ключ✓",
        envelope(i, "counter.incremented", tenant="tenänt"),
    )
    i += 1
    h.raw(
        "odd key bytes",
        "counter.incremented",
        b"\xff\xfekey",
        h.app.codec.encode("counter.incremented", {"name": "x", "by": 1}),
        envelope(i, "counter.incremented").to_headers(),
    )
    # failures of the handler
    i += 1
    h.send(
        "handler error with PII",
        "counter.incremented",
        {"name": "a", "by": -1, "email": "bob@example.com"},
        "a",
        envelope(i, "counter.incremented"),
    )
    i += 1
    h.send(
        "transient, retries exhausted",
        "counter.incremented",
        {"name": "a", "by": -2},
        "a",
        envelope(i, "counter.incremented"),
    )
    i += 1
    h.send("circuit breaker", "counter.incremented", {"name": "a", "by": -3}, "a", envelope(i, "counter.incremented"))
    # timers
    i += 1
    h.send(
        "schedule timer",
        "counter.incremented",
        {"name": "t", "by": 1000},
        "t",
        envelope(i, "counter.incremented", tenant="tt"),
    )
    h.fire_due("timer not yet due", 500)
    h.fire_due("timer due", 700)
    i += 1
    h.send(
        "schedule timer 2", "counter.incremented", {"name": "u", "by": 1000}, "u", envelope(i, "counter.incremented")
    )
    i += 1
    h.send("reset cancels", "counter.reset", {"name": "u"}, "u", envelope(i, "counter.reset"))
    h.fire_due("nothing due", 5000)
    i += 1
    h.send("reset with state", "counter.reset", {"name": "k1"}, "k1", envelope(i, "counter.reset"))
    # poison inputs
    good = envelope(900, "counter.incremented").to_headers()
    data = h.app.codec.encode("counter.incremented", {"name": "p", "by": 1})
    h.raw("undecodable", "counter.incremented", b"p", b"\x00garbage", good)
    h.raw("missing ce_id", "counter.incremented", b"p", data, [x for x in good if x[0] != "ce_id"])
    h.raw("empty ce_type", "counter.incremented", b"p", data, [(k, b"" if k == "ce_type" else v) for k, v in good])
    h.raw("no headers", "counter.incremented", b"p", data, None)
    h.raw(
        "bad specversion",
        "counter.incremented",
        b"p",
        data,
        [(k, b"0.3" if k == "ce_specversion" else v) for k, v in good],
    )
    h.raw("bad time", "counter.incremented", b"p", data, [(k, b"yesterday" if k == "ce_time" else v) for k, v in good])
    h.raw(
        "naive time",
        "counter.incremented",
        b"p",
        data,
        [(k, b"2025-11-22T03:00:00" if k == "ce_time" else v) for k, v in good],
    )
    h.raw(
        "offset time",
        "counter.incremented",
        b"p",
        data,
        [(k, b"2025-11-22T04:00:00.5+01:00" if k == "ce_time" else v) for k, v in good]
        + [("ce_idempotencykey", b"idem-offset")],
    )
    h.raw(
        "bad hop count", "counter.incremented", b"p", data, [(k, b"-1" if k == "ce_hopcount" else v) for k, v in good]
    )
    h.raw(
        "non-utf8 header",
        "counter.incremented",
        b"p",
        data,
        [(k, b"\xff\xfe" if k == "ce_source" else v) for k, v in good],
    )
    h.raw(
        "bad traceparent dropped",
        "counter.incremented",
        b"p",
        data,
        good + [("traceparent", b"00-zzz"), ("tracestate", b"x=1"), ("ce_idempotencykey", b"idem-tp")],
    )
    h.raw(
        "repeated and None headers",
        "counter.incremented",
        b"p",
        data,
        good
        + [
            ("ce_idempotencykey", None),
            ("x-other", b"1"),
            ("ce_tenant", b"t1"),
            ("ce_tenant", b"t2"),
            ("ce_idempotencykey", b"idem-repeat"),
        ],
    )
    h.raw(
        "str header values",
        "counter.incremented",
        b"p",
        data,
        [(k, v.decode()) for k, v in envelope(901, "counter.incremented").to_headers()],
    )
    h.raw("tombstone", "counter.incremented", b"p", None, good)
    h.raw("wrong type on topic", "counter.incremented", b"p", data, envelope(902, "ping.sent").to_headers())
    h.raw(
        "other contract bytes",
        "counter.incremented",
        b"p",
        h.app.codec.encode("counter.reset", {"name": "p"}),
        envelope(903, "counter.incremented").to_headers(),
    )
    h.raw(
        "no key, key from value",
        "counter.incremented",
        None,
        data,
        envelope(904, "counter.incremented").to_headers(),
        partition=h.home("counter.incremented", b"p"),
    )
    out.extend(h.out)


def pingpong_scenario(out: list[dict[str, Any]]) -> None:
    h = Harness(engine_app(), "ping")
    for hop in (0, 3, 4, 5):
        h.send(
            f"ping hop {hop}",
            "ping.sent",
            {"chain": "c", "n": hop},
            "c",
            envelope(100 + hop, "ping.sent", hop_count=hop),
        )
    out.extend(h.out)


def bench_scenario(out: list[dict[str, Any]]) -> None:
    h = Harness(bench_counter_app(), "counter", worker_id="bench")
    for i in range(60):
        name = f"key-{i % 7}"
        h.send(
            f"bench {i}",
            "counter.incremented",
            {"name": name, "by": 1},
            name,
            envelope(2000 + i, "counter.incremented", correlation_id=None if i % 2 else f"c{i}"),
        )
    out.extend(h.out)


def order_scenario(out: list[dict[str, Any]]) -> None:
    h = Harness(order_app(), "order-totals", worker_id="orders-1")
    for i in range(25):
        order = {
            "order_id": f"o-{i}",
            "customer_id": f"cust-{i % 4}",
            "customer_email": f"c{i % 4}@example.com",
            "card_token": f"tok_{i:08d}",
            "items": [{"sku": f"sku-{j}", "qty": j + 1, "unit_price_minor": 250 * (j + 1)} for j in range(1 + i % 3)],
            "total_minor": sum(250 * (j + 1) * (j + 1) for j in range(1 + i % 3)),
            "currency": "EUR",
            "created_at": dt.datetime(2025, 11, 22, 2, 0, i, tzinfo=UTC),
        }
        order["shipping_address"] = (
            None
            if i % 2
            else {
                "name": "Ann",
                "line1": "Main St 1",
                "line2": None if i % 4 else "Box 2",
                "city": "Ghent",
                "postal_code": "9000",
                "country": "BE",
            }
        )
        order["promo_code"] = None if i % 3 else f"P{i}"
        h.send(
            f"order {i}", "order.created", order, f"cust-{i % 4}", envelope(3000 + i, "order.created", tenant="shop")
        )
    out.extend(h.out)


def json_audit_scenario(out: list[dict[str, Any]]) -> None:
    h = Harness(json_audit_app(), "counter")
    for i in range(3):
        h.send(
            f"json audit {i}",
            "counter.incremented",
            {"name": "j", "by": i + 1, "email": "j@example.com"},
            "j",
            envelope(4000 + i, "counter.incremented"),
        )
    h.send(
        "json audit dead", "counter.incremented", {"name": "j", "by": -1}, "j", envelope(4010, "counter.incremented")
    )
    out.extend(h.out)


SCENARIOS: list[Callable[[list[dict[str, Any]]], None]] = [
    counter_scenario,
    pingpong_scenario,
    bench_scenario,
    order_scenario,
    json_audit_scenario,
]


def run_scenarios() -> list[dict[str, Any]]:
    """The whole scenario, serialised (JSON-able), under the frozen wall clock."""
    out: list[dict[str, Any]] = []
    with frozen_wall_clock():
        for scenario in SCENARIOS:
            scenario(out)
    return json.loads(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help=f"(re)record {GOLDEN.relative_to(REPO)}")
    args = ap.parse_args()
    out = run_scenarios()
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {len(out)} steps to {GOLDEN}")
    else:
        print(json.dumps(out[:2], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
