"""eddy's per-partition code path, through the broker-free harness (eddy.testing).

What a worker does with samples and labels, with no Kafka: River equivalence to 1e-9
(delayed labels, binary, multiclass, regression), predictions at sample time, the
guard and the edge bound, joins whatever partitioner the producers used, the stream
allow-list and cap.
"""

from __future__ import annotations

import itertools
import zlib

import orjson
import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing, tree
from river.datasets import synth

import eddy
from eddy.models.learners import TorchModel
from eddy.streams.settings import Settings
from eddy.testing import TestRun, replay


def _app(**options) -> eddy.App:
    app = eddy.App()
    app.stream("default", feature_drift=False, **options)
    return app


def _sea(n: int = 20_000):
    return lambda: itertools.islice(synth.SEA(variant=0, seed=4), n)


def _scaled_logreg():
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


EQUIVALENCE = [
    # (name, dataset, model factory, task, eddy metric, River metric, delay)
    (
        "SEA binary, labels at once",
        _sea(),
        _scaled_logreg,
        "binary",
        "accuracy",
        metrics.Accuracy,
        0,
    ),
    (
        "SEA binary, labels 100 late",
        _sea(),
        _scaled_logreg,
        "binary",
        "accuracy",
        metrics.Accuracy,
        100,
    ),
    (
        "SEA binary, labels 1000 late",
        _sea(),
        _scaled_logreg,
        "binary",
        "accuracy",
        metrics.Accuracy,
        1000,
    ),
    ("SEA binary F1, labels 100 late", _sea(), _scaled_logreg, "binary", "f1", metrics.F1, 100),
    (
        "SEA binary log loss, 100 late",
        _sea(),
        _scaled_logreg,
        "binary",
        "log_loss",
        metrics.LogLoss,
        100,
    ),
    (
        "Shuttle multiclass accuracy",
        lambda: itertools.islice(datasets.Shuttle(), 10_000),
        tree.HoeffdingTreeClassifier,
        "multiclass",
        "accuracy",
        metrics.Accuracy,
        0,
    ),
    (
        "Shuttle multiclass macro-F1, 200 late",
        lambda: itertools.islice(datasets.Shuttle(), 10_000),
        tree.HoeffdingTreeClassifier,
        "multiclass",
        "f1",
        metrics.MacroF1,
        200,
    ),
    (
        "ImageSegments softmax, 50 late",
        datasets.ImageSegments,
        lambda: preprocessing.StandardScaler() | linear_model.SoftmaxRegression(),
        "multiclass",
        "accuracy",
        metrics.Accuracy,
        50,
    ),
    (
        "TrumpApproval regression MAE, 10 late",
        datasets.TrumpApproval,
        lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "regression",
        "mae",
        metrics.MAE,
        10,
    ),
    (
        "Friedman regression RMSE, 300 late",
        lambda: itertools.islice(synth.Friedman(seed=3), 5000),
        lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "regression",
        "rmse",
        metrics.RMSE,
        300,
    ),
]


@pytest.mark.parametrize(
    ("dataset", "model", "task", "metric", "river_metric", "delay"),
    [case[1:] for case in EQUIVALENCE],
    ids=[case[0] for case in EQUIVALENCE],
)
def test_metrics_equal_rivers_progressive_val_score_with_the_same_delay(
    dataset, model, task, metric, river_metric, delay
):
    run = replay(_app(model=model(), task=task), dataset(), delay=delay)
    learner = run.learner()
    ours = learner.metrics.cumulative.get(metric).get()
    river = evaluate.progressive_val_score(dataset(), model(), river_metric(), delay=delay).get()
    assert ours == pytest.approx(river, abs=1e-9)
    n = sum(1 for _ in dataset())
    assert learner.learned == n and len(run.predictions) == n


