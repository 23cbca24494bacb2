"""The benchmark workload on faust-streaming, written the way its docs recommend: a `faust.App` with
the RocksDB store (`store="rocksdb://"`, here through faust's rocksdict driver), an `@app.agent`
iterating `stream.events()` (for the headers), two `app.Table`s (per-key totals and seen
idempotency keys, both changelogged), a registered `faust.serializers.codecs.Codec` for the Avro
single-object input, and `await topic.send(...)` for the follow-up and the audit record.

    benchmarks/.venv-faust/bin/python benchmarks/peers/faust_agent.py --bootstrap HOST:PORT \
        --topic T --partitions P --events N [--state-dir DIR]

Processes exactly N events, then flushes the producer and prints one `BENCH_RESULT {json}` line:
events/s from the first event handled until the flush returned, and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust  # noqa: E402
from faust.serializers import codecs  # noqa: E402

from peers.common import DEDUPE_TTL_MS, Workload, header, now_ms, result_line, update_state  # noqa: E402

WORKLOAD = Workload("faust-bench")


class OrderCreatedCodec(codecs.Codec):
    """order.created in Avro single-object encoding, any contract version, read as v2."""

    def _loads(self, s: bytes) -> Any:
        return WORKLOAD.codec.decode_order(s)

    def _dumps(self, obj: Any) -> bytes:  # the workload never produces order.created
        raise NotImplementedError


codecs.register("order-created-avro", OrderCreatedCodec())


def build(args: argparse.Namespace, state_dir: str) -> tuple[faust.App, dict[str, Any]]:
    progress: dict[str, Any] = {"handled": 0, "duplicates": 0, "first": None, "done": None}
    app = faust.App(
        f"bench-faust-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{args.bootstrap}",
        store="rocksdb://",
        datadir=state_dir,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_partitioner=None,
    )
    orders = app.topic(args.topic, key_serializer="raw", value_serializer="order-created-avro")
    confirmed = app.topic(args.out_topic, key_serializer="raw", value_serializer="raw")
    audit = app.topic(args.audit_topic, key_serializer="raw", value_serializer="raw")
    totals = app.Table("totals", default=None, partitions=args.partitions)
    seen = app.Table("seen", default=None, partitions=args.partitions)

    @app.agent(orders)
    async def process(stream: Any) -> None:
        async for event in stream.events():
            received = now_ms()
            if progress["first"] is None:
                progress["first"] = time.perf_counter()
            key = event.key.decode() if isinstance(event.key, bytes) else event.key
            order, headers = event.value, event.headers
            idem = header(headers, "ce_idempotencykey") or ""
            if (seen.get(idem) or 0) > received:
                progress["duplicates"] += 1
            else:
                before = totals.get(key)
                after = update_state(before, order)
                totals[key] = after
                seen[idem] = received + DEDUPE_TTL_MS
                message = event.message
                out, out_headers, record, audit_headers = WORKLOAD.outputs(
                    order, headers, message.topic, message.partition, message.offset, before, after, received
                )
                await confirmed.send(key=key.encode(), value=out, headers=out_headers)
                await audit.send(key=key.encode(), value=record, headers=audit_headers)
            progress["handled"] += 1
            if progress["handled"] == args.events:
                await app.producer.flush()
                progress["done"] = time.perf_counter()
                result_line(
                    "faust",
                    args.events,
                    progress["done"] - progress["first"],
                    guarantee="at_least_once",
                    handled=progress["handled"],
                    duplicates=progress["duplicates"],
                )
                # Measured; a faust worker has no "stop after N" of its own: leave now.
                logging.shutdown()
                os._exit(0)

    return app, progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--out-topic", default="bench.order.confirmed")
    parser.add_argument("--audit-topic", default="bench.audit.record")
    args = parser.parse_args()
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="bench-faust-")
    app, _ = build(args, state_dir)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
