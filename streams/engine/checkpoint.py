"""What a partition checkpoints: its state, typed, and the versioned envelope it is
saved in with the input positions it reflects (see :mod:`eddy.streams.state.store`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from eddy.models.join import JoinBuffer, RecentIds
from eddy.models.monitor.feature_drift import FeatureMonitor
from eddy.models.prequential import StreamLearner

# (offset, timestamp, crc32 of the key) of the last record a checkpoint reflects.
Position = tuple[int, int, int]


@dataclass
class UnitState:
    """One partition's state: what is checkpointed with the offsets it reflects."""

    partition: int
    join: JoinBuffer
    offsets: dict[str, int] = field(default_factory=dict)  # topic -> next offset to process
    clocks: dict[str, int] = field(default_factory=dict)  # samples/labels -> newest event time
    forwarded: dict[str, int] = field(default_factory=dict)  # "topic:p" -> last offset applied
    learners: dict[str, StreamLearner] = field(default_factory=dict)
    monitors: dict[str, FeatureMonitor] = field(default_factory=dict)
    recent: RecentIds = field(default_factory=lambda: RecentIds(200_000))
    counts: Counter[str] = field(default_factory=Counter)  # survive restarts, for metrics
    sequence: int = 0  # of the events this partition emits (see codec.Sequences)
    # Event-time bookkeeping for late data: the newest event time processed per input
    # topic, and over all inputs (the merge's frontier).
    newest: dict[str, int] = field(default_factory=dict)
    frontier: int = -(2**63)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A state of layout 1 lacks the event-time bookkeeping: it starts empty.
        self.__dict__.update({"newest": {}, "frontier": -(2**63)} | state)


@dataclass
class Checkpoint:
    """A partition's state with the last record it reflects per input topic, and its
    generation (counts checkpoints of the partition across owners).

    ``version`` is the layout of this structure; a checkpoint of another layout is not
    restored (:meth:`check`), so a worker never runs on state it misreads.
    """

    VERSION: ClassVar[int] = 2

    state: UnitState
    positions: dict[str, Position] = field(default_factory=dict)
    generation: int = 0
    version: int = VERSION

    def check(self) -> Checkpoint:
        """This checkpoint, if its layout is this eddy's; else :class:`ValueError`."""
        if getattr(self, "version", 1) != self.VERSION or not isinstance(self.state, UnitState):
            msg = (
                f"a checkpoint of layout {getattr(self, 'version', 1)} (this eddy reads "
                f"layout {self.VERSION}): it was written by another eddy version"
            )
            raise ValueError(msg)
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Layout 1 (eddy before the layout by concern) differs only by what UnitState
        # fills in when it is read: it reads as this layout.
        self.__dict__.update(state | {"version": state.get("version", self.VERSION)})
