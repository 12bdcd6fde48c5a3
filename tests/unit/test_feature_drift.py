"""Feature and prediction drift (eddy.models.monitor.feature_drift): power, false alarms, bounds.

Every stream here is seeded, so each assertion is exact for these seeds.
"""

import itertools
import math
import pickle
import time

import numpy as np
import pytest
from river.datasets import synth

from eddy.models.monitor.feature_drift import (
    PREDICTION,
    FeatureDriftConfig,
    FeatureMonitor,
    chi2_homogeneity,
    chi2_sf,
    kolmogorov_sf,
    ks_test,
    two_proportion_z,
)

SHIFT_AT = 20_000
WINDOW = FeatureDriftConfig().window


def _found(findings):
    return [(f.feature, f.kind, f.test) for f in findings]


def _feed(monitor, rows, predictions=None, batch=500):
    """update_many in consumer-sized batches, as a worker would call it."""
    findings = []
    for i in range(0, len(rows), batch):
        preds = None if predictions is None else predictions[i : i + batch]
        findings += monitor.update_many(rows[i : i + batch], preds)
    return findings


def _gaussian_rows(seed, n, shifted="x", shift=0.75):
    """Features x, y, z ~ N(0, 1); ``shifted`` gains ``shift`` sd from SHIFT_AT on."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 3))
    rows = [{"x": float(a), "y": float(b), "z": float(c)} for a, b, c in values]
    for row in rows[SHIFT_AT:]:
        row[shifted] += shift
    return rows


def _assert_once_after_shift(findings, expected):
    """Each expected finding exactly once, all within 2 windows after the shift."""
    assert sorted(_found(findings)) == sorted(expected), _found(findings)
    for f in findings:
        assert SHIFT_AT < f.count <= SHIFT_AT + 2 * WINDOW, f
        assert f.p_value < FeatureDriftConfig().alpha


# ---------------------------------------------------------------- 1. numeric shift


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_mean_shift_is_reported_once_on_the_shifted_feature_only(seed):
    monitor = FeatureMonitor()
    findings = _feed(monitor, _gaussian_rows(seed, 40_000))
    _assert_once_after_shift(findings, [("x", "numeric", "ks")])
    finding = findings[0]
    assert (finding.reference_size, finding.recent_size) == (WINDOW, WINDOW)
    assert finding.as_dict() == {
        "feature": "x",
        "kind": "numeric",
        "test": "ks",
        "statistic": finding.statistic,
        "p_value": finding.p_value,
        "reference_size": WINDOW,
        "recent_size": WINDOW,
        "count": finding.count,
    }
    assert monitor.findings == 1
    assert set(monitor.p_values) == {"x", "y", "z"}
    assert set(monitor.p_values["x"]) == {"numeric", "missing"}


def test_update_and_update_many_give_the_same_findings():
    rows = _gaussian_rows(3, 24_000, shift=1.0)
    predictions = [row["x"] > 0.5 for row in rows]
    one = FeatureMonitor()
    single = [f for row, p in zip(rows, predictions, strict=True) for f in one.update(row, p)]
    many = FeatureMonitor()
    batched = _feed(many, rows, predictions, batch=333)  # batches straddle the checks
    assert single == batched
    assert _found(single) == [("x", "numeric", "ks"), (PREDICTION, "prediction", "chi2")]
    assert one.p_values == many.p_values


# ---------------------------------------------------------------- 2. no false alarm


def _stationary_rows(seed, n=100_000):
    """SEA's three uniform features plus skewed, tied, categorical, boolean and
    sometimes-missing ones, all stationary; the predictions are SEA's labels."""
    rng = np.random.default_rng(seed)
    gauss, expo, counts = rng.normal(size=n), rng.exponential(size=n), rng.poisson(3, size=n)
    shares = [0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005]  # rare ones too
    cats = rng.choice(list("abcdefghij"), size=n, p=shares)
    flags, missing = rng.random(n) < 0.3, rng.random(n) < 0.1
    rows, labels = [], []
    for i, (x, y) in enumerate(itertools.islice(synth.SEA(variant=0, seed=seed), n)):
        row = {str(k): v for k, v in x.items()}
        row.update(g=float(gauss[i]), e=float(expo[i]), k=int(counts[i]))
        row.update(c=str(cats[i]), b=bool(flags[i]))
        if not missing[i]:
            row["m"] = float(gauss[i] * 2.0)
        rows.append(row)
        labels.append(y)
    return rows, labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_false_alarm_on_100_000_stationary_samples(seed):
    rows, labels = _stationary_rows(seed)
    monitor = FeatureMonitor()
    assert _feed(monitor, rows, labels) == []
    assert monitor.count == 100_000
    assert monitor.features == ("0", "1", "2", "g", "e", "k", "c", "b", "m")
    # every test ran: 9 features x (values, missing) + the predictions
    assert sum(len(p) for p in monitor.p_values.values()) == 19


