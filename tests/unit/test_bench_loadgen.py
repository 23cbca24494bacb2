"""The benchmark load generator's pure parts: the token bucket, the pacer, the encoded events, and
the peers' workload codec agreeing with ours."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402

# The peers' module is named `common` in their venvs; load it under a name that shadows nothing.
_spec = importlib.util.spec_from_file_location("bench_peer_common", BENCH / "peers" / "common.py")
assert _spec is not None and _spec.loader is not None
peer_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer_common)

from processors.contracts import AvroCodec, ContractRegistry, Envelope  # noqa: E402
from processors.contracts.ids import child_key as derive_key  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def test_bucket_starts_full_then_makes_the_caller_wait_one_interval_per_token():
    clock = FakeClock()
    bucket = loadgen.TokenBucket(rate=100, burst=5, clock=clock)
    assert [bucket.acquire() for _ in range(5)] == [0.0] * 5
    assert bucket.acquire() == pytest.approx(0.01)
    assert bucket.acquire() == pytest.approx(0.02)  # debt accumulates until time passes
    clock.now += 0.03
    assert bucket.acquire() == pytest.approx(0.0, abs=1e-9)


def test_bucket_never_banks_more_than_its_burst():
    clock = FakeClock()
    bucket = loadgen.TokenBucket(rate=10, burst=2, clock=clock)
    clock.now += 100  # idle for a long time
    assert bucket.acquire() == 0.0
    assert bucket.acquire() == 0.0
    assert bucket.acquire() == pytest.approx(0.1)


def test_bucket_refuses_a_nonsensical_rate_or_burst():
    with pytest.raises(ValueError):
        loadgen.TokenBucket(rate=0)
    with pytest.raises(ValueError):
        loadgen.TokenBucket(rate=10, burst=0.5)


@pytest.mark.parametrize("rate", [50.0, 1_000.0, 20_000.0])
def test_pacer_offers_the_target_rate(rate: float):
    clock = FakeClock()
    pacer = loadgen.Pacer(rate, clock=clock, sleep=clock.sleep, min_sleep=0.001)
    sent = 0
    while clock.now < 2.0:
        pacer.wait()
        sent += 1
    # Over 2 s the offered rate is the target, give or take the initial burst and one sleep.
    assert sent / 2.0 == pytest.approx(rate, rel=0.02, abs=2)


def test_pacer_coalesces_sleeps_at_high_rates():
    clock = FakeClock()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)

    pacer = loadgen.Pacer(100_000, clock=clock, sleep=sleep, min_sleep=0.001)
    for _ in range(10_000):
        pacer.wait()
    assert sleeps and min(sleeps) >= 0.001
    assert len(sleeps) < 200  # not one syscall per event


def test_events_are_valid_contract_events_with_envelope_headers_and_the_chosen_key():
    codec = AvroCodec(ContractRegistry.load())
    spec = loadgen.LoadSpec("t", events=100, keys=50, skew=1.1)
    source = loadgen.EventSource(spec, codec)
    customers = set()
    for _ in range(100):
        key, value, headers = source.next()
        order = codec.decode("order.created", value)
        codec.validate("order.created", order)  # what skipping the validator at encode relies on
        envelope = Envelope.from_headers(headers)
        assert envelope.type == "order.created" and envelope.idempotency_key == order["order_id"]
        assert key == order["customer_id"]
        customers.add(key)
    assert 1 < len(customers) <= 50
    by_order = loadgen.EventSource(loadgen.LoadSpec("t", events=1, key_by="order"), codec)
    key, value, _ = by_order.next()
    assert key == codec.decode("order.created", value)["order_id"]


def test_zipf_keys_are_skewed_and_uniform_keys_are_not():
    def top_share(skew: float) -> float:
        source = loadgen.EventSource(loadgen.LoadSpec("t", events=2000, keys=1000, skew=skew))
        counts: dict[str, int] = {}
        for _ in range(2000):
            key = source.next()[0]
            counts[key] = counts.get(key, 0) + 1
        return max(counts.values()) / 2000

    assert top_share(1.1) > 0.05 > top_share(0.0)


def test_load_stats_report_the_mean_event_size():
    stats = loadgen.LoadStats()
    stats.add("k1", b"x" * 100, [("ce_id", b"abc")])
    stats.add("k2", b"x" * 200, [("ce_id", b"abcdef")])
    stats.elapsed_s = 2.0
    summary = stats.summary()
    assert summary["mean_value_bytes"] == 150
    assert summary["mean_header_bytes"] == (8 + 11) / 2
    assert summary["mean_event_bytes"] == 150 + 9.5 + 2
    assert summary["events_per_s"] == 1.0


def test_peer_codec_reads_our_bytes_and_writes_bytes_we_read():
    codec = AvroCodec(ContractRegistry.load())
    peer = peer_common.Workload("peer")
    key, value, headers = loadgen.EventSource(loadgen.LoadSpec("t", events=1), codec).next()
    assert peer.codec.decode_order(value) == codec.decode("order.created", value)
    v1 = codec.encode(
        "order.created",
        {k: v for k, v in codec.decode("order.created", value).items() if k not in ("shipping_address", "promo_code")},
        version=1,
    )
    assert peer.codec.decode_order(v1) == codec.decode("order.created", v1)  # v1 writer resolved to v2

    order = peer.codec.decode_order(value)
    after = peer_common.update_state(None, order)
    assert after == {"orders": 1, "total_minor": order["total_minor"]}
    out, out_headers, audit, audit_headers = peer.outputs(order, headers, "t", 0, 7, None, after, 1)
    confirmed = codec.decode("order.confirmed", out)
    assert confirmed["order_id"] == order["order_id"] and confirmed["total_minor"] == order["total_minor"]
    record = codec.decode("audit.record", audit)
    assert record["offset"] == 7 and record["state_before"] is None and record["outcome"] == "PROCESSED"
    child = Envelope.from_headers(out_headers)
    parent = Envelope.from_headers(headers)
    assert child.idempotency_key == derive_key(parent.idempotency_key, "order.confirmed")
    assert child.causation_id == parent.id and child.hop_count == parent.hop_count + 1
    assert record["emitted_event_ids"] == [child.id]
    Envelope.from_headers(audit_headers)