def test_the_sea_figures_of_the_serving_issue():
    """SEA (variant 0, seed 4, 20,000), StandardScaler | LogisticRegression: the figures
    River gives at delays 0, 100 and 1000 are eddy's too."""
    found = {
        d: replay(_app(model=_scaled_logreg()), _sea()(), delay=d)
        .learner()
        .metrics.cumulative.get("accuracy")
        .get()
        for d in (0, 100, 1000)
    }
    assert found == pytest.approx({0: 0.9937, 100: 0.98925, 1000: 0.95935}, abs=1e-9)


def test_every_sample_is_predicted_when_it_arrives_labelled_or_not():
    run = TestRun(_app(model=_scaled_logreg()))
    data = list(_sea(300)())
    for i, (x, y) in enumerate(data):
        run.sample(str(i), {str(k): v for k, v in x.items()})
        if i < 200:
            run.label(str(i), y)  # the last 100 labels never come
    run.process()
    predictions = run.predictions
    assert [p["id"] for p in predictions] == [str(i) for i in range(300)]
    assert all(p["model_version"] == "online-1" and p["staleness_ms"] == 0 for p in predictions)
    # tagged with how many examples the model had learned: labels come right after samples
    assert [p["model_examples"] for p in predictions[:5]] == [0, 1, 2, 3, 4]
    assert predictions[-1]["model_examples"] == 200
    assert run.learner().learned == 200


def test_an_inline_labelled_sample_is_predicted_before_it_is_learned():
    run = TestRun(_app(model=linear_model.LogisticRegression()))
    for i in range(50):
        run.sample(str(i), {"x": 1.0}, label=True)
    run.process()
    assert [p["model_examples"] for p in run.predictions] == list(range(50))


def test_a_served_prediction_is_scored_even_when_the_label_comes_after_more_learning():
    """The metric scores what was served, not what the model says when the label comes."""
    app = eddy.App(settings=Settings.build(score_at_label_time=True, feature_drift=False))
    app.stream("default", model=_scaled_logreg())
    run = replay(app, _sea(5000)(), delay=1000)
    learner = run.learner()
    served = learner.metrics.cumulative.get("accuracy").get()
    immediate = learner.immediate.cumulative.get("accuracy").get()
    river_at_once = evaluate.progressive_val_score(
        _sea(5000)(), _scaled_logreg(), metrics.Accuracy()
    ).get()
    assert immediate == pytest.approx(river_at_once, abs=1e-9)
    assert served < immediate - 0.01  # late labels: the served predictions were worse


@pytest.mark.parametrize("model", ["hoeffding", "scaled-logreg", "torch-linear"])
def test_values_beyond_the_bound_are_refused_at_the_edge_and_every_sample_is_accounted(model):
    run = TestRun(_app(model=model))
    data = list(_sea(600)())
    for i, (x, y) in enumerate(data):
        features = {str(k): v for k, v in x.items()}
        if i in (10, 300):
            features["1"] = 1e308
        run.sample(str(i), features)
        run.label(str(i), y)
    run.process()
    run.flush_learners()
    reasons = [reason for reason, _ in run.dead_letters]
    assert sorted(reasons) == ["unknown_class"] * 0 + ["value_too_large"] * 2
    assert run.learner().learned + len(reasons) == 600  # learned + dead-lettered = produced
    assert all(
        p.get("proba") is None or all(v == v for v in p["proba"].values()) for p in run.predictions
    )


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("hoeffding", "learn_error"),  # OverflowError in its Gaussian estimators
        (_scaled_logreg(), "non_finite"),
        (TorchModel(), "non_finite"),
    ],
)
@pytest.mark.parametrize("inline", [False, True], ids=["labels apart", "labels inline"])
def test_with_the_bound_raised_a_poisoned_example_is_dead_lettered_and_undone(
    model, reason, inline
):
    app = eddy.App(
        settings=Settings.build(max_feature_magnitude=1e300, feature_drift=False, batch_size=64)
    )
    app.stream("default", model=model)
    run = TestRun(app)
    data = list(_sea(1000)())
    for i, (x, y) in enumerate(data):
        features = {str(k): v for k, v in x.items()}
        if i == 500:
            features["1"] = 1e200
        if inline:
            run.sample(str(i), features, label=y)
        else:
            run.sample(str(i), features)
            run.label(str(i), y)
    run.process()
    run.flush_learners()
    learner = run.learner()
    dead = [reason for reason, _ in run.dead_letters]
    assert learner.learned + len(dead) == 1000  # learned + dead-lettered = produced
    assert dead == [reason]
    example = orjson.loads(run.dead_letters[0][1].value)
    assert example["id"] == "500" and example["features"]["1"] == 1e200
    headers = dict(run.dead_letters[0][1].headers)
    assert headers["kafka_dlt-original-topic"] == b"eddy.samples"
    for p in run.predictions:
        assert all(v == v and abs(v) != float("inf") for v in (p.get("proba") or {}).values())


