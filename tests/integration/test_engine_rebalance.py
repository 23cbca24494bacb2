"""Rebalances in the middle of batches, against a real broker: one worker works through a backlog
in ~1 s batches while two others join and leave again and again, so partitions are revoked while
records of theirs are fetched or being handled. No worker may exit on its own, and the outputs keep
the guarantee's promise. And incremental rebalancing: a worker that joins and leaves moves only
the partitions it takes, co-partitioned inputs stay together, exactly once throughout."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.runtime._clients import broker_group_protocols
from processors.runtime.testing import read_topic
from processors.settings import Settings
from tests.engine.app import write_contracts
from tests.engine.harness import (
    EngineEnv,
    assert_exact_outputs,
    assert_no_duplicate_effects,
    load_counter_events,
    make_env,
    stop_worker,
    wait_for_count,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

KEYS, PER_KEY = 30, 60


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("rebalance"))


def wait_assigned(log: Path, proc, timeout: float = 120) -> None:
    """Until the worker has joined the group (its first assignment is logged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b'"partitions assigned"' in log.read_bytes():
            return
        assert proc.poll() is None, f"a joining worker exited with {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"{log.name}: never assigned partitions")


def churn(env, tmp_path, guarantee: str, rounds: int) -> None:
    app = env.app()
    env.create_topics(app)
    out_topic = env.topic("counter.total")
    slow = {"ENGINE_SLOW_S": "0.002"}
    inputs: list = []
    loader = threading.Thread(target=lambda: inputs.extend(load_counter_events(env, app, KEYS, PER_KEY)))
    steady = env.start_worker(None, guarantee, tmp_path / "state-steady", **slow)
    try:
        loader.start()
        wait_for_count(env.bootstrap, out_topic, 200, timeout=120, proc=steady)
        for i in range(rounds):
            logs = [tmp_path / f"worker-{n}-{i}.log" for n in ("b", "c")]
            joiners = [
                env.start_worker(None, guarantee, tmp_path / f"state-{n}", log=log, **slow)
                for n, log in zip(("b", "c"), logs, strict=True)
            ]
            for j, log in zip(joiners, logs, strict=True):
                wait_assigned(log, j)  # partitions were taken from the steady worker, mid-batch
            wait_for_count(env.bootstrap, out_topic, 200 + (i + 1) * 150, timeout=120, proc=steady)
            for j in joiners:
                assert j.poll() is None, f"a joining worker exited with {j.returncode}"
                assert stop_worker(j, timeout=90) == 0  # and given back
        loader.join(120)
        if guarantee == "exactly_once":
            seen = wait_for_count(env.bootstrap, out_topic, KEYS * PER_KEY, timeout=180, proc=steady)
            assert seen >= KEYS * PER_KEY
        else:
            deadline_reads = 0
            while deadline_reads < 60:
                outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=30)
                if len({o.headers["ce_idempotencykey"] for o in outputs}) >= KEYS * PER_KEY:
                    break
                assert steady.poll() is None
                deadline_reads += 1
                wait_for_count(env.bootstrap, out_topic, 1, timeout=3, proc=steady)
    finally:
        code = stop_worker(steady, timeout=90) if steady.poll() is None else steady.returncode
    assert code == 0, f"the steady worker exited with {code}"
    outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=60)
    if guarantee == "exactly_once":
        assert_exact_outputs(outputs, KEYS, PER_KEY)
    else:
        assert_no_duplicate_effects(outputs, KEYS, PER_KEY)


def test_partitions_revoked_mid_batch_again_and_again_exactly_once(env, tmp_path):
    churn(env, tmp_path, "exactly_once", rounds=3)


@pytest.mark.soak
def test_partitions_revoked_mid_batch_again_and_again_at_least_once(env, tmp_path):
    churn(env, tmp_path, "at_least_once", rounds=6)


# ---------------------------------------------------------------------- incremental rebalancing
INC_KEYS, INC_PARTITIONS = 24, 6


def _events(log: Path, msg: str) -> list[dict]:
    """The worker's log lines ``msg`` (JSON lines; the rest of the output is not ours to parse)."""
    out = []
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("msg") == msg:
                out.append(event)
    return out


def _owned(log: Path) -> set[int]:
    assigned = _events(log, "partitions assigned")
    return set(assigned[-1]["owned"]) if assigned else set()


