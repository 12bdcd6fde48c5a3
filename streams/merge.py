"""Merging a partition's input topics in event-time order.

A worker partition reads several topics (samples, labels, the internal repartition
topic). Kafka orders records within a topic partition only, and a fetch may return
thousands of samples before the labels that were produced between them. The merger
hands records over in record-timestamp order across its inputs, as Kafka Streams
does for a task's partitions: the lowest timestamp first (ties: by input priority,
then offset), and a record only once no input that still has unread records on the
broker (is *lagging*) could hold an earlier one. An input that is caught up is not
waited for, so a live stream pays no latency for it; a lagging input blocks at most
``max_wait_s`` in case its records do not come.

This is what makes samples and late labels meet the model in the order they were
produced: a sample is predicted by the model that has learned every label produced
before it, and no later one (River's ``progressive_val_score`` with ``delay``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol


class TimedRecord(Protocol):
    """What the merger needs of a record (aiokafka's ``ConsumerRecord`` fits)."""

    topic: str
    offset: int
    timestamp: int


class InputMerger:
    """Buffers records of several topics and releases them in timestamp order.

    >>> from types import SimpleNamespace as R
    >>> m = InputMerger({"labels": 0, "samples": 1})
    >>> m.add("samples", [R(topic="samples", offset=0, timestamp=10),
    ...                   R(topic="samples", offset=1, timestamp=30)])
    >>> m.add("labels", [R(topic="labels", offset=0, timestamp=20)])
    >>> [(r.topic, r.timestamp) for r in m.take(lambda topic: topic == "labels")]
    [('samples', 10), ('labels', 20)]
    >>> [(r.topic, r.timestamp) for r in m.take(lambda topic: False)]
    [('samples', 30)]
    """

    def __init__(self, priority: dict[str, int], max_wait_s: float = 0.5) -> None:
        self.priority = priority
        self.max_wait_s = max_wait_s
        self._buffers: dict[str, deque[Any]] = {topic: deque() for topic in priority}
        self._last_ts: dict[str, int] = {}
        self._blocked_since: float | None = None

    def add(self, topic: str, records: Iterable[Any]) -> None:
        """Buffer records of ``topic`` (in offset order)."""
        buffer = self._buffers[topic]
        buffer.extend(records)
        if buffer:
            self._last_ts[topic] = max(self._last_ts.get(topic, -1), buffer[-1].timestamp)

    def __len__(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def buffered(self, topic: str) -> int:
        """Records of ``topic`` waiting in the merger."""
        return len(self._buffers[topic])

    def clear(self) -> None:
        """Drop everything buffered (the partition was revoked or restored)."""
        for buffer in self._buffers.values():
            buffer.clear()
        self._last_ts.clear()
        self._blocked_since = None

    def take(self, lagging: Callable[[str], bool]) -> list[Any]:
        """The records that are safe to process now, in merged order.

        ``lagging(topic)`` tells whether the broker holds records of ``topic`` that
        were not fetched yet; such an input bounds what may go first.
        """
        full = [t for t, b in self._buffers.items() if b]
        if not full:
            return []
        blockers = [t for t in self._buffers if lagging(t)]
        bound: float = float("inf")
        for topic in blockers:
            bound = min(bound, self._last_ts.get(topic, -1))
        if bound != float("inf"):
            now = time.monotonic()
            if self._blocked_since is None:
                self._blocked_since = now
            elif now - self._blocked_since > self.max_wait_s:
                bound = float("inf")  # a lagging input that does not deliver: go on
        if bound == float("inf"):
            self._blocked_since = None
            if len(full) == 1:  # the usual live case: one input has records
                out = list(self._buffers[full[0]])
                self._buffers[full[0]].clear()
                return out
        ready: list[Any] = []
        for topic in full:
            buffer = self._buffers[topic]
            while buffer and buffer[0].timestamp <= bound:
                ready.append(buffer.popleft())
        if ready:
            self._blocked_since = None
        rank = self.priority
        ready.sort(key=lambda r: (r.timestamp, rank[r.topic], r.offset))
        return ready
