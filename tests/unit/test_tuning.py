"""Hyperparameter search (eddy.models.maintain.tuning) on a small seeded synthetic problem."""

import json
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch

from eddy.models.maintain import tuning
from eddy.models.maintain.batch import TrainingError, TrainParams, cross_validate, score, train
from eddy.models.maintain.tuning import SearchSpace, search
from tests.unit.synthetic import three_classes

NAMES = [f"f{i}" for i in range(8)]
SPACE = SearchSpace(widths=(8, 32), depth=(1, 2), lr=(1e-5, 3e-2), epochs=(2, 12))
BASE = TrainParams(hidden=(32,), epochs=10, batch_size=128)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


X, Y = three_classes(2400)
TRAIN_X, TRAIN_Y, HOLD_X, HOLD_Y = X[:1800], Y[:1800], X[1800:], Y[1800:]


def run(trials=12, budget_s=300.0, seed=1, **kwargs):
    kwargs = {"folds": 3, "base": BASE, "space": SPACE} | kwargs
    return search(
        TRAIN_X,
        TRAIN_Y,
        "classification",
        NAMES,
        trials=trials,
        budget_s=budget_s,
        seed=seed,
        **kwargs,
    )


def test_search_runs_the_trial_count_and_reports_every_trial():
    result = run(trials=12)
    assert len(result.trials) == 12
    assert result.stopped_by == "trials"
    assert result.n_complete + result.n_pruned + result.n_failed == 12
    assert result.n_failed == 0
    assert SPACE.contains(result.best)
    assert result.best.batch_size == BASE.batch_size  # outside the space: from base
    best = result.trials[result.best_trial]
    assert best.state == "complete" and best.score == result.best_score
    assert result.best_score == max(t.score for t in result.trials if t.score is not None)
    card = json.loads(json.dumps(result.as_dict()))
    assert card["n_trials"] == 12 and card["best_params"]["hidden"] == list(result.best.hidden)
    assert card["space"]["widths"] == [8, 32]


def test_first_trial_is_the_base_config_scored_like_cross_validate():
    result = run(trials=1)
    first = result.trials[0]
    assert first.params == {"hidden": [32], "epochs": 10, "lr": 0.003, "weight_decay": 0.0}
    expected = np.mean(cross_validate(TRAIN_X, TRAIN_Y, "classification", NAMES, BASE, folds=3))
    assert first.score == pytest.approx(expected)
    assert result.best == BASE
    champion = train(TRAIN_X, TRAIN_Y, "classification", NAMES, BASE)
    warm = run(trials=1, warm_start=champion).trials[0]
    expected = np.mean(
        cross_validate(TRAIN_X, TRAIN_Y, "classification", NAMES, BASE, 3, warm_start=champion)
    )
    assert warm.score == pytest.approx(expected) and warm.score != first.score


def test_the_budget_stops_the_search():
    result = run(trials=10_000, budget_s=2.0)
    assert result.stopped_by == "budget"
    assert len(result.trials) < 10_000
    # a running trial stops before its next fold, so the overrun is at most about one fold
    assert result.seconds < 2.0 + 3.0


def test_no_completed_trial_names_the_budget():
    with pytest.raises(TrainingError, match=r"budget_s=0\.001"):
        run(trials=5, budget_s=0.001)


def test_pruner_stops_clearly_bad_trials_early():
    result = run(trials=20, startup_trials=3)
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert len(pruned) >= 3
    assert all(t.folds_run < 3 and "median" in t.reason for t in pruned)
    assert all(t.score is None for t in pruned)


def test_same_seed_same_trials_other_seed_other_trials():
    def fingerprint(result):
        return [(t.params, t.score, t.state) for t in result.trials]

    first, again, other = run(trials=8, seed=3), run(trials=8, seed=3), run(trials=8, seed=4)
    assert fingerprint(first) == fingerprint(again)
    assert fingerprint(first) != fingerprint(other)


def test_best_params_beat_a_bad_fixed_config_on_held_out_data():
    result = run(trials=15)
    bad = TrainParams(hidden=(8,), epochs=2, lr=1e-5, batch_size=128)
    tuned = train(TRAIN_X, TRAIN_Y, "classification", NAMES, result.best)
    fixed = train(TRAIN_X, TRAIN_Y, "classification", NAMES, bad)
    assert score(tuned, HOLD_X, HOLD_Y) >= score(fixed, HOLD_X, HOLD_Y) + 0.1
    assert result.best_score >= result.trials[0].score  # never worse than base in CV


def test_a_failing_trial_is_recorded_and_the_search_goes_on(monkeypatch):
    def fragile(matrix, targets, task, names, params, warm_start=None):
        if params.hidden[0] == 8:
            raise RuntimeError("width 8 is broken")
        return train(matrix, targets, task, names, params, warm_start)

    monkeypatch.setattr(tuning, "train", fragile)
    result = run(trials=10)
    failed = [t for t in result.trials if t.state == "failed"]
    assert failed and all(t.reason == "RuntimeError: width 8 is broken" for t in failed)
    assert result.n_complete >= 1 and result.best.hidden[0] == 32


def test_every_trial_failing_raises_with_the_first_failure(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no luck")

    monkeypatch.setattr(tuning, "train", broken)
    with pytest.raises(TrainingError, match="first failure: RuntimeError: no luck"):
        run(trials=3)


def test_too_few_examples_and_bad_arguments():
    with pytest.raises(TrainingError, match="need at least 25 examples for a 5-fold search"):
        search(X[:24], Y[:24], "classification", NAMES, folds=5, trials=2)
    assert tuning.min_examples(5) == 25
    with pytest.raises(ValueError, match="folds"):
        search(X, Y, "classification", NAMES, folds=1)
    with pytest.raises(ValueError, match="budget_s"):
        search(X, Y, "classification", NAMES, budget_s=0)
    with pytest.raises(ValueError, match="lr"):
        SearchSpace(lr=(0.0, 1e-2))


def test_regression_search():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(900, 4)).astype(np.float32)
    y = [float(v) for v in np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=900)]
    result = search(
        x,
        y,
        "regression",
        ["a", "b", "c", "d"],
        folds=3,
        trials=6,
        seed=0,
        base=BASE,
        space=SPACE,
    )
    assert result.metric == "neg_mae"
    assert result.best_score < 0
    assert len(result.trials) == 6


def test_optuna_logging_is_restored_and_import_is_lazy():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run(trials=2)
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    code = (
        "import sys, eddy.models.maintain.tuning, eddy.models.maintain.compress; "
        "print('optuna' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_space_contains():
    assert SPACE.contains(BASE)
    assert not SPACE.contains(TrainParams(hidden=(32, 8)))  # mixed widths
    assert not SPACE.contains(TrainParams(hidden=(64,)))
    assert not SearchSpace(zero_weight_decay=False).contains(TrainParams(hidden=(64,)))
