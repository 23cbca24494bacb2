"""The Kafka client's log lines and errors through our logging: levels, repeats, length, access errors."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from processors.client_logging import ClientErrorReporter, ClientLogger, RepeatFilter, bounded, python_level
from processors.kafka_errors import KafkaFailure


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _logger(caplog: pytest.LogCaptureFixture, clock: _Clock) -> ClientLogger:
    caplog.set_level(logging.DEBUG, logger="test.kafka.client")
    return ClientLogger(logging.getLogger("test.kafka.client"), RepeatFilter(window_s=30, clock=clock))


def test_syslog_levels_map_to_logging_levels() -> None:
    assert [python_level(n) for n in range(8)] == [50, 50, 50, 40, 30, 20, 20, 10]
    assert python_level(logging.WARNING) == logging.WARNING  # already a logging level


def test_a_client_line_is_logged_one_level_below_and_repeats_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    log = _logger(caplog, clock)
    for ms in range(110):  # what a client with a wrong password says ~3 times a second, for 33 s
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", f"SASL authentication error (after {ms}ms)")
        clock.now += 0.3
    assert len(caplog.records) == 2, [r.getMessage() for r in caplog.records]  # at 0 s and after the window
    first, second = caplog.records
    assert first.levelno == logging.WARNING and "FAIL [rdkafka#consumer-1] SASL authentication error" in first.message
    assert "repeated" not in first.message
    assert second.message.endswith("(repeated 99 more times in the last 30s)")


def test_distinct_messages_are_each_said_once(caplog: pytest.LogCaptureFixture) -> None:
    log = _logger(caplog, _Clock())
    for text in ("broker a down", "broker a down", "broker b refused", "broker a down"):
        log.log(logging.WARNING, "%s", text)
    assert [r.message for r in caplog.records] == ["broker a down", "broker b refused"]
    assert {r.levelno for r in caplog.records} == {logging.INFO}


def test_lines_are_bounded_and_single() -> None:
    line = bounded("x" * 10_000 + "\nsecond line")
    assert "\n" not in line and len(line) < 450 and line.endswith("more chars]")


def test_long_client_lines_are_cut(caplog: pytest.LogCaptureFixture) -> None:
    log = _logger(caplog, _Clock())
    log.log(logging.ERROR, "%s", "y" * 50_000)
    assert len(caplog.records[0].message) < 450


def test_an_access_error_ends_the_poll_that_reported_it(caplog: pytest.LogCaptureFixture) -> None:
    reporter = ClientErrorReporter(_logger(caplog, _Clock()))
    for code in (KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.GROUP_AUTHORIZATION_FAILED):
        with pytest.raises(KafkaFailure):
            reporter(KafkaError(code, "refused"))


def test_a_transient_error_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    reporter = ClientErrorReporter(_logger(caplog, _Clock()))
    reporter(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    reporter(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "_ALL_BROKERS_DOWN: 1/1 brokers are down; retrying" in caplog.records[0].message


def test_every_reported_error_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    from processors.client_logging import CLIENT_ERRORS

    before = CLIENT_ERRORS.labels("_ALL_BROKERS_DOWN")._value.get()
    ClientErrorReporter(_logger(caplog, _Clock()))(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert CLIENT_ERRORS.labels("_ALL_BROKERS_DOWN")._value.get() == before + 1


def test_settings_give_every_client_the_hooks() -> None:
    from processors.settings import Settings

    config = Settings.load(env={}).kafka_config(**{"group.id": "g"})
    assert callable(config["error_cb"]) and hasattr(config["logger"], "log")
    mine = Settings.load(env={}).kafka_config(logger=None)
    assert mine["logger"] is None  # a caller's own logger wins


def test_the_diagnosis_connects_as_the_last_client_did_without_its_role() -> None:
    from processors.client_logging import last_client_config
    from processors.settings import Settings

    env = {"KAFKA_BOOTSTRAP_SERVERS": "b:1", "CHOREO_KAFKA_SASL_USERNAME": "u", "CHOREO_KAFKA_SECURITY_PROTOCOL": "SSL"}
    Settings.load(env=env).kafka_config(**{"group.id": "g", "isolation.level": "read_committed"})
    assert last_client_config() == {"bootstrap.servers": "b:1", "sasl.username": "u", "security.protocol": "SSL"}


def test_the_http_client_logs_only_what_goes_wrong_under_the_worker_logging() -> None:
    """A worker calling a PSP per order must not write a line per request (httpx logs each at INFO)."""
    import io

    from processors.runtime.logs import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", stream)
        logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1:1/v1/charges "HTTP/1.1 201 Created"')
        logging.getLogger("httpx").warning("connection refused")
        logging.getLogger("choreo.worker").info("agent started")
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    text = stream.getvalue()
    assert "HTTP Request" not in text and "connection refused" in text and "agent started" in text
