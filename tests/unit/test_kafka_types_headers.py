"""The header reader's fast check for a NULL header name (kafka_types._names_missing) agrees with
the per-pair reference check (kafka_types._name_missing) on every shape, NULL slots included."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors import kafka_types

pytestmark = pytest.mark.skipif(not kafka_types._CHECK_SLOTS, reason="the slot check is CPython's")


def _reference(found: list) -> bool:
    return any(kafka_types._name_missing(pair) for pair in found)


def _null_name(name: str, value: bytes | None) -> tuple:
    """A pair whose name slot is NULL, as confluent-kafka builds it for a name that is not UTF-8
    (the name object is leaked on purpose: the slot no longer owns it). Never print or compare it."""
    pair = tuple([name + "", value])
    ctypes.c_void_p.from_address(id(pair) + kafka_types._TUPLE_ITEMS).value = None
    return pair


pairs = st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=8)))
odd = st.one_of(
    st.tuples(st.text(max_size=3)),
    st.tuples(st.text(max_size=3), st.none(), st.none()),
    st.lists(st.binary(max_size=3), max_size=3),
    st.text(max_size=3),
    st.none(),
)


@given(st.lists(st.one_of(pairs, odd), max_size=12), st.lists(st.integers(0, 11), max_size=3))
def test_the_fast_check_agrees_with_the_reference(headers, nulls):
    found = list(headers)
    for i in nulls:
        if found and isinstance(found[i % len(found)], tuple) and len(found[i % len(found)]) == 2:
            found[i % len(found)] = _null_name("n", None)
    fast, reference = kafka_types._names_missing(found), _reference(found)
    assert fast is reference


def test_a_null_name_among_ordinary_headers_is_found():
    found = [("ce_id", b"1"), ("ce_type", b"t"), _null_name("bad", b"v"), ("ce_time", None)]
    missing = kafka_types._names_missing(found)
    assert missing is True
    assert kafka_types._names_missing([("ce_id", b"1"), ("ce_time", None)]) is False
