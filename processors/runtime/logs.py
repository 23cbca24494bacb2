"""Structured JSON log lines (orjson), one object per line on stderr.

Every line has ``ts``, ``level``, ``logger`` and ``msg``; the engine adds ``agent``, ``partition``,
``offset``, ``event_id`` and ``correlation_id`` where it knows them (through ``extra=``), and any
other ``extra`` keys are kept. Secrets never reach a log line: the engine does not log client
configs, and PII fields of events are redacted before an error message is logged.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "INFO", stream=None) -> None:
    """Route the root logger to JSON lines on stderr (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_choreo_json", False) or getattr(handler, "_choreo_cli", False):
            root.removeHandler(handler)  # the CLI's plain lines (processors.cli.main) give way to JSON
    logging.getLogger("choreo.kafka.client").setLevel(logging.NOTSET)  # client lines at the worker's level
    # one INFO line per HTTP request (every PSP charge, every notification) would drown the
    # engine's lines: the HTTP client says only what goes wrong; its failures reach ctx.call anyway
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._choreo_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
