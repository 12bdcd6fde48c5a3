"""Joining samples with their labels by event id, bounded in time and size.

Labels may come before or after their sample, or inline in it. A sample waits
for its label until the labels' clock has passed its own time by ``ttl_ms``, and
at most ``max_pending`` samples wait at once; the same bounds hold for labels
waiting for their sample, against the samples' clock. The clocks are the
caller's: event time read from the other stream, so that a backlog read long
after it was written does not expire what is merely unread. What leaves the
buffer unjoined is returned to the caller, which must count and record it:
nothing leaves silently.

The sample's features are kept as they were when it arrived, so the model learns
on what it saw at prediction time, not on anything that changed since.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

# Between ids in a checkpoint of RecentIds (ASCII unit separator); ids that hold it are
# saved as a list instead.
_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Pending:
    """What waits in the buffer: a sample or a label, with where it came from."""

    id: str
    payload: Any  # the decoded sample or label
    position: tuple[int, int]  # (partition, offset) of the record
    time_ms: int  # event time of the record


@dataclass(frozen=True)
class Joined:
    """A sample with its label."""

    sample: Pending
    label: Any  # the label value
    label_position: tuple[int, int] | None  # None for inline labels


@dataclass(frozen=True)
class Unjoined:
    """A sample or label that left the buffer without its other half."""

    entry: Pending
    kind: str  # "sample" or "label"
    reason: str  # "expired" (TTL) or "evicted" (size cap)


class RecentIds:
    """The last ``size`` ids seen, for dropping repeats; bounded memory."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._order: deque[str] = deque()
        self._set: set[str] = set()

    def __contains__(self, item: str) -> bool:
        return item in self._set

    def add(self, item: str) -> None:
        """Remember ``item``, forgetting the oldest beyond ``size`` (an id already
        remembered keeps its place)."""
        if item in self._set:
            return
        self._order.append(item)
        self._set.add(item)
        if len(self._order) > self.size:
            self._set.discard(self._order.popleft())

    # Checkpoints hold the ids once, not twice: the set is rebuilt on load. The pickle
    # is taken while the partition waits, so its cost is latency: the ids go as one
    # string (2 ms for 200,000 ids; a list of them pickles in 23 ms), or as a list when
    # an id holds the separator.
    def __getstate__(self) -> tuple[int, str | list[str]]:
        joined = _SEPARATOR.join(self._order)
        if joined.count(_SEPARATOR) == len(self._order) - 1:
            return (self.size, joined)
        return (self.size, list(self._order))

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):  # a checkpoint written before this method existed
            self.__dict__.update(state)
            return
        self.size, order = state
        if isinstance(order, str):
            order = order.split(_SEPARATOR)
        self._order = deque(order)
        self._set = set(order)


class JoinBuffer:
    """Pending samples and labels of one partition.

    >>> b = JoinBuffer(ttl_ms=1000, max_pending=10)
    >>> b.add_label(Pending("a", "label-a", (0, 7), time_ms=0))
    []
    >>> [j.label for j in b.add_sample(Pending("a", "sample-a", (0, 3), 5))]
    ['label-a']
    >>> b.add_sample(Pending("b", "sample-b", (0, 4), 10))
    []
    >>> [(u.entry.id, u.reason) for u in b.expire(label_clock_ms=1011, sample_clock_ms=0)]
    [('b', 'expired')]
    """

    def __init__(self, ttl_ms: int, max_pending: int) -> None:
        if ttl_ms <= 0 or max_pending <= 0:
            msg = f"ttl_ms and max_pending must be positive, got {ttl_ms} and {max_pending}"
            raise ValueError(msg)
        self.ttl_ms = ttl_ms
        self.max_pending = max_pending
        self.samples: OrderedDict[str, Pending] = OrderedDict()
        self.labels: OrderedDict[str, Pending] = OrderedDict()
        self.duplicates = 0
        # Ids joined lately: a sample or label re-sent after its pair left is a
        # duplicate too, not a new entry that would wait and expire.
        self.joined = RecentIds(max_pending)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints written before ``joined`` existed restore with an empty one.
        self.__dict__.update(state)
        self.__dict__.setdefault("joined", RecentIds(self.max_pending))

    def __len__(self) -> int:
        return len(self.samples) + len(self.labels)

    def has_sample(self, id: str) -> bool:
        """Whether a sample with ``id`` waits here or joined lately: another one would be
        a duplicate (:meth:`add_sample`)."""
        return id in self.joined or id in self.samples

    def add_sample(self, entry: Pending, inline_label: Any = None) -> list[Joined | Unjoined]:
        """A sample arrived; returns the join if its label is here (or inline).

        A second sample with an id that is waiting, or joined lately, is a duplicate: it is
        returned as ``Unjoined(kind="sample", reason="duplicate")``.
        """
        if entry.id in self.joined:
            self.duplicates += 1
            return [Unjoined(entry, "sample", "duplicate")]
        if inline_label is not None:
            self.joined.add(entry.id)
            return [Joined(entry, inline_label, None)]
        label = self.labels.pop(entry.id, None)
        if label is not None:
            self.joined.add(entry.id)
            return [Joined(entry, label.payload, label.position)]
        if entry.id in self.samples:
            self.duplicates += 1
            return [Unjoined(entry, "sample", "duplicate")]
        self.samples[entry.id] = entry
        return self._evict(self.samples, "sample")

    def add_label(self, entry: Pending) -> list[Joined | Unjoined]:
        """A label arrived; returns the join if its sample is waiting."""
        if entry.id in self.joined:
            self.duplicates += 1
            return [Unjoined(entry, "label", "duplicate")]
        sample = self.samples.pop(entry.id, None)
        if sample is not None:
            self.joined.add(entry.id)
            return [Joined(sample, entry.payload, entry.position)]
        if entry.id in self.labels:
            self.duplicates += 1
            return [Unjoined(entry, "label", "duplicate")]
        self.labels[entry.id] = entry
        return self._evict(self.labels, "label")

    def expire(self, label_clock_ms: int, sample_clock_ms: int) -> list[Unjoined]:
        """Remove and return the samples the labels' clock has left behind by more
        than the TTL, and the labels the samples' clock has.

        Entries leave in arrival order, so one late-stamped entry can hold back
        younger ones for a while; none waits past the size cap.
        """
        out: list[Unjoined] = []
        for queue, kind, clock in (
            (self.samples, "sample", label_clock_ms),
            (self.labels, "label", sample_clock_ms),
        ):
            while queue:
                oldest = next(iter(queue.values()))
                if clock - oldest.time_ms <= self.ttl_ms:
                    break
                queue.popitem(last=False)
                out.append(Unjoined(oldest, kind, "expired"))
        return out

    def _evict(self, queue: OrderedDict[str, Pending], kind: str) -> list[Joined | Unjoined]:
        out: list[Joined | Unjoined] = []
        while len(queue) > self.max_pending:
            _, oldest = queue.popitem(last=False)
            out.append(Unjoined(oldest, kind, "evicted"))
        return out
