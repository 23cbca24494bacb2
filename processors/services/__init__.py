"""Out-of-process services the commerce choreography calls over HTTP: a payment service provider
with Stripe-like Idempotency-Key semantics (:mod:`processors.services.psp`) and a delivery sink
that records every notification it receives (:mod:`processors.services.sink`). Both keep a durable
SQLite ledger, so "never twice" is measured at the receiver, not in the agents' own state."""