def _owners(logs: dict[str, Path], procs: dict, partitions: set[int], timeout: float = 120) -> dict[int, str]:
    """Once the members' latest assignments split ``partitions`` between them, each some: who owns
    which partition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = {n: _owned(log) for n, log in logs.items()}
        if all(owned.values()) and sorted(p for o in owned.values() for p in o) == sorted(partitions):
            return {p: n for n, o in owned.items() for p in o}
        for proc in procs.values():
            assert proc.poll() is None, f"a worker exited with {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"the group never settled: { {n: _owned(log) for n, log in logs.items()} }")


def _paced_load(env, app, stop: threading.Event, rounds: list[int], progress: list[int]) -> None:
    """Counter events, a round over every key each 0.2 s until ``stop``, so records flow through
    the whole test (the join, the leave); ``progress[0]`` counts the rounds as they are produced,
    ``rounds`` gets their count at the end."""
    producer = Producer({"bootstrap.servers": env.bootstrap, "partitioner": "murmur2_random", "linger.ms": 5})
    topic = env.topic("counter.incremented")
    done = 0
    while not stop.is_set():
        for k in range(INC_KEYS):
            name = f"key-{k}"
            headers = produce_headers(Envelope.new("counter.incremented", "/test/load").to_headers())
            value = app.codec.encode("counter.incremented", {"name": name, "by": 1})
            producer.produce(topic, value, name, headers=headers)
        assert producer.flush(30) == 0
        done += 1
        progress[0] = done
        stop.wait(0.2)
    rounds.append(done)


def _members(env, app) -> list[dict[str, set[int]]]:
    """Per member of the counter's group: its partitions per input topic (as the broker says)."""
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    group = app.group_id("counter")
    description = admin.describe_consumer_groups([group])[group].result(30)
    out = []
    for member in description.members:
        per_topic: dict[str, set[int]] = {}
        for tp in member.assignment.topic_partitions:
            per_topic.setdefault(tp.topic, set()).add(tp.partition)
        out.append(per_topic)
    return out


def test_a_joining_and_leaving_worker_moves_only_its_partitions_exactly_once(kafka_bootstrap, tmp_path):
    """Two workers share six partitions of the two-input counter agent; a third joins, then leaves,
    while events flow. Only partitions that change owner are revoked: the rest are never revoked,
    their stores never reopened, and they keep being processed. Partition N of both inputs stays
    on one worker, and every output comes exactly once."""
    served = broker_group_protocols(Settings(bootstrap_servers=kafka_bootstrap))
    if served is None or "consumer" not in served:
        pytest.skip(
            f"the broker does not serve the consumer group protocol (serves {served}): two inputs rebalance eagerly"
        )
    prefix = "e" + uuid.uuid4().hex[:10]
    contracts, schemas = write_contracts(tmp_path / "contracts-data", prefix, partitions=INC_PARTITIONS)
    env = EngineEnv(kafka_bootstrap, prefix, contracts, schemas, tmp_path)
    app = env.app()
    env.create_topics(app)
    every = set(range(INC_PARTITIONS))
    logs = {n: tmp_path / f"worker-{n}.log" for n in "abc"}
    procs = {
        n: env.start_worker(n, "exactly_once", tmp_path / f"state-{n}", log=logs[n], ENGINE_SLOW_S="0.002")
        for n in "ab"
    }
    steady = {n: logs[n] for n in "ab"}
    done, rounds, progress = threading.Event(), list[int](), [0]
    loader = threading.Thread(target=_paced_load, args=(env, app, done, rounds, progress))
    out_topic = env.topic("counter.total")
    try:
        before = _owners(steady, procs, every)
        settled_revokes = {n: len(_events(logs[n], "partitions revoked")) for n in "ab"}
        loader.start()
        wait_for_count(env.bootstrap, out_topic, 4 * INC_KEYS, timeout=120, proc=procs["a"])

        procs["c"] = env.start_worker("c", "exactly_once", tmp_path / "state-c", log=logs["c"], ENGINE_SLOW_S="0.002")
        during = _owners(logs, procs, every)
        members = _members(env, app)
        assert len(members) == 3
        for member in members:  # co-partitioning: partition N of both inputs on one member
            assert len(set(map(frozenset, member.values()))) == 1, f"inputs split: {member}"
        while len(_events(logs["c"], "store opened")) < sum(1 for n in during.values() if n == "c"):
            assert procs["c"].poll() is None
            time.sleep(0.1)
        # with the third worker in, rounds produced from now on are processed, all of them
        wait_for_count(env.bootstrap, out_topic, (progress[0] + 2) * INC_KEYS, 120, proc=procs["c"])

        assert stop_worker(procs.pop("c"), timeout=90) == 0
        after = _owners(steady, procs, every)
        wait_for_count(env.bootstrap, out_topic, (progress[0] + 1) * INC_KEYS, 120, proc=procs["a"])
        done.set()
        loader.join(60)
        expected = rounds[0] * INC_KEYS
        assert wait_for_count(env.bootstrap, out_topic, expected, 180, proc=procs["a"]) >= expected
    finally:
        done.set()
        codes = {n: stop_worker(p, timeout=90) if p.poll() is None else p.returncode for n, p in procs.items()}
    assert codes == {"a": 0, "b": 0}

    # taken from a or b when the third joined, and moved from a or b when it left
    joined = [p for p in every if before[p] != during[p]]
    left = [p for p in every if during[p] != "c" and during[p] != after[p]]
    moved = joined + left
    kept = {p for p in every if before[p] == during[p] == after[p]}
    assert kept, f"nothing stayed put to prove anything: {before} {during} {after}"
    revoked = [
        p
        for n in "ab"
        for event in _events(logs[n], "partitions revoked")[settled_revokes[n] :]
        for p in event["partitions"]
    ]
    assert sorted(revoked) == sorted(moved), "exactly the partitions that changed owner were revoked, each once"
    for p in kept:  # opened once, when the worker first got it: never closed and reopened
        opened = [e["partition"] for e in _events(logs[before[p]], "store opened")]
        assert opened.count(p) == 1, f"worker {before[p]} reopened the store of partition {p} it kept: {opened}"
    outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=60)
    assert_exact_outputs(outputs, INC_KEYS, rounds[0])
