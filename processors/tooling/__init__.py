"""Operator and client tooling: validated publishing, decoded subscribing, replays and backfills,
DLQ inspection and redrive. The `choreo publish|tail|replay|dlq` commands are thin layers over
these classes, so scripts and tests use the same code paths as people do."""

from processors.tooling.checksums import ALGORITHM as CHECKSUM_ALGORITHM
from processors.tooling.checksums import StreamDigest
from processors.tooling.dlq import DeadLetter, DlqFilter, DlqInspector, DlqSummary, RedriveResult
from processors.tooling.filesource import FileSource
from processors.tooling.kafka_io import ToolingError
from processors.tooling.publisher import Delivery, PreparedEvent, Publisher, PublishResult, Reject
from processors.tooling.replay import Replayer, ReplayResult, TopicSource
from processors.tooling.subscriber import FieldFilter, ReceivedEvent, Subscriber

__all__ = [
    "CHECKSUM_ALGORITHM",
    "DeadLetter",
    "Delivery",
    "DlqFilter",
    "DlqInspector",
    "DlqSummary",
    "FieldFilter",
    "FileSource",
    "PreparedEvent",
    "PublishResult",
    "Publisher",
    "Reject",
    "ReceivedEvent",
    "RedriveResult",
    "ReplayResult",
    "Replayer",
    "StreamDigest",
    "Subscriber",
    "ToolingError",
    "TopicSource",
]
