"""The compiled (Cython) hot-path modules against their pure-Python sources, and the choice
between the two builds (processors/_native.py).

Parity: each compiled module is compared with a second copy of the same module executed from its
``.py`` (under another name, so both are loaded at once) on hypothesis corpora that include
hostile input (header lists with repeated, oversized, non-UTF-8 or NULL-named entries, random bytes
fed to the Avro decoders, lone surrogates in ids, deep JSON state). Same value, or the same
exception type and message. Skipped for a module whose compiled build is not in use (not built, or
``CHOREO_PURE_PYTHON=1``): then the whole suite runs on the sources themselves.

Choice: a module that was built is the one imported (never silently the ``.py``), unless the
environment forces the pure build or its source changed since it was built.
"""

from __future__ import annotations

import ast
import ctypes
import dataclasses
import datetime as dt
import functools
import importlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors import _native
from tests.unit.avro_strategies import values_for

REPO = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------- the two builds
def compiled(name: str) -> ModuleType:
    """The module as imported (the compiled build when it is in use)."""
    return importlib.import_module(name)


@functools.cache
def pure(name: str) -> ModuleType:
    """A second copy of the module, executed from its ``.py`` under the name ``_pure_<name>``."""
    alias = "_pure_" + name.replace(".", "_")
    spec = importlib.util.spec_from_file_location(alias, _native.source_path(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def both(name: str) -> tuple[ModuleType, ModuleType]:
    """(compiled, pure) copies of ``name``; skips when the compiled build is not the one in use."""
    module = compiled(name)
    if not _native.is_compiled(module):
        pytest.skip(f"{name}: the compiled build is not in use ({_native.summary()})")
    return module, pure(name)


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What a call gives: ("ok", value) or ("raised", exception class name, message). The two
    builds define their own exception classes of the same name (codegen's Fallback), hence names."""
    try:
        return "ok", fn(*args)
    except Exception as exc:  # noqa: BLE001 - comparing whatever either build raises
        return "raised", (type(exc).__qualname__, str(exc))


def same(name: str, function: str, *args: Any, convert: Callable[[Any], Any] = lambda v: v) -> None:
    fast, slow = both(name)
    got, want = outcome(getattr(fast, function), *args), outcome(getattr(slow, function), *args)
    if got[0] == "ok" and want[0] == "ok":
        got, want = ("ok", convert(got[1])), ("ok", convert(want[1]))
    assert got == want, f"{name}.{function}{args!r}"


# ---------------------------------------------------------------------------- the choice
def test_setup_py_builds_exactly_the_modules_the_runtime_chooses_between():
    tree = ast.parse((REPO / "setup.py").read_text())
    listed = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NATIVE_MODULES" for t in node.targets)
    )
    assert tuple(listed) == _native.NATIVE_MODULES
    for module in listed:
        assert _native.source_path(module).is_file(), module


def test_a_built_module_is_the_one_in_use_unless_pure_is_forced_or_its_source_changed():
    built = _native.read_manifest()
    choices = {c.module: c for c in _native.choose()}
    if _native.forced_pure():
        assert not any(_native.in_use().values()), "CHOREO_PURE_PYTHON=1 but a compiled module was imported"
        assert "pure Python" in _native.summary()
        return
    if not built:
        pytest.skip("no compiled build in this install (processors/_native.json absent or empty)")
    used = _native.in_use()
    for module in built:
        if choices[module].compiled:
            assert used[module], f"{module} was built from this source but its .py was imported"
        else:  # only for a stated reason, which the version line shows
            assert choices[module].reason in _native.summary()
    # a compiled file beside a source that the manifest does not vouch for is never imported
    for module, choice in choices.items():
        if not choice.compiled:
            assert not used[module], module


def test_pure_python_is_forced_by_the_environment():
    probe = (
        "import importlib, processors._native as n; "
        "mods = [importlib.import_module(m) for m in n.NATIVE_MODULES]; "
        "print(all(m.__file__.endswith('.py') for m in mods)); print(n.summary())"
    )
    env = {**os.environ, "CHOREO_PURE_PYTHON": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    every_py, line = result.stdout.splitlines()
    assert every_py == "True"
    assert line == "hot path: pure Python (CHOREO_PURE_PYTHON=1)"


SO = "ids" + importlib.machinery.EXTENSION_SUFFIXES[0]  # this interpreter's name for a compiled ids


def _fake_build(root: Path, source: str = "X = 1\n", so: str = SO) -> Path:
    (root / "contracts").mkdir(parents=True, exist_ok=True)
    py = root / "contracts" / "ids.py"
    py.write_text(source)
    (root / "contracts" / so).write_bytes(b"\x7fELF")
    manifest = {"processors.contracts.ids": {"file": so, "sha256": _digest(py)}}
    (root / "_native.json").write_text(json.dumps({"modules": manifest}))
    return py


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_choice_rules(tmp_path):
    mods = ("processors.contracts.ids",)
    py = _fake_build(tmp_path)
    assert _native.choose(mods, env={}, root=tmp_path) == [_native.Choice(mods[0], True, "")]
    forced = _native.choose(mods, env={"CHOREO_PURE_PYTHON": "1"}, root=tmp_path)
    assert forced == [_native.Choice(mods[0], False, "CHOREO_PURE_PYTHON=1")]
    assert _native.choose(mods, env={"CHOREO_PURE_PYTHON": "0"}, root=tmp_path)[0].compiled
    py.write_text("X = 2\n")  # edited after the build: the stale build must not shadow it
    assert "source changed" in _native.choose(mods, env={}, root=tmp_path)[0].reason
    py.write_text("X = 1\n")
    (tmp_path / "contracts" / SO).unlink()
    assert _native.choose(mods, env={}, root=tmp_path)[0].reason == "compiled file missing"
    _fake_build(tmp_path, so="ids.cpython-20-other.so")  # an editable tree built by another Python
    assert _native.choose(mods, env={}, root=tmp_path)[0].reason == "compiled for another interpreter"
    (tmp_path / "_native.json").write_text("{not json")
    assert _native.choose(mods, env={}, root=tmp_path)[0].reason == "not compiled"


# ---------------------------------------------------------------------------- ids
hostile_text = st.text(alphabet=st.characters(codec=None), max_size=40)  # lone surrogates included


@SETTINGS
@given(st.binary(max_size=200), hostile_text, hostile_text, st.integers(-(10**20), 10**20))
def test_ids(data, a, b, n):
    ids = "processors.contracts.ids"
    same(ids, "uuid_from_sha1", data)
    same(ids, "derived_id", a)
    same(ids, "emit_key", a, b, "order.created", n)
    same(ids, "emit_key_suffix", a, b)
    same(ids, "child_key", a, b)
    same(ids, "audit_id", a, b, "PROCESSED")
    same(ids, "audit_id_prefix", b)
    same(ids, "timer_id", a, b, "timeout", n)
    same(ids, "coordinates_id", a, n, n)


# ---------------------------------------------------------------------------- envelope
ENVELOPE = "processors.contracts.envelope"
KNOWN = [
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_specversion",
    "ce_time",
    "ce_idempotencykey",
    "content-type",
    "ce_correlationid",
    "ce_causationid",
    "ce_tenant",
    "ce_hopcount",
    "traceparent",
    "tracestate",
    "ce_roottime",
]
GOOD = {
    "ce_id": b"e1",
    "ce_type": b"order.created",
    "ce_source": b"/shop",
    "ce_specversion": b"1.0",
    "ce_time": b"2026-12-02T06:00:00.123Z",
    "ce_idempotencykey": b"k1",
    "ce_correlationid": b"c1",
    "ce_hopcount": b"3",
    "traceparent": b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": b"a=b",
    "ce_roottime": b"1764655200123",
}
hostile_value = st.one_of(
    st.none(),
    st.binary(max_size=30),
    st.text(max_size=30),
    st.sampled_from(
        [
            b"",
            b"\xff\xfe",
            b"x" * 1025,
            "y" * 1025,
            b"1.0",
            b"2.0",
            b"2026-12-02T06:00:00Z",
            b"2026-12-02 06:00:00",
            b"2026-12-02T06:00:00+05:30",
            b"2026-12-02",
            "\u0661\u0662",
            b"9999999",
            b"-1",
            b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01",
            b"12345678901234567",
        ]
    ),
    st.integers(),
)
edits = st.lists(st.tuples(st.sampled_from([*KNOWN, "other", "x-extra"]), hostile_value), max_size=6)


def _fields(envelope: Any) -> tuple:
    return tuple(getattr(envelope, f.name) for f in dataclasses.fields(envelope))


def _field_tuple(value: Any) -> Any:
    return value if value is None else tuple(value)


@SETTINGS
@given(edits, st.lists(st.sampled_from(KNOWN), max_size=3), st.booleans(), st.booleans())
def test_envelope_from_headers(extra, dropped, as_text, tail):
    headers: list[Any] = [(k, v.decode() if as_text else v) for k, v in GOOD.items() if k not in dropped]
    headers = headers + extra if tail else extra + headers  # repeated names: which one wins
    same(ENVELOPE, "read_header_fields", list(headers), convert=_field_tuple)
    same(ENVELOPE, "read_header_fields_reference", list(headers), convert=_field_tuple)
    fast, slow = both(ENVELOPE)
    got = outcome(lambda h: _fields(fast.Envelope.from_headers(h)), list(headers))
    want = outcome(lambda h: _fields(slow.Envelope.from_headers(h)), list(headers))
    assert got == want
    got = outcome(lambda h: _fields(fast.Envelope.from_headers(h)), tuple(headers))  # not a list: reference pass
    want = outcome(lambda h: _fields(slow.Envelope.from_headers(h)), tuple(headers))
    assert got == want


def _aware(value: dt.datetime, minutes: int) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone(dt.timedelta(minutes=minutes)) if minutes else dt.UTC)


@SETTINGS
@given(
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.integers(-600, 600),
    st.booleans(),
    hostile_text,
)
def test_envelope_times(value, offset, naive, text):
    moment = value if naive else _aware(value, offset)
    same(ENVELOPE, "format_time", moment)
    same(ENVELOPE, "parse_time", text)
    same(ENVELOPE, "parse_time", moment.isoformat())
    if not naive:
        same(ENVELOPE, "time_ms", moment)


optional_text = st.one_of(st.none(), st.text(max_size=12))


@SETTINGS
@given(
    st.text(min_size=1, max_size=12),
    st.datetimes(timezones=st.just(dt.UTC)),
    optional_text,
    optional_text,
    optional_text,
    st.integers(0, 10**6),
    st.one_of(st.none(), st.integers(0, 10**15)),
)
def test_envelope_to_headers_and_child(text, moment, correlation, tenant, trace, hops, root):
    fast, slow = both(ENVELOPE)
    values: tuple[Any, ...] = (text, "t.x", "/src", moment, text + "k", correlation, None, tenant, hops, trace)
    values += (trace, "application/avro", "1.0", root)
    a, b = fast.build_envelope(*values), slow.build_envelope(*values)
    assert a.to_headers() == b.to_headers()
    assert _fields(a) == _fields(b) == _fields(fast.Envelope(*values))
    assert a.flow_root_ms == b.flow_root_ms
    child_a, child_b = a.child("t.y", "/agent"), b.child("t.y", "/agent")
    skip = {"id", "time"}  # drawn afresh (uuid4, now)
    names = [f.name for f in dataclasses.fields(child_a)]
    assert [getattr(child_a, n) for n in names if n not in skip] == [
        getattr(child_b, n) for n in names if n not in skip
    ]


# ---------------------------------------------------------------------------- codegen (Avro)
CODEGEN = "processors.contracts.codegen"


def _schemas() -> list[tuple[str, Any]]:
    found = sorted((REPO / "schemas").glob("*/v*.avsc"))
    return [(f"{p.parent.name}/{p.stem}", json.loads(p.read_text())) for p in found]


SCHEMAS = _schemas()


@functools.cache
def _codecs(index: int) -> tuple[Any, Any, Any, Any]:
    """(compiled encoder, pure encoder, compiled decoder, pure decoder) of one schema."""
    fast, slow = both(CODEGEN)
    schema = SCHEMAS[index][1]
    return (
        fast.compile_encoder(fastavro.parse_schema(schema)),
        slow.compile_encoder(fastavro.parse_schema(schema)),
        fast.compile_decoder(fastavro.parse_schema(schema)),
        slow.compile_decoder(fastavro.parse_schema(schema)),
    )


@pytest.mark.parametrize("index", range(len(SCHEMAS)), ids=[name for name, _ in SCHEMAS])
@settings(SETTINGS, max_examples=50)  # x every schema version
@given(data=st.data())
def test_avro_encoders_and_decoders(index, data):
    enc_fast, enc_slow, dec_fast, dec_slow = _codecs(index)
    assert (enc_fast is None) == (enc_slow is None) and (dec_fast is None) == (dec_slow is None)
    value = data.draw(values_for(SCHEMAS[index][1]), label="value")
    body = b""
    if enc_fast is not None:
        got, want = outcome(enc_fast, value, b"\x00"), outcome(enc_slow, value, b"\x00")
        assert got == want
        body = got[1][1:] if got[0] == "ok" else body
    if dec_fast is not None:
        assert outcome(dec_fast, body, 0) == outcome(dec_slow, body, 0)
        hostile = data.draw(
            st.one_of(
                st.binary(max_size=64),
                st.builds(lambda cut: body[:cut], st.integers(0, max(len(body) - 1, 0))),  # truncated
                st.builds(lambda i, b: body[:i] + bytes([b]) + body[i + 1 :], st.integers(0, 64), st.integers(0, 255)),
                st.just(body + b"\xff" * 11),  # an over-long varint after the value
            ),
            label="hostile bytes",
        )
        assert outcome(dec_fast, hostile, 0) == outcome(dec_slow, hostile, 0)


@SETTINGS
@given(st.integers(-(2**63), 2**63 - 1), st.binary(min_size=1, max_size=12), st.integers(0x80, 0xFF))
def test_avro_varints(n, data, first):
    same(CODEGEN, "zigzag_varint", n)
    same(CODEGEN, "zigzag", n)
    same(CODEGEN, "_varint", abs(n))
    same(CODEGEN, "read_varint", data, 0, first)


AUDIT_SCHEMA = json.loads((REPO / "schemas" / "audit.record" / "v1.avsc").read_text())
audit_text = st.text(max_size=30)
audit_opt = st.one_of(st.none(), audit_text)
audit_records = st.fixed_dictionaries(
    {
        "agent_name": audit_text,
        "agent_version": audit_text,
        "worker_id": audit_text,
        "input_event_id": audit_text,
        "input_event_type": audit_text,
        "topic": audit_text,
        "partition": st.integers(-(2**31), 2**31 - 1),
        "offset": st.integers(-(2**63), 2**63 - 1),
        "outcome": st.sampled_from(["PROCESSED", "DUPLICATE", "DEAD_LETTERED"]),
        "state_before": audit_opt,
        "state_after": audit_opt,
        "emitted_event_ids": st.lists(audit_text, max_size=4),
        "correlation_id": audit_opt,
        "received_at": st.integers(-(2**63), 2**63 - 1),
        "handled_at": st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(2**63, 2**64)),  # out of range too
        "error": audit_opt,
    }
)


@SETTINGS
@given(audit_records)
def test_audit_writer(record):
    fast, slow = both(CODEGEN)
    assert outcome(fast.compile_writer(AUDIT_SCHEMA), record) == outcome(slow.compile_writer(AUDIT_SCHEMA), record)


# ---------------------------------------------------------------------------- audit
AUDIT = "processors.runtime.audit"
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
names = st.sampled_from(["card_token", "email", "total", "items", "name", "address"])
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=20,
)
states = st.one_of(st.none(), st.dictionaries(names, json_values, max_size=5))


