"""Which model predicts a stream's samples in this process: its owner, a replica of
it, or a blank one (process-wide, shared by every unit of a worker).

The replicas themselves come over Kafka (:mod:`eddy.streams.agents.replicas`); this
module only keeps them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eddy.models.learners import OnlineLearner, Prediction
from eddy.models.prequential import StreamLearner


@dataclass
class Replica:
    """A copy of a stream's online model, as its owner published it."""

    stream: str
    version: str
    learned: int
    taken_at_ms: int
    learner: OnlineLearner

    def predict(self, xs: Sequence[Any]) -> list[Prediction]:
        """Predict with the copy (it never learns)."""
        return self.learner.predict_many(xs)

    def changes_on_learn(self) -> bool:
        """A replica changes only when a new snapshot comes."""
        return False


class ModelDirectory:
    """The owners and replicas of a worker process, by stream.

    Until a stream's owner has learned anything (and no replica exists), its samples
    are predicted by a *blank* model from ``blank(stream)``: what the owner's model is
    before its first example (River's untrained linear models answer 0.5/0.5, trees
    do not answer), exactly as River's evaluator would have it predict.
    """

    def __init__(self, blank: Callable[[str], StreamLearner] | None = None) -> None:
        self._owners: dict[str, StreamLearner] = {}
        self._replicas: dict[str, Replica] = {}
        self._blank = blank
        self._blanks: dict[str, StreamLearner] = {}

    def predictor(self, stream: str) -> tuple[Any, int]:
        """The model for ``stream`` and its staleness in milliseconds (0: the owner)."""
        owner = self._owners.get(stream)
        if owner is not None:
            return owner, 0
        replica = self._replicas.get(stream)
        if replica is not None:
            return replica, max(0, int(time.time() * 1000) - replica.taken_at_ms)
        if self._blank is None:
            return None, 0
        blank = self._blanks.get(stream)
        if blank is None:
            blank = self._blanks[stream] = self._blank(stream)
        return blank, 0

    def owned(self, stream: str, learner: StreamLearner | None) -> None:
        """The stream's learner now lives (``None``: no longer lives) in this process."""
        if learner is None:
            self._owners.pop(stream, None)
        else:
            self._owners[stream] = learner
            self._replicas.pop(stream, None)
            self._blanks.pop(stream, None)

    def owners(self) -> dict[str, StreamLearner]:
        """The learners this process owns, by stream."""
        return dict(self._owners)

    def install(self, replica: Replica) -> bool:
        """Use ``replica`` for its stream unless this process owns the stream or holds a
        newer copy; whether it was installed."""
        if replica.stream in self._owners:
            return False
        current = self._replicas.get(replica.stream)
        if current is not None and current.taken_at_ms >= replica.taken_at_ms:
            return False
        self._replicas[replica.stream] = replica
        self._blanks.pop(replica.stream, None)
        return True
