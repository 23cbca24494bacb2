"""Apps with broken graphs, for the topology command's tests."""

from processors.runtime import App

looping = App("looping")


@looping.agent("ping", consumes=["payment.authorized", "payment.declined"], produces=["order.cancelled"])
def ping(event, ctx):
    ctx.emit("order.cancelled", event.key, {})


@looping.agent("pong", consumes=["order.cancelled"], produces=["payment.authorized", "order.confirmed"])
def pong(event, ctx):
    ctx.emit("payment.authorized", event.key, {})
