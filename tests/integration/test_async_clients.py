"""The async clients of the PSP and the delivery sink against the real services (processes of their
own, real HTTP): the same answers and the same error mapping as the sync clients, one pooled session
per event loop, and ``ctx.call_async``'s timeout cancelling a real request whose retry under the
same key gets the first charge."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from processors.agents.gateway import GatewayRejected, GatewayUnavailable, HttpPaymentGateway
from processors.agents.notifications import HttpDeliverySink, SinkRejected
from processors.runtime.dependencies import Dependency, DependencyPolicy, DependencyTimeout
from processors.runtime.retry import CircuitBreaker
from processors.services.process import RunningService, start_service

CARD = "tok_ok_4242async"
EMAIL = "katherine.johnson@example.com"


@pytest.fixture(scope="module")
def psp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    work = tmp_path_factory.mktemp("psp-async")
    service = start_service("psp", work / "psp.sqlite", work / "psp.log", ["--decline-above-minor", "10000"])
    yield service
    service.stop()
    assert "tok_" not in service.log_path.read_text(), "a card token reached the PSP's log"


@pytest.fixture()
def gateway(psp: RunningService) -> Iterator[HttpPaymentGateway]:
    client = HttpPaymentGateway(psp.url, timeout_s=10)
    yield client
    client.close()
    faults(psp.url, latency_ms=0, failure_rate=0, outage_s=0)


def faults(url: str, **values: float) -> None:
    httpx.post(f"{url}/v1/admin/faults", json=values, timeout=10).raise_for_status()


def summary(url: str, prefix: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/ledger", params={"order_prefix": prefix}, timeout=10).json()["summary"]


def test_async_charges_and_refunds_answer_as_the_sync_ones_and_charge_once_per_key(
    psp: RunningService, gateway: HttpPaymentGateway
):
    async def flow() -> None:
        first = await gateway.authorize_async("as-1", 1200, CARD, "EUR", idempotency_key="k-as-1")
        again = await gateway.authorize_async("as-1", 1200, CARD, "EUR", idempotency_key="k-as-1")
        assert first is not None and first.approved and again == first
        declined = await gateway.authorize_async("as-2", 20000, CARD, "EUR", idempotency_key="k-as-2")
        assert declined is not None and declined.decline_reason == "INSUFFICIENT_FUNDS"
        assert await gateway.authorize_async("as-3", 100, "tok_silent_1", "EUR", idempotency_key="k-as-3") is None
        assert await gateway.refund_async("as-1", first.payment_id, 1200, idempotency_key="k-as-r1") is True
        assert await gateway.refund_async("as-1", first.payment_id, 1200, idempotency_key="k-as-r1") is True  # replay
        assert await gateway.refund_async("as-1", first.payment_id, 1200, idempotency_key="k-as-r2") is False
        [charge] = await gateway.charges_of_async("as-1")
        assert charge.payment_id == first.payment_id and charge.refunded
        with pytest.raises(GatewayRejected, match="idempotency key is required"):
            await gateway.authorize_async("as-4", 100, CARD, "EUR")
        await gateway.aclose()

    asyncio.run(flow())
    sync_replay = gateway.authorize("as-1", 1200, CARD, "EUR", idempotency_key="k-as-1")  # the same ledger
    assert sync_replay is not None and sync_replay.approved
    totals = summary(psp.url, "as-")
    assert (totals["approved"], totals["refunds"], totals["double_charges"]) == (1, 1, {})


def test_async_errors_map_as_the_sync_ones(psp: RunningService, gateway: HttpPaymentGateway):
    def sync_error(target: HttpPaymentGateway, key: str) -> str:
        with pytest.raises(Exception) as raised:
            target.authorize(f"am-{key}", 1200, CARD, "EUR", idempotency_key=key)
        return f"{type(raised.value).__name__}: {raised.value}"

    def async_error(target: HttpPaymentGateway, key: str) -> str:
        async def one() -> None:
            await target.authorize_async(f"am-{key}", 1200, CARD, "EUR", idempotency_key=key)

        with pytest.raises(Exception) as raised:
            asyncio.run(one())
        return f"{type(raised.value).__name__}: {raised.value}"

    faults(psp.url, failure_rate=1.0)
    assert (
        sync_error(gateway, "k-am")
        == async_error(gateway, "k-am")
        == "GatewayUnavailable: /v1/charges: 503 transient_failure"
    )
    faults(psp.url, failure_rate=0.0, outage_s=60)
    assert sync_error(gateway, "k-am") == async_error(gateway, "k-am") == "GatewayUnavailable: /v1/charges: 503 outage"
    faults(psp.url, outage_s=0, latency_ms=500)
    impatient = HttpPaymentGateway(psp.url, timeout_s=0.05)
    try:
        expected = "GatewayUnavailable: /v1/charges: no answer in time"
        assert sync_error(impatient, "k-am-slow-1") == async_error(impatient, "k-am-slow-2") == expected
    finally:
        impatient.close()
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gone = HttpPaymentGateway(f"http://127.0.0.1:{port}", timeout_s=2)
    try:
        assert sync_error(gone, "k") == async_error(gone, "k") == "GatewayUnavailable: /v1/charges: could not connect"
    finally:
        gone.close()
    assert summary(psp.url, "am-")["double_charges"] == {}


def test_call_async_timeout_cancels_a_real_request_and_the_retry_with_its_key_gets_the_first_charge(
    psp: RunningService, gateway: HttpPaymentGateway
):
    policy = DependencyPolicy(timeout_s=0.1, min_calls=20)
    dependency = Dependency("payments-t", "psp-t", CircuitBreaker("psp-t", policy), policy)
    faults(psp.url, latency_ms=600)

    async def flow() -> Any:
        with pytest.raises(DependencyTimeout):
            await dependency.call_async(
                "k-cut-1", gateway.authorize_async, ("cut-1", 1200, CARD, "EUR"), {}
            )  # cancelled on our side; the PSP books the charge under the key anyway
        for _ in range(100):  # until the PSP finished the first request (409 while it is in flight)
            try:
                return await gateway.authorize_async("cut-1", 1200, CARD, "EUR", idempotency_key="k-cut-1")
            except GatewayUnavailable:
                await asyncio.sleep(0.05)
        return None

    answer = asyncio.run(flow())
    assert answer is not None and answer.approved
    totals = summary(psp.url, "cut-")
    assert totals["approved"] == 1 and totals["double_charges"] == {} and totals["replayed_requests"] >= 1


def test_one_gateway_serves_successive_event_loops_and_many_calls_at_once(
    psp: RunningService, gateway: HttpPaymentGateway
):
    faults(psp.url, latency_ms=20)

    async def burst(loop_n: int) -> list[bool]:
        answers = await asyncio.gather(
            *(
                gateway.authorize_async(f"lp-{loop_n}-{i}", 100, CARD, "EUR", idempotency_key=f"k-lp-{loop_n}-{i}")
                for i in range(24)
            )
        )
        return [a is not None and a.approved for a in answers]

    for loop_n in range(2):  # a replaced agent session gets a new loop: the gateway must follow it
        assert asyncio.run(burst(loop_n)) == [True] * 24
    totals = summary(psp.url, "lp-")
    assert (totals["approved"], totals["orders_charged"]) == (48, 48)


def test_the_async_sink_client_records_each_key_once(tmp_path: Path):
    service = start_service("sink", tmp_path / "sink.sqlite", tmp_path / "sink.log")
    sink = HttpDeliverySink(service.url)
    try:

        async def flow() -> None:
            await sink.deliver_async("asn-1", "ORDER_CONFIRMED", "EMAIL", EMAIL, idempotency_key="k-n1")
            await sink.deliver_async("asn-1", "ORDER_CONFIRMED", "EMAIL", EMAIL, idempotency_key="k-n1")  # a retry
            with pytest.raises(SinkRejected, match="422"):  # the key with another body
                await sink.deliver_async("asn-1", "ORDER_SHIPPED", "EMAIL", EMAIL, idempotency_key="k-n1")
            await sink.aclose()

        asyncio.run(flow())
        listed = httpx.get(f"{service.url}/v1/deliveries", params={"order_prefix": "asn-"}, timeout=10)
        assert listed.json()["summary"] == {"deliveries": 1, "repeated_requests": 1, "duplicate_notifications": []}
    finally:
        sink.close()
        service.stop()
    assert EMAIL not in service.log_path.read_text()
