"""The benchmark workload on Quix Streams, written the way its docs recommend: an `Application`, a
`StreamingDataFrame` over the input topic with a custom `Deserializer`, one stateful
`sdf.apply(..., stateful=True, metadata=True)` doing dedupe and the per-key state update with
`State`, and two branches (`set_headers` + `to_topic`) for the follow-up and the audit record.
The stateful step encodes both (Avro single-object, fastavro) so the audit record can name the
emitted event's id; the output topics use Quix's "bytes" serializer.

    benchmarks/.venv-quix/bin/python benchmarks/peers/quix_agent.py --bootstrap HOST:PORT \
        --topic T --events N [--guarantee at-least-once|exactly-once] [--state-dir DIR]

Runs in its own venv (quixstreams pins confluent-kafka < 2.13). Processes exactly N events from a
fresh consumer group, stops, and prints one `BENCH_RESULT {json}` line: events/s from the first
event handled until `Application.run` returned (the last checkpoint committed), and peak RSS.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quixstreams import Application, State, message_context  # noqa: E402
from quixstreams.models.serializers import Deserializer  # noqa: E402

from peers.common import DEDUPE_TTL_MS, Workload, header, now_ms, result_line, update_state  # noqa: E402

SEEN = "seen:"
TOTALS = "totals"


class SingleObjectAvroDeserializer(Deserializer):
    """order.created, any contract version, resolved to v2 (Avro single-object encoding)."""

    def __init__(self, workload: Workload) -> None:
        super().__init__()
        self.codec = workload.codec

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        return self.codec.decode_order(value)


def build(
    bootstrap: str,
    topic: str,
    events: int,
    guarantee: str,
    state_dir: str,
    group: str,
    out_topic: str,
    audit_topic: str,
) -> tuple[Application, dict[str, Any]]:
    workload = Workload("quix-bench")
    progress: dict[str, Any] = {"handled": 0, "duplicates": 0, "first": None, "last": None}
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee=guarantee,
        state_dir=state_dir,
        loglevel="WARNING",
        producer_extra_config={"partitioner": "murmur2_random", "linger.ms": 5},
    )
    orders = app.topic(topic, key_deserializer="str", value_deserializer=SingleObjectAvroDeserializer(workload))
    confirmed = app.topic(out_topic, key_serializer="str", value_serializer="bytes")
    audit = app.topic(audit_topic, key_serializer="str", value_serializer="bytes")

    def handle(order: dict[str, Any], key: str, timestamp: int, headers: Any, state: State) -> dict | None:
        received = now_ms()
        if progress["first"] is None:
            progress["first"] = time.perf_counter()
        progress["handled"] += 1
        if progress["handled"] >= events:
            progress["last"] = time.perf_counter()
            app.stop()
        idem = header(headers, "ce_idempotencykey") or ""
        seen_key = SEEN + idem
        if (state.get(seen_key) or 0) > received:
            progress["duplicates"] += 1
            return None
        before = state.get(TOTALS)
        after = update_state(before, order)
        state.set(TOTALS, after)
        state.set(seen_key, received + DEDUPE_TTL_MS)
        ctx = message_context()
        out, out_headers, record, audit_headers = workload.outputs(
            order, headers, ctx.topic, ctx.partition, ctx.offset, before, after, received
        )
        return {"out": out, "out_headers": out_headers, "audit": record, "audit_headers": audit_headers}

    sdf = app.dataframe(orders)
    sdf = sdf.apply(handle, stateful=True, metadata=True)
    sdf = sdf.filter(lambda result: result is not None)
    # Two branches off the same stream: the follow-up and the audit record.
    sdf.set_headers(lambda r, k, t, h: r["out_headers"]).apply(lambda r: r["out"]).to_topic(confirmed)
    sdf.set_headers(lambda r, k, t, h: r["audit_headers"]).apply(lambda r: r["audit"]).to_topic(audit)
    return app, progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--guarantee", default="at-least-once", choices=["at-least-once", "exactly-once"])
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--group", default=None)
    parser.add_argument("--out-topic", default="bench.order.confirmed")
    parser.add_argument("--audit-topic", default="bench.audit.record")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="bench-quix-")
    group = args.group or f"bench-quix-{uuid.uuid4().hex[:8]}"
    app, progress = build(
        args.bootstrap, args.topic, args.events, args.guarantee, state_dir, group, args.out_topic, args.audit_topic
    )
    app.run()
    done = time.perf_counter()
    if progress["first"] is None or progress["handled"] < args.events:
        raise SystemExit(f"quix: handled {progress['handled']} of {args.events} events")
    result_line(
        "quix",
        args.events,
        done - progress["first"],
        guarantee=args.guarantee,
        handled=progress["handled"],
        duplicates=progress["duplicates"],
        handle_s=round(progress["last"] - progress["first"], 4),
    )


if __name__ == "__main__":
    main()
