"""The validator: every problem, with its exact path, expected type and found value."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest

from processors.contracts import ContractViolation, Validator

SCHEMA = {
    "type": "record",
    "name": "Thing",
    "namespace": "t",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "count", "type": "int"},
        {"name": "total", "type": "long", "default": 0},
        {"name": "ratio", "type": "double"},
        {"name": "flag", "type": "boolean"},
        {"name": "blob", "type": "bytes"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "tags", "type": {"type": "map", "values": "int"}},
        {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line", "fields": [{"name": "qty", "type": "int"}]}}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "address", "type": ["null", {"type": "record", "name": "Addr", "fields": [{"name": "city", "type": "string"}]}], "default": None},
        {"name": "other_kind", "type": ["null", "Kind"], "default": None},
        {"name": "number", "type": ["int", "string"], "default": 0},
    ],
}
GOOD = {
    "id": "x",
    "count": 1,
    "ratio": 0.5,
    "flag": True,
    "blob": b"\x00",
    "kind": "A",
    "digest": b"abcd",
    "at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    "day": dt.date(2024, 1, 1),
    "price": decimal.Decimal("123.45"),
    "ref": "6f1c5b7e-39a4-4b8e-9a53-3f0c0e1e4d11",
    "tags": {"a": 1},
    "lines": [{"qty": 1}, {"qty": 2}],
    "address": {"city": "Paris"},
    "other_kind": "B",
}
V = Validator(SCHEMA, "thing")


def messages(value: dict) -> list[str]:
    return [str(p) for p in V.problems(value)]


def test_a_valid_value_has_no_problems() -> None:
    assert V.problems(GOOD) == []
    assert V.problems({**GOOD, "at": 1_700_000_000_000, "day": 19_000, "number": "seven", "ratio": 1}) == []
    V.validate(GOOD)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("id", None, "id: expected string, got null"),
        ("count", "3", 'count: expected int, got string "3"'),
        ("count", True, "count: expected int, got boolean true"),
        ("count", 3.0, "count: expected int, got float 3.0"),
        ("count", 2**31, "count: expected int in [-2147483648, 2147483647], got long 2147483648"),
        ("total", 2**63, "total: expected long in [-9223372036854775808, 9223372036854775807], got long 9223372036854775808"),
        ("ratio", "1.5", 'ratio: expected double, got string "1.5"'),
        ("flag", 1, "flag: expected boolean, got int 1"),
        ("blob", "x", 'blob: expected bytes, got string "x"'),
        ("kind", "C", 'kind: expected one of Kind (A, B), got string "C"'),
        ("digest", b"abc", "digest: expected fixed Digest (4 bytes), got bytes of length 3"),
        ("at", "2024-01-01", 'at: expected timestamp-millis (datetime or int), got string "2024-01-01"'),
        ("day", dt.datetime(2024, 1, 1), "day: expected date (date or int), got datetime datetime.datetime(2024, 1, 1, 0, 0)"),
        ("price", decimal.Decimal("1234.5"), "price: expected decimal(5,2), got decimal 1234.5 (too many digits)"),
        ("price", decimal.Decimal("1.234"), "price: expected decimal(5,2), got decimal 1.234 (too many digits)"),
        ("price", 1.5, "price: expected decimal(5,2), got float 1.5"),
        ("ref", "not-a-uuid", 'ref: expected uuid string, got string "not-a-uuid"'),
        ("tags", {"a": "1"}, 'tags["a"]: expected int, got string "1"'),
        ("tags", [], "tags: expected map of int, got array of length 0"),
        ("lines", [{"qty": 1}, {"qty": "2"}], 'lines[1].qty: expected int, got string "2"'),
        ("lines", [{"qty": 1}, {}], "lines[1].qty: required field missing"),
        ("note", 5, "note: expected null or string, got int 5"),
        ("address", {"city": 1}, "address.city: expected string, got int 1"),
        ("address", "Paris", 'address: expected null or record Addr, got string "Paris"'),
        ("other_kind", "Z", 'other_kind: expected null or one of Kind (A, B), got string "Z"'),
        ("number", 2**40, "number: expected int in [-2147483648, 2147483647], got long 1099511627776"),
    ],
)
def test_each_mismatch_is_reported_with_path_expected_and_found(field: str, value: object, message: str) -> None:
    assert messages({**GOOD, field: value}) == [message]


def test_every_problem_is_reported_not_only_the_first() -> None:
    value = {k: v for k, v in GOOD.items() if k != "id"}
    value.update(count="1", lines=[{"qty": "a"}, {"qty": 1, "extra": 2}], surprise=1)
    assert messages(value) == [
        "id: required field missing",
        'count: expected int, got string "1"',
        'lines[0].qty: expected int, got string "a"',
        "lines[1].extra: unknown field, not in record Line",
        "surprise: unknown field, not in record Thing",
    ]


def test_problem_fields_are_structured() -> None:
    [problem] = V.problems({**GOOD, "lines": [{"qty": 1}, {"qty": 1}, {"qty": "3"}]})
    assert (problem.path, problem.expected, problem.found) == ("lines[2].qty", "int", 'string "3"')


def test_a_non_record_value_and_violation_message() -> None:
    with pytest.raises(ContractViolation) as info:
        V.validate([1])
    assert str(info.value) == "thing: value does not match its schema (1 problem(s)):\n  <value>: expected record Thing, got array of length 1"
    assert info.value.subject == "thing"


def test_recursive_schema() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "value", "type": "int"}, {"name": "next", "type": ["null", "Node"], "default": None}],
    }
    validator = Validator(node)
    assert validator.problems({"value": 1, "next": {"value": 2, "next": None}}) == []
    assert [str(p) for p in validator.problems({"value": 1, "next": {"value": "2"}})] == ['next.value: expected int, got string "2"']