# ---------------------------------------------------------------- 3. concept drift


@pytest.mark.parametrize("seed", [0, 1])
def test_sea_concept_drift_moves_the_labels_not_the_features(seed):
    """SEA variant 0 -> 3 keeps x uniform and moves the threshold (P(y) 0.68 -> 0.55):
    no feature drifts; labels passed as predictions show the class-share change."""
    before = itertools.islice(synth.SEA(variant=0, seed=seed), SHIFT_AT)
    after = itertools.islice(synth.SEA(variant=3, seed=seed + 100), 20_000)
    rows, labels = [], []
    for x, y in itertools.chain(before, after):
        rows.append({str(k): v for k, v in x.items()})
        labels.append(y)
    monitor = FeatureMonitor()
    assert _feed(monitor, rows) == []
    monitor = FeatureMonitor()
    _assert_once_after_shift(_feed(monitor, rows, labels), [(PREDICTION, "prediction", "chi2")])


# ---------------------------------------------------------------- 4. categories, missing


@pytest.mark.parametrize("seed", [0, 1])
def test_category_shares_and_a_new_missing_rate_are_reported(seed):
    rng = np.random.default_rng(seed)
    n = 30_000
    cats = np.where(
        np.arange(n) < SHIFT_AT,
        rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2]),
        rng.choice(["a", "b", "c"], size=n, p=[0.4, 0.3, 0.3]),
    )
    gone = (np.arange(n) >= SHIFT_AT) & (rng.random(n) < 0.3)
    values = rng.normal(size=(n, 2))
    rows = []
    for i in range(n):
        row = {"cat": str(cats[i]), "g": float(values[i, 0])}
        if not gone[i]:
            row["m"] = float(values[i, 1])
        rows.append(row)
    findings = _feed(FeatureMonitor(), rows)
    _assert_once_after_shift(findings, [("cat", "categorical", "chi2"), ("m", "missing", "z")])
    missing = next(f for f in findings if f.kind == "missing")
    assert missing.statistic > 0  # more missing now
    assert (missing.reference_size, missing.recent_size) == (WINDOW, WINDOW)


# ---------------------------------------------------------------- 5. predictions


@pytest.mark.parametrize("seed", [0, 1])
def test_prediction_drift_for_classes_and_for_regression(seed):
    rng = np.random.default_rng(seed)
    n = 30_000
    rows = [{"g": float(v)} for v in rng.normal(size=n)]
    share = np.where(np.arange(n) < SHIFT_AT, 0.3, 0.45)
    classes = [int(c) for c in rng.random(n) < share]  # int labels are classes
    monitor = FeatureMonitor()
    _assert_once_after_shift(_feed(monitor, rows, classes), [(PREDICTION, "prediction", "chi2")])
    assert sorted(monitor.categories(PREDICTION)) == [0, 1]

    outputs = rng.normal(size=n) + np.where(np.arange(n) < SHIFT_AT, 0.0, 0.75)
    outputs = [float(v) for v in outputs]  # float predictions are regression values
    findings = _feed(FeatureMonitor(), rows, outputs)
    _assert_once_after_shift(findings, [(PREDICTION, "prediction", "ks")])


# ---------------------------------------------------------------- 6. bounds, pickling


def test_max_features_and_max_categories_bound_what_is_kept():
    config = FeatureDriftConfig(max_features=10, max_categories=5)
    monitor = FeatureMonitor(config)
    rng = np.random.default_rng(0)
    rows = [{f"f{j}": float(v) for j, v in enumerate(rng.normal(size=40))} for _ in range(2000)]
    for row, category in zip(rows, rng.integers(0, 100, size=2000), strict=True):
        row["cat"] = f"c{category}"  # 100 categories: 5 tracked, 95 in "other"
    monitor = FeatureMonitor(config)
    _feed(monitor, rows)
    assert monitor.features_monitored == 10
    assert monitor.features == tuple(f"f{j}" for j in range(10))
    assert monitor.features_ignored == 31  # f10 .. f39 and cat
    assert monitor.values_ignored == 31 * 2000

    monitor = FeatureMonitor(config)
    _feed(monitor, [{"cat": row["cat"]} for row in rows])
    assert len(monitor.categories("cat")) == 5

    # names past the ignored-name memory are still counted as values, not remembered
    monitor = FeatureMonitor(FeatureDriftConfig(max_features=0, window=250, check_every=250))
    monitor.update_many([{f"n{j}": 1.0 for j in range(3000)}] * 250)
    assert (monitor.features_ignored, monitor.values_ignored) == (1024, 3000 * 250)


