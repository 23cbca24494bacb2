"""The worker's /healthz and /readyz on its metrics port, against a real broker this module
stops and starts (its own port and data dir) and a ``choreo worker`` subprocess.

What must hold: alive throughout; ready once it processes; not ready while the broker is away
(the agent retries) though still alive, so an orchestrator does not restart it; ready again once
the broker is back.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processors.localbroker import LocalBroker
from processors.localbroker.broker import free_port
from tests.engine.harness import EngineEnv, load_counter_events, make_env, stop_worker, stoppable_broker, wait_for_count

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def health_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A broker of this module alone: the test stops and starts it."""
    yield from stoppable_broker(tmp_path_factory, "health")


@pytest.fixture
def env(health_broker: LocalBroker, tmp_path: Path, unique_name) -> EngineEnv:
    if health_broker.running_pid() is None:
        health_broker.start()
    return make_env(health_broker.bootstrap, tmp_path, unique_name("health"))


def probe(port: int, path: str) -> tuple[int, dict]:
    """The status and JSON body of one probe; (0, {}) while nothing answers on the port yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def wait_probe(port: int, path: str, code: int, timeout: float, proc, also: Callable[[], None] = lambda: None) -> dict:
    """Poll ``path`` until it answers ``code`` (running ``also`` on each turn); its body."""
    deadline = time.monotonic() + timeout
    seen: tuple[int, dict] = (0, {})
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        seen = probe(port, path)
        if seen[0] == code:
            return seen[1]
        also()
        time.sleep(0.5)
    raise AssertionError(f"{path} answered {seen} for {timeout} s, not {code}")


def test_readyz_follows_a_broker_outage_while_healthz_stays_alive(env, health_broker, tmp_path):
    app = env.app()
    env.create_topics(app)
    port = free_port()
    log = tmp_path / "worker.log"
    proc = env.start_worker(None, "exactly_once", tmp_path / "state", log=log, args=("--metrics-port", str(port)))

    def still_alive() -> None:
        code, body = probe(port, "/healthz")
        assert code == 200, f"/healthz answered {code} {body}"

    try:
        wait_probe(port, "/healthz", 200, 60, proc)
        load_counter_events(env, app, keys=5, per_key=4)
        wait_for_count(env.bootstrap, env.topic("counter.total"), 20, timeout=60, proc=proc)
        ready = wait_probe(port, "/readyz", 200, 30, proc, also=still_alive)
        assert ready["agents"]["counter"]["ready"] is True

        health_broker.stop()
        try:
            down = wait_probe(port, "/readyz", 503, 45, proc, also=still_alive)
            still_alive()
            reason = down["agents"]["counter"]["reason"]
            assert down["agents"]["counter"]["ready"] is False
            assert any(word in reason for word in ("retrying", "restarting", "not joined")), reason
        finally:
            health_broker.start()

        back = wait_probe(port, "/readyz", 200, 90, proc, also=still_alive)
        assert back["agents"]["counter"]["ready"] is True
        still_alive()
    finally:
        code = stop_worker(proc, timeout=60) if proc.poll() is None else proc.returncode
    assert code == 0, f"worker exited with {code}: {log.read_text()[-3000:]}"
