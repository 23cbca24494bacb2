"""The commit interval against a real broker: work stays open across polls (under exactly_once its
outputs are not readable until the commit), and a rebalance's revoke commits the open work before
the partitions go, so the new owner starts after it instead of replaying it.

Would fail if: the loop committed per poll despite the interval (outputs readable at once), the
revoke dropped the open work (the first worker never commits those inputs: its handled count stays
0 and the new owner replays them), or a commit covered work twice (a total appears twice)."""

from __future__ import annotations

import time

import pytest

from processors.runtime import WorkerOptions
from processors.runtime.testing import run_agents
from tests.engine.harness import make_env

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

INTERVAL_S = 8.0  # long enough to observe the open work; + max_batch_s stays inside the transaction timeout


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("interval"))


# exactly_once is the essential proof (one transaction across polls, committed in the revoke); the
# at-least-once run (offsets per interval, flushed and committed in the revoke) joins the soak runs
@pytest.mark.parametrize("guarantee", [pytest.param("at_least_once", marks=pytest.mark.soak), "exactly_once"])
def test_open_work_spans_polls_and_a_revoke_commits_it(env, tmp_path, guarantee):
    app = env.app()
    options = WorkerOptions(poll_timeout_s=0.1, commit_interval_s=INTERVAL_S, commit_idle_s=0.0)
    common = {"guarantee": guarantee, "options": options}
    with run_agents(app, env.bootstrap, ["counter"], state_dir=tmp_path / "a", worker_id="ci-a", **common) as a:
        runner = a.worker.runners[0]
        for _ in range(5):
            a.publish("counter.incremented", {"name": "a", "by": 1})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (runner.open is None or runner.open.handled < 5):
            time.sleep(0.05)
        assert runner.open is not None and runner.open.handled == 5, "the five inputs were not held open"
        assert runner.handled == 0, "committed before the interval was up"
        if guarantee == "exactly_once":
            assert a.read("counter.total", None, timeout=1.0) == [], "outputs readable before their commit"
        # a second worker joins the group: the (eager) rebalance revokes every partition of the first
        with run_agents(app, env.bootstrap, ["counter"], state_dir=tmp_path / "b", worker_id="ci-b", **common) as b:
            assert runner.handled == 5, "the revoke did not commit the open work"
            b.publish("counter.incremented", {"name": "a", "by": 1})
            outputs = b.read("counter.total", 6, timeout=60)
    totals = sorted(o.value["total"] for o in outputs if o.key == "a")
    assert totals == [1, 2, 3, 4, 5, 6], f"work lost or done twice across the revoke: {totals}"
