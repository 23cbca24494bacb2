"""Schema compatibility: the 175 cases ported from the Apache Avro and Confluent Schema Registry
suites, then our own table of the changes teams actually make, with the exact path and kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from processors.contracts import MODES, SchemaParseError, check_compatibility
from processors.contracts.compat import can_read

# The 175 cases ported from the Apache Avro and Confluent Schema Registry suites: the team's shared
# copy when it sits beside the repo, else the copy vendored in tests/data (so a bare clone runs them).
_SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "testdata" / "avro-compat-cases.json"
TESTDATA = _SHARED if _SHARED.is_file() else Path(__file__).resolve().parents[1] / "data" / "avro-compat-cases.json"
CASES: dict[str, Any] = json.loads(TESTDATA.read_text()) if TESTDATA.is_file() else {"pairs": [], "modes": []}
needs_table = pytest.mark.skipif(not TESTDATA.is_file(), reason=f"shared compatibility table not found at {TESTDATA}")

# The Python port of Apache's suite expects location "/" for these: its checker drops the location
# when a *writer* union is read by a non-union reader. Java (and so the Confluent registry) reports
# the failing writer branch, e.g. avro-java-008 expects "/fields/0/type/0"; we follow Java.
JAVA_LOCATIONS = {"avro-py-131": ["/3"], "avro-py-132": ["/1"], "avro-py-133": ["/1"]}


def test_table_is_complete() -> None:
    if not TESTDATA.is_file():
        pytest.skip(f"shared compatibility table not found at {TESTDATA}")
    assert len(CASES["pairs"]) + len(CASES["modes"]) == 175


@needs_table
@pytest.mark.parametrize("case", CASES["pairs"], ids=[c["id"] for c in CASES["pairs"]])
def test_reader_writer_pairs(case: dict[str, Any]) -> None:
    problems = can_read(case["reader"], case["writer"])
    assert (not problems) == case["compatible"], [str(p) for p in problems]
    expected = case.get("incompatibility")
    if expected:
        kinds = expected.get("types") or [expected["type"]]
        assert sorted({p.kind for p in problems}) == sorted(set(kinds))
        assert sorted(p.location for p in problems) == sorted(JAVA_LOCATIONS.get(case["id"], expected["locations"]))


@needs_table
@pytest.mark.parametrize("case", CASES["modes"], ids=[c["id"] for c in CASES["modes"]])
def test_mode_cases(case: dict[str, Any]) -> None:
    # The table lists previous versions oldest first; our API takes them newest first.
    result = check_compatibility(case["new"], list(reversed(case["previous"])), case["mode"])
    assert result.compatible == case["compatible"], [str(p) for p in result.problems]


# ---------------------------------------------------------------------- our own table
def record(
    *fields: dict[str, Any], name: str = "Order", namespace: str = "io.choreo.t", **extra: Any
) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": namespace,
        "fields": [{"name": "id", "type": "string"}, *fields],
        **extra,
    }


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(*symbols: str, **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "Reason", "symbols": list(symbols), **extra}


def address(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": "Address", "fields": [f("city", "string"), *fields]}


BASE = record()
# (id, new, old, mode, compatible, [(direction, path, kind)] expected when incompatible)
OWN: list[tuple[str, Any, Any, str, bool, list[tuple[str, str, str]]]] = [
    ("add field with default, full", record(f("note", "string", default="")), BASE, "FULL", True, []),
    (
        "add field without default, backward",
        record(f("note", "string")),
        BASE,
        "BACKWARD",
        False,
        [("backward", "note", "READER_FIELD_MISSING_DEFAULT_VALUE")],
    ),
    ("add field without default, forward", record(f("note", "string")), BASE, "FORWARD", True, []),
    ("remove field with default, full", BASE, record(f("note", "string", default="")), "FULL", True, []),
    ("remove field without default, backward", BASE, record(f("note", "string")), "BACKWARD", True, []),
    (
        "remove field without default, forward",
        BASE,
        record(f("note", "string")),
        "FORWARD",
        False,
        [("forward", "note", "READER_FIELD_MISSING_DEFAULT_VALUE")],
    ),
    ("int to long, backward", record(f("n", "long")), record(f("n", "int")), "BACKWARD", True, []),
    (
        "int to long, forward",
        record(f("n", "long")),
        record(f("n", "int")),
        "FORWARD",
        False,
        [("forward", "n", "TYPE_MISMATCH")],
    ),
    ("long to float, backward", record(f("n", "float")), record(f("n", "long")), "BACKWARD", True, []),
    ("float to double, backward", record(f("n", "double")), record(f("n", "float")), "BACKWARD", True, []),
    ("int to double, backward", record(f("n", "double")), record(f("n", "int")), "BACKWARD", True, []),
    (
        "double to float, backward",
        record(f("n", "float")),
        record(f("n", "double")),
        "BACKWARD",
        False,
        [("backward", "n", "TYPE_MISMATCH")],
    ),
    (
        "long to int, backward",
        record(f("n", "int")),
        record(f("n", "long")),
        "BACKWARD",
        False,
        [("backward", "n", "TYPE_MISMATCH")],
    ),
    ("string to bytes, full", record(f("s", "bytes")), record(f("s", "string")), "FULL", True, []),
    ("bytes to string, full", record(f("s", "string")), record(f("s", "bytes")), "FULL", True, []),
    (
        "string to int, backward",
        record(f("s", "int")),
        record(f("s", "string")),
        "BACKWARD",
        False,
        [("backward", "s", "TYPE_MISMATCH")],
    ),
    ("enum symbol added, backward", record(f("r", enum("A", "B"))), record(f("r", enum("A"))), "BACKWARD", True, []),
    (
        "enum symbol added, forward",
        record(f("r", enum("A", "B"))),
        record(f("r", enum("A"))),
        "FORWARD",
        False,
        [("forward", "r", "MISSING_ENUM_SYMBOLS")],
    ),
    (
        "enum symbol added, old reader has default",
        record(f("r", enum("A", "U", "B", default="U"))),
        record(f("r", enum("A", "U", default="U"))),
        "FULL",
        True,
        [],
    ),
    (
        "enum symbol removed, backward",
        record(f("r", enum("A"))),
        record(f("r", enum("A", "B"))),
        "BACKWARD",
        False,
        [("backward", "r", "MISSING_ENUM_SYMBOLS")],
    ),
    (
        "enum symbol removed, new reader has default",
        record(f("r", enum("A", "U", default="U"))),
        record(f("r", enum("A", "U", "B"))),
        "BACKWARD",
        True,
        [],
    ),
    (
        "union branch added, backward",
        record(f("u", ["null", "string", "int"], default=None)),
        record(f("u", ["null", "string"], default=None)),
        "BACKWARD",
        True,
        [],
    ),
    (
        "union branch added, forward",
        record(f("u", ["null", "string", "int"], default=None)),
        record(f("u", ["null", "string"], default=None)),
        "FORWARD",
        False,
        [("forward", "u <writer branch 2>", "MISSING_UNION_BRANCH")],
    ),
    (
        "union branch removed, backward",
        record(f("u", ["null", "string"], default=None)),
        record(f("u", ["null", "string", "int"], default=None)),
        "BACKWARD",
        False,
        [("backward", "u <writer branch 2>", "MISSING_UNION_BRANCH")],
    ),
    ("plain to nullable, backward", record(f("s", ["null", "string"])), record(f("s", "string")), "BACKWARD", True, []),
    (
        "plain to nullable, forward",
        record(f("s", ["null", "string"])),
        record(f("s", "string")),
        "FORWARD",
        False,
        [("forward", "s <writer branch 0>", "TYPE_MISMATCH")],
    ),
    (
        "nested field added without default",
        record(f("a", address(f("zip", "string")))),
        record(f("a", address())),
        "BACKWARD",
        False,
        [("backward", "a.zip", "READER_FIELD_MISSING_DEFAULT_VALUE")],
    ),
    (
        "nested field added with default",
        record(f("a", address(f("zip", "string", default="")))),
        record(f("a", address())),
        "FULL",
        True,
        [],
    ),
    (
        "nested in nullable union",
        record(f("a", ["null", address(f("zip", "string"))], default=None)),
        record(f("a", ["null", address()], default=None)),
        "BACKWARD",
        False,
        [("backward", "a <writer branch 1>", "MISSING_UNION_BRANCH")],
    ),
    (
        "array items widened",
        record(f("xs", {"type": "array", "items": "long"})),
        record(f("xs", {"type": "array", "items": "int"})),
        "BACKWARD",
        True,
        [],
    ),
    (
        "array items narrowed",
        record(f("xs", {"type": "array", "items": "int"})),
        record(f("xs", {"type": "array", "items": "long"})),
        "BACKWARD",
        False,
        [("backward", "xs[]", "TYPE_MISMATCH")],
    ),
    (
        "array of records field added",
        record(f("xs", {"type": "array", "items": address(f("zip", "string"))})),
        record(f("xs", {"type": "array", "items": address()})),
        "BACKWARD",
        False,
        [("backward", "xs[].zip", "READER_FIELD_MISSING_DEFAULT_VALUE")],
    ),
    (
        "map values changed",
        record(f("m", {"type": "map", "values": "string"})),
        record(f("m", {"type": "map", "values": "int"})),
        "BACKWARD",
        False,
        [("backward", "m{}", "TYPE_MISMATCH")],
    ),
    (
        "map values widened",
        record(f("m", {"type": "map", "values": "double"})),
        record(f("m", {"type": "map", "values": "int"})),
        "BACKWARD",
        True,
        [],
    ),
    (
        "fixed size changed",
        record(f("h", {"type": "fixed", "name": "Hash", "size": 32})),
        record(f("h", {"type": "fixed", "name": "Hash", "size": 16})),
        "BACKWARD",
        False,
        [("backward", "h", "FIXED_SIZE_MISMATCH")],
    ),
    (
        "fixed renamed",
        record(f("h", {"type": "fixed", "name": "Digest", "size": 16})),
        record(f("h", {"type": "fixed", "name": "Hash", "size": 16})),
        "BACKWARD",
        False,
        [("backward", "h", "NAME_MISMATCH")],
    ),
    (
        "field renamed with alias, backward",
        record(f("total", "long", aliases=["amount"])),
        record(f("amount", "long")),
        "BACKWARD",
        True,
        [],
    ),
    (
        "field renamed with alias, forward",
        record(f("total", "long", aliases=["amount"])),
        record(f("amount", "long")),
        "FORWARD",
        False,
        [("forward", "amount", "READER_FIELD_MISSING_DEFAULT_VALUE")],
    ),
    (
        "record renamed without alias",
        record(name="Purchase"),
        BASE,
        "BACKWARD",
        False,
        [("backward", "<root>", "NAME_MISMATCH")],
    ),
    (
        "record renamed with full alias",
        record(name="Purchase", aliases=["io.choreo.t.Order"]),
        BASE,
        "BACKWARD",
        True,
        [],
    ),
    (
        "record renamed with short alias (Java qualifies it)",
        record(name="Purchase", aliases=["Order"]),
        BASE,
        "BACKWARD",
        True,
        [],
    ),
    ("namespace changed (names match unqualified)", record(namespace="io.choreo.v2"), BASE, "FULL", True, []),
    ("mode NONE accepts anything", {"type": "int"}, BASE, "NONE", True, []),
]


@pytest.mark.parametrize("case", OWN, ids=[c[0] for c in OWN])
def test_own_table(case: tuple[str, Any, Any, str, bool, list[tuple[str, str, str]]]) -> None:
    _, new, old, mode, compatible, expected = case
    result = check_compatibility(new, [old], mode)
    assert result.compatible is compatible, [str(p) for p in result.problems]
    assert [(p.direction, p.path, p.kind) for p in result.problems] == expected


V1 = record(f("a", "int"))
V2 = record(f("a", "int"), f("b", "string", default=""))
V3 = record(f("b", "string", default=""), f("c", "long"))


def test_transitive_modes_compare_with_every_previous_version() -> None:
    # v3 drops `a`, which the v1 and v2 readers require, and adds `c` without a default.
    assert not check_compatibility(V3, [V2, V1], "BACKWARD").compatible  # c lacks a default
    fwd = check_compatibility(V3, [V2, V1], "FORWARD")
    fwd_t = check_compatibility(V3, [V2, V1], "FORWARD_TRANSITIVE")
    assert [(p.against_version_index, p.path) for p in fwd.problems] == [(0, "a")]
    assert [(p.against_version_index, p.path) for p in fwd_t.problems] == [(0, "a"), (1, "a")]


def test_non_transitive_mode_ignores_older_versions() -> None:
    v3 = record(f("a", "int"), f("b", "string", default=""), f("c", "long", default=0))
    older_incompatible = record(f("a", "string"))
    assert check_compatibility(v3, [V2, older_incompatible], "BACKWARD").compatible
    result = check_compatibility(v3, [V2, older_incompatible], "BACKWARD_TRANSITIVE")
    assert [(p.against_version_index, p.path, p.reason) for p in result.problems] == [
        (1, "a", "reader type: int not compatible with writer type: string")
    ]


def test_recursive_schemas_terminate() -> None:
    def node(value_type: str) -> dict[str, Any]:
        return {
            "type": "record",
            "name": "Node",
            "fields": [f("v", value_type), f("next", ["null", "Node"], default=None)],
        }

    assert check_compatibility(node("long"), [node("int")], "BACKWARD").compatible
    result = check_compatibility(node("long"), [node("int")], "FORWARD")
    assert [(p.path, p.kind) for p in result.problems] == [
        ("v", "TYPE_MISMATCH"),
        ("next <writer branch 1>", "MISSING_UNION_BRANCH"),
    ]


def test_reasons_are_readable() -> None:
    [problem] = check_compatibility(
        record(f("r", enum("A"))), [record(f("r", enum("A", "C", "B")))], "BACKWARD"
    ).problems
    assert problem.reason == "reader enum lacks symbol(s) B, C the writer may write (or give the reader enum a default)"
    assert str(problem) == f"backward vs previous[0] at r: {problem.reason}"


def test_invalid_input() -> None:
    with pytest.raises(SchemaParseError, match="previous\\[0\\]: invalid Avro schema"):
        check_compatibility(BASE, [{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}], "FULL")
    with pytest.raises(ValueError, match="unknown compatibility mode 'SIDEWAYS'"):
        check_compatibility(BASE, [BASE], "SIDEWAYS")
    assert MODES == (
        "NONE",
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
    )
