"""Hyperparameter search for the batch model: Optuna TPE, scored by contiguous-fold CV.

Each trial trains :func:`~eddy.models.maintain.batch.train` on the same contiguous folds as
:func:`~eddy.models.maintain.batch.cross_validate` and is scored by the mean fold score
(accuracy, or negative MAE for regression: higher is better). After each fold the
running mean is reported to a median pruner, which stops trials that trail the
others at the same fold. The study is in memory and single-threaded; with the same
inputs and seed, the same trials (parameters and scores) come out whenever the
trial count, not the time budget, ends the search.

Optuna is imported on the first :func:`search` call, so importing eddy changes
nothing in the host process; its log level is raised to ERROR during a search
(failures are in :class:`SearchResult`) and restored afterwards.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eddy.models.maintain.batch import BatchModel, TrainingError, TrainParams, score, train

MIN_TRAIN_EXAMPLES = 20  # what batch.train needs


@dataclass(frozen=True)
class SearchSpace:
    """Where the search looks.

    Every hidden layer of a trial has the same width, drawn from ``widths``;
    ``depth``, ``epochs`` are inclusive integer ranges; ``lr`` and ``weight_decay``
    are log-uniform ranges, and ``zero_weight_decay`` lets a trial use no weight
    decay at all (a separate yes/no choice, since 0 has no logarithm).
    """

    widths: tuple[int, ...] = (32, 64, 128, 256)
    depth: tuple[int, int] = (1, 3)
    lr: tuple[float, float] = (1e-4, 1e-2)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    zero_weight_decay: bool = True
    epochs: tuple[int, int] = (5, 40)

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            msg = f"widths must be positive layer widths, got {self.widths}"
            raise ValueError(msg)
        for name in ("depth", "epochs"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                msg = f"{name} must be a range 1 <= low <= high, got {(lo, hi)}"
                raise ValueError(msg)
        for name in ("lr", "weight_decay"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                msg = f"{name} must be a log range 0 < low <= high, got {(lo, hi)}"
                raise ValueError(msg)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "widths": list(self.widths),
            "depth": list(self.depth),
            "lr": list(self.lr),
            "weight_decay": list(self.weight_decay),
            "zero_weight_decay": self.zero_weight_decay,
            "epochs": list(self.epochs),
        }

    def contains(self, params: TrainParams) -> bool:
        """Whether a trial of this space can have ``params``' hidden, lr, weight decay, epochs."""
        hidden = params.hidden
        decay = params.weight_decay
        return (
            len(set(hidden)) == 1
            and hidden[0] in self.widths
            and self.depth[0] <= len(hidden) <= self.depth[1]
            and self.lr[0] <= params.lr <= self.lr[1]
            and self.epochs[0] <= params.epochs <= self.epochs[1]
            and (
                (decay == 0 and self.zero_weight_decay)
                or self.weight_decay[0] <= decay <= self.weight_decay[1]
            )
        )

    def _suggest(self, trial: Any, base: TrainParams) -> TrainParams:
        width = trial.suggest_categorical("width", list(self.widths))
        depth = trial.suggest_int("depth", *self.depth)
        lr = trial.suggest_float("lr", *self.lr, log=True)
        decay = 0.0
        use_decay = not self.zero_weight_decay or trial.suggest_categorical(
            "use_weight_decay", [True, False]
        )
        if use_decay:
            decay = trial.suggest_float("weight_decay", *self.weight_decay, log=True)
        epochs = trial.suggest_int("epochs", *self.epochs)
        return dataclasses.replace(
            base, hidden=(width,) * depth, lr=lr, weight_decay=decay, epochs=epochs
        )

    def _fixed(self, params: TrainParams) -> dict[str, Any]:
        """Optuna parameters that make a trial evaluate ``params`` (see :meth:`contains`)."""
        fixed: dict[str, Any] = {
            "width": params.hidden[0],
            "depth": len(params.hidden),
            "lr": params.lr,
            "epochs": params.epochs,
        }
        if self.zero_weight_decay:
            fixed["use_weight_decay"] = params.weight_decay > 0
        if params.weight_decay > 0:
            fixed["weight_decay"] = params.weight_decay
        return fixed


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its hyperparameters, mean CV score (None unless complete), and fate."""

    number: int
    params: dict[str, Any]  # hidden, epochs, lr, weight_decay
    score: float | None
    state: str  # "complete", "pruned" or "failed"
    folds_run: int
    seconds: float
    reason: str | None  # why it was pruned or failed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`search`; ``best`` is ready for
    :func:`~eddy.models.maintain.batch.train`."""

    space: SearchSpace
    metric: str  # "accuracy", or "neg_mae" for regression (higher is better)
    folds: int
    seed: int
    budget_s: float
    trials_requested: int
    stopped_by: str  # "trials" or "budget"
    trials: tuple[TrialRecord, ...]
    best: TrainParams
    best_score: float
    best_trial: int
    seconds: float

    @property
    def n_complete(self) -> int:
        return sum(t.state == "complete" for t in self.trials)

    @property
    def n_pruned(self) -> int:
        return sum(t.state == "pruned" for t in self.trials)

    @property
    def n_failed(self) -> int:
        return sum(t.state == "failed" for t in self.trials)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a model card."""
        return {
            "space": self.space.as_dict(),
            "metric": self.metric,
            "folds": self.folds,
            "seed": self.seed,
            "budget_s": self.budget_s,
            "trials_requested": self.trials_requested,
            "stopped_by": self.stopped_by,
            "best_params": self.best.as_dict(),
            "best_score": self.best_score,
            "best_trial": self.best_trial,
            "seconds": self.seconds,
            "n_trials": len(self.trials),
            "n_complete": self.n_complete,
            "n_pruned": self.n_pruned,
            "n_failed": self.n_failed,
            "trials": [t.as_dict() for t in self.trials],
        }


def fold_bounds(n: int, folds: int) -> list[tuple[int, int]]:
    """The contiguous test folds of :func:`~eddy.models.maintain.batch.cross_validate`,
    as (start, end)."""
    return list(itertools.pairwise(int(b) for b in np.linspace(0, n, folds + 1, dtype=int)))


def min_examples(folds: int) -> int:
    """The fewest examples for which every fold's training part has enough rows to train."""
    n = folds
    while n - max(hi - lo for lo, hi in fold_bounds(n, folds)) < MIN_TRAIN_EXAMPLES:
        n += 1
    return n


