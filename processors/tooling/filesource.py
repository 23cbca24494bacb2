"""Backfill input from files exported by a system of record: NDJSON or Avro object container files.

A record is either a bare event (a JSON object, or an Avro record, matching the contract) or, in
NDJSON, the envelope form `choreo tail --format json` prints (`{"key", "headers", "value", ...}`),
whose headers, and so idempotency keys, are kept. A bare event gets envelope headers with an
idempotency key derived from its content, so backfilling the same file twice is collapsed by the
agents' deduplication.

The whole file is validated before the first record is produced (the `plan`), then read again to
produce, so a bad line 90,000 does not leave 89,999 records half-backfilled, and memory stays flat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import orjson

from processors.contracts import AvroCodec, Contract, ContractError, ContractRegistry, ContractViolation, Envelope
from processors.kafka_types import UNREADABLE_HEADERS
from processors.tooling.jsonavro import content_key, from_json
from processors.tooling.kafka_io import Headers, ToolingError, encode_headers
from processors.tooling.replay import FILE_PARTITION, SourceRecord, file_sha256

AVRO_MAGIC = b"Obj\x01"
WRAPPER_KEYS = frozenset(
    {
        "topic",
        "partition",
        "offset",
        "timestamp",
        "key",
        "event_type",
        "headers",
        "value",
        "error",
        "envelope_error",
        "redacted",
        "truncated",
    }
)
MAX_REPORTED = 20
SOURCE = "urn:choreo:replay"


class FileSource:
    """A file as a replay source: one pseudo-partition (-1) whose positions are record indexes."""

    def __init__(
        self, path: Path, destination: str, registry: ContractRegistry, codec: AvroCodec, event_type: str | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ToolingError(f"--file {self.path}: no such file")
        self.registry = registry
        self.codec = codec
        self.contract = _contract_for(registry, destination, event_type)
        with self.path.open("rb") as handle:
            self.format = "avro" if handle.read(4) == AVRO_MAGIC else "ndjson"
        self._sha256 = file_sha256(self.path)

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "file",
            "path": str(self.path.resolve()),
            "sha256": self._sha256,
            "format": self.format,
            "event_type": self.contract.event_type,
        }

    def label(self) -> str:
        return self.path.name

    def plan(self) -> dict[int, tuple[int, int]]:
        """Validate every record; refuse the file naming each bad line/record and field."""
        count, more = 0, 0
        problems: list[str] = []
        for where, item in self._items():
            count += 1
            try:
                self._encode(item)
            except (ContractError, ToolingError) as exc:
                lines = (
                    [f"{where}: {p}" for p in exc.problems]
                    if isinstance(exc, ContractViolation)
                    else [f"{where}: {exc}"]
                )
                if len(problems) < MAX_REPORTED:
                    problems.extend(lines)
                else:
                    more += 1
        if problems:
            tail = f"\n  ... and {more} more invalid record(s)" if more else ""
            raise ToolingError(f"{self.path}: invalid records, nothing replayed:\n  " + "\n  ".join(problems) + tail)
        return {FILE_PARTITION: (0, count)}

    def records(self, ranges: dict[int, tuple[int, int]], stop: Callable[[], bool]) -> Iterator[SourceRecord]:
        start, end = ranges.get(FILE_PARTITION, (0, 0))
        for index, (_, item) in enumerate(self._items()):
            if index >= end or stop():
                return
            if index < start:
                continue
            key, value, headers = self._encode(item)
            yield SourceRecord(FILE_PARTITION, index, key, value, headers)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ reading
    def _items(self) -> Iterator[tuple[str, Any]]:
        if self.format == "avro":
            yield from self._avro_items()
        else:
            yield from self._ndjson_items()

    def _ndjson_items(self) -> Iterator[tuple[str, Any]]:
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"line {number}", orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield f"line {number}", _Unreadable(f"not valid JSON: {exc}")

    def _avro_items(self) -> Iterator[tuple[str, Any]]:
        reader_schema = self.contract.raw_schema()
        with self.path.open("rb") as handle:
            try:
                records = fastavro.reader(handle, reader_schema=reader_schema)
            except fastavro.read.SchemaResolutionError:
                handle.seek(0)  # another record name: validate the writer's records as they are
                records = fastavro.reader(handle)
            for number, record in enumerate(records, start=1):
                yield f"record {number}", record

    # ------------------------------------------------------------------ encoding
    def _encode(self, item: Any) -> tuple[bytes, bytes, Headers]:
        if isinstance(item, _Unreadable):
            raise ToolingError(item.reason)
        if isinstance(item, dict) and "value" in item and "headers" in item and set(item) <= WRAPPER_KEYS:
            return self._encode_wrapped(item)
        return self._encode_bare(self.contract, item, [])

    def _encode_wrapped(self, item: dict[str, Any]) -> tuple[bytes, bytes, Headers]:
        if item.get("error"):
            raise ToolingError(f"exported as undecodable ({item['error']}): nothing to replay")
        if item.get("redacted"):
            raise ToolingError("exported with PII redacted: export with `choreo tail --show-pii` to backfill it")
        if item.get("truncated"):
            raise ToolingError("exported with its key or headers cut for display: replay it with --from TOPIC")
        if isinstance(item.get("headers"), dict) and UNREADABLE_HEADERS in item["headers"]:
            raise ToolingError(
                "exported from a record whose headers the Kafka client could not read (a header name that "
                "is not UTF-8): its headers are not in the export, so it cannot be replayed as it was"
            )
        contract = self.registry.get(item["event_type"]) if item.get("event_type") else self.contract
        headers = encode_headers(item.get("headers"))
        key, value, headers = self._encode_bare(contract, item["value"], headers)
        if item.get("key") is not None:
            key = str(item["key"]).encode()
        return key, value, headers

    def _encode_bare(self, contract: Contract, value: Any, headers: Headers) -> tuple[bytes, bytes, Headers]:
        if not isinstance(value, dict):
            raise ToolingError(f"expected a JSON object (an event or an exported record), got {type(value).__name__}")
        avro_value = from_json(contract.raw_schema(), value)
        payload = self.codec.encode(contract.event_type, avro_value)
        return str(avro_value[contract.key_field]).encode(), payload, _with_envelope(contract, avro_value, headers)


class _Unreadable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _with_envelope(contract: Contract, value: dict[str, Any], headers: Headers) -> Headers:
    """Keep the exported headers; add the envelope headers that are missing (all of them for a bare
    event), with the exported idempotency key if there is one, else one derived from the content."""
    present = {name for name, _ in headers}
    existing = dict(headers)
    key = existing.get("ce_idempotencykey")
    envelope = Envelope.new(
        contract.event_type, SOURCE, idempotency_key=key.decode() if key else content_key(contract.event_type, value)
    )
    return list(headers) + [(n, v) for n, v in envelope.to_headers() if n not in present]


def _contract_for(registry: ContractRegistry, destination: str, event_type: str | None) -> Contract:
    if event_type is not None:
        return registry.get(event_type)
    candidates = registry.for_topic(destination)
    if len(candidates) == 1:
        return candidates[0]
    known = ", ".join(c.event_type for c in candidates) or "no contract"
    raise ToolingError(f"--to {destination!r} has {known}: name the event type of the file with --type")