def _crc32_partition(key: str, partitions: int) -> int:
    """librdkafka's default partitioner (consistent_random) for a keyed record."""
    return zlib.crc32(key.encode()) % partitions


@pytest.mark.parametrize("partitions", [2, 3, 4])
def test_samples_and_labels_join_whatever_partitioner_each_producer_used(partitions):
    run = TestRun(_app(model=_scaled_logreg()), partitions=partitions)
    data = list(_sea(400)())
    for i, (x, y) in enumerate(data):
        key = f"id-{i}"
        run.sample(key, {str(k): v for k, v in x.items()})  # murmur2, as aiokafka and Java
        run.label(key, y, partition=_crc32_partition(key, partitions))  # librdkafka
    run.process()
    counts = run.counts()
    assert run.learner().learned == 400
    assert counts["joined"] == 400 and not run.dead_letters
    forwarded = sum(
        v for labels, v in _samples(run, "eddy_repartitioned_total") if labels["kind"] == "label"
    )
    assert 0 < forwarded < 400  # only the labels that landed elsewhere took the extra hop


def _samples(run, name):
    from eddy.streams.observe.dashboard import read_registry

    return read_registry(run.registry).get(name, [])


def test_streams_of_several_partitions_are_learned_by_one_owner_each():
    app = eddy.App()
    for name in ("alpha", "beta", "gamma"):
        app.stream(name, model="logreg", feature_drift=False)
    run = TestRun(app, partitions=3)
    for i, (x, y) in enumerate(_sea(900)()):
        stream = ("alpha", "beta", "gamma")[i % 3]
        run.sample(f"s{i}", {str(k): v for k, v in x.items()}, stream=stream, label=y)
    run.process()
    owners = {
        name: [p for p, u in run.units.items() if name in u.state.learners]
        for name in ("alpha", "beta", "gamma")
    }
    assert all(len(units) == 1 for units in owners.values()), owners
    assert [run.learner(n).learned for n in ("alpha", "beta", "gamma")] == [300, 300, 300]


def test_configured_streams_are_an_allow_list_and_the_cap_bounds_the_others():
    app = eddy.App()
    app.stream("cards", model="logreg", feature_drift=False)
    run = TestRun(app)
    run.sample("1", {"x": 1.0}, stream="cards", label=True)
    run.sample("2", {"x": 1.0}, stream="ghost", label=True)
    run.process()
    assert [r for r, _ in run.dead_letters] == ["unknown_stream"]
    capped = eddy.App(settings=Settings.build(max_streams=3, feature_drift=False))
    run = TestRun(capped)
    for i in range(20):
        run.sample(str(i), {"x": 1.0}, stream=f"s{i}", label=True)
    run.process()
    assert [r for r, _ in run.dead_letters] == ["too_many_streams"] * 17
    series = {labels["stream"] for labels, _ in _samples(run, "eddy_predictions_total")}
    assert series == {"s0", "s1", "s2"}


def test_labels_a_binary_stream_cannot_learn_are_explained_once(caplog):
    run = TestRun(_app(model="logreg"))
    for i in range(5):
        run.sample(str(i), {"x": 1.0})
        run.label(str(i), "spam")
    with caplog.at_level("WARNING"):
        run.process()
    assert [r for r, _ in run.dead_letters].count("unknown_class") == 10  # sample and label
    warnings = [r.getMessage() for r in caplog.records if "multiclass" in r.getMessage()]
    assert len(warnings) == 1 and "--task multiclass" in warnings[0]