@SETTINGS
@given(states, states, st.lists(st.sampled_from(["card_token", "items[].email", "a.b.address", ""]), max_size=3))
def test_audit_state(before, after, pii):
    fast, slow = both(AUDIT)
    same(AUDIT, "state_diff", before, after)
    red_fast, red_slow = fast.Redactor(pii), slow.Redactor(pii)
    assert outcome(fast.state_json, after, red_fast) == outcome(slow.state_json, after, red_slow)
    for method in ("touches", "redact", "secrets_in"):
        assert outcome(getattr(red_fast, method), after) == outcome(getattr(red_slow, method), after)
    secrets = red_slow.secrets_in(after)
    message = json.dumps(after)
    assert red_fast.scrub(message, secrets) == red_slow.scrub(message, secrets)


def test_audit_state_too_large_to_show():
    fast, slow = both(AUDIT)
    state = {f"f{i}": "x" * 3000 for i in range(60)}
    assert fast.state_json(state, fast.Redactor([])) == slow.state_json(state, slow.Redactor([]))
    assert json.loads(fast.state_json(state, fast.Redactor([])))["truncated"] is True


# ---------------------------------------------------------------------------- emitter
@SETTINGS
@given(
    st.one_of(st.none(), st.text(max_size=10), st.binary(max_size=10)),
    st.dictionaries(st.sampled_from(["order_id", "x"]), st.one_of(st.none(), st.integers(), st.text(max_size=5))),
    st.one_of(st.none(), hostile_text),
    optional_text,
    st.integers(0, 100),
)
def test_emitter_build(key, value, idempotency_key, tenant, ordinal):
    fast, slow = both("processors.runtime.emitter")
    envelope = importlib.import_module(ENVELOPE)
    cause = envelope.Envelope.from_headers(list(GOOD.items()))
    now = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)
    results = []
    for module in (fast, slow):
        plan = module.EmitPlan("orders.out", "order_id", b"\x1fagent\x1ftype\x1f")
        emitter = module.Emitter("agent", "/agent", _NoCodec(), {"t": plan}, ("t",))
        made = outcome(emitter.build, plan, cause, "t", key, value, b"data", idempotency_key, tenant, ordinal, now)
        if made[0] == "ok":
            made = ("ok", (*_fields(made[1])[:4], _fields(made[1].envelope), made[1].data))
        results.append((made, str(emitter.undeclared("u"))))
    assert results[0] == results[1]


