"""How long a transaction commit takes while other Python threads hold the GIL.

A worker runs its agents as threads of one process. `commit_transaction` waits in librdkafka with
the GIL released, but the delivery reports it serves on the way are Python callbacks: each needs the
GIL back, and a thread busy in Python hands it over only every `sys.getswitchinterval()` (5 ms by
default). This probe commits transactions of `--messages` records while `--spinners` threads run
pure-Python loops, for each switch interval given, and prints the median and p90 commit time.

    PYTHONPATH=. .venv/bin/python benchmarks/txn_gil_probe.py --bootstrap 127.0.0.1:19700 \\
        --spinners 0,2 --intervals 5,0.5 --messages 200 --transactions 40

It measures the mechanism only: whether it matters in the flow is measured by `flow.py` (see
RESULTS.md, "Commits behind the GIL").
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from report import percentile


def _spin(stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1


def _commit_times(producer: Producer, topic: str, messages: int, transactions: int) -> list[float]:
    payload = b"x" * 200

    def on_delivery(err: object, msg: object) -> None:
        pass  # what is measured is the GIL each call needs, as the worker's delivery reports do

    times = []
    for _ in range(transactions):
        producer.begin_transaction()
        for i in range(messages):
            producer.produce(topic, payload, key=b"%d" % i, on_delivery=on_delivery)
        producer.poll(0)
        start = time.perf_counter()
        producer.commit_transaction(30)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--spinners", default="0,2", help="comma-separated counts of CPU-bound threads")
    parser.add_argument("--intervals", default="5,0.5", help="comma-separated switch intervals, ms")
    parser.add_argument("--messages", type=int, default=200, help="records per transaction")
    parser.add_argument("--transactions", type=int, default=40, help="transactions per case")
    args = parser.parse_args(argv)

    topic = f"txn-gil-probe-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": args.bootstrap, "transactional.id": f"{topic}-txn", "linger.ms": 5})
    producer.init_transactions(30)
    _commit_times(producer, topic, args.messages, 3)  # warm-up: coordinator look-up, first batches

    default_interval = sys.getswitchinterval()
    print("| spinners | switch interval ms | commit median ms | commit p90 ms |")
    print("|---:|---:|---:|---:|")
    try:
        for spinners in (int(s) for s in args.spinners.split(",")):
            for interval_ms in (float(i) for i in args.intervals.split(",")):
                sys.setswitchinterval(interval_ms / 1000)
                stop = threading.Event()
                threads = [threading.Thread(target=_spin, args=(stop,), daemon=True) for _ in range(spinners)]
                for thread in threads:
                    thread.start()
                try:
                    times = sorted(_commit_times(producer, topic, args.messages, args.transactions))
                finally:
                    stop.set()
                    for thread in threads:
                        thread.join()
                p50, p90 = percentile(times, 50), percentile(times, 90)
                print(f"| {spinners} | {interval_ms:g} | {p50:.1f} | {p90:.1f} |")
    finally:
        sys.setswitchinterval(default_interval)
        admin.delete_topics([topic])


if __name__ == "__main__":
    main()
