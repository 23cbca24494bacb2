"""Transitional: the processor moved to :mod:`processors.runtime._processor` (engine internals).

Only ``worker.py`` still imports it from here until it is updated; delete this module then.
"""

from processors.runtime._processor import IGNORED, HandleResult, OutRecord, Processor

__all__ = ["IGNORED", "HandleResult", "OutRecord", "Processor"]
