"""The compiled audit writer must write exactly what the contracts codec writes."""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.contracts.codegen import compile_writer

REPO = Path(__file__).resolve().parents[2]
AUDIT = json.loads((REPO / "schemas" / "audit.record" / "v1.avsc").read_text())
PARSED = fastavro.parse_schema(AUDIT)
ENCODE = compile_writer(AUDIT)

text = st.text(max_size=40)
opt = st.one_of(st.none(), text)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "agent_name": text,
            "agent_version": text,
            "worker_id": text,
            "input_event_id": text,
            "input_event_type": text,
            "topic": text,
            "partition": ints,
            "offset": longs,
            "outcome": st.sampled_from(["PROCESSED", "DUPLICATE", "DEAD_LETTERED"]),
            "state_before": opt,
            "state_after": opt,
            "emitted_event_ids": st.lists(text, max_size=5),
            "correlation_id": opt,
            "received_at": longs,
            "handled_at": longs,
            "error": opt,
        }
    )
)
def test_compiled_writer_matches_fastavro(record):
    import io

    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, record)
    assert ENCODE(record) == out.getvalue()


def test_nested_schemas_write_what_fastavro_writes():
    import io

    schema = {
        "type": "record",
        "name": "Outer",
        "fields": [
            {
                "name": "inner",
                "type": {"type": "record", "name": "Inner", "fields": [{"name": "b", "type": "boolean"}]},
            },
            {"name": "tags", "type": {"type": "array", "items": "long"}},
            {"name": "maybe", "type": ["null", "long", "string"]},
        ],
    }
    parsed = fastavro.parse_schema(schema)
    encode = compile_writer(schema)
    for value in (
        {"inner": {"b": True}, "tags": [1, -300], "maybe": None},
        {"inner": {"b": False}, "tags": [], "maybe": "x"},
        {"inner": {"b": False}, "tags": [7], "maybe": 2**40},
    ):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, value)
        assert encode(value) == out.getvalue()
