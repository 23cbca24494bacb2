"""The retry/fatal policy of the worker (processors.runtime._recovery) and the watchdog's deadline
bookkeeping (processors.runtime._watchdog), without a broker."""

from __future__ import annotations

import logging
import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from processors.kafka_errors import KafkaFailure
from processors.runtime._recovery import AgentHealth, Backoff, TransientFailure, cause_of, fatal_line, is_fatal
from processors.runtime._watchdog import Abandoned, CallWatch
from processors.runtime.errors import WorkerError
from processors.runtime.metrics import AGENT_HEALTHY, AgentMetrics


def test_authorization_fencing_and_engine_decisions_are_fatal_outages_are_not() -> None:
    assert is_fatal(KafkaFailure(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)))
    assert is_fatal(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert is_fatal(KafkaException(KafkaError(KafkaError._FENCED)))
    assert is_fatal(WorkerError("refused topology"))
    assert is_fatal(ValueError("a bug: retrying would loop"))
    assert not is_fatal(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert not is_fatal(KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION)))
    assert not is_fatal(KafkaException(KafkaError(KafkaError._CONFLICT)))
    assert not is_fatal(TransientFailure("cannot abort transaction", "_CONFLICT"))
    assert not is_fatal(Abandoned("send_offsets_to_transaction"))
    assert cause_of(KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)))[0] == "broker unreachable"


def test_a_fatal_line_is_one_bounded_line() -> None:
    line = fatal_line(KafkaFailure(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "x\n" * 5000), topic="t1"))
    assert "\n" not in line and len(line) < 600 and "t1" in line and "authorization" in line


def test_health_logs_once_per_state_change_and_sets_the_gauge(caplog: pytest.LogCaptureFixture) -> None:
    health = AgentHealth("recovery-test", AgentMetrics("recovery-test"))
    with caplog.at_level(logging.INFO, logger="choreo.worker"):
        for _ in range(50):
            health.trouble("broker unreachable", "all brokers down", restart=True)
        assert AGENT_HEALTHY.labels("recovery-test")._value.get() == 0
        health.recovered()
        health.recovered()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "broker unreachable, retrying"
    assert len(msgs) == 2 and msgs[1].startswith("recovered after ")
    assert caplog.records[1].restarts == 50  # type: ignore[attr-defined]
    assert AGENT_HEALTHY.labels("recovery-test")._value.get() == 1


def test_backoff_grows_to_its_bound_and_resets() -> None:
    b = Backoff(initial_s=0.5, max_s=10.0)
    delays = [b.next_delay() for _ in range(10)]
    assert delays[0] < 1.0 and max(delays) <= 12.0 and delays[-1] >= 8.0
    b.reset()
    assert b.next_delay() < 1.0


def test_watch_abandons_only_an_overdue_call_and_the_thread_learns_it() -> None:
    now = [0.0]
    watch = CallWatch(clock=lambda: now[0])
    assert watch.overdue() is None and watch.abandon() is None
    entered, release, outcome = threading.Event(), threading.Event(), []

    def agent() -> None:
        try:
            with watch.watch("send_offsets_to_transaction", 5.0):
                entered.set()
                release.wait(5)
            outcome.append("returned")
        except Abandoned:
            outcome.append("abandoned")

    t = threading.Thread(target=agent)
    t.start()
    entered.wait(5)
    now[0] = 4.0
    assert watch.overdue() is None and watch.abandon() is None  # within its deadline
    now[0] = 6.0
    call = watch.abandon()
    assert call is not None and call.name == "send_offsets_to_transaction" and call.elapsed(now[0]) == 6.0
    release.set()
    t.join(5)
    assert outcome == ["abandoned"]
    with pytest.raises(Abandoned), watch.watch("poll", 1.0):
        pass


def test_nested_watches_keep_the_outer_deadline() -> None:
    now = [0.0]
    watch = CallWatch(clock=lambda: now[0])
    with watch.watch("poll", 10.0):
        with watch.watch("commit", 1.0):  # a revoke callback inside poll
            now[0] = 5.0
            assert watch.overdue() is None
        now[0] = 11.0
        overdue = watch.overdue()
        assert overdue is not None and overdue.name == "poll"


def test_a_transactional_call_denied_is_fatal_at_once_not_replayed() -> None:
    """Group or transactional id denied inside a transaction must stop the worker, not be taken
    for an abortable error and replayed forever."""
    from processors.runtime._commit import CommitSettings, ExactlyOnceCommitter

    class Refusing:
        def send_offsets_to_transaction(self, offsets: object, metadata: object) -> None:
            raise KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "denied", txn_requires_abort=True))

    committer = ExactlyOnceCommitter(Refusing(), None, CommitSettings("a", "c", b"m", 1.0))  # type: ignore[arg-type]
    with pytest.raises(KafkaFailure, match="group authorization failed"):
        committer._call("send_offsets_to_transaction", lambda: committer.producer.send_offsets_to_transaction([], None))


def test_an_aftershock_right_after_a_recovery_is_no_new_state(caplog: pytest.LogCaptureFixture) -> None:
    health = AgentHealth("aftershock-test", AgentMetrics("aftershock-test"))
    with caplog.at_level(logging.INFO, logger="choreo.worker"):
        health.trouble("broker unreachable", "down")
        health.recovered()
        health.trouble("broker unreachable", "a coordinator reconnect failing once more")
        assert health.healthy
        health.trouble("stuck client call", "send_offsets_to_transaction", restart=True)  # a new cause: logged
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "broker unreachable, retrying" and msgs[1].startswith("recovered after")
    assert msgs[2:] == ["stuck client call, retrying"]
