"""Records no well-behaved client writes, for tests of what the tools make of them.

confluent-kafka's ``Producer`` encodes every header name as UTF-8, so a header *name* that is not
UTF-8 (what a Java or Go client given raw bytes, or an attacker, can write) is produced here
through librdkafka itself — the very library the Producer wraps, loaded from the wheel — with
``rd_kafka_producev``. The consumer side is the real confluent-kafka client.
"""

from __future__ import annotations

import ctypes
import glob
import os

import confluent_kafka

# rd_kafka_vtype_t (rdkafka.h)
_VTYPE_END, _VTYPE_TOPIC, _VTYPE_PARTITION, _VTYPE_VALUE, _VTYPE_KEY, _VTYPE_MSGFLAGS, _VTYPE_HEADERS = (
    0,
    1,
    3,
    4,
    5,
    7,
    10,
)
_MSG_F_COPY = 0x2
_PRODUCER = 0


def _librdkafka() -> ctypes.CDLL:
    package = os.path.dirname(confluent_kafka.__file__)
    found = glob.glob(os.path.join(package, "..", "confluent_kafka.libs", "librdkafka*.so*"))
    lib = ctypes.CDLL(found[0] if found else "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_headers_new.restype = ctypes.c_void_p
    lib.rd_kafka_headers_new.argtypes = [ctypes.c_size_t]
    lib.rd_kafka_header_add.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_ssize_t,
        ctypes.c_char_p,
        ctypes.c_ssize_t,
    ]
    lib.rd_kafka_producev.restype = ctypes.c_int
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


def produce_with_raw_header_names(
    bootstrap: str,
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[bytes, bytes | None]],
) -> None:
    """Produce one record whose header names are the given bytes, whatever they are."""
    lib = _librdkafka()
    errors = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    if lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), errors, len(errors)) != 0:
        raise RuntimeError(errors.value.decode())
    handle = lib.rd_kafka_new(_PRODUCER, conf, errors, len(errors))
    if not handle:
        raise RuntimeError(errors.value.decode())
    try:
        header_list = lib.rd_kafka_headers_new(len(headers))
        for name, header_value in headers:
            lib.rd_kafka_header_add(
                header_list, name, len(name), header_value, -1 if header_value is None else len(header_value)
            )
        args: list[object] = [ctypes.c_int(_VTYPE_TOPIC), ctypes.c_char_p(topic.encode())]
        args += [ctypes.c_int(_VTYPE_PARTITION), ctypes.c_int32(partition)]
        args += [ctypes.c_int(_VTYPE_MSGFLAGS), ctypes.c_int(_MSG_F_COPY)]
        if value is not None:
            args += [ctypes.c_int(_VTYPE_VALUE), ctypes.c_char_p(value), ctypes.c_size_t(len(value))]
        if key is not None:
            args += [ctypes.c_int(_VTYPE_KEY), ctypes.c_char_p(key), ctypes.c_size_t(len(key))]
        args += [ctypes.c_int(_VTYPE_HEADERS), ctypes.c_void_p(header_list), ctypes.c_int(_VTYPE_END)]
        code = lib.rd_kafka_producev(ctypes.c_void_p(handle), *args)
        if code != 0:
            raise RuntimeError(f"rd_kafka_producev: {lib.rd_kafka_err2str(code).decode()}")
        if lib.rd_kafka_flush(ctypes.c_void_p(handle), 30_000) != 0:
            raise RuntimeError("the record was not delivered within 30 s")
    finally:
        lib.rd_kafka_destroy(ctypes.c_void_p(handle))
