"""Avro payloads in standard framings, so consumers in any language can read them.

* **Single-object encoding** (default, registry-free): ``C3 01``, the 8-byte little-endian
  CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the binary body.
* **Confluent wire format** (when a Schema Registry is configured): ``00``, the 4-byte big-endian
  schema id, then the body. Schemas are registered under ``<topic>-value`` (TopicNameStrategy).

Decoding recognises both by their first byte, finds the writer schema by fingerprint or id, and
resolves it against the contract's current schema, so an old writer's event reads with the new
fields' defaults. Every schema is parsed once; per event there is one dict lookup, the validator's
quick check and a generated encoder or decoder (:mod:`processors.contracts.codegen`). fastavro is
the fallback for whatever the generated code leaves to it, and it alone says how a failure reads.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from processors.contracts._locate import locate_corruption
from processors.contracts.codegen import Decoder, Encoder, compile_decoder, compile_encoder
from processors.contracts.errors import ContractError, DecodeError
from processors.contracts.registry import Contract, ContractRegistry
from processors.contracts.validation import Guard, Validator

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SINGLE_OBJECT_HEADER = 10
_CONFLUENT_HEADER = 5
_SCHEMA_ID = struct.Struct(">I")


@dataclass(frozen=True)
class WriterSchema:
    """One writer schema as it appears on the wire.

    ``version`` is the contract version, or 0 for a schema found only in the Schema Registry (say a
    newer version registered by another service), which still resolves against our current one.
    """

    event_type: str
    version: int
    parsed: dict[str, Any]
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the Parsing Canonical Form
    header: bytes  # single-object header: magic + fingerprint


class _Plan:
    """Everything :meth:`AvroCodec.encode` needs for one (event type, version), found in one lookup."""

    __slots__ = ("writer", "validator", "quick_check", "encoder")

    def __init__(self, writer: WriterSchema, validator: Validator, encoder: Encoder | None) -> None:
        self.writer = writer
        self.validator = validator
        self.quick_check: Guard = validator.quick_check
        self.encoder = encoder


def schema_fingerprint(raw_schema: dict[str, Any]) -> bytes:
    """The CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form, as written on the wire."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(raw_schema), "CRC-64-AVRO"))


