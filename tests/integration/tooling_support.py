"""Helpers for the tooling integration tests: contracts whose topics are unique to one test (so
tests never share `order.created` on the session broker), sample events, and readers that check
what really landed on the broker."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from processors.contracts import AvroCodec, ContractRegistry
from processors.settings import REPO_ROOT, Settings
from processors.tooling.kafka_io import plan_ranges, read_ranges, reader_config


@dataclass
class Isolated:
    """A contracts dir whose topics are suffixed for this test, and a config file pointing at it."""

    config: Path
    contracts_dir: Path
    bootstrap: str
    topics: dict[str, str]  # event type -> topic

    def settings(self) -> Settings:
        return Settings.load(config_file=self.config, bootstrap_servers=self.bootstrap)

    def registry(self) -> ContractRegistry:
        return ContractRegistry.load(self.contracts_dir, REPO_ROOT / "schemas")

    def codec(self) -> AvroCodec:
        return AvroCodec(self.registry())

    def cli(self, *args: str) -> list[str]:
        return [*args, "--bootstrap", self.bootstrap, "--config", str(self.config)]


def isolate_contracts(tmp_path: Path, suffix: str, bootstrap: str) -> Isolated:
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    topics = {}
    for path in sorted((REPO_ROOT / "contracts").glob("*.yaml")):
        text = path.read_text()
        match = re.search(r"^topic:\s*(\S+)\s*$", text, re.M)
        assert match, path
        topic = f"{match.group(1)}.{suffix}"
        topics[path.stem] = topic
        (contracts / path.name).write_text(text[: match.start()] + f"topic: {topic}" + text[match.end() :])
    config = tmp_path / "choreo.toml"
    config.write_text(f'contracts_dir = "{contracts}"\nschemas_dir = "{REPO_ROOT / "schemas"}"\n')
    return Isolated(config, contracts, bootstrap, topics)


def order(n: int, **overrides: Any) -> dict[str, Any]:
    """An order.created event (schema v2) as JSON people write it."""
    event = {
        "order_id": f"o-{n}",
        "customer_id": f"c-{n % 3}",
        "customer_email": f"buyer{n}@example.com",
        "card_token": f"tok_{n}",
        "items": [{"sku": f"sku-{n}", "qty": 1 + n % 4, "unit_price_minor": 250}],
        "total_minor": 250 * (1 + n % 4),
        "currency": "EUR",
        "created_at": "2024-05-01T12:00:00Z",
    }
    event.update(overrides)
    return event


def read_all(settings: Settings, topic: str) -> list[Any]:
    """Every record of a topic up to its current end (confluent Message objects)."""
    consumer = Consumer(reader_config(settings))
    try:
        return list(read_ranges(consumer, plan_ranges(consumer, topic)))
    finally:
        consumer.close()