class _NoCodec:
    """Emitter.build never encodes (the context hands it the bytes); the emitter only keeps this."""

    def encode(self, event_type: str, value: dict[str, Any]) -> bytes:  # pragma: no cover - not called
        raise AssertionError("not called")


# ---------------------------------------------------------------------------- slotted
@dataclasses.dataclass(frozen=True, slots=True)
class _Point:
    x: Any
    y: Any
    label: str = ""


@SETTINGS
@given(json_leaf, json_leaf, st.text(max_size=5))
def test_slot_builder(x, y, label):
    fast, slow = both("processors.contracts.slotted")
    a, b = fast.slot_builder(_Point)(x, y, label), slow.slot_builder(_Point)(x, y, label)
    assert type(a) is type(b) is _Point and a == b == _Point(x, y, label)
    assert outcome(fast.slot_builder, dict) == outcome(slow.slot_builder, dict)  # not a dataclass: refused alike


# ---------------------------------------------------------------------------- kafka_types
class _Record:
    """What the header reader calls: ``headers()`` (a consumed message's accessor), or a failure."""

    def __init__(self, found: Any) -> None:
        self.found = found

    def headers(self) -> Any:
        if isinstance(self.found, Exception):
            raise self.found
        return self.found


def _null_name(value: bytes | None) -> tuple:
    """A pair whose name slot is NULL, as confluent-kafka leaves it for a non-UTF-8 name (see
    test_kafka_types_headers.py; the name object is leaked on purpose)."""
    pair = tuple(["n" + "", value])
    ctypes.c_void_p.from_address(id(pair) + tuple.__basicsize__).value = None
    return pair