class AvroCodec:
    """Encode and decode contract events; one instance per process, shared by all agents.

    Not a lock holder: all caches are filled at construction except Confluent schema ids, which are
    written idempotently, so concurrent use from threads is safe.
    """

    def __init__(
        self,
        registry: ContractRegistry,
        schema_registry_url: str | None = None,
        schema_registry_client: Any = None,
    ) -> None:
        self.registry = registry
        self._client = schema_registry_client or _registry_client(schema_registry_url)
        self._writers: dict[tuple[str, int], WriterSchema] = {}
        self._by_fingerprint: dict[bytes, WriterSchema] = {}
        self._current: dict[str, WriterSchema] = {}
        self._validators: dict[tuple[str, int], Validator] = {}
        self._ids: dict[tuple[str, int], int] = {}
        self._by_id: dict[int, WriterSchema] = {}
        self._plans: dict[tuple[str, int], _Plan] = {}
        self._current_plans: dict[str, _Plan] = {}
        # Generated decoders by writer fingerprint, each reading into its event type's current schema.
        self._decoders: dict[bytes, Decoder] = {}
        self._fast_readers: dict[bytes, tuple[str, Decoder]] = {}
        for contract in registry.all():
            self._index(contract)
        for writer in self._writers.values():
            current = self._current[writer.event_type]
            decoder = compile_decoder(writer.parsed, None if writer is current else current.parsed)
            if decoder is not None and self._by_fingerprint[writer.fingerprint] is writer:
                self._decoders[writer.fingerprint] = decoder
                self._fast_readers[writer.fingerprint] = (writer.event_type, decoder)

    def _index(self, contract: Contract) -> None:
        for version in contract.versions:
            raw = contract.raw_schema(version)
            fp = schema_fingerprint(raw)
            writer = WriterSchema(contract.event_type, version, contract.schema(version), fp, SINGLE_OBJECT_MAGIC + fp)
            self._writers[(contract.event_type, version)] = writer
            self._by_fingerprint.setdefault(fp, writer)
            validator = Validator(raw, f"{contract.event_type} v{version}")
            self._validators[(contract.event_type, version)] = validator
            self._plans[(contract.event_type, version)] = _Plan(writer, validator, compile_encoder(writer.parsed))
        self._current[contract.event_type] = self._writers[(contract.event_type, contract.current_version)]
        self._current_plans[contract.event_type] = self._plans[(contract.event_type, contract.current_version)]

    # ------------------------------------------------------------------ encoding
    def encode(
        self, event_type: str, value: dict[str, Any], version: int | None = None, validate: bool = True
    ) -> bytes:
        """Serialise ``value`` with the current (or given) schema version.

        With ``validate`` the value is checked first and refused with a :class:`ContractViolation`
        naming every bad field: fastavro alone would silently truncate, coerce or drop data.
        """
        plan = self._current_plans.get(event_type) if version is None else self._plans.get((event_type, version))
        if plan is None:
            self._writer(event_type, version)  # raises, naming the known event types or versions
            raise ContractError(f"{event_type}: no schema version {version}")
        writer = plan.writer
        if plan.quick_check(value):
            # Certainly valid, in exact builtin types: the generated encoder writes what fastavro would.
            header = writer.header if self._client is None else self._confluent_header(writer)
            if plan.encoder is not None:
                try:
                    return plan.encoder(value, header)
                except Exception:  # noqa: BLE001 - a value the generated code leaves to fastavro (see codegen)
                    pass
        else:
            if validate:
                plan.validator.validate(value)
            header = writer.header if self._client is None else self._confluent_header(writer)
        out = BytesIO()
        out.write(header)
        try:
            fastavro.schemaless_writer(out, writer.parsed, value)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            # Only reachable with validate=False: report it in the same terms as the validator
            # (field paths and types; fastavro's own message may quote the value).
            plan.validator.validate(value)
            raise ContractError(f"{event_type} v{writer.version}: cannot encode value ({type(exc).__name__})") from None
        return out.getvalue()

    def validate(self, event_type: str, value: dict[str, Any], version: int | None = None) -> None:
        """Raise :class:`ContractViolation` if ``value`` does not fit the (current) schema."""
        plan = self._current_plans.get(event_type) if version is None else self._plans.get((event_type, version))
        if plan is None:
            writer = self._writer(event_type, version)
            self._validators[(event_type, writer.version)].validate(value)
            return
        plan.validator.validate(value)

    def fingerprint(self, event_type: str, version: int | None = None) -> bytes:
        return self._writer(event_type, version).fingerprint

    def _writer(self, event_type: str, version: int | None) -> WriterSchema:
        writer = self._current.get(event_type) if version is None else self._writers.get((event_type, version))
        if writer is None:
            # Let the registry raise: its errors name the known event types and versions.
            self.registry.get(event_type).schema(version)
            raise ContractError(f"{event_type}: no schema version {version}")
        return writer

    # ------------------------------------------------------------------ decoding
    def decode(self, event_type: str, data: bytes) -> dict[str, Any]:
        """Deserialise bytes written with any known version of ``event_type`` into the current one."""
        if data.__class__ is not bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(
                "record has no value (tombstone)" if data is None else f"not bytes: {type(data).__name__}"
            )
        if data.__class__ is bytes and data[:2] == SINGLE_OBJECT_MAGIC:
            known = self._fast_readers.get(data[2:_SINGLE_OBJECT_HEADER])
            if known is not None and known[0] == event_type:
                try:
                    value, end = known[1](data, _SINGLE_OBJECT_HEADER)
                except Exception:  # noqa: BLE001 - corrupt, or bytes the generated code leaves to fastavro: see below
                    pass
                else:
                    if end == len(data):
                        return value
        writer, offset = self._writer_of(data)
        if writer.event_type != event_type:
            raise DecodeError(
                f"expected a {event_type} event, but the bytes were written with {writer.event_type} v{writer.version}"
            )
        return self._read(writer, self._current[event_type], data, offset)

    def decode_any(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Identify the event type from the framing and decode with that type's current schema."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(
                "record has no value (tombstone)" if data is None else f"not bytes: {type(data).__name__}"
            )
        writer, offset = self._writer_of(data)
        return writer.event_type, self._read(writer, self._current[writer.event_type], data, offset)

    def _writer_of(self, data: bytes) -> tuple[WriterSchema, int]:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < _SINGLE_OBJECT_HEADER:
                raise DecodeError(f"truncated single-object header: {len(data)} bytes, need {_SINGLE_OBJECT_HEADER}")
            writer = self._by_fingerprint.get(bytes(data[2:_SINGLE_OBJECT_HEADER]))
            if writer is None:
                raise DecodeError(
                    f"unknown schema fingerprint {bytes(data[2:10]).hex()}: not a version of any contract"
                )
            return writer, _SINGLE_OBJECT_HEADER
        if data[:1] == b"\x00":
            if len(data) < _CONFLUENT_HEADER:
                raise DecodeError(f"truncated Confluent header: {len(data)} bytes, need {_CONFLUENT_HEADER}")
            return self._writer_for_id(_SCHEMA_ID.unpack_from(data, 1)[0]), _CONFLUENT_HEADER
        raise DecodeError(
            f"unknown magic bytes {bytes(data[:2]).hex() or '(empty)'}: "
            "expected c301 (Avro single-object) or 00 (Confluent)"
        )

    def _read(self, writer: WriterSchema, reader: WriterSchema, data: bytes, offset: int) -> dict[str, Any]:
        decoder = self._decoders.get(writer.fingerprint)
        if decoder is not None and data.__class__ is bytes and self._by_fingerprint.get(writer.fingerprint) is writer:
            try:
                value, end = decoder(data, offset)
            except Exception:  # noqa: BLE001 - corrupt, or bytes the generated code leaves to fastavro (see codegen)
                pass
            else:
                if end == len(data):
                    return value
        stream = BytesIO(data)
        stream.seek(offset)
        try:
            value = fastavro.schemaless_reader(stream, writer.parsed, None if writer is reader else reader.parsed)
        except (
            EOFError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            UnicodeDecodeError,
            struct.error,
            OverflowError,
            MemoryError,
        ) as exc:
            # fastavro's message quotes the bytes (a UnicodeDecodeError carries the whole broken
            # string: an email address, a card token); say where and of what type instead.
            where = locate_corruption(writer.parsed, data, offset) or f"unreadable ({type(exc).__name__})"
            raise DecodeError(f"truncated or corrupt body for {writer.event_type} v{writer.version}: {where}") from None
        except Exception as exc:  # noqa: BLE001 - whatever else odd bytes make fastavro raise: the input's fault
            where = locate_corruption(writer.parsed, data, offset) or f"unreadable ({type(exc).__name__})"
            raise DecodeError(f"truncated or corrupt body for {writer.event_type} v{writer.version}: {where}") from None
        if stream.tell() != len(data):
            raise DecodeError(
                f"{len(data) - stream.tell()} trailing byte(s) after a {writer.event_type} v{writer.version} body: "
                "corrupt or wrong schema"
            )
        return cast(dict[str, Any], value)  # a contract's schema is a record

    # ------------------------------------------------------------------ Confluent Schema Registry
    def _confluent_header(self, writer: WriterSchema) -> bytes:
        return b"\x00" + _SCHEMA_ID.pack(self._schema_id(writer))

    def _schema_id(self, writer: WriterSchema) -> int:
        key = (writer.event_type, writer.version)
        schema_id = self._ids.get(key)
        if schema_id is None:
            from confluent_kafka.schema_registry import Schema

            contract = self.registry.get(writer.event_type)
            schema_str = json.dumps(contract.raw_schema(writer.version))
            schema_id = self._client.register_schema(f"{contract.topic}-value", Schema(schema_str, "AVRO"))
            self._ids[key] = schema_id
            self._by_id[schema_id] = writer
        return schema_id

    def _writer_for_id(self, schema_id: int) -> WriterSchema:
        writer = self._by_id.get(schema_id)
        if writer is not None:
            return writer
        if self._client is None:
            raise DecodeError(f"Confluent-framed bytes (schema id {schema_id}) but no Schema Registry is configured")
        try:
            schema = self._client.get_schema(schema_id)
        except Exception as exc:  # the client raises its own error types and transport errors
            raise DecodeError(f"schema id {schema_id}: not found in the Schema Registry: {exc}") from exc
        writer = self._writer_from_registry(schema_id, schema.schema_str)
        self._by_id[schema_id] = writer
        return writer

    def _writer_from_registry(self, schema_id: int, schema_str: str) -> WriterSchema:
        """A registry schema is ours when its fingerprint matches a contract version; else, by the
        record's full name, an unknown (e.g. newer) version of a known event, resolved like any other."""
        raw = json.loads(schema_str)
        fp = schema_fingerprint(raw)
        known = self._by_fingerprint.get(fp)
        if known is not None:
            return known
        fullname = _fullname(raw)
        for event_type, current in self._current.items():
            if _fullname(self.registry.get(event_type).raw_schema(current.version)) == fullname:
                parsed = cast(dict[str, Any], fastavro.parse_schema(raw))  # a record's parsed schema
                return WriterSchema(event_type, 0, parsed, fp, SINGLE_OBJECT_MAGIC + fp)
        raise DecodeError(f"schema id {schema_id} ({fullname}) is not the schema of any contract")


def _fullname(schema: dict[str, Any]) -> str:
    name = schema.get("name", "")
    return name if "." in name or not schema.get("namespace") else f"{schema['namespace']}.{name}"


def _registry_client(url: str | None) -> Any:
    if url is None:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient({"url": url})
