"""A faust-streaming codec for our contracts, so a team's faust app can consume (and produce) our
topics without reimplementing the framing: `value_serializer="choreo-avro"`.

Decoding identifies the writer schema from the payload (Avro single-object fingerprint, or the
Confluent schema id when a registry is configured) and resolves it to the contract's current
schema, so events written with any schema version read the same way. Envelope attributes are in
the Kafka headers, which faust exposes as `event.headers` in `stream.events()`.

Registered under ``choreo-avro`` on import, and through the ``faust.codecs`` entry point of the
`[faust]` extra, so `faust -A app worker` finds it without importing this module first. For a
specific type (needed to produce) use ``ChoreoAvroCodec(event_type="order.created")``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from faust.serializers import codecs
from faust.serializers.codecs import Codec, CodecT

from processors.contracts.codec import AvroCodec
from processors.contracts.registry import ContractRegistry
from processors.tooling.jsonavro import from_json

CODEC_NAME = "choreo-avro"


@lru_cache(maxsize=8)
def _avro_codec(contracts_dir: str | None, schemas_dir: str | None, schema_registry_url: str | None) -> AvroCodec:
    """One registry and codec per configuration: faust clones codecs freely, loading contracts once."""
    registry = ContractRegistry.load(
        Path(contracts_dir) if contracts_dir else None, Path(schemas_dir) if schemas_dir else None
    )
    return AvroCodec(registry, schema_registry_url)


class ChoreoAvroCodec(Codec):
    """Avro contract events <-> dicts. Without an `event_type` it decodes any contract's event and
    cannot encode (the bytes would not say which contract to write)."""

    def __init__(
        self,
        children: tuple[CodecT, ...] | None = None,
        event_type: str | None = None,
        contracts_dir: str | None = None,
        schemas_dir: str | None = None,
        schema_registry_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Defaults follow the settings' environment variables, so a faust worker needs no code to
        # point at a checkout's contracts or a Schema Registry.
        contracts_dir = contracts_dir or os.environ.get("CHOREO_CONTRACTS_DIR")
        schemas_dir = schemas_dir or os.environ.get("CHOREO_SCHEMAS_DIR")
        schema_registry_url = schema_registry_url or os.environ.get("CHOREO_SCHEMA_REGISTRY_URL")
        super().__init__(
            children=children,
            event_type=event_type,
            contracts_dir=contracts_dir,
            schemas_dir=schemas_dir,
            schema_registry_url=schema_registry_url,
            **kwargs,
        )
        self.event_type = event_type

    @property
    def avro(self) -> AvroCodec:
        return _avro_codec(self.kwargs["contracts_dir"], self.kwargs["schemas_dir"], self.kwargs["schema_registry_url"])

    def _loads(self, s: bytes) -> Any:
        if self.event_type is not None:
            return self.avro.decode(self.event_type, s)
        return self.avro.decode_any(s)[1]

    def _dumps(self, obj: Any) -> bytes:
        if self.event_type is None:
            raise ValueError(f"{CODEC_NAME}: encoding needs an event type: use ChoreoAvroCodec(event_type=...)")
        if hasattr(obj, "asdict"):
            obj = obj.asdict()  # a faust Record
        contract = self.avro.registry.get(self.event_type)
        return self.avro.encode(self.event_type, from_json(contract.raw_schema(), obj))


codecs.register(CODEC_NAME, ChoreoAvroCodec())
