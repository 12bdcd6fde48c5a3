"""The one record type: a Kafka record as eddy keeps it.

The worker agent turns what its consumer fetched into :class:`Record` at the boundary
(:meth:`Record.of`); the engine, the dead-letter path and :mod:`eddy.testing` use
nothing else. What eddy produces is an :class:`~eddy.streams.engine.context.Out`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)  # not frozen: one per record, and a frozen __init__ costs 4x
class Record:
    """A consumed Kafka record.

    ``time`` is its event time once the engine has read it (the event's ``ts``, else
    ``timestamp``); ``None`` before.

    >>> r = Record("eddy.samples", 0, 7, 1_700_000_000_000, b"a", b"{}")
    >>> (r.topic, r.offset, r.headers, r.time)
    ('eddy.samples', 7, (), None)
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    time: int | None = None

    @classmethod
    def of(cls, record: Any) -> Record:
        """The record of a client's consumed record (aiokafka's ``ConsumerRecord``, or
        anything with the same attributes)."""
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value,
            tuple(record.headers or ()),
        )
