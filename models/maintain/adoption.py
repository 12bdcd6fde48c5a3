"""Letting the online learner continue from a promoted batch model, where the families match.

A promoted champion is a :class:`~eddy.models.maintain.batch.BatchModel` (an MLP with fixed
standardization). The online PyTorch learner can take its weights when the
layer shapes match (``EDDY_RETRAIN_HIDDEN`` equal to the online model's hidden
layer, or both linear): it then keeps learning from them online. River models
cannot take network weights; they keep their own state, and the caller records
that.
"""

from __future__ import annotations

import numpy as np

from eddy.models.learners import OnlineLearner
from eddy.models.maintain.batch import BatchModel
from eddy.models.torch_learner import TorchLearner

# Running statistics are seeded from the batch model's as if it had seen this many.
_PRIOR_WEIGHT = 1000


def adopt(learner: OnlineLearner, champion: BatchModel) -> tuple[bool, str]:
    """Load ``champion`` into ``learner`` if possible; returns (adopted, why)."""
    if not isinstance(learner, TorchLearner):
        return False, "the online model is not a network (River); it kept its own state"
    if learner.spec.module is not None:
        return False, "the online model is your own module; kept its own state"
    if learner.task != champion.task:
        return False, f"task {learner.task} differs from the champion's {champion.task}"
    wanted = (learner.hidden,) if learner.hidden else ()
    if tuple(champion.params.hidden) != wanted:
        return False, (
            f"layers differ (online {list(wanted)}, champion {list(champion.params.hidden)}); "
            "set EDDY_RETRAIN_HIDDEN to match to let the learner adopt champions"
        )
    learner.net = champion.net
    learner.features = {name: i for i, name in enumerate(champion.feature_names)}
    learner.classes = list(champion.classes or [])
    learner._class_index = {c: i for i, c in enumerate(learner.classes)}
    learner._mean = champion.mean.astype(np.float64).copy()
    learner._m2 = (champion.std.astype(np.float64) ** 2) * (_PRIOR_WEIGHT - 1)
    learner.seen = _PRIOR_WEIGHT
    return True, "continues learning online from the champion's weights"
