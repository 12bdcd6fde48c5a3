"""The dead-letter topic: where every event that fails decoding goes, with its reason.

The original key and value bytes are kept unchanged. Headers follow the Spring
Kafka convention (``kafka_dlt-original-topic``, ``…-partition``, ``…-offset``,
``…-timestamp``, ``…-consumer-group``, ``kafka_dlt-exception-fqcn``,
``kafka_dlt-exception-message``) with UTF-8 text values, so that ``kcat`` and
people can read them; ``eddy-dlt-reason`` carries the short reason code that the
``eddy_dead_letter_total`` counter is labelled with.

One exception to "unchanged": a value larger than eddy's own size cap cannot be
forwarded (the producer and the broker would refuse it, and the worker with
them), so its first ``max_bytes`` bytes are kept, with its original size and
SHA-256 in ``eddy-dlt-original-size`` and ``eddy-dlt-original-sha256``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from eddy.streams.observe.metrics import EngineMetrics
from eddy.streams.records import Record

log = logging.getLogger(__name__)

MAX_MESSAGE_HEADER_CHARS = 2000

H_TOPIC = "kafka_dlt-original-topic"
H_PARTITION = "kafka_dlt-original-partition"
H_OFFSET = "kafka_dlt-original-offset"
H_TIMESTAMP = "kafka_dlt-original-timestamp"
H_GROUP = "kafka_dlt-original-consumer-group"
H_EXCEPTION_CLASS = "kafka_dlt-exception-fqcn"
H_EXCEPTION_MESSAGE = "kafka_dlt-exception-message"
H_REASON = "eddy-dlt-reason"
H_ORIGINAL_SIZE = "eddy-dlt-original-size"
H_ORIGINAL_SHA256 = "eddy-dlt-original-sha256"


class Sender(Protocol):
    """What :class:`DeadLetterQueue` needs of a producer (aiokafka's fits)."""

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, **kwargs: Any
    ) -> Any:
        """Send one record and wait until the broker has it."""
        ...


def dead_letter_headers(
    record: Record, error: BaseException, group: str | None
) -> list[tuple[str, bytes]]:
    """The headers a dead-lettered record carries: where it came from and why it failed."""
    cls = type(error)
    reason = getattr(error, "reason", "error")
    ours = [
        (H_TOPIC, record.topic),
        (H_PARTITION, str(record.partition)),
        (H_OFFSET, str(record.offset)),
        (H_TIMESTAMP, str(record.timestamp)),
        (H_GROUP, group or ""),
        (H_EXCEPTION_CLASS, f"{cls.__module__}.{cls.__qualname__}"),
        (H_EXCEPTION_MESSAGE, str(error)[:MAX_MESSAGE_HEADER_CHARS]),
        (H_REASON, reason),
    ]
    original = [(k, v) for k, v in (record.headers or ()) if not k.startswith("kafka_dlt-")]
    return original + [(k, v.encode()) for k, v in ours]


def truncate_for_dead_letter(
    value: bytes | None, max_bytes: int
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """``value`` cut to ``max_bytes`` if longer, with headers naming its original size and
    SHA-256 (a value over the cap cannot be forwarded whole: the producer would fail)."""
    if value is None or len(value) <= max_bytes:
        return value, []
    extra = [
        (H_ORIGINAL_SIZE, str(len(value)).encode()),
        (H_ORIGINAL_SHA256, hashlib.sha256(value).hexdigest().encode()),
    ]
    return value[:max_bytes], extra


class DeadLetterQueue:
    """Sends failed records to the dead-letter topic, counts and logs them.

    ``kind`` maps a source topic to the short name used as the metric label
    (``samples``, ``labels``…), keeping the label set bounded.
    """

    def __init__(
        self,
        producer: Sender,
        topic: str,
        metrics: EngineMetrics,
        kind: Callable[[str], str],
        group: str | None = None,
        max_bytes: int = 1_048_576,
    ) -> None:
        self._producer = producer
        self.max_bytes = max_bytes
        self.topic = topic
        self._metrics = metrics
        self._kind = kind
        self._group = group

    async def send(self, record: Record, error: BaseException) -> None:
        """Dead-letter ``record`` because of ``error``; waits until the broker has it."""
        reason = getattr(error, "reason", "error")
        log.warning(
            "dead-lettering %s[%d]@%d (%s): %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            error,
        )
        value, extra = truncate_for_dead_letter(record.value, self.max_bytes)
        headers = dead_letter_headers(record, error, self._group) + extra
        await self._producer.send_and_wait(self.topic, value=value, key=record.key, headers=headers)
        self._metrics.dead_lettered.labels(self._kind(record.topic), reason).inc()
