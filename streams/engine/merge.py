"""Merging a partition's input topics in event-time order, deterministically.

A worker partition reads several topics (samples, labels, the internal repartition
topic). Kafka orders records within a topic partition only, and a fetch may return
thousands of samples before the labels that were produced between them. The merger
hands records over in *event-time* order across its inputs, as Kafka Streams does for
a task's partitions with a ``TimestampExtractor``:

- **Event time** is the event's own ``ts`` (the Kafka record timestamp only when the
  event has none, or cannot be decoded): the caller computes it (:class:`Timed`).
- **Order.** The input whose next record has the lowest key goes first; the key is
  ``(time, rank, input, offset)``: at equal times a label (rank 0) goes before a
  sample (rank 1), as River's ``stream.simulate_qa`` yields the answers due at ``t``
  before the question at ``t``; then the inputs in a fixed order; then the offset.
  Records of one input are never reordered among themselves.
- **Waiting.** A record is released only when every input that has nothing buffered
  is known to hold nothing that could go before it: it is *caught up* (no unread
  records on the broker) as of a fetch that came back no earlier than the fetch that
  brought the record (on one broker: the same fetch). An input that is caught up is
  not waited for, so a live stream pays no latency for it; one that is not is waited
  for at most ``max_wait_s``, then the merge goes on (what it brings later is late).

So the order depends only on what the topics hold, not on how fetches split them or
how fast the machine is: the same topics give the same order, read live or as a
backlog, as long as producers write each event after the events it follows in event
time (within a producer's own topic, and across topics up to the fetch boundary).
What eddy does with events that break that (``ts`` going backwards within a topic, or
arriving after the merge passed their time) is the caller's: see
:mod:`eddy.streams.engine.unit`.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

LABEL = 0  # rank of labels and examples: at equal times, before samples
SAMPLE = 1


class Timed(NamedTuple):
    """A record with its event time, as the merger orders it.

    ``event`` is whatever the caller decoded from the record (or the error that
    decoding raised); the merger never looks at it. ``sent`` is when its producer sent
    it (the Kafka record timestamp, in the ``caught_up`` clock), 0 if unknown.
    """

    time: int
    rank: int
    offset: int
    record: Any
    event: Any
    sent: float = 0


class _Input:
    """One topic's buffered records, in offset order, in chunks by fetch time."""

    __slots__ = ("chunks", "grace", "index", "topic")

    def __init__(self, topic: str, index: int, grace: float) -> None:
        self.topic = topic
        self.index = index
        self.grace = grace
        self.chunks: deque[tuple[float, deque[Timed]]] = deque()

    def __len__(self) -> int:
        return sum(len(items) for _, items in self.chunks)

    def head(self) -> tuple[tuple[int, int, int, int], float] | None:
        """The merge key of the next record, and how recent a fetch of another input
        must be to show that it holds nothing to go before it: no older than the fetch
        that brought this record, nor than ``grace`` after it was sent."""
        while self.chunks and not self.chunks[0][1]:
            self.chunks.popleft()
        if not self.chunks:
            return None
        fetched_at, items = self.chunks[0]
        item = items[0]
        return (item.time, item.rank, self.index, item.offset), self.since(fetched_at, item)

    def since(self, fetched_at: float, item: Timed) -> float:
        """How recent a fetch must be to vouch for ``item`` (see :meth:`head`)."""
        return max(fetched_at, item.sent + self.grace) if item.sent else fetched_at

    def pop(self) -> Timed:
        return self.chunks[0][1].popleft()


