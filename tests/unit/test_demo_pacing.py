"""The demo's publishing window: it shrinks while orders get slow (so no order outwaits the flow
timeout in a queue on a slow machine) and grows back while they are fast."""

from __future__ import annotations

from processors.agents.demo import Window


def test_the_window_halves_while_orders_are_slow_and_grows_back_while_fast() -> None:
    window = Window(32, timeout_s=8.0)  # slow: over 2 s, fast: under 1 s
    window.observe(2500)
    assert window.size == 16
    window.observe(2500)  # at most one cut a second: one slow burst is one cut
    assert window.size == 16
    window._cut_at -= 1.0
    window.observe(9000)
    assert window.size == 8 and window.smallest == 8
    window.observe(1500)  # neither slow nor fast: unchanged
    assert window.size == 8
    for _ in range(100):
        window.observe(100)
    assert window.size == 32, "grows back to the limit, never past it"
    assert window.smallest == 8


def test_the_window_never_closes() -> None:
    window = Window(1, timeout_s=1.0)
    for _ in range(5):
        window._cut_at = 0.0
        window.observe(60_000)
    assert window.size == 1
