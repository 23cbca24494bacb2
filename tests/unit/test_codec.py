"""The codec: round trips for every schema, framing checked byte by byte, bytes readable by an
independent Avro implementation (Apache ``avro``), old writers resolved against the new reader."""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from typing import Any

import avro.io
import avro.schema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.contracts import AvroCodec, ContractError, ContractRegistry, ContractViolation, DecodeError
from tests.unit.avro_strategies import values_for

REGISTRY = ContractRegistry.load()
CODEC = AvroCodec(REGISTRY)
SCHEMA_VERSIONS = [(c.event_type, v) for c in REGISTRY.all() for v in c.versions]
UTC = dt.UTC

ORDER_V1 = {
    "order_id": "ord-1",
    "customer_id": "cus-9",
    "customer_email": "ada@example.com",
    "card_token": "tok_123",
    "items": [
        {"sku": "SKU-1", "qty": 2, "unit_price_minor": 1299},
        {"sku": "SKU-2", "qty": 1, "unit_price_minor": 500},
    ],
    "total_minor": 3098,
    "currency": "EUR",
    "created_at": dt.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC),
}


# ---------------------------------------------------------------------- CRC-64-AVRO from the spec
_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _table()


def rabin64(data: bytes) -> bytes:
    """CRC-64-AVRO exactly as the Avro specification's reference code, little-endian on the wire."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def independent_canonical_form(raw: dict[str, Any]) -> str:
    """Apache avro's canonical form, normalised: it renders a primitive carrying a logical type as
    ``{"type":"long"}`` where the spec ([PRIMITIVES] rule) and Java write ``"long"``."""
    return (
        avro.schema.parse(json.dumps(raw))
        .canonical_form.replace('{"type":"long"}', '"long"')
        .replace('{"type":"int"}', '"int"')
    )


def apache_decode(raw_schema: dict[str, Any], body: bytes) -> Any:
    schema = avro.schema.parse(json.dumps(raw_schema))
    return avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(body)))


def with_current_defaults(event_type: str, value: dict[str, Any]) -> dict[str, Any]:
    """What reading ``value`` with the current schema yields: fields it lacks take their default."""
    current = REGISTRY.get(event_type).raw_schema()
    return {f["name"]: value.get(f["name"], f.get("default")) for f in current["fields"]}


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("event_type,version", SCHEMA_VERSIONS, ids=[f"{t}-v{v}" for t, v in SCHEMA_VERSIONS])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_schema(event_type: str, version: int, data: st.DataObject) -> None:
    raw = REGISTRY.get(event_type).raw_schema(version)
    value = data.draw(values_for(raw))
    encoded = CODEC.encode(event_type, value, version=version)
    assert CODEC.decode(event_type, encoded) == with_current_defaults(event_type, value)
    assert CODEC.decode_any(encoded) == (event_type, with_current_defaults(event_type, value))


@pytest.mark.parametrize("event_type,version", SCHEMA_VERSIONS, ids=[f"{t}-v{v}" for t, v in SCHEMA_VERSIONS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_single_object_bytes_read_by_apache_avro(event_type: str, version: int, data: st.DataObject) -> None:
    raw = REGISTRY.get(event_type).raw_schema(version)
    value = data.draw(values_for(raw))
    encoded = CODEC.encode(event_type, value, version=version)
    assert encoded[:2] == b"\xc3\x01"
    assert encoded[2:10] == rabin64(independent_canonical_form(raw).encode())
    assert apache_decode(raw, encoded[10:]) == value


def test_fingerprint_matches_the_spec_algorithm_on_known_vectors() -> None:
    # Reference values from the Avro specification's test data (CRC-64-AVRO of primitive schemas).
    assert rabin64(b'"int"') == (0x7275D51A3F395C8F).to_bytes(8, "little")
    assert rabin64(b'"string"') == (0x8F014872634503C7).to_bytes(8, "little")
    assert CODEC.fingerprint("order.created", 1) == rabin64(
        independent_canonical_form(REGISTRY.get("order.created").raw_schema(1)).encode()
    )


def test_exact_bytes_of_a_small_event() -> None:
    value = {"order_id": "o1", "total_minor": -3, "currency": "EUR", "confirmed_at": 1}
    encoded = CODEC.encode("order.confirmed", value)
    fp = CODEC.fingerprint("order.confirmed")
    # "o1" = len 2 (zigzag 04) + bytes; -3 zigzag = 05; "EUR" = 06 + bytes; 1 ms zigzag = 02.
    assert encoded == b"\xc3\x01" + fp + b"\x04o1" + b"\x05" + b"\x06EUR" + b"\x02"


# ---------------------------------------------------------------------- schema evolution
def test_v1_writer_is_resolved_against_the_v2_reader_with_defaults() -> None:
    encoded = CODEC.encode("order.created", ORDER_V1, version=1)
    assert encoded[2:10] == CODEC.fingerprint("order.created", 1) != CODEC.fingerprint("order.created", 2)
    decoded = CODEC.decode("order.created", encoded)
    assert decoded == {**ORDER_V1, "shipping_address": None, "promo_code": None}


def test_current_version_is_written_by_default() -> None:
    value = {**ORDER_V1, "promo_code": "SPRING"}
    encoded = CODEC.encode("order.created", value)
    assert encoded[2:10] == CODEC.fingerprint("order.created", 2)
    assert CODEC.decode("order.created", encoded) == {**value, "shipping_address": None}


# ---------------------------------------------------------------------- Confluent wire format
class FakeSchemaRegistry:
    """In-process stand-in for SchemaRegistryClient: ids by subject and schema text."""

    def __init__(self, first_id: int = 100_000) -> None:
        self.next_id = first_id
        self.by_id: dict[int, Any] = {}
        self.registered: list[tuple[str, int]] = []

    def register_schema(self, subject_name: str, schema: Any, normalize_schemas: bool = False) -> int:
        for schema_id, known in self.by_id.items():
            if known.schema_str == schema.schema_str:
                self.registered.append((subject_name, schema_id))
                return schema_id
        schema_id, self.next_id = self.next_id, self.next_id + 1
        self.by_id[schema_id] = schema
        self.registered.append((subject_name, schema_id))
        return schema_id

    def get_schema(self, schema_id: int, subject_name: str | None = None, fmt: str | None = None) -> Any:
        return self.by_id[schema_id]


def test_confluent_framing_byte_by_byte() -> None:
    fake = FakeSchemaRegistry(first_id=0x01020304)
    codec = AvroCodec(REGISTRY, schema_registry_client=fake)
    value = {"order_id": "o1", "total_minor": -3, "currency": "EUR", "confirmed_at": 1}
    encoded = codec.encode("order.confirmed", value)
    assert encoded == b"\x00" + b"\x01\x02\x03\x04" + b"\x04o1\x05\x06EUR\x02"
    assert fake.registered == [("order.confirmed-value", 0x01020304)]
    assert json.loads(fake.by_id[0x01020304].schema_str) == REGISTRY.get("order.confirmed").raw_schema()
    assert fake.by_id[0x01020304].schema_type == "AVRO"
    assert codec.decode("order.confirmed", encoded) == {
        **value,
        "confirmed_at": dt.datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
    }
    codec.encode("order.confirmed", value)
    assert len(fake.registered) == 1, "the schema id is cached after the first registration"


def test_confluent_decode_looks_up_unknown_ids_and_resolves_old_writers() -> None:
    fake = FakeSchemaRegistry()
    writer = AvroCodec(REGISTRY, schema_registry_client=fake)
    encoded = writer.encode("order.created", ORDER_V1, version=1)
    assert encoded[:5] == b"\x00" + struct.pack(">I", 100_000)
    reader = AvroCodec(REGISTRY, schema_registry_client=fake)  # fresh: knows no ids yet
    assert reader.decode_any(encoded) == ("order.created", {**ORDER_V1, "shipping_address": None, "promo_code": None})


def test_confluent_bytes_without_a_registry_are_refused() -> None:
    with pytest.raises(DecodeError, match=r"schema id 7\) but no Schema Registry is configured"):
        CODEC.decode("order.created", b"\x00\x00\x00\x00\x07\x02")


# ---------------------------------------------------------------------- errors
def test_invalid_values_are_refused_with_paths() -> None:
    bad = {
        **ORDER_V1,
        "items": [{"sku": "A", "qty": 1, "unit_price_minor": 1}] * 2
        + [{"sku": "C", "qty": "3", "unit_price_minor": 1}],
    }
    del bad["customer_id"]
    with pytest.raises(ContractViolation) as info:
        CODEC.encode("order.created", bad)
    assert [str(p) for p in info.value.problems] == [
        "customer_id: required field missing",
        "items[2].qty: expected int, got string of 1 character(s)",
    ]
    assert info.value.problems[1].with_value() == 'items[2].qty: expected int, got string "3"'


def test_values_fastavro_would_silently_mangle_are_refused() -> None:
    for field, wrong, message in [
        ("total_minor", 3.5, "total_minor: expected long, got float"),
        ("total_minor", "3", "total_minor: expected long, got string of 1 character(s)"),
        ("customer_mail", "x@example.com", "customer_mail: unknown field, not in record OrderCreated"),
    ]:
        with pytest.raises(ContractViolation) as info:
            CODEC.encode("order.created", {**ORDER_V1, field: wrong})
        assert [str(p) for p in info.value.problems] == [message]
    with pytest.raises(
        ContractViolation, match=r"items\[0\]\.qty: expected int in \[-2147483648, 2147483647\], got long\s*$"
    ):
        CODEC.encode("order.created", {**ORDER_V1, "items": [{"sku": "A", "qty": 2**32, "unit_price_minor": 1}]})


def test_encode_without_validation_still_names_the_field_when_fastavro_fails() -> None:
    with pytest.raises(ContractViolation, match=r"currency: expected string, got int\s*$"):
        CODEC.encode("order.created", {**ORDER_V1, "currency": 5}, validate=False)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", r"unknown magic bytes \(empty\)"),
        (b"\x7b\x22a", r"unknown magic bytes 7b22"),
        (b"\xc3\x01\x01\x02", r"truncated single-object header: 4 bytes, need 10"),
        (b"\xc3\x01" + b"\xff" * 8 + b"\x00", r"unknown schema fingerprint ffffffffffffffff"),
        (b"\x00\x00\x01", r"truncated Confluent header: 3 bytes, need 5"),
    ],
)
def test_undecodable_bytes(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        CODEC.decode_any(data)


def test_truncated_and_overlong_bodies() -> None:
    encoded = CODEC.encode("order.created", ORDER_V1, version=1)
    with pytest.raises(DecodeError, match=r"truncated or corrupt body for order.created v1"):
        CODEC.decode("order.created", encoded[:-3])
    with pytest.raises(DecodeError, match=r"2 trailing byte\(s\) after a order.created v1 body"):
        CODEC.decode("order.created", encoded + b"\x00\x00")


def test_decoding_as_the_wrong_event_type_is_refused() -> None:
    encoded = CODEC.encode("order.created", ORDER_V1)
    with pytest.raises(
        DecodeError, match="expected a payment.authorized event, but the bytes were written with order.created v2"
    ):
        CODEC.decode("payment.authorized", encoded)


def test_unknown_event_type_and_version() -> None:
    with pytest.raises(ContractError, match="unknown event type 'order.shipped'"):
        CODEC.encode("order.shipped", {})
    with pytest.raises(ContractError, match=r"order.created: no schema version 9 \(known: \[1, 2\]\)"):
        CODEC.encode("order.created", ORDER_V1, version=9)


# ---------------------------------------------------------------------- generated code vs fastavro
import fastavro  # noqa: E402

from processors.contracts.codegen import compile_decoder, compile_encoder  # noqa: E402

EXTRA = {
    "type": "record",
    "name": "Extra",
    "namespace": "x",
    "fields": [
        {"name": "f", "type": "float"},
        {"name": "g", "type": "double"},
        {"name": "b", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "d", "type": {"type": "fixed", "name": "D", "size": 2}},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y", "Z"]}},
        {"name": "m", "type": {"type": "map", "values": ["null", {"type": "array", "items": "long"}]}},
        {"name": "u", "type": ["string", "null"]},
        {"name": "again", "type": ["null", "E"], "default": None},
        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "nested", "type": {"type": "array", "items": {"type": "array", "items": "string"}}},
    ],
}


def fastavro_bytes(parsed: dict[str, Any], value: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, value)
    return out.getvalue()


def fastavro_read(writer: dict[str, Any], body: bytes, reader: dict[str, Any] | None = None) -> Any:
    stream = io.BytesIO(body)
    value = fastavro.schemaless_reader(stream, writer, reader)
    assert stream.tell() == len(body)
    return value


CODEGEN_SCHEMAS: list[tuple[str, Any, Any]] = [
    (f"{t}-v{v}", REGISTRY.get(t).raw_schema(v), REGISTRY.get(t).schema(v)) for t, v in SCHEMA_VERSIONS
]
CODEGEN_SCHEMAS.append(("extra", EXTRA, fastavro.parse_schema(EXTRA, _force=True)))


@pytest.mark.parametrize("name,raw,parsed", CODEGEN_SCHEMAS, ids=[c[0] for c in CODEGEN_SCHEMAS])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_encoder_and_decoder_match_fastavro(name: str, raw: dict, parsed: dict, data: st.DataObject) -> None:
    encode, decode = compile_encoder(parsed), compile_decoder(parsed)
    assert encode is not None and decode is not None, "every contract schema gets generated code"
    value = data.draw(values_for(raw))
    body = fastavro_bytes(parsed, value)
    assert encode(value, b"HDR") == b"HDR" + body
    try:
        expected = fastavro_read(parsed, body)
    except (ValueError, OverflowError) as exc:  # an int that is no date: the same converter fails
        with pytest.raises(type(exc)):
            decode(b"HDR" + body, 3)
        return
    assert decode(b"HDR" + body, 3) == (expected, 3 + len(body))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_resolution_matches_fastavro(data: st.DataObject) -> None:
    old, new = REGISTRY.get("order.created").schema(1), REGISTRY.get("order.created").schema(2)
    decode = compile_decoder(old, new)
    assert decode is not None
    body = fastavro_bytes(old, data.draw(values_for(REGISTRY.get("order.created").raw_schema(1))))
    value, end = decode(body, 0)
    expected = fastavro_read(old, body, new)
    assert (value, list(value), end) == (expected, list(expected), len(body))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupt_bytes_decode_exactly_as_with_fastavro(data: st.DataObject) -> None:
    """Flipped, cut or appended bytes: the codec's answer (value or DecodeError) is fastavro's."""
    event_type, version = data.draw(st.sampled_from(SCHEMA_VERSIONS))
    contract = REGISTRY.get(event_type)
    mutated = bytearray(CODEC.encode(event_type, data.draw(values_for(contract.raw_schema(version))), version=version))
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(10, max(10, len(mutated) - 1)))
        if index < len(mutated):
            mutated[index] = data.draw(st.integers(0, 255))
    encoded = bytes(mutated[: data.draw(st.integers(10, len(mutated)))]) + data.draw(st.binary(max_size=2))
    writer, current = contract.schema(version), contract.schema()
    try:
        expected: Any = fastavro_read(writer, encoded[10:], None if version == contract.current_version else current)
    except AssertionError:
        expected = "trailing"
    except Exception:  # noqa: BLE001 - whatever fastavro raises, the codec must refuse the bytes too
        expected = "refused"
    try:
        got: Any = CODEC.decode(event_type, encoded)
    except DecodeError as exc:
        got = "trailing" if "trailing byte" in str(exc) else "refused"
        # named by field path and type, never by the bytes (fastavro's repr quoted them)
        assert "\\x" not in str(exc) and "b'" not in str(exc) and 'b"' not in str(exc)
    if expected == "refused":
        # bytes with two defects (a value fastavro cannot convert, then a trailing byte): both refuse,
        # each may name the other defect first
        assert got in ("refused", "trailing")
    else:
        assert got == expected


def test_generated_encoder_leaves_unusual_values_to_fastavro() -> None:
    parsed: Any = fastavro.parse_schema(EXTRA, _force=True)
    encode = compile_encoder(parsed)
    assert encode is not None
    value = {
        "f": 1e300,  # fastavro writes inf into a float field; the generated code refuses
        "g": 1,
        "b": True,
        "raw": bytearray(b"ab"),
        "d": b"xy",
        "e": "Z",
        "m": {"k": None},
        "u": None,
        "when": 5,
        "day": dt.date(2024, 1, 1),
        "nested": [],
    }
    with pytest.raises(Exception):  # noqa: B017 - whatever it raises, the codec then hands the value to fastavro
        encode(value, b"")
    encode({**value, "f": 1.5}, b"")  # fine otherwise
    # Through the codec a float32 overflow or an absent non-null default still goes through fastavro.
    codec_value = {
        "order_id": "o1",
        "total_minor": -3,
        "currency": "EUR",
        "confirmed_at": dt.datetime(2024, 1, 1, tzinfo=UTC),
    }
    assert CODEC.encode("order.confirmed", codec_value) == CODEC.fingerprint("order.confirmed").join(
        [b"\xc3\x01", b""]
    ) + fastavro_bytes(REGISTRY.get("order.confirmed").schema(), codec_value)


def test_a_timestamp_beyond_datetime_range_is_a_decode_error_not_a_crash() -> None:
    """fastavro raises OverflowError converting such a timestamp; the engine dead-letters only
    DecodeError as undecodable, so the codec must say DecodeError."""
    contract = REGISTRY.get("order.confirmed")
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body,
        fastavro.parse_schema(
            {
                **contract.raw_schema(),
                "fields": [
                    {**f, "type": "long"} if f["name"] == "confirmed_at" else f for f in contract.raw_schema()["fields"]
                ],
            }
        ),
        {"order_id": "o", "total_minor": 1, "currency": "EUR", "confirmed_at": 2**62},
    )
    framed = b"\xc3\x01" + CODEC.fingerprint("order.confirmed") + body.getvalue()
    message = r"truncated or corrupt body for order.confirmed v1: unreadable \(OverflowError\)"
    with pytest.raises(DecodeError, match=message):
        CODEC.decode("order.confirmed", framed)