def search(
    matrix: np.ndarray,
    targets: Sequence[Any],
    task: str,
    feature_names: list[str],
    *,
    folds: int = 5,
    trials: int = 30,
    budget_s: float = 300.0,
    seed: int = 0,
    base: TrainParams | None = None,
    space: SearchSpace | None = None,
    warm_start: BatchModel | None = None,
    try_base: bool = True,
    startup_trials: int = 5,
) -> SearchResult:
    """Search ``space`` for the hyperparameters with the best mean contiguous-fold CV score.

    Runs at most ``trials`` trials and starts none after ``budget_s`` seconds; a trial
    running when the budget is spent stops before its next fold (recorded as pruned).
    Hyperparameters outside the space (batch size, patience, validation, seed) come
    from ``base``. With ``try_base``, the first trial evaluates ``base`` itself when the
    space can express it, so the best score is at least the fixed config's CV score.
    ``warm_start`` is passed to :func:`~eddy.models.maintain.batch.train`: trials whose hidden
    layers match its network fine-tune it, the others train from scratch. The median
    pruner judges a trial only after ``startup_trials`` trials have finished.

    A trial that raises is recorded as failed and the search goes on. Raises
    :class:`~eddy.models.maintain.batch.TrainingError` when there are too few examples for
    ``folds`` or when no trial completes; :class:`ValueError` for bad arguments.
    """
    import optuna

    base = base or TrainParams()
    space = space or SearchSpace()
    n = len(targets)
    if folds < 2:
        msg = f"folds must be at least 2, got {folds}"
        raise ValueError(msg)
    if trials < 1 or not budget_s > 0:
        msg = f"need trials >= 1 and budget_s > 0, got trials={trials}, budget_s={budget_s}"
        raise ValueError(msg)
    if matrix.shape[0] != n:
        msg = f"matrix has {matrix.shape[0]} rows but there are {n} targets"
        raise ValueError(msg)
    if n < min_examples(folds):
        msg = (
            f"need at least {min_examples(folds)} examples for a {folds}-fold search, got {n}: "
            "use a longer window or fewer folds"
        )
        raise TrainingError(msg)

    bounds = fold_bounds(n, folds)
    deadline = time.monotonic() + budget_s
    out_of_time = False

    def objective(trial: Any) -> float:
        nonlocal out_of_time
        params = space._suggest(trial, base)
        trial.set_user_attr("params", _trial_params(params))
        running: list[float] = []
        try:
            for step, (lo, hi) in enumerate(bounds):
                if time.monotonic() > deadline:
                    out_of_time = True
                    trial.set_user_attr("reason", f"budget of {budget_s:g} s spent")
                    trial.study.stop()
                    raise optuna.TrialPruned
                keep = np.r_[0:lo, hi:n]
                model = train(
                    matrix[keep],
                    [targets[i] for i in keep],
                    task,
                    feature_names,
                    params,
                    warm_start,
                )
                running.append(score(model, matrix[lo:hi], targets[lo:hi]))
                trial.set_user_attr("folds_run", step + 1)
                mean = float(np.mean(running))
                if not math.isfinite(mean):
                    msg = f"fold {step + 1} scored {mean}: training diverged"
                    raise TrainingError(msg)
                trial.report(mean, step)
                if trial.should_prune():
                    trial.set_user_attr(
                        "reason",
                        f"running mean {mean:.4f} after fold {step + 1}/{folds} "
                        "is below the median of earlier trials",
                    )
                    raise optuna.TrialPruned
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("reason", f"{type(error).__name__}: {error}")
            raise
        return float(np.mean(running))

    started = time.monotonic()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials),
        )
        if try_base and space.contains(base):
            study.enqueue_trial(space._fixed(base))
        study.optimize(objective, n_trials=trials, timeout=budget_s, n_jobs=1, catch=(Exception,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    seconds = time.monotonic() - started

    records = tuple(_record(t) for t in study.trials)
    complete = [r for r in records if r.state == "complete"]
    if not complete:
        failures = [r.reason for r in records if r.state == "failed"]
        msg = (
            f"no trial completed within budget_s={budget_s:g} s and {trials} trials "
            f"({len(records)} run: {sum(r.state == 'pruned' for r in records)} pruned, "
            f"{len(failures)} failed"
            + (f"; first failure: {failures[0]}" if failures else "")
            + "): raise the budget, or use fewer folds or epochs"
        )
        raise TrainingError(msg)
    best = study.best_trial
    p = best.user_attrs["params"]
    best_params = dataclasses.replace(
        base,
        hidden=tuple(p["hidden"]),
        epochs=p["epochs"],
        lr=p["lr"],
        weight_decay=p["weight_decay"],
    )
    return SearchResult(
        space=space,
        metric="neg_mae" if task == "regression" else "accuracy",
        folds=folds,
        seed=seed,
        budget_s=budget_s,
        trials_requested=trials,
        stopped_by="budget" if out_of_time or len(records) < trials else "trials",
        trials=records,
        best=best_params,
        best_score=float(best.value),
        best_trial=best.number,
        seconds=seconds,
    )


def _trial_params(params: TrainParams) -> dict[str, Any]:
    return {
        "hidden": list(params.hidden),
        "epochs": params.epochs,
        "lr": params.lr,
        "weight_decay": params.weight_decay,
    }


def _record(trial: Any) -> TrialRecord:
    from optuna.trial import TrialState

    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else 0.0
    )
    return TrialRecord(
        number=trial.number,
        params=trial.user_attrs.get("params", {}),
        score=float(trial.value) if trial.state == TrialState.COMPLETE else None,
        state=states.get(trial.state, "failed"),
        folds_run=trial.user_attrs.get("folds_run", 0),
        seconds=seconds,
        reason=trial.user_attrs.get("reason"),
    )
