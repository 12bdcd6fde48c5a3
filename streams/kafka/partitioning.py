"""Which partition a key belongs to: Kafka's default (murmur2) partitioning.

eddy joins a sample with its label in the partition that Java clients and aiokafka
put their key (the event id) in, and learns a stream in the partition of its name, so
that records produced by those clients need no extra hop. Records that another
partitioner (librdkafka's CRC32) or no key put elsewhere are forwarded (see
:mod:`eddy.streams.engine.unit`).
"""

from __future__ import annotations

from functools import lru_cache


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 hash of ``data``, unsigned.

    >>> murmur2(b"21"), murmur2(b"foobar"), murmur2(b"")
    (3321034988, 3504634814, 275646681)
    """
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length & 3
    tail = 4 * n4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``.

    >>> partition_of("anything", 1), partition_of("21", 4)
    (0, 0)
    """
    if partitions == 1:
        return 0
    return _hash(key) % partitions


@lru_cache(maxsize=4096)
def _cached(key: str) -> int:
    return murmur2(key.encode()) & 0x7FFFFFFF


def _hash(key: str) -> int:
    # Stream names repeat on every record: cached. Event ids do not: not cached, so
    # that they do not evict the names.
    if len(key) <= 128 and key in _names:
        return _cached(key)
    return murmur2(key.encode()) & 0x7FFFFFFF


_names: set[str] = set()


def remember_name(key: str) -> None:
    """Cache the hash of a key that repeats (a stream name)."""
    if len(_names) < 4096:
        _names.add(key)
