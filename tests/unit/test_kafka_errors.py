"""One decision for every client error: fatal, record or transient, and a bounded one-line message."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from processors.kafka_errors import ErrorKind, KafkaFailure, classify, describe, kafka_error_of


def test_authorization_authentication_fencing_and_configuration_are_fatal() -> None:
    for code in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._SSL,
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError._INVALID_ARG,
    ):
        assert classify(KafkaError(code)) is ErrorKind.FATAL, KafkaError(code).name()


def test_a_record_the_broker_refuses_is_a_record_error() -> None:
    assert classify(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)) is ErrorKind.RECORD
    assert classify(KafkaError(KafkaError.INVALID_RECORD)) is ErrorKind.RECORD


def test_outages_and_timeouts_are_transient() -> None:
    for code in (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._UNKNOWN_PARTITION,
    ):
        assert classify(KafkaError(code)) is ErrorKind.TRANSIENT


def test_the_message_names_action_topic_and_cause_and_is_bounded() -> None:
    err = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "x" * 10_000)
    line = describe(err, topic="orders.v1", action="produce")
    assert line.startswith("produce on topic orders.v1: topic authorization failed (TOPIC_AUTHORIZATION_FAILED: ")
    assert len(line) < 450 and "\n" not in line


def test_failure_carries_kind_and_unwraps_from_exceptions() -> None:
    err = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)
    failure = KafkaFailure(err, action="join group g1")
    assert failure.kind is ErrorKind.FATAL and "group authorization failed" in str(failure)
    assert kafka_error_of(KafkaException(err)) is err
    assert kafka_error_of(ValueError("no")) is None


def test_writing_a_topic_that_does_not_exist_is_fatal_but_an_outage_is_not() -> None:
    from processors.kafka_errors import classify_produce, is_unreachable

    assert classify_produce(KafkaError(KafkaError._UNKNOWN_TOPIC)) is ErrorKind.FATAL
    assert classify_produce(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)) is ErrorKind.FATAL
    assert classify_produce(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)) is ErrorKind.RECORD
    assert classify_produce(KafkaError(KafkaError._MSG_TIMED_OUT)) is ErrorKind.TRANSIENT
    for code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError.COORDINATOR_NOT_AVAILABLE):
        assert is_unreachable(KafkaError(code))
    assert describe(KafkaError(KafkaError._UNKNOWN_TOPIC)).startswith("topic does not exist")
    assert not is_unreachable(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))


def test_causes_a_user_can_act_on_are_named() -> None:
    from processors.kafka_errors import cause_name, is_access_error

    assert cause_name(KafkaError(KafkaError._SSL)) == "TLS handshake failed"
    assert cause_name(KafkaError(KafkaError._AUTHENTICATION)) == "authentication failed"
    assert cause_name(KafkaError(KafkaError._TRANSPORT)) == "broker unreachable"
    assert cause_name(KafkaError(KafkaError._ALL_BROKERS_DOWN)) == "broker unreachable"
    assert is_access_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not is_access_error(KafkaError(KafkaError._TRANSPORT))
    assert not is_access_error(KafkaError(KafkaError._FENCED))  # reaches callers through the failed call


def test_a_denied_delivery_stops_the_run_naming_the_topic() -> None:
    import pytest

    from processors.kafka_errors import stop_on_access_error

    stop_on_access_error(None, topic="t")
    stop_on_access_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), topic="t")  # one record's problem
    with pytest.raises(KafkaFailure, match="produce on topic t: topic authorization failed"):
        stop_on_access_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), topic="t")
