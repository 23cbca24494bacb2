from pathlib import Path

from processors.runtime import App, Reject

HERE = Path(__file__).resolve().parent
# The app id prefixes consumer groups, changelogs and transactional ids; the contracts sit next to this file.
app = App("shop", contracts_dir=HERE / "contracts", schemas_dir=HERE / "schemas", audit_topic="shop.audit")


def on_idle(timer, ctx):
    """Five minutes without an increment: the counter says its total once more."""
    ctx.emit("counter.total", timer.key, {"name": timer.key, "total": ctx.state["n"], "seq": ctx.state["seq"]})


@app.agent(
    "counter",
    consumes=["counter.incremented"],
    produces=["counter.total"],
    transient=(TimeoutError,),  # retried with backoff, then dead-lettered
    on_timer=on_idle,
)
def count(event, ctx):
    total = ctx.state.get("n", 0) + event.value["by"]  # per-key state, RocksDB-backed
    if total < 0:
        raise Reject("negative_total", "a counter never goes below zero")  # -> DLQ with that reason
    ctx.state["n"], ctx.state["seq"] = total, ctx.state.get("seq", 0) + 1
    ctx.emit("counter.total", event.key, {"name": event.key, "total": total, "seq": ctx.state["seq"]})
    ctx.schedule_timer("idle", delay_s=300)  # durable: survives restarts and rebalances, fires once
