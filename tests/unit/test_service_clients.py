"""The services' client side without a network: the one error mapping the sync (httpx) and async
(aiohttp) clients share, and one aiohttp session per running event loop, made lazily, released
when its loop is gone."""

from __future__ import annotations

import asyncio
import gc
import logging

import aiohttp
import orjson
import pytest

from processors.services.client import LoopSessions, answer_of


class Unavailable(Exception):
    pass


class Rejected(Exception):
    pass


def error(status: int, code: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"code": code, "message": "card tok_secret refused"}})


@pytest.mark.parametrize(
    "status,raw,raised,message",
    [
        (*error(503, "outage"), Unavailable, "/p: 503 outage"),
        (*error(409, "request_in_progress"), Unavailable, "/p: 409 request_in_progress"),
        (*error(409, "charge_already_refunded"), Rejected, "/p: 409 charge_already_refunded"),
        (*error(422, "idempotency_key_reused"), Rejected, "/p: 422 idempotency_key_reused"),
        (502, b"<html>bad gateway</html>", Unavailable, "/p: 502 unreadable error"),
        (*error(400, "x" * 500), Rejected, "/p: 400 " + "x" * 64),
        (200, b"not json", Unavailable, "/p: 200 with a body that is not JSON"),
    ],
)
def test_answers_map_to_retry_or_refusal_and_never_quote_the_request(status, raw, raised, message):
    with pytest.raises(raised) as caught:
        answer_of(status, raw, "/p", Unavailable, Rejected)
    assert str(caught.value) == message and "tok_" not in str(caught.value)


def test_a_success_is_its_json_answer():
    assert answer_of(202, b'{"status": "pending"}', "/p", Unavailable, Rejected) == (202, {"status": "pending"})


def test_one_session_per_running_loop_made_on_first_use_and_released_with_its_loop(caplog):
    made: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        made.append(aiohttp.ClientSession())
        return made[-1]

    sessions = LoopSessions(factory)
    assert len(sessions) == 0  # nothing made outside a loop

    async def twice() -> bool:
        return sessions.get() is sessions.get()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert asyncio.run(twice())  # one loop: one session, reused
        assert asyncio.run(twice())  # a new loop (a replaced agent session): its own session
        assert len(made) == 2 and made[0].closed  # the first loop's, closed when the second made its own
        sessions.close()
        assert made[1].closed
        made.clear()
        gc.collect()
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]
    with pytest.raises(RuntimeError):
        sessions.get()  # only on a running loop