header_lists = st.lists(
    st.one_of(
        st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=8))),
        st.tuples(st.text(max_size=3)),
        st.lists(st.binary(max_size=3), max_size=3),
        st.none(),
    ),
    max_size=10,
)


@SETTINGS
@given(st.one_of(st.none(), header_lists), st.lists(st.integers(0, 9), max_size=2), st.booleans())
def test_kafka_headers(found, nulls, raising):
    fast, slow = both("processors.kafka_types")
    if found is not None:
        for i in nulls:
            if found and isinstance(found[i % len(found)], tuple) and len(found[i % len(found)]) == 2:
                found[i % len(found)] = _null_name(None)
    record = _Record(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad") if raising else found)
    got, want = fast.headers(record), slow.headers(record)
    assert [type(h) for h in got] == [type(h) for h in want] and len(got) == len(want)
    if got and got[0] is not want[0]:  # the unreadable marker, made afresh by each build
        assert got == want == [(fast.UNREADABLE_HEADERS, fast.UNREADABLE_NOTE)]
    else:  # the client's own pairs, by identity: a NULL-named pair must never be touched
        assert all(a is b for a, b in zip(got, want, strict=True))
    assert outcome(fast.unreadable, want) == outcome(slow.unreadable, want)


# ---------------------------------------------------------------------------- state store
STORE = "processors.runtime.state.store"
store_keys = st.one_of(
    st.builds(lambda p, k: p + k, st.sampled_from([b"s\x00", b"d\x00", b"T\x00", b"m\x00"]), st.binary(max_size=4)),
    st.binary(max_size=3),
)
store_values = st.one_of(st.none(), st.binary(min_size=0, max_size=12))
batches = st.lists(st.lists(st.tuples(store_keys, store_values), max_size=8), max_size=5)


@SETTINGS
@given(batches, st.integers(0, 2**64 - 1))
def test_store_batches(ops, now_ms):
    fast, slow = both(STORE)
    seen = []
    for module in (fast, slow):
        store = module.MemoryStore()
        trace: list[Any] = []
        for i, batch in enumerate(ops):
            view = module.BatchView(store)
            for key, value in batch:
                trace.append(view.get(key))
                view.put(key, value)
                trace.append(view.get(key))
            trace.append(outcome(store.apply, view.writes, i, view.reads))
            trace.append(outcome(lambda v: v.changelog_offset, view))
        trace.append(store.items())
        trace.append(outcome(store.due_timers, now_ms, 10))
        trace.append(outcome(store.expired_seen_keys, now_ms, 10))
        trace.append(list(store.range(b"\x00", b"\xff")))
        seen.append(trace)
    assert seen[0] == seen[1]


def test_rocks_store_round_trip(tmp_path):
    fast, slow = both(STORE)
    results = []
    for module, where in ((fast, tmp_path / "fast"), (slow, tmp_path / "slow")):
        store = module.RocksStore(where)
        try:
            view = module.BatchView(store)
            for i in range(20):
                view.put(b"s\x00" + bytes([i]), bytes([i]) * i)
            view.put(b"d\x00" + bytes([i]), (1000 + i).to_bytes(8, "big"))
            view.put(b"s\x00\x03", None)
            store.apply(view.writes, 7, view.reads)
            got = (store.get(b"s\x00\x05"), list(store.range(b"s\x00", b"s\x01")), store.changelog_offset)
            results.append((*got, store.expired_seen_keys(1010, 100)))
        finally:
            store.close()
    assert results[0] == results[1]


# ---------------------------------------------------------------------------- processor, context
# The per-record engine (``_processor`` drives ``context``) is compared as a whole: the golden
# scenario (tests/unit/engine_golden.py: processed, duplicate, ignored and dead-lettered inputs,
# retries, timers, PII redaction, tenants, trace context, JSON audit, the bench workloads) is run
# here on the compiled build and in a child process forced pure, and every step's records, store
# writes, audit and dead-letter reasons must be byte-identical. A copy under another name (as
# above) would not do: the Processor builds its context from the ``context`` module it imports.
_GOLDEN_CHILD = (
    "import json, sys; from tests.unit.engine_golden import run_scenarios; "
    "from processors import _native; from processors.runtime import _processor, context; "
    "assert not _native.is_compiled(_processor) and not _native.is_compiled(context); "
    "json.dump(run_scenarios(), sys.stdout)"
)


def test_processor_and_context_compiled_produce_what_the_pure_build_does():
    from processors.runtime import _processor, context
    from tests.unit.engine_golden import run_scenarios

    for module in (_processor, context):
        if not _native.is_compiled(module):
            pytest.skip(f"{module.__name__}: the compiled build is not in use ({_native.summary()})")
    env = {**os.environ, _native.PURE_ENV: "1"}
    child = subprocess.run(
        [sys.executable, "-c", _GOLDEN_CHILD], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    pure_steps, compiled_steps = json.loads(child.stdout), run_scenarios()
    assert [s["label"] for s in compiled_steps] == [s["label"] for s in pure_steps]
    for want, got in zip(pure_steps, compiled_steps, strict=True):
        assert got == want, f"{want['label']}: the compiled build differs"


def test_compiled_processor_keeps_async_handlers_coroutines():
    """The worker tells an ``async def`` handler's path by ``inspect``; Cython's coroutines must
    look like Python's to it and to asyncio, or async agents would run their handlers unawaited."""
    import asyncio
    import inspect

    from processors.runtime import _processor, context

    for module in (_processor, context):
        if not _native.is_compiled(module):
            pytest.skip(f"{module.__name__}: the compiled build is not in use ({_native.summary()})")
    assert inspect.iscoroutinefunction(_processor.Processor.invoke_async)
    assert inspect.iscoroutinefunction(_processor.Processor._run_async)
    coro = _processor.Processor.invoke_async(None, None, None, None)  # type: ignore[arg-type]
    try:
        assert asyncio.iscoroutine(coro) and inspect.isawaitable(coro)
    finally:
        coro.close()