def _mixed_rows(seed, n):
    """A drifting numeric feature, a feature with 200 categories and a missing one."""
    rng = np.random.default_rng(seed)
    rows = _gaussian_rows(seed, n)
    for row, category, gone in zip(rows, rng.zipf(1.5, size=n) % 200, rng.random(n), strict=True):
        row["cat"] = f"c{category}"
        if gone < 0.1:
            del row["z"]
    return rows


def test_memory_is_bounded_and_a_pickled_monitor_continues_identically():
    rows = _mixed_rows(5, 60_000)
    predictions = [row["x"] > 0 for row in rows]
    monitor = FeatureMonitor()
    _feed(monitor, rows[:10_000], predictions[:10_000])
    size_early = len(pickle.dumps(monitor))
    _feed(monitor, rows[10_000:15_125], predictions[10_000:15_125])  # mid-block
    clone = pickle.loads(pickle.dumps(monitor))
    rest, rest_predictions = rows[15_125:], predictions[15_125:]
    findings = _feed(monitor, rest, rest_predictions)
    assert _feed(clone, rest, rest_predictions) == findings
    assert ("x", "numeric", "ks") in _found(findings)
    assert clone.p_values == monitor.p_values
    assert (clone.count, clone.findings) == (monitor.count, monitor.findings)
    assert len(monitor.categories("cat")) == 50
    # 60,000 samples later the state has not grown: it is windows, not history
    assert len(pickle.dumps(monitor)) < 1.1 * size_early


# ---------------------------------------------------------------- 7. the statistics


def test_kolmogorov_sf_against_known_values():
    # 1.3581 is the 95% point of the Kolmogorov distribution (the classic 1.36 critical
    # value of KS tables); 1.6276 the 99% point.
    assert kolmogorov_sf(1.3581) == pytest.approx(0.05, abs=1e-5)
    assert kolmogorov_sf(1.6276) == pytest.approx(0.01, abs=1e-5)
    # P(K > 1) = 2 (e^-2 - e^-8 + e^-18 - ...) = 0.2699996717 (three terms by hand)
    assert kolmogorov_sf(1.0) == pytest.approx(0.26999967167735456, rel=1e-12)
    assert kolmogorov_sf(0.0) == 1.0
    assert kolmogorov_sf(0.1) == 1.0
    # the small-x branch (theta-function form) agrees with the plain alternating
    # series, summed here to 200 terms, where both converge
    for x in (0.5, 0.8, 1.1, 1.17, 1.19, 1.5, 2.5, 4.0):
        series = 2 * math.fsum(
            (-1) ** (j - 1) * math.exp(-2 * j * j * x * x) for j in range(1, 201)
        )
        assert kolmogorov_sf(x) == pytest.approx(series, rel=1e-9, abs=1e-15)


