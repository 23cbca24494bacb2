"""The fair baseline: what a competent user would write instead of using a framework.

A plain confluent-kafka loop doing the same work as our benchmark agent (benchmarks/workload.py),
with no framework and no choreo-streams import: the Avro codec is fastavro through the peers'
workload module (benchmarks/peers/common.py, fastavro and the standard library only), state is
rocksdict. Per batch of up to ``--batch`` records:

* per record: read the CloudEvents headers into a dict, decode the Avro value (single-object
  encoding, v1 or v2 writer resolved to v2), drop a duplicate idempotency key (a seen key with an
  expiry in the store), read and update the per-key totals, encode an ``order.confirmed``
  follow-up and an ``audit.record`` (state before/after as JSON), produce both;
* per batch: produce the changelog (each written key once, on the input's partition), then
  ``at_least_once``: flush, write the batch's state in one RocksDB write batch, commit the offsets;
  ``exactly_once``: the same inside one transaction (``send_offsets_to_transaction``), the store
  written once the transaction committed.

    .venv/bin/python benchmarks/handwritten.py --bootstrap B --topic T --out-topic O --audit-topic A \
        --changelog-topic C --state-dir D --events N [--eos] [--batch 500]

Prints one ``BENCH_RESULT {json}`` line, timed like ours: from the first batch to the commit of
the batch that reached N events.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.common import (  # noqa: E402
    AUDIT_TYPE,
    DEDUPE_TTL_MS,
    INPUT_TYPE,
    OUTPUT_TYPE,
    Codec,
    ce_headers,
    derive_key,
    result_line,
)

AGENT = "handwritten"
SEEN = b"seen:"
TOTALS = b"totals:"


class Loop:
    """The consume → handle → produce → commit loop, one process, every assigned partition."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.codec = Codec()
        self.worker_id = f"{AGENT}-{os.getpid()}"
        group = f"bench-hand-{uuid.uuid4().hex[:8]}"
        self.consumer = Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 100,
            }
        )
        conf: dict[str, Any] = {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.num.messages": 10000,
        }
        if args.eos:
            conf["transactional.id"] = f"{group}.tx"
        self.producer = Producer(conf)
        if args.eos:
            self.producer.init_transactions(30)
        self.db = Rdict(str(args.state_dir), Options(raw_mode=True))

    def handle(self, msg: Any, pending: dict[bytes, bytes], changelog: dict[tuple[int, bytes], bytes]) -> None:
        """One record: dedupe, state, follow-up and audit produced; writes go to ``pending``."""
        now = int(time.time() * 1000)
        headers = dict(msg.headers() or ())
        idem = headers.get("ce_idempotencykey", b"").decode()
        seen_key = SEEN + idem.encode()
        seen = pending.get(seen_key) or self.db.get(seen_key)
        if seen is not None and int(seen) > now:
            return  # a duplicate: already handled
        order = self.codec.decode_order(msg.value())
        key: bytes = msg.key() or b""
        state_key = TOTALS + key
        raw = pending.get(state_key) or self.db.get(state_key)
        before = None if raw is None else orjson.loads(raw)
        totals = before or {"orders": 0, "total_minor": 0}
        after = {"orders": totals["orders"] + 1, "total_minor": totals["total_minor"] + order["total_minor"]}
        after_json = orjson.dumps(after, option=orjson.OPT_SORT_KEYS)
        expiry = str(now + DEDUPE_TTL_MS).encode()
        pending[state_key] = after_json
        pending[seen_key] = expiry
        partition = msg.partition()
        changelog[(partition, state_key)] = after_json
        changelog[(partition, seen_key)] = expiry

        cause = headers.get("ce_id", b"").decode()
        correlation = headers.get("ce_correlationid", b"").decode() or cause
        hops = int(headers.get("ce_hopcount", b"0")) + 1
        out_id = str(uuid.uuid4())
        confirmed = self.codec.encode_confirmed(
            {
                "order_id": order["order_id"],
                "total_minor": order["total_minor"],
                "currency": order["currency"],
                "confirmed_at": now,
            }
        )
        out_headers = ce_headers(out_id, OUTPUT_TYPE, now, derive_key(idem, OUTPUT_TYPE), correlation, cause, hops)
        audit = self.codec.encode_audit(
            {
                "agent_name": AGENT,
                "agent_version": "1",
                "worker_id": self.worker_id,
                "input_event_id": cause,
                "input_event_type": INPUT_TYPE,
                "topic": msg.topic(),
                "partition": partition,
                "offset": msg.offset(),
                "outcome": "PROCESSED",
                "state_before": None if raw is None else raw.decode(),
                "state_after": after_json.decode(),
                "emitted_event_ids": [out_id],
                "correlation_id": correlation,
                "received_at": now,
                "handled_at": now,
                "error": None,
            }
        )
        audit_headers = ce_headers(
            str(uuid.uuid4()), AUDIT_TYPE, now, derive_key(idem, AUDIT_TYPE), correlation, cause, hops
        )
        self.produce(self.args.out_topic, confirmed, key, out_headers)
        self.produce(self.args.audit_topic, audit, key, audit_headers)

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any = None, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)

    def run(self) -> tuple[int, float]:
        """(events handled, seconds from the first batch to the last commit)."""
        args = self.args
        self.consumer.subscribe([args.topic])
        done, start = 0, None
        while done < args.events:
            msgs: list[Any] = self.consumer.consume(args.batch, 0.5)
            if not msgs:
                continue
            if start is None:
                start = time.perf_counter()
            if args.eos:
                self.producer.begin_transaction()
            pending: dict[bytes, bytes] = {}
            changelog: dict[tuple[int, bytes], bytes] = {}
            offsets: dict[tuple[str, int], int] = {}
            for msg in msgs:
                if msg.error() is not None:
                    continue
                self.handle(msg, pending, changelog)
                offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
                done += 1
            for (partition, key), value in changelog.items():
                self.produce(args.changelog_topic, value, key, partition=partition)
            tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            if args.eos:
                self.producer.send_offsets_to_transaction(tps, self.consumer.consumer_group_metadata(), 30)
                self.producer.commit_transaction(30)
            else:
                self.producer.flush(30)
            batch = WriteBatch(raw_mode=True)
            for key, value in pending.items():
                batch.put(key, value)
            self.db.write(batch)
            if not args.eos:
                self.consumer.commit(offsets=tps, asynchronous=True)
        return done, time.perf_counter() - (start or time.perf_counter())

    def close(self) -> None:
        if not self.args.eos:
            with contextlib.suppress(KafkaException):  # the last asynchronous commit, made sure of
                self.consumer.commit(asynchronous=False)
        self.consumer.close()
        self.producer.flush(10)
        self.db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out-topic", required=True)
    parser.add_argument("--audit-topic", required=True)
    parser.add_argument("--changelog-topic", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--eos", action="store_true", help="exactly_once (default at_least_once)")
    args = parser.parse_args()
    loop = Loop(args)
    try:
        done, elapsed = loop.run()
    finally:
        loop.close()
    result_line("hand", done, elapsed, guarantee="exactly_once" if args.eos else "at_least_once")


if __name__ == "__main__":
    main()
