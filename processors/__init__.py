"""choreo-streams: choreographed Kafka stream agents with RocksDB state and Avro contracts.

`processors.runtime` is the engine (knows nothing of any business domain);
`processors.contracts` holds schemas, codecs and envelope headers;
`processors.agents` is the reference commerce choreography built on the engine's public API.
"""

from processors import _native

__version__ = "0.1.0"

# Before any hot-path module is imported: compiled or pure-Python builds (see processors/_native.py).
_native.install()