def test_a_regression_label_beyond_the_bound_is_too_large_not_a_class(caplog):
    """A huge number is a number: ``value_too_large`` (as for features), no advice to
    make the stream a classifier; a string label is then still explained once."""
    run = TestRun(_app(model="scaled-linreg", task="regression"))
    run.sample("a", {"x": 1.0})
    run.label("a", 1e300)
    run.sample("b", {"x": 2.0}, label=-1e300)
    run.sample("c", {"x": 3.0})
    run.label("c", "abc")
    with caplog.at_level("WARNING"):
        run.process()
    reasons = sorted(r for r, _ in run.dead_letters)
    assert (
        reasons == ["unknown_class", "unknown_class", "value_too_large"] + ["value_too_large"] * 2
    )
    messages = [
        dict(r.headers)["kafka_dlt-exception-message"].decode() for _, r in run.dead_letters
    ]
    assert any("beyond the accepted magnitude" in m for m in messages)
    warnings = [r.getMessage() for r in caplog.records if "look like classes" in r.getMessage()]
    assert len(warnings) == 1 and "'abc'" in warnings[0]


def test_duplicates_and_expiry_are_dead_lettered_with_their_reasons():
    run = TestRun(_app(model="logreg"))
    run.sample("a", {"x": 1.0})
    run.sample("a", {"x": 1.0})  # a re-sent duplicate
    run.sample("b", {"x": 1.0})
    run.process()
    run.label("a", True)
    run.process()
    run.expire(label_clock_ms=10**13)
    reasons = sorted(r for r, _ in run.dead_letters)
    assert reasons == ["sample_duplicate", "sample_expired"]
    message = dict(run.dead_letters[0][1].headers)["kafka_dlt-exception-message"].decode()
    group = dict(run.dead_letters[0][1].headers)["kafka_dlt-original-consumer-group"]
    assert "never came" in message or "re-sent duplicate" in message
    assert group == b"eddy.worker"
    # The duplicate got no prediction of its own: one per id.
    assert sorted(p["id"] for p in run.predictions) == ["a", "b"]


INLINE_CASES = [
    ("SEA scaled logreg", _sea(3000), _scaled_logreg, "binary"),
    ("SEA hoeffding", _sea(3000), tree.HoeffdingTreeClassifier, "binary"),
    (
        "ImageSegments softmax",
        datasets.ImageSegments,
        lambda: preprocessing.StandardScaler() | linear_model.SoftmaxRegression(),
        "multiclass",
    ),
    (
        "TrumpApproval regression",
        datasets.TrumpApproval,
        lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "regression",
    ),
]


@pytest.mark.parametrize(
    ("dataset", "model", "task"),
    [case[1:] for case in INLINE_CASES],
    ids=[case[0] for case in INLINE_CASES],
)
def test_inline_labels_give_what_labels_right_behind_their_samples_give(dataset, model, task):
    """Inline-labelled samples are tested then trained a run at a time; the predictions,
    the examples recorded for the retrainer and the metrics are those of the same data
    with each label on its own topic right behind its sample (one at a time)."""
    inline = replay(_app(model=model(), task=task), dataset(), inline=True)
    apart = replay(_app(model=model(), task=task), dataset(), delay=0)

    def predictions(run):
        keys = ("id", "prediction", "proba", "model_examples", "model_version")
        return [{k: p.get(k) for k in keys} for p in run.predictions]

    def examples(run):
        return [
            {k: e[k] for k in ("id", "features", "label", "served")}
            for e in run.decoded("examples")
        ]

    assert predictions(inline) == predictions(apart)
    assert examples(inline) == examples(apart)
    ours, theirs = inline.learner(), apart.learner()
    assert ours.metrics.values() == theirs.metrics.values()
    assert ours.learned == theirs.learned == sum(1 for _ in dataset())
    river_metric = metrics.MAE() if task == "regression" else metrics.Accuracy()
    river = evaluate.progressive_val_score(dataset(), model(), river_metric).get()
    name = "mae" if task == "regression" else "accuracy"
    assert ours.metrics.cumulative.get(name).get() == pytest.approx(river, abs=1e-9)


