import itertools

import pytest

from eddy.models.exceptions import ModelConfigError
from eddy.models.monitor.drift import DriftMonitor
from eddy.models.prequential import LabelledItem, StreamLearner, StreamSpec
from eddy.streams.ops.sources import open_named


def _run(detector, seed, n=20_000, drift_at=10_000):
    learner = StreamLearner("s", StreamSpec(model="scaled-logreg", detector=detector))
    stream = open_named("sea", seed=seed, variant=0, drift_at=drift_at, drift_to=3)
    drifts = []
    for i, (x, y) in enumerate(itertools.islice(stream, n)):
        served = learner.predict([x])[0]
        findings = learner.learn([LabelledItem(x, y, served, i)]).findings
        drifts += [f for f in findings if f.signal.level == "drift"]
    return drifts


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "ddm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_abrupt_sea_drift_is_found_within_1500_examples_without_false_alarms(detector, seed):
    drifts = _run(detector, seed)
    counts = [d.signal.count for d in drifts]
    assert counts, "no drift found"
    assert 10_000 < counts[0] <= 11_500, counts
    assert all(c > 10_000 for c in counts), counts
    first = drifts[0]
    assert first.metrics_after["accuracy"] < first.metrics_before["accuracy"]


def test_no_signal_before_the_minimum_and_none_during_cooldown():
    monitor = DriftMonitor("adwin", min_examples=3000, cooldown=5000)
    signals = [monitor.update(float(i % 2 == 0 and i > 1000)) for i in range(2999)]
    assert not any(signals)
    monitor = DriftMonitor("adwin", min_examples=10, cooldown=10_000)
    levels = []
    for i in range(12_000):  # two jumps 2,000 apart: the second falls in the cooldown
        error = 0.0 if i < 1000 else (0.5 if i < 3000 else 1.0)
        s = monitor.update(error)
        if s and s.level == "drift":
            levels.append(i)
    assert len(levels) == 1


def test_a_falling_error_is_not_a_drift():
    monitor = DriftMonitor("adwin", min_examples=10, cooldown=10)
    signals = [monitor.update(1.0 if i < 2000 else 0.0) for i in range(4000)]
    assert not [s for s in signals if s and s.level == "drift"]
    assert monitor.improvements >= 1


def test_unknown_detector():
    with pytest.raises(ModelConfigError, match="known: adwin"):
        DriftMonitor("cusum")


def test_a_river_detector_object_with_its_own_thresholds_is_used_as_given():
    from river import drift

    monitor = DriftMonitor(drift.ADWIN(delta=0.5), min_examples=10, cooldown=10)
    assert monitor.detector_name == "ADWIN"
    signals = [monitor.update(0.0 if i < 500 else 1.0) for i in range(700)]
    first = next(s for s in signals if s and s.level == "drift")
    assert 500 < first.count < 560  # delta 0.5 fires far sooner than the default 0.002
    with pytest.raises(ModelConfigError, match="River drift detector"):
        DriftMonitor(42)
