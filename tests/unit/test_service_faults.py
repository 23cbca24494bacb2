"""The services' fault injection, pure: outage windows on a fake clock, the failure rate's bounds."""

from __future__ import annotations

import pytest

from processors.services.faults import Faults, Outage


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_outage_windows_are_relative_to_the_start_and_admin_outages_to_now():
    clock = Clock()
    faults = Faults(outages=(Outage.parse("10+5"),), clock=clock)
    seen = []
    for t in (0, 9.9, 10, 14.9, 15, 20):
        clock.now = 1000.0 + t
        seen.append(faults.in_outage())
    assert seen == [False, False, True, True, False, False]
    faults.update(None, None, outage_s=3)
    assert faults.in_outage()
    clock.now += 3
    assert not faults.in_outage()


@pytest.mark.parametrize("text", ["10", "a+5", "10+0", "-1+5", "+"])
def test_a_malformed_outage_is_refused(text: str):
    with pytest.raises(ValueError, match="START\\+DURATION"):
        Outage.parse(text)


def test_failure_rate_bounds_and_seeded_draws():
    assert not any(Faults(failure_rate=0.0, seed=1).fails() for _ in range(200))
    assert all(Faults(failure_rate=1.0, seed=1).fails() for _ in range(200))
    a, b = Faults(failure_rate=0.3, seed=5), Faults(failure_rate=0.3, seed=5)
    draws = [a.fails() for _ in range(300)]
    assert draws == [b.fails() for _ in range(300)] and 40 < sum(draws) < 140
    with pytest.raises(ValueError):
        Faults(failure_rate=1.5)
    with pytest.raises(ValueError):
        Faults(latency_s=-1)
