"""The PSP and the delivery sink as real processes over real HTTP: Idempotency-Key semantics
(replay, conflicting body, one key in flight from many threads), injected latency, failures and
outages, a restart that keeps the ledger, and no card token or address in their logs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from processors.agents.gateway import Charge, GatewayRejected, GatewayUnavailable, HttpPaymentGateway
from processors.agents.notifications import HttpDeliverySink
from processors.services.process import RunningService, start_service

CARD = "tok_ok_4242secret"
EMAIL = "grace.hopper@example.com"


@pytest.fixture(scope="module")
def psp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    work = tmp_path_factory.mktemp("psp")
    service = start_service("psp", work / "psp.sqlite", work / "psp.log", ["--decline-above-minor", "10000"])
    yield service
    service.stop()
    log = service.log_path.read_text()
    assert CARD not in log and "tok_" not in log, "a card token reached the PSP's log"


@pytest.fixture()
def client(psp: RunningService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=psp.url, timeout=10) as c:
        yield c
    faults(psp.url, latency_ms=0, failure_rate=0, outage_s=0)


def faults(url: str, **values: float) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/admin/faults", json=values, timeout=10)
    response.raise_for_status()
    return response.json()


def charge(client: httpx.Client, key: str, order_id: str, amount: int = 1200, card: str = CARD) -> httpx.Response:
    body = {"order_id": order_id, "amount_minor": amount, "currency": "EUR", "card_token": card}
    return client.post("/v1/charges", json=body, headers={"Idempotency-Key": key})


def ledger(client: httpx.Client, prefix: str) -> dict[str, Any]:
    return client.get("/v1/ledger", params={"order_prefix": prefix}).json()


def test_a_repeated_key_returns_the_first_answer_and_charges_once(client: httpx.Client):
    first = charge(client, "key-rep-1", "rep-1")
    again = charge(client, "key-rep-1", "rep-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["status"] == "approved"
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    other_key = charge(client, "key-rep-2", "rep-1")  # a lost key charges again, as at a real PSP
    assert other_key.json()["payment_id"] != first.json()["payment_id"]
    summary = ledger(client, "rep-")["summary"]
    assert summary["approved"] == 2 and summary["double_charges"] == {"rep-1": 2}


def test_the_same_key_with_another_body_is_refused_without_effect(client: httpx.Client):
    assert charge(client, "key-conf", "conf-1", amount=500).status_code == 200
    refused = charge(client, "key-conf", "conf-1", amount=900)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "idempotency_key_reused"
    assert CARD not in refused.text
    assert [c["amount_minor"] for c in ledger(client, "conf-")["charges"]] == [500]


def test_decision_rules_and_a_silent_card_answers_pending(client: httpx.Client):
    assert charge(client, "k-fl", "rule-1", card="tok_flagged_1").json()["decline_reason"] == "FRAUD_SUSPECTED"
    assert charge(client, "k-ex", "rule-2", card="tok_expired_1").json()["decline_reason"] == "CARD_EXPIRED"
    assert charge(client, "k-big", "rule-3", amount=20000).json()["decline_reason"] == "INSUFFICIENT_FUNDS"
    silent = charge(client, "k-si", "rule-4", card="tok_silent_1")
    assert silent.status_code == 202 and silent.json()["status"] == "pending"
    assert ledger(client, "rule-")["summary"]["approved"] == 0


def test_concurrent_requests_with_one_key_charge_once(psp: RunningService, client: httpx.Client):
    faults(psp.url, latency_ms=300)  # the first request holds the key while the others arrive
    barrier = threading.Barrier(8)
    answers: list[tuple[int, str | None]] = []

    def one() -> None:
        with httpx.Client(base_url=psp.url, timeout=10) as c:
            barrier.wait(10)
            response = charge(c, "key-race", "race-1")
            answers.append((response.status_code, response.json().get("payment_id")))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 8
    assert {code for code, _ in answers} <= {200, 409}
    assert len({pid for code, pid in answers if code == 200}) == 1
    assert [code for code, _ in answers].count(409) >= 1  # someone saw it in flight
    assert ledger(client, "race-")["summary"]["approved"] == 1


def test_injected_failures_and_outages_have_no_effect_and_a_retry_with_the_key_charges_once(
    psp: RunningService, client: httpx.Client
):
    faults(psp.url, failure_rate=1.0)
    failed = charge(client, "key-flaky", "flaky-1")
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "transient_failure"
    faults(psp.url, failure_rate=0.0, outage_s=60)
    down = charge(client, "key-flaky", "flaky-1")
    assert down.status_code == 503 and down.json()["error"]["code"] == "outage"
    assert ledger(client, "flaky-")["charges"] == []
    faults(psp.url, outage_s=0)
    assert charge(client, "key-flaky", "flaky-1").status_code == 200
    assert ledger(client, "flaky-")["summary"]["approved"] == 1


def test_a_client_timeout_then_a_retry_with_the_same_key_gets_the_first_charge(
    psp: RunningService, client: httpx.Client
):
    faults(psp.url, latency_ms=600)
    impatient = HttpPaymentGateway(psp.url, timeout_s=0.1)
    with pytest.raises(GatewayUnavailable, match="no answer in time"):
        impatient.authorize("slow-1", 1200, CARD, "EUR", idempotency_key="key-slow")
    patient = HttpPaymentGateway(psp.url, timeout_s=10)
    answer = None
    for _ in range(100):  # until the first request finished (409 while it is in flight)
        try:
            answer = patient.authorize("slow-1", 1200, CARD, "EUR", idempotency_key="key-slow")
            break
        except GatewayUnavailable:
            time.sleep(0.05)
    assert answer is not None and answer.approved
    summary = ledger(client, "slow-")["summary"]
    assert summary["approved"] == 1 and summary["replayed_requests"] >= 1


def test_refunds_once_per_charge(client: httpx.Client, psp: RunningService):
    gateway = HttpPaymentGateway(psp.url)
    auth = gateway.authorize("ref-1", 1200, CARD, "EUR", idempotency_key="key-ref-charge")
    assert auth is not None and auth.approved
    assert gateway.refund("ref-1", auth.payment_id, 1200, idempotency_key="key-ref-1") is True
    assert gateway.refund("ref-1", auth.payment_id, 1200, idempotency_key="key-ref-1") is True  # its replay
    # another request for the same charge: refused by the PSP (409), which the client reads as "refunded already"
    assert gateway.refund("ref-1", auth.payment_id, 1200, idempotency_key="key-ref-2") is False
    raw = client.post("/v1/refunds", json={"payment_id": auth.payment_id, "amount_minor": 1200},
                      headers={"Idempotency-Key": "key-ref-4"})  # fmt: skip
    assert raw.status_code == 409 and raw.json()["error"]["code"] == "charge_already_refunded"
    with pytest.raises(GatewayRejected, match="404 no_such_charge"):
        gateway.refund("ref-x", "pay_nothing", 100, idempotency_key="key-ref-3")
    summary = ledger(client, "ref-")["summary"]
    assert summary["refunds"] == 1 and summary["double_refunds"] == {} and summary["refunds_without_charge"] == []


def test_the_charges_of_an_order_are_looked_up_by_its_exact_id(client: httpx.Client, psp: RunningService):
    gateway = HttpPaymentGateway(psp.url)
    first = gateway.authorize("look-1", 1200, CARD, "EUR", idempotency_key="key-look-1")
    gateway.authorize("look-10", 700, CARD, "EUR", idempotency_key="key-look-10")  # a longer id, same prefix
    gateway.authorize("look-1", 900000, CARD, "EUR", idempotency_key="key-look-1-big")  # declined: over the limit
    assert first is not None and first.approved
    assert gateway.refund("look-1", first.payment_id, 1200, idempotency_key="key-look-r") is True
    charges = gateway.charges_of("look-1")
    assert [(c.payment_id, c.amount_minor, c.currency, c.approved, c.refunded) for c in charges] == [
        (first.payment_id, 1200, "EUR", True, True),
        (charges[1].payment_id, 900000, "EUR", False, False),
    ]
    assert gateway.charges_of("look-nothing") == []
    assert asyncio.run(_charges_async(psp.url, "look-10"))[0].amount_minor == 700
    assert client.get("/v1/charges").json()["error"]["code"] == "bad_order_id"
    assert client.get("/v1/charges", params={"order_id": "x" * 201}).status_code == 400
    with pytest.raises(GatewayRejected, match="400 bad_order_id"):
        gateway.charges_of("")
    replays = ledger(client, "look-")["summary"]["replayed_requests"]
    gateway.charges_of("look-1")
    assert ledger(client, "look-")["summary"]["replayed_requests"] == replays  # a look-up is no request of record


async def _charges_async(url: str, order_id: str) -> list[Charge]:
    gateway = HttpPaymentGateway(url)
    try:
        return await gateway.charges_of_async(order_id)
    finally:
        await gateway.aclose()
        gateway.close()


def test_a_request_without_a_key_or_with_a_bad_body_is_refused(client: httpx.Client):
    body = {"order_id": "bad-1", "amount_minor": 5, "currency": "EUR", "card_token": CARD}
    assert client.post("/v1/charges", json=body).json()["error"]["code"] == "missing_idempotency_key"
    bad = client.post("/v1/charges", json={**body, "amount_minor": "5"}, headers={"Idempotency-Key": "kb"})
    assert bad.status_code == 400 and "amount_minor" in bad.json()["error"]["message"] and CARD not in bad.text
    assert charge(client, "kb", "bad-1", amount=5).status_code == 200  # the refused body did not take the key


def test_restart_keeps_the_ledger_and_the_keys(tmp_path: Path):
    db = tmp_path / "psp.sqlite"
    service = start_service("psp", db, tmp_path / "psp-1.log")
    try:
        with httpx.Client(base_url=service.url, timeout=10) as c:
            first = charge(c, "key-durable", "dur-1").json()
    finally:
        assert service.stop() == 0
    again = start_service("psp", db, tmp_path / "psp-2.log")
    try:
        with httpx.Client(base_url=again.url, timeout=10) as c:
            replay = charge(c, "key-durable", "dur-1")
            assert replay.json() == first and replay.headers.get("Idempotent-Replayed") == "true"
            assert ledger(c, "dur-")["summary"]["approved"] == 1
    finally:
        again.stop()


def test_the_sink_records_each_key_once_and_shows_a_notification_sent_under_two_keys(tmp_path: Path):
    service = start_service("sink", tmp_path / "sink.sqlite", tmp_path / "sink.log")
    try:
        sink = HttpDeliverySink(service.url)
        sink.deliver("snk-1", "ORDER_CONFIRMED", "EMAIL", EMAIL, idempotency_key="key-n1")
        sink.deliver("snk-1", "ORDER_CONFIRMED", "EMAIL", EMAIL, idempotency_key="key-n1")  # a retry
        sink.deliver("snk-1", "ORDER_SHIPPED", "EMAIL", EMAIL, idempotency_key="key-n2")
        with httpx.Client(base_url=service.url, timeout=10) as c:
            summary = c.get("/v1/deliveries", params={"order_prefix": "snk-"}).json()["summary"]
            assert summary == {"deliveries": 2, "repeated_requests": 1, "duplicate_notifications": []}
            sink.deliver("snk-1", "ORDER_SHIPPED", "EMAIL", EMAIL, idempotency_key="key-n3")  # sent twice
            listed = c.get("/v1/deliveries", params={"order_prefix": "snk-"})
            assert listed.json()["summary"]["duplicate_notifications"] == ["snk-1 ORDER_SHIPPED x2"]
            assert EMAIL not in listed.text
    finally:
        service.stop()
    assert EMAIL not in service.log_path.read_text()
    assert EMAIL.encode() not in (tmp_path / "sink.sqlite").read_bytes()