class InputMerger:
    """Buffers timed records of several topics and releases them in event-time order.

    ``inputs`` lists the topics in their tie order (see the module docstring).

    >>> m = InputMerger(["labels", "samples"])
    >>> m.add("samples", [Timed(10, SAMPLE, 0, "s0", None), Timed(30, SAMPLE, 1, "s1", None)])
    >>> m.add("labels", [Timed(20, LABEL, 0, "l0", None), Timed(30, LABEL, 1, "l1", None)])
    >>> [t.record for t in m.take(lambda topic, since: True)]
    ['s0', 'l0', 'l1', 's1']

    An input that has nothing buffered and is not caught up holds the others back:

    >>> m.add("samples", [Timed(40, SAMPLE, 2, "s2", None)])
    >>> m.take(lambda topic, since: topic != "labels")
    []
    >>> m.add("labels", [Timed(50, LABEL, 2, "l2", None)])
    >>> [t.record for t in m.take(lambda topic, since: False)]  # samples may hold one < 50
    ['s2']
    """

    def __init__(self, inputs: Sequence[str], max_wait_s: float = 0.5, grace_ms: float = 0) -> None:
        self.max_wait_s = max_wait_s
        self._inputs = {topic: _Input(topic, i, grace_ms) for i, topic in enumerate(inputs)}
        self._blocked_since: float | None = None

    def add(self, topic: str, items: Iterable[Timed], fetched_at: float = 0.0) -> None:
        """Buffer records of ``topic`` (in offset order), fetched at ``fetched_at``
        (the time of the fetch response that brought them, in the clock the
        ``caught_up`` callback of :meth:`take` compares with)."""
        chunk = deque(items)
        if chunk:
            self._inputs[topic].chunks.append((fetched_at, chunk))

    def __len__(self) -> int:
        return sum(len(i) for i in self._inputs.values())

    def buffered(self, topic: str) -> int:
        """Records of ``topic`` waiting in the merger."""
        return len(self._inputs[topic])

    def clear(self) -> None:
        """Drop everything buffered (the partition was revoked or restored)."""
        for buffer in self._inputs.values():
            buffer.chunks.clear()
        self._blocked_since = None

    def take(
        self,
        caught_up: Callable[[str, float], bool],
        starved: Callable[[str], bool] = lambda topic: True,
    ) -> list[Timed]:
        """The records that are safe to process now, in merged order.

        ``caught_up(topic, since)`` tells whether the broker holds no unread records
        of ``topic`` as of a fetch response received at or after ``since``;
        ``starved(topic)`` whether the last fetch that asked for ``topic`` got none of
        its records. The wait for an input counts only while it is starved: a worker
        slow to come back for it (a big batch, a busy machine) does not make it late.
        """
        heads: list[tuple[tuple[int, int, int, int], float, _Input]] = []  # (key, fetched, input)
        empty: list[_Input] = []
        for source in self._inputs.values():
            head = source.head()
            if head is None:
                empty.append(source)
            else:
                heads.append((*head, source))
        if not heads:
            self._blocked_since = None
            return []
        if len(heads) == 1:  # the usual live case: one input has records
            source = heads[0][2]
            latest = max(
                source.since(fetched_at, item)
                for fetched_at, items in source.chunks
                for item in items
            )
            if all(caught_up(e.topic, latest) for e in empty):
                self._blocked_since = None
                out = [item for _, items in source.chunks for item in items]
                source.chunks.clear()
                return out
        out: list[Timed] = []
        heapq.heapify(heads)
        waited_out = False
        while heads:
            _, since, source = heads[0]
            blocking = [e for e in empty if not waited_out and not caught_up(e.topic, since)]
            if blocking:
                if not all(starved(e.topic) for e in blocking):
                    self._blocked_since = None  # its records are on their way
                    return out
                now = time.monotonic()
                if self._blocked_since is None or out:
                    self._blocked_since = now  # blocked anew
                if now - self._blocked_since <= self.max_wait_s:
                    return out
                waited_out = True  # a lagging input that does not deliver: go on
                log.warning(
                    "merge: %s may hold earlier records but delivered none for %.1f s "
                    "(EDDY_MERGE_WAIT_S); going on: what it brings later is late",
                    ", ".join(e.topic for e in blocking),
                    now - self._blocked_since,
                )
            out.append(source.pop())
            head = source.head()
            if head is None:
                heapq.heappop(heads)
                empty.append(source)
            else:
                heapq.heapreplace(heads, (*head, source))
        self._blocked_since = None
        return out