def test_runs_of_inline_samples_keep_the_order_of_everything_around_them():
    """Inline samples of two streams, an unlabelled sample and its later label, and a
    repeated id: each prediction is made by the model that learned exactly what came
    before it in its stream, and the repeat is dead-lettered once, not predicted."""
    app = eddy.App()
    for name in ("a", "b"):
        app.stream(name, model="logreg", feature_drift=False)
    run = TestRun(app)
    run.sample("a0", {"x": 1.0}, stream="a", label=True)  # creates a's learner
    run.sample("b0", {"x": 1.0}, stream="b", label=False)
    for i in range(1, 4):
        run.sample(f"a{i}", {"x": 1.0}, stream="a", label=True)
    run.sample("late", {"x": 2.0}, stream="a")  # predicted after a3 was learned
    run.sample("a4", {"x": 1.0}, stream="a", label=True)
    run.label("late", True)  # learned after a4
    run.sample("a5", {"x": 1.0}, stream="a", label=True)
    run.sample("a5", {"x": 1.0}, stream="a", label=True)  # a repeat
    run.sample("b1", {"x": 1.0}, stream="b", label=False)
    run.process()

    def of(stream, records):
        return [r for r in records if r["stream"] == stream]

    seen = {s: [(p["id"], p["model_examples"]) for p in of(s, run.predictions)] for s in "ab"}
    assert seen == {
        "a": [
            ("a0", 0),
            ("a1", 1),
            ("a2", 2),
            ("a3", 3),
            ("late", 4),
            ("a4", 4),
            ("a5", 6),
        ],
        "b": [("b0", 0), ("b1", 1)],
    }
    assert [r for r, _ in run.dead_letters] == ["sample_duplicate"]
    assert run.learner("a").learned == 7 and run.learner("b").learned == 2
    examples = run.decoded("examples")
    assert [e["id"] for e in of("a", examples)] == ["a0", "a1", "a2", "a3", "a4", "late", "a5"]
    assert [e["id"] for e in of("b", examples)] == ["b0", "b1"]
    # each example carries the prediction served for it, made when its sample came
    assert [e["served"]["model_examples"] for e in of("a", examples)] == [0, 1, 2, 3, 4, 4, 6]


@pytest.mark.parametrize("model", ["scaled-logreg", "hoeffding", "torch-linear"])
@pytest.mark.parametrize("delay", [None, 0, 50], ids=["inline", "labels right behind", "50 late"])
def test_the_queued_path_predicts_scores_and_learns_as_one_record_at_a_time(model, delay):
    """The queue hands a batch's work to the learner in one call; a stream scored at label
    time too takes the path that predicts and learns record by record. Same data, same
    predictions, same metrics, same examples learned."""

    def run(score_at_label_time):
        app = eddy.App(
            settings=Settings.build(
                feature_drift=False, score_at_label_time=score_at_label_time, batch_size=64
            )
        )
        app.stream("default", model=model)
        data = _sea(1500)()
        if delay is None:
            return replay(app, data, inline=True)
        return replay(app, data, delay=delay)

    queued, one_by_one = run(False), run(True)
    assert [p["id"] for p in queued.predictions] == [p["id"] for p in one_by_one.predictions]
    for ours, theirs in zip(queued.predictions, one_by_one.predictions, strict=True):
        assert ours["prediction"] == theirs["prediction"]
        assert (ours.get("proba") or {}) == pytest.approx(theirs.get("proba") or {}, abs=1e-6)
    a, b = queued.learner(), one_by_one.learner()
    assert a.learned == b.learned == 1500
    assert a.metrics.values() == pytest.approx(b.metrics.values(), abs=1e-9)
    assert [e["id"] for e in queued.decoded("examples")] == [
        e["id"] for e in one_by_one.decoded("examples")
    ]
