"""The CLI's last word on an error raised on purpose: one line, the right exit code, no traceback."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from processors.cli.main import error_line
from processors.kafka_errors import KafkaFailure
from processors.localbroker import BrokerError
from processors.settings import SettingsError


def test_a_kafka_failure_is_one_line_exit_1() -> None:
    failure = KafkaFailure(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "no\nACL"), action="join group g")
    line, code = error_line(failure) or ("", 0)
    assert code == 1 and line.startswith("join group g: group authorization failed") and "\n" not in line


def test_a_fatal_kafka_exception_is_described() -> None:
    line, code = error_line(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))) or ("", 0)
    assert code == 1 and "topic authorization failed" in line


def test_input_errors_exit_2_and_other_choreo_errors_exit_1() -> None:
    assert error_line(SettingsError("bootstrap_servers: must not\nbe empty")) == (
        "bootstrap_servers: must not be empty",
        2,
    )
    assert error_line(BrokerError("port in use")) == ("port in use", 1)


def test_a_bug_keeps_its_traceback() -> None:
    assert error_line(KeyError("x")) is None


def test_the_worker_replaces_the_cli_log_lines_and_shows_client_lines() -> None:
    import logging

    from processors.cli.main import configure_cli_logging
    from processors.client_logging import LOGGER_NAME
    from processors.runtime.logs import configure_logging

    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    client_level = logging.getLogger(LOGGER_NAME).level
    try:
        for handler in saved:
            root.removeHandler(handler)
        configure_cli_logging()
        assert len(root.handlers) == 1 and logging.getLogger(LOGGER_NAME).level == logging.ERROR
        configure_logging("INFO")
        assert len(root.handlers) == 1, "a worker's line must not be printed twice"
        assert logging.getLogger(LOGGER_NAME).getEffectiveLevel() == logging.INFO
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger(LOGGER_NAME).setLevel(client_level)
