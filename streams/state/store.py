"""The partition state store: where a worker keeps each partition's checkpoint.

A store is told when a partition comes to this process (:meth:`PartitionStore.assign`,
which restores its newest checkpoint) and when it leaves (:meth:`~PartitionStore.revoke`);
in between the agent checkpoints in two halves, :meth:`~PartitionStore.snapshot` (the
state's bytes, taken while the partition's lock is held) and
:meth:`~PartitionStore.write` (made durable while the next records are processed),
as Quix Streams' stores and bytewax's ``snapshot()`` split the same work. What is
stored is a typed, versioned :class:`~eddy.streams.engine.checkpoint.Checkpoint`.

:class:`~eddy.streams.state.changelog.Changelog` keeps checkpoints on Kafka (the
worker's store); :class:`MemoryStore` keeps them in memory (:mod:`eddy.testing`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Protocol

from eddy.streams.engine.checkpoint import Checkpoint


@dataclass
class Restored:
    """A restored checkpoint, its generation, and where it came from (for the logs)."""

    checkpoint: Checkpoint
    generation: int
    source: str


class PartitionStore(Protocol):
    """Checkpoints of a worker's partitions (see the module docstring)."""

    async def assign(self, partition: int) -> Restored | None:
        """``partition`` comes to this process: its newest checkpoint that can be read,
        or ``None`` (it starts afresh)."""
        ...

    def revoke(self, partition: int) -> None:
        """``partition`` leaves this process (after its last checkpoint was written)."""
        ...

    async def snapshot(self, checkpoint: Checkpoint) -> bytes:
        """``checkpoint``'s bytes as they are now; the state may change once this returns."""
        ...

    async def write(self, partition: int, snapshot: bytes, generation: int) -> None:
        """Make a :meth:`snapshot` of ``partition`` durable; returns once it is."""
        ...


class MemoryStore:
    """A :class:`PartitionStore` in memory: what survives a simulated crash of
    :mod:`eddy.testing` is what was written, nothing else.

    >>> import asyncio
    >>> from eddy.models.join import JoinBuffer
    >>> from eddy.streams.engine.checkpoint import UnitState
    >>> store = MemoryStore()
    >>> saved = Checkpoint(UnitState(0, JoinBuffer(1000, 10)), generation=1)
    >>> asyncio.run(store.write(0, asyncio.run(store.snapshot(saved)), 1))
    >>> asyncio.run(store.assign(0)).checkpoint.generation, asyncio.run(store.assign(1))
    (1, None)
    """

    def __init__(self) -> None:
        self._written: dict[int, tuple[bytes, int]] = {}

    async def assign(self, partition: int) -> Restored | None:
        """The last checkpoint written for ``partition``, if any."""
        written = self._written.get(partition)
        if written is None:
            return None
        data, generation = written
        return Restored(pickle.loads(data).check(), generation, "memory")

    def revoke(self, partition: int) -> None:
        """Nothing to forget: what was written stays for the next owner."""

    async def snapshot(self, checkpoint: Checkpoint) -> bytes:
        """``checkpoint`` pickled."""
        return pickle.dumps(checkpoint, protocol=pickle.HIGHEST_PROTOCOL)

    async def write(self, partition: int, snapshot: bytes, generation: int) -> None:
        """Keep ``snapshot`` as ``partition``'s checkpoint."""
        self._written[partition] = (snapshot, generation)
