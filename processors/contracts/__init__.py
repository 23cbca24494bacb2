"""Data contracts: Avro schemas and contract files, the codec, the CloudEvents envelope, value
validation and schema compatibility. Producers, agents and consumers all speak through these."""

from processors.contracts.codec import AvroCodec, schema_fingerprint
from processors.contracts.compat import MODES, CompatProblem, CompatResult, SchemaParseError, check_compatibility
from processors.contracts.envelope import Envelope
from processors.contracts.errors import ContractError, ContractViolation, DecodeError, EnvelopeError, Problem
from processors.contracts.registry import Contract, ContractRegistry
from processors.contracts.validation import Validator

__all__ = [
    "MODES",
    "AvroCodec",
    "CompatProblem",
    "CompatResult",
    "Contract",
    "ContractError",
    "ContractRegistry",
    "ContractViolation",
    "DecodeError",
    "Envelope",
    "EnvelopeError",
    "Problem",
    "SchemaParseError",
    "Validator",
    "check_compatibility",
    "schema_fingerprint",
]
