"""What a Kafka client error means for the code that got it: one place that decides.

Every caller of confluent-kafka — the worker loop, the commit protocol, every CLI command — meets the
same three kinds of failure and must react the same way:

* ``FATAL``: no retry can fix it (authorization or authentication refused, an untrusted
  certificate, a bad configuration, fenced by a newer instance of ourselves). Stop, non-zero exit,
  one line naming the cause.
* ``RECORD``: one record cannot be written as it is (too large, refused by the broker). Retrying the
  same bytes fails again; isolate the record and dead-letter its input.
* ``TRANSIENT``: the cluster is busy, moving or away (timeouts, leadership changes, transport
  errors, brokers down). Retry with backoff; recreate the client when it cannot go on.

:func:`describe` gives the one line a user reads; it is bounded, because a broker or client message
may quote whatever it was sent.
"""

from __future__ import annotations

import enum

from confluent_kafka import KafkaError, KafkaException

from processors.errors import ChoreoError

_MAX_REASON_CHARS = 300


class ErrorKind(enum.StrEnum):
    FATAL = "fatal"
    RECORD = "record"
    TRANSIENT = "transient"


_AUTHORIZATION = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.DELEGATION_TOKEN_AUTHORIZATION_FAILED,
    }
)
_AUTHENTICATION = frozenset(
    {
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
        KafkaError.ILLEGAL_SASL_STATE,
    }
)
_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
_CONFIGURATION = frozenset({KafkaError._INVALID_ARG, KafkaError.INVALID_CONFIG, KafkaError.UNSUPPORTED_VERSION})
_RECORD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD})

_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE})

FATAL_CODES = _AUTHORIZATION | _AUTHENTICATION | _FENCED | _CONFIGURATION
RECORD_CODES = _RECORD
ACCESS_CODES = _AUTHORIZATION | _AUTHENTICATION
UNREACHABLE_CODES = _UNREACHABLE
FENCED_CODES = _FENCED
# The cluster (or the coordinator) cannot be reached now: what an outage looks like from a client
# (UNREACHABLE_CODES are the refused connections among them).
OUTAGE_CODES = UNREACHABLE_CODES | frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError._UNKNOWN_PARTITION,
    }
)
# Writing to a topic that does not exist: no input can fix it (the engine creates or checks every
# topic it writes before it starts, so this one was deleted or never allowed).
_UNKNOWN_OUTPUT = frozenset({KafkaError._UNKNOWN_TOPIC})


def classify(err: KafkaError) -> ErrorKind:
    """Fatal, record or transient. The client's own ``fatal()`` flag wins (it means the client
    instance cannot go on); ``retriable()`` says nothing against our fatal codes, because librdkafka
    marks some authorization errors retriable while the ACL stays as it is."""
    code = err.code()
    if code in RECORD_CODES:
        return ErrorKind.RECORD
    if code in FATAL_CODES:
        return ErrorKind.FATAL
    return ErrorKind.TRANSIENT


def classify_produce(err: KafkaError) -> ErrorKind:
    """:func:`classify` for an error met writing a record (produce call or delivery report): a topic
    that does not exist is fatal there, as no input can make it exist."""
    if err.code() in _UNKNOWN_OUTPUT:
        return ErrorKind.FATAL
    return classify(err)


def is_unreachable(err: KafkaError) -> bool:
    """The error says the cluster cannot be reached now (an outage, a restart, a network cut)."""
    return err.code() in OUTAGE_CODES


def is_fenced(err: KafkaError) -> bool:
    return err.code() in _FENCED


def is_access_error(err: KafkaError) -> bool:
    """Refused credentials, an untrusted certificate or a missing ACL: fatal, and the error a
    client keeps retrying internally unless its caller stops it."""
    return _code_in_callback(err) in ACCESS_CODES


def _code_in_callback(err: KafkaError) -> int:
    """``err.code()``, also in a callback that runs after another callback of the same poll raised.
    confluent-kafka still runs the next callback with that exception pending, so the first C call
    fails with a SystemError caused by it; raise the first exception again, so it is what the poll
    raises (a failed delivery and the error callback often report the same denial together)."""
    try:
        return err.code()
    except SystemError as exc:
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise


def kafka_error_of(exc: BaseException) -> KafkaError | None:
    """The KafkaError inside a KafkaException (or None for anything else)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def cause_name(err: KafkaError) -> str:
    """A short name for the cause, e.g. ``topic authorization failed``, ``authentication failed``."""
    code = err.code()
    if code in _AUTHORIZATION:
        return err.name().lower().replace("_", " ").strip()
    if code == KafkaError._SSL:
        return "TLS handshake failed"
    if code in _AUTHENTICATION:
        return "authentication failed"
    if code in _FENCED:
        return "fenced by a newer instance"
    if code in _CONFIGURATION:
        return "invalid configuration"
    if code in _RECORD:
        return "record refused"
    if code in _UNKNOWN_OUTPUT:
        return "topic does not exist"
    if code in _UNREACHABLE:
        return "broker unreachable"
    return err.name().lower().replace("_", " ").strip()


def describe(err: KafkaError, *, topic: str | None = None, action: str | None = None) -> str:
    """One bounded line: what was being done, on which topic, the cause, the client's reason."""
    reason = " ".join(str(err.str()).split())
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[:_MAX_REASON_CHARS] + "…"
    where = f" on topic {topic}" if topic else ""
    doing = f"{action}{where}: " if action else (f"topic {topic}: " if topic else "")
    return f"{doing}{cause_name(err)} ({err.name()}: {reason})"


class KafkaFailure(ChoreoError, RuntimeError):
    """A client failure a caller decided not to retry; carries the kind and the one-line message."""

    def __init__(self, err: KafkaError, *, topic: str | None = None, action: str | None = None) -> None:
        self.kafka_error = err
        self.kind = classify(err)
        self.topic = topic
        super().__init__(describe(err, topic=topic, action=action))


def stop_on_access_error(err: KafkaError | None, *, topic: str | None = None, action: str = "produce") -> None:
    """Raise a KafkaFailure when `err` is an access error: a delivery report saying "topic
    authorization failed" is about the topic, not the record, and every later record gets the same
    answer. Called from a delivery callback it ends the ``flush()``/``poll()`` that ran it."""
    if err is not None and is_access_error(err):
        raise KafkaFailure(err, topic=topic, action=action)


__all__ = [
    "ACCESS_CODES",
    "FATAL_CODES",
    "FENCED_CODES",
    "OUTAGE_CODES",
    "RECORD_CODES",
    "UNREACHABLE_CODES",
    "ErrorKind",
    "KafkaFailure",
    "cause_name",
    "classify",
    "classify_produce",
    "describe",
    "is_fenced",
    "is_unreachable",
    "is_access_error",
    "kafka_error_of",
    "stop_on_access_error",
]
