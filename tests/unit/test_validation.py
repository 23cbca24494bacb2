"""The validator: every problem, with its exact path, expected type and found value."""

from __future__ import annotations

import datetime as dt
import decimal
import re

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
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {"type": "record", "name": "Line", "fields": [{"name": "qty", "type": "int"}]},
            },
        },
        {"name": "note", "type": ["null", "string"], "default": None},
        {
            "name": "address",
            "type": ["null", {"type": "record", "name": "Addr", "fields": [{"name": "city", "type": "string"}]}],
            "default": None,
        },
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
    "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
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
    """The problems as ``--show-pii`` output renders them (with the offending values)."""
    return [p.with_value() for p in V.problems(value)]


def plain_messages(value: dict) -> list[str]:
    """The problems as every message carries them: paths and types, no values."""
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
        (
            "total",
            2**63,
            "total: expected long in [-9223372036854775808, 9223372036854775807], got long 9223372036854775808",
        ),
        ("ratio", "1.5", 'ratio: expected double, got string "1.5"'),
        ("flag", 1, "flag: expected boolean, got int 1"),
        ("blob", "x", 'blob: expected bytes, got string "x"'),
        ("kind", "C", 'kind: expected one of Kind (A, B), got string "C"'),
        ("digest", b"abc", "digest: expected fixed Digest (4 bytes), got bytes of length 3"),
        ("at", "2024-01-01", 'at: expected timestamp-millis (datetime or int), got string "2024-01-01"'),
        (
            "day",
            dt.datetime(2024, 1, 1),
            "day: expected date (date or int), got datetime datetime.datetime(2024, 1, 1, 0, 0)",
        ),
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
    [plain] = plain_messages({**GOOD, field: value})
    # the message names the path, what was expected and the type found, never the value itself
    head, _, found = plain.partition(", got ")
    assert head == message.partition(", got ")[0]
    assert not found or TYPE_ONLY.fullmatch(found), found


TYPE_ONLY = re.compile(
    r"null|boolean|int|long|float|datetime|string of \d+ character\(s\)|bytes of length \d+|array of length \d+"
    r"|map of \d+ entr(y|ies)|empty map|decimal with too many digits"
)


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
    assert (problem.path, problem.expected, problem.found) == ("lines[2].qty", "int", "string of 1 character(s)")
    assert problem.shown == 'string "3"'


def test_a_card_number_in_a_token_field_never_reaches_the_message() -> None:
    """Publish validation errors name the field path and the types: `card_token: expected string,
    got long 4111…` put a card number in terminals and logs."""
    schema = {"type": "record", "name": "Pay", "fields": [{"name": "card_token", "type": "string"}]}
    with pytest.raises(ContractViolation) as info:
        Validator(schema, "pay").validate({"card_token": 4111111111111111})
    assert "4111" not in str(info.value)
    assert "card_token: expected string, got long" in str(info.value)
    assert "4111111111111111" in info.value.with_values()  # what --show-pii shows


def test_a_non_record_value_and_violation_message() -> None:
    with pytest.raises(ContractViolation) as info:
        V.validate([1])
    expected = (
        "thing: value does not match its schema (1 problem(s)):\n"
        "  <value>: expected record Thing, got array of length 1"
    )
    assert str(info.value) == expected
    assert info.value.subject == "thing"


def test_recursive_schema() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "value", "type": "int"}, {"name": "next", "type": ["null", "Node"], "default": None}],
    }
    validator = Validator(node)
    assert validator.problems({"value": 1, "next": {"value": 2, "next": None}}) == []
    assert [str(p) for p in validator.problems({"value": 1, "next": {"value": "2"}})] == [
        "next.value: expected int, got string of 1 character(s)"
    ]


# ---------------------------------------------------------------------- quick check vs the walker
from typing import Any  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from processors.contracts import ContractRegistry  # noqa: E402
from tests.unit.avro_strategies import values_for  # noqa: E402

REGISTRY = ContractRegistry.load()
RAW_SCHEMAS = [(f"{c.event_type}-v{v}", c.raw_schema(v)) for c in REGISTRY.all() for v in c.versions]
EXTRA = {
    "type": "record",
    "name": "Extra",
    "namespace": "x",
    "fields": [
        {"name": "f", "type": "float"},
        {"name": "b", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "d", "type": {"type": "fixed", "name": "D", "size": 2}},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}},
        {"name": "m", "type": {"type": "map", "values": ["null", {"type": "array", "items": "long"}]}},
        {"name": "u", "type": ["string", "null"], "default": "s"},
        {"name": "again", "type": ["null", "E", "D"], "default": None},
        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(dt.datetime(2024, 1, 1)),
    st.just(dt.date(2024, 1, 1)),
    st.just(("X",)),
)


def _mutate(value: Any, data: st.DataObject, depth: int = 0) -> Any:
    """``value`` with at most a few random changes: a node swapped for junk, a key dropped or added."""
    if data.draw(st.integers(0, 9)) == 0:
        return data.draw(_JUNK)
    if isinstance(value, dict) and value and depth < 6:
        out = dict(value)
        key = data.draw(st.sampled_from(sorted(out, key=str)))
        action = data.draw(st.sampled_from(["recurse", "recurse", "drop", "add"]))
        if action == "drop":
            del out[key]
        elif action == "add":
            out[data.draw(st.text(max_size=3))] = data.draw(_JUNK)
        else:
            out[key] = _mutate(out[key], data, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 6:
        items = list(value)
        index = data.draw(st.integers(0, len(items) - 1))
        items[index] = _mutate(items[index], data, depth + 1)
        return items
    return value


def _agree(validator: Validator, value: Any) -> None:
    problems = validator._check(value) or []
    assert validator.quick_check(value) is (not problems), (value, problems)
    assert validator.problems(value) == problems


@pytest.mark.parametrize(
    "name,raw", RAW_SCHEMAS + [("extra", EXTRA), ("thing", SCHEMA)], ids=lambda x: x if isinstance(x, str) else ""
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_quick_check_agrees_with_the_walker(name: str, raw: dict, data: st.DataObject) -> None:
    """On values of exact builtin types the generated check says valid exactly when the reference
    walker finds no problem, for valid values and for randomly broken ones."""
    validator = Validator(raw, name)
    value = data.draw(values_for(raw))
    _agree(validator, value)
    _agree(validator, _mutate(value, data))


def test_quick_check_is_conservative_and_the_walker_decides() -> None:
    class Sub(dict):
        pass

    value = {**GOOD, "lines": [Sub(qty=1)]}
    assert not V.quick_check(value)
    assert V.problems(value) == []
    V.validate(value)
    assert V.quick_check(GOOD)
    assert not V.quick_check({**GOOD, "count": True})


def test_quick_check_of_a_recursive_schema_and_a_twice_defined_name() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "value", "type": "int"}, {"name": "next", "type": ["null", "Node"], "default": None}],
    }
    validator = Validator(node)
    assert validator.quick_check({"value": 1, "next": {"value": 2, "next": None}})
    assert not validator.quick_check({"value": 1, "next": {"value": "2"}})
    twice = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "a", "type": {"type": "enum", "name": "E", "symbols": ["A"]}},
            {"name": "b", "type": {"type": "enum", "name": "E", "symbols": ["B"]}},
            {"name": "c", "type": "E"},
        ],
    }
    validator = Validator(twice)
    assert validator.quick_check(1) is False  # no generated check: the walker alone
    assert validator.problems({"a": "A", "b": "B", "c": "B"}) == []
