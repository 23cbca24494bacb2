"""Rebalancing and restore bookkeeping that needs no broker: which group protocol an agent uses,
the consumer settings each protocol takes, the incremental rebalance callbacks (which stores stay
open, what readiness says after a revoke) and how restore progress is counted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from processors.runtime._assignment import Assignment
from processors.runtime._clients import AgentClients, GroupProtocol, choose_protocol
from processors.runtime._health import AgentState, agent_reason
from processors.runtime._restore import _Progress
from processors.runtime.metrics import AgentMetrics
from processors.runtime.state import MemoryStore
from processors.runtime.state.keys import state_key
from processors.settings import Settings, SettingsError
from tests.engine.app import build_app

KIP848 = frozenset({"classic", "consumer"})


# ---------------------------------------------------------------------- protocol choice
@pytest.mark.parametrize(
    ("setting", "broker", "inputs", "expected"),
    [
        ("auto", KIP848, 2, ("consumer", "range", True)),
        ("auto", KIP848, 1, ("consumer", "range", True)),
        ("auto", frozenset({"classic"}), 1, ("classic", "cooperative-sticky", True)),
        ("auto", frozenset({"classic"}), 2, ("classic", "range", False)),
        ("auto", None, 2, ("classic", "range", False)),  # broker could not be asked
        ("consumer", None, 2, ("consumer", "range", True)),
        ("classic", KIP848, 1, ("classic", "cooperative-sticky", True)),
        ("classic", KIP848, 3, ("classic", "range", False)),
    ],
)
def test_the_group_protocol_follows_setting_broker_and_inputs(setting, broker, inputs, expected):
    chosen = choose_protocol(setting, broker, inputs)
    assert (chosen.protocol, chosen.assignor, chosen.incremental) == expected
    assert chosen.reason


def test_an_unknown_group_protocol_is_refused():
    with pytest.raises(ValueError, match="group_protocol"):
        choose_protocol("eager", KIP848, 1)
    with pytest.raises(SettingsError, match="group_protocol"):
        Settings.load(env={}, group_protocol="eager")
    assert Settings.load(env={"CHOREO_GROUP_PROTOCOL": "classic"}).group_protocol == "classic"


def _clients(**kafka: str) -> AgentClients:
    return AgentClients(build_app(), "counter", "w1", Settings(bootstrap_servers="127.0.0.1:1", kafka=kafka))


def test_the_consumer_protocol_leaves_timeouts_and_assignor_to_the_broker():
    """librdkafka refuses session.timeout.ms, heartbeat.interval.ms and partition.assignment.strategy
    with group.protocol=consumer: neither the engine's defaults nor a user's reach the client."""
    config = _clients(**{"session.timeout.ms": "30000", "fetch.wait.max.ms": "50"}).consumer(
        choose_protocol("consumer", None, 2)
    )
    assert config["group.protocol"] == "consumer"
    assert config["group.remote.assignor"] == "range"
    for refused in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
        assert refused not in config
    assert config["fetch.wait.max.ms"] == "50"  # other user properties pass through
    assert config["isolation.level"] == "read_committed"
    assert config["enable.auto.commit"] is False


@pytest.mark.parametrize(("inputs", "assignor"), [(1, "cooperative-sticky"), (2, "range")])
def test_the_classic_protocol_keeps_client_side_timeouts(inputs, assignor):
    config = _clients(**{"session.timeout.ms": "30000"}).consumer(choose_protocol("classic", None, inputs))
    assert config["group.protocol"] == "classic"
    assert config["partition.assignment.strategy"] == assignor
    assert config["session.timeout.ms"] == "30000"  # the user's wins over the engine's default
    assert config["heartbeat.interval.ms"] == 1000


def test_the_restore_consumer_hears_the_end_of_a_partition_soon():
    assert _clients().restorer()["fetch.wait.max.ms"] <= 50


# ---------------------------------------------------------------------- incremental callbacks
class Recorder:
    """Records the assignment calls the callbacks make (the consumer's own bookkeeping is
    librdkafka's; what matters here is which partitions the engine hands it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []

    def _record(self, name: str, tps: list[TopicPartition]) -> None:
        self.calls.append((name, sorted((tp.topic, tp.partition) for tp in tps)))

    def __getattr__(self, name: str) -> Any:
        return lambda tps=(): self._record(name, list(tps))


class FakeStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Restorer:
    """Queues partitions and hands their stores back at the next step (no changelog here)."""

    def __init__(self) -> None:
        self.queued: list[int] = []
        self.opened: list[int] = []

    @property
    def busy(self) -> bool:
        return bool(self.queued)

    def queue(self, partitions) -> None:
        self.queued.extend(p for p in partitions if p not in self.queued)

    def drop(self, partitions) -> None:
        self.queued = [p for p in self.queued if p not in set(partitions)]

    def step(self) -> dict[int, FakeStore]:
        ready = {p: FakeStore() for p in self.queued}
        self.opened.extend(self.queued)
        self.queued = []
        return ready


class Committer:
    def __init__(self) -> None:
        self.revoked: list[set[int]] = []

    def revoke(self, partitions: set[int]) -> None:
        self.revoked.append(partitions)


def tps(*pairs: tuple[str, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in pairs]


def both(*partitions: int) -> list[TopicPartition]:
    """Partitions of both inputs of a co-partitioned agent."""
    return tps(*[(t, p) for p in partitions for t in ("a", "b")])


def _assignment(incremental: bool) -> tuple[Assignment, Recorder, Restorer, Committer]:
    restorer, committer = Restorer(), Committer()
    assignment = Assignment(restorer, committer, AgentMetrics("unit-rebalance"), "unit-rebalance", incremental)  # type: ignore[arg-type]
    return assignment, Recorder(), restorer, committer


def test_an_incremental_revoke_closes_only_what_moves_and_the_rest_keeps_its_stores():
    assignment, consumer, restorer, committer = _assignment(incremental=True)
    assignment.on_assign(consumer, both(0, 1, 2))  # type: ignore[arg-type]
    assignment.activate(consumer, restorer.step())  # type: ignore[arg-type]
    kept: dict[int, Any] = {p: assignment.stores[p] for p in (0, 1)}
    moved: Any = assignment.stores[2]

    assignment.on_revoke(consumer, both(2))  # type: ignore[arg-type]
    assignment.on_assign(consumer, [])  # type: ignore[arg-type]  # the rebalance completes: nothing new here

    assert moved.closed and committer.revoked == [{2}]
    assert assignment.stores == kept and not any(s.closed for s in kept.values())
    assert restorer.opened == [0, 1, 2]  # nothing reopened
    assert ("incremental_unassign", [("a", 2), ("b", 2)]) in consumer.calls
    assert not any(name in ("assign", "unassign") for name, _ in consumer.calls)
    assert assignment.settled


def test_a_store_stays_open_while_one_input_of_its_partition_is_still_here():
    assignment, consumer, restorer, _ = _assignment(incremental=True)
    assignment.on_assign(consumer, both(0))  # type: ignore[arg-type]
    assignment.activate(consumer, restorer.step())  # type: ignore[arg-type]
    store: Any = assignment.stores[0]
    assignment.on_revoke(consumer, tps(("a", 0)))  # type: ignore[arg-type]
    assert assignment.stores == {0: store} and not store.closed
    assignment.on_revoke(consumer, tps(("b", 0)))  # type: ignore[arg-type]
    assert store.closed and assignment.stores == {}


def test_an_eager_rebalance_assigns_the_whole_set_and_reopens_what_comes_back():
    assignment, consumer, restorer, committer = _assignment(incremental=False)
    assignment.on_assign(consumer, both(0, 1))  # type: ignore[arg-type]
    assignment.activate(consumer, restorer.step())  # type: ignore[arg-type]
    assignment.on_revoke(consumer, both(0, 1))  # type: ignore[arg-type]
    assert assignment.stores == {} and committer.revoked == [{0, 1}]
    assignment.on_assign(consumer, both(0))  # type: ignore[arg-type]
    assert consumer.calls[-2][0] == "assign"  # then pause, until restored
    assert consumer.calls[-1] == ("pause", [("a", 0), ("b", 0)])


def test_readiness_after_a_revoke_to_nothing_waits_for_the_next_assignment():
    assignment, consumer, restorer, _ = _assignment(incremental=True)
    assignment.on_assign(consumer, both(0))  # type: ignore[arg-type]
    assignment.activate(consumer, restorer.step())  # type: ignore[arg-type]
    assignment.on_revoke(consumer, both(0))  # type: ignore[arg-type]
    assert assignment.awaiting and not assignment.settled
    state = AgentState("a", running=True, joined=True, partitions=0, rebalancing=assignment.awaiting)
    ok, reason = agent_reason(state)
    assert not ok and "rebalancing" in reason
    assignment.on_assign(consumer, [])  # type: ignore[arg-type]  # the group's answer: nothing for this member
    assert not assignment.awaiting and assignment.settled
    assert agent_reason(replace(state, rebalancing=assignment.awaiting)) == (True, "processing 0 partition(s)")


def test_a_revoke_that_leaves_partitions_keeps_the_agent_ready():
    assignment, consumer, restorer, _ = _assignment(incremental=True)
    assignment.on_assign(consumer, both(0, 1))  # type: ignore[arg-type]
    assignment.activate(consumer, restorer.step())  # type: ignore[arg-type]
    assignment.on_revoke(consumer, both(1))  # type: ignore[arg-type]
    assert not assignment.awaiting and assignment.settled


# ---------------------------------------------------------------------- restore progress
def _progress(store: MemoryStore, start: int = 0, high: int = 10) -> _Progress:
    return _Progress(0, store, start, high, start, 0.0)  # type: ignore[arg-type]


def test_restored_records_count_every_changelog_record_of_a_complete_batch():
    """The counter counts changelog records, also those a later record of the same key overwrote;
    records of a run that no marker closed are not counted."""
    store = MemoryStore()
    progress = _progress(store, high=8)
    assert progress.remaining() == 8
    for offset, key in enumerate([b"x", b"y", b"x"]):
        progress.add(state_key(key), b"v%d" % offset, offset)
    assert progress.mark(3) == 3
    progress.add(state_key(b"z"), b"v", 4)
    progress.spill(1)  # applied, kept for undo, not yet counted
    assert progress.applied == 3 and progress.unmarked == 1
    assert progress.remaining() == 3  # offsets 5..7
    assert store.changelog_offset == 3
    assert progress.mark(5) == 1 and progress.applied == 4


def test_rocks_store_open_is_counted_with_its_phases(tmp_path: Path):
    """The phases an open logs add up to no more than the open (a pure check of the bookkeeping)."""
    from processors.runtime._restore import _outcome

    progress = _progress(MemoryStore())
    assert _outcome(progress) == "caught_up"
    progress.applied = 2
    assert _outcome(progress) == "restored"
    assert _outcome(replace(progress, rebuilt=True)) == "rebuilt"


def test_group_protocol_config_is_what_the_client_is_given():
    consumer = GroupProtocol("consumer", "range", True, "x").config()
    assert consumer == {"group.protocol": "consumer", "group.remote.assignor": "range"}
    classic = GroupProtocol("classic", "range", False, "x").config()
    assert classic["partition.assignment.strategy"] == "range" and classic["group.protocol"] == "classic"
    assert GroupProtocol("classic", "range", False, "x").defaults()["session.timeout.ms"] == 10000
    assert GroupProtocol("consumer", "range", True, "x").defaults() == {}