def test_ks_p_value_errs_on_the_side_of_no_alarm():
    """The exact two-sample law for equal sizes (Gnedenko-Korolyuk):
    P(D >= k/n) = 2 sum_j (-1)^(j+1) C(2n, n-jk) / C(2n, n). The asymptotic p-value
    is above it in the tail, where alpha lies, so alarms are never easier than stated."""
    n = 200
    reference = np.arange(n, dtype=float)
    for k in (40, 50, 60, 70):
        d, p = ks_test(reference, reference + k)  # the ECDFs differ by k/n at most
        assert d == k / n
        exact = 2 * sum((-1) ** (j + 1) * math.comb(2 * n, n - j * k) for j in range(1, n // k + 1))
        exact /= math.comb(2 * n, n)
        assert exact < p < 2 * exact


def test_ks_statistic_is_exact_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = np.sort(rng.integers(0, 6, size=rng.integers(1, 40)).astype(float))
        b = np.sort(rng.integers(0, 6, size=rng.integers(1, 40)).astype(float))
        grid = np.concatenate((a, b))
        brute = max(abs(np.mean(a <= t) - np.mean(b <= t)) for t in grid)
        assert ks_test(a, b)[0] == pytest.approx(brute, abs=1e-12)
    assert ks_test(np.ones(50), np.ones(60)) == (0.0, 1.0)


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 10, 50])
def test_chi2_sf_against_closed_forms(dof):
    # Closed forms: dof 1: erfc(sqrt(x/2)); dof 3: that + sqrt(2x/pi) e^(-x/2);
    # even dof 2k: e^(-x/2) sum_{j<k} (x/2)^j / j!  (Poisson tail identity).
    for x in (0.01, 0.5, 1.0, 3.841458820694124, 10.0, 30.0, 60.0, 120.0, 300.0):
        if dof == 1:
            expected = math.erfc(math.sqrt(x / 2))
        elif dof == 3:
            expected = math.erfc(math.sqrt(x / 2)) + math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
        else:
            h = x / 2
            expected = math.exp(-h) * math.fsum(h**j / math.factorial(j) for j in range(dof // 2))
        assert chi2_sf(x, dof) == pytest.approx(expected, rel=1e-9, abs=1e-300), (x, dof)
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-12)  # the 95% point
    assert chi2_sf(10.0, 4) == pytest.approx(6 * math.exp(-5))  # 0.0404276819945128
    assert chi2_sf(0.0, dof) == 1.0


def test_chi2_homogeneity_and_missing_z_by_hand():
    # [[30, 70], [50, 50]]: expected 40/60 per row, chi2 = 2 (10^2/40 + 10^2/60) = 25/3,
    # and the pooled z-test on 30/100 vs 50/100 is the same test: z^2 = chi2
    stat, p, dof, n_ref, n_rec = chi2_homogeneity(np.array([30, 70]), np.array([50, 50]))
    assert (stat, dof, n_ref, n_rec) == (pytest.approx(25 / 3), 1, 100, 100)
    z, p_z = two_proportion_z(30, 100, 50, 100)
    assert z == pytest.approx(math.sqrt(25 / 3))
    assert p == pytest.approx(p_z) == pytest.approx(math.erfc(math.sqrt(25 / 6)))
    # rare cells (reference + recent < 10) are pooled into one cell of 3 + 6 = 9 < 10,
    # which is dropped: only the first two cells are tested
    pooled = chi2_homogeneity(np.array([30, 70, 1, 2]), np.array([50, 50, 4, 2]))
    assert pooled[:4] == (pytest.approx(25 / 3), pytest.approx(p), 1, 100)
    assert chi2_homogeneity(np.array([5, 0]), np.array([4, 0]))[1] == 1.0
    assert two_proportion_z(0, 1000, 0, 1000) == (0.0, 1.0)


# ---------------------------------------------------------------- config, cost


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("window", 1100, "multiple of check_every"),
        ("window", 20, "window must be >= 40"),
        ("check_every", 0, "check_every must be >= 1"),
        ("alpha", 0.0, r"alpha must be in \(0, 1\)"),
        ("alpha", 1.5, r"alpha must be in \(0, 1\)"),
        ("cooldown", -1, "cooldown must be >= 0"),
        ("max_features", -1, "max_features must be >= 0"),
        ("max_categories", 0, "max_categories must be >= 1"),
        ("warmup", -5, "warmup must be >= 0"),
    ],
)
def test_bad_config_values_say_what_is_allowed(field, value, message):
    with pytest.raises(ValueError, match=message):
        FeatureDriftConfig(**{field: value})


def test_predictions_must_match_rows():
    with pytest.raises(ValueError, match="2 items for 3 rows"):
        FeatureMonitor().update_many([{}, {}, {}], [1, 2])


def test_per_sample_cost_of_update_many_on_3_numeric_features():
    """Prints the cost (pytest -s); asserts only a loose bound, the machine is shared."""
    rows = _gaussian_rows(0, 100_000)
    monitor = FeatureMonitor()
    start = time.perf_counter()
    _feed(monitor, rows)
    per_sample = (time.perf_counter() - start) / len(rows)
    print(
        f"\nupdate_many, 3 numeric features, batches of 500: {per_sample * 1e6:.2f} us/sample, "
        f"{per_sample * 1e6 / 3:.2f} us per feature per sample (tests included)"
    )
    assert per_sample < 10e-6
