"""Drift in a model stream's input features and predictions, found before any label.

:class:`FeatureMonitor` watches every feature of the samples a stream sees (and the
model's predictions for them) and reports a :class:`FeatureDrift` when the recent
distribution differs from a reference one. It needs no label, so it speaks as soon
as the inputs change, long before the error-based :mod:`eddy.models.monitor.drift` can.

How it works
------------
Time is cut into blocks of ``check_every`` samples. Within a block a sample costs one
dict look-up and one ``list.append`` per feature; nothing else runs. At the end of a
block each feature's pending values become one numpy array (numeric) or one count
vector (categorical), kept in a ring of ``window // check_every`` blocks: the recent
window is exactly the last ``window`` samples. Then, for every feature, the recent
window is tested against the feature's reference window:

- numeric values (``int``/``float``, not ``bool``): two-sample Kolmogorov-Smirnov,
  with the asymptotic Kolmogorov p-value. KS needs no binning and sees any change of
  the distribution (location, scale, shape). With ties (integer features) its p-value
  is conservative: fewer alarms, never more. Send low-cardinality integer codes as
  ``str`` to have them tested as categories.
- categorical values (``str``/``bool``, other hashables): Pearson chi-square test of
  homogeneity on the 2 x K table of category counts. Chosen over PSI because it gives a
  p-value, so one ``alpha`` means the same false-alarm rate for every feature and
  category count, whereas a PSI threshold (the usual 0.1/0.25) flags pure noise when
  windows are small and many categories are rare. Categories whose reference + recent
  count is below 10 are pooled into one cell (dropped if still below 10): the
  chi-square approximation is only trusted far into its tail when expected counts are
  not tiny. The first ``max_categories`` categories of a feature get their own count,
  the rest share one "other" count, so memory is bounded and a flood of new
  categories shows as a growing "other" share.
- missing values (the feature absent from a sample, ``None``, NaN or a value that is
  not a number in a numeric feature): pooled two-proportion z-test (the 2 x 2
  chi-square) on the missing rate, for every feature.
- predictions, under the pseudo-feature ``"<prediction>"`` and kind ``"prediction"``:
  class labels (``bool``/``str``/``int``) by chi-square on the class shares, regression
  outputs (``float``) by KS.

The reference of a feature is its first full window wholly after ``warmup`` samples
(and after the block in which the feature first appeared). After a finding, the
feature has no reference until a full window wholly after the finding exists, which
then becomes the reference: detection lags a change, so the window current at the
finding still mixes old and new, and comparing the new regime with that mix would
report a large permanent shift a second time. A permanent shift is reported once;
``cooldown`` further bounds how often one feature can be reported (a slow drift is
reported about once per cooldown).

Defaults and false alarms
-------------------------
``alpha`` is per test. Over 100,000 stationary samples with ``check_every=250`` a
feature is tested 400 times per test, and the tests overlap (consecutive recent windows
share 3/4 of their samples, and all share the reference), so the chance of any false
alarm is at most 400 * tests * alpha: with 10 features and 2 tests each, 8e-3 at the
default 1e-6. The power lost is small: with ``window=1000`` KS needs D > 0.12 (a mean
shift of about 0.3 standard deviation once the recent window is wholly shifted), and
a shift of 0.5 to 0.75 sd is found 500 to 1,000 samples after it starts. The asymptotic
KS p-value is above the exact one for equal sizes (Gnedenko-Korolyuk), so it errs
against alarms. ``window=1000`` keeps sampling noise in D near 0.03 while still reacting
within a few thousand samples; ``check_every=250`` adds at most a quarter window of
delay for one test per feature per 250 samples; ``cooldown`` of 5 windows leaves room
for the post-finding reference and then one report per 5,000 samples at most;
``warmup=1000`` keeps the predictions of a fresh learner, which move while it learns,
out of the reference (raise it for slow learners).

Cost
----
Measured on a shared 2-core machine (``tests/unit/test_feature_drift.py``, run with
``-s``): ``update_many`` on 3 numeric features costs about 0.3 us per feature per
sample, tests included (a KS test on two windows of 1,000 takes about 20 us and runs
once per ``check_every`` samples). ``update`` adds a Python call per sample. Memory is
bounded by ``max_features`` x (2 x ``window`` values or 2 x ring of count vectors), and
the monitor pickles (it is part of a checkpoint).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PREDICTION = "<prediction>"
KINDS = ("numeric", "categorical", "missing", "prediction")

_MIN_VALUES = 20  # fewer values than this in either window: the value test is skipped
_MIN_CELL = 10  # chi-square cells with fewer reference + recent counts are pooled
_IGNORED_NAMES_KEPT = 1024  # names past max_features remembered (so they stay cheap)


@dataclass(frozen=True)
class FeatureDriftConfig:
    """How a :class:`FeatureMonitor` tests. Invalid values raise ``ValueError``.

    window: samples in the reference and in the recent window; a multiple of
        ``check_every``.
    check_every: samples between two tests (and the block size of the windows).
    alpha: significance of each test; 0 < alpha < 1.
    cooldown: samples after a finding during which that feature is not reported again.
    max_features: features monitored per stream; later ones are ignored and counted.
    max_categories: categories counted separately per categorical feature (and
        prediction classes); the rest share one "other" count.
    warmup: samples seen before the first reference window may start.
    """

    window: int = 1000
    check_every: int = 250
    alpha: float = 1e-6
    cooldown: int = 5000
    max_features: int = 50
    max_categories: int = 50
    warmup: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if self.check_every < 1:
            problems.append(f"check_every must be >= 1, got {self.check_every}")
        elif self.window < 2 * _MIN_VALUES or self.window % self.check_every:
            problems.append(
                f"window must be >= {2 * _MIN_VALUES} and a multiple of check_every "
                f"({self.check_every}), got {self.window}"
            )
        if not 0.0 < self.alpha < 1.0:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        for name in ("cooldown", "max_features", "warmup"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_categories < 1:
            problems.append(f"max_categories must be >= 1, got {self.max_categories}")
        if problems:
            msg = "invalid FeatureDriftConfig: " + "; ".join(problems)
            raise ValueError(msg)


@dataclass(frozen=True)
class FeatureDrift:
    """A significant difference between a feature's recent and reference windows.

    kind is ``"numeric"``, ``"categorical"``, ``"missing"`` or ``"prediction"``; test is
    ``"ks"`` (statistic: the KS distance D), ``"chi2"`` (the chi-square statistic) or
    ``"z"`` (the z score of the missing rate, positive when more values are missing
    now). The sizes count values for value tests and samples for the missing test.
    count is the monitor's sample count when it was found.
    """

    feature: str
    kind: str
    test: str
    statistic: float
    p_value: float
    reference_size: int
    recent_size: int
    count: int

    def as_dict(self) -> dict[str, Any]:
        """The finding as a JSON-ready dict."""
        return asdict(self)


# ---------------------------------------------------------------- statistics


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution K (the limit of sqrt(n) D_n)."""
    if x <= 0.0:
        return 1.0
    if x < 1.18:  # the theta-function form converges fast for small x
        y = -(math.pi**2) / (8.0 * x * x)
        cdf = (
            math.sqrt(2.0 * math.pi) / x * sum(math.exp((2 * j - 1) ** 2 * y) for j in (1, 2, 3, 4))
        )
        return min(1.0, max(0.0, 1.0 - cdf))
    sf = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * x * x) for j in (1, 2, 3, 4, 5))
    return min(1.0, max(0.0, sf))


def ks_test(reference: np.ndarray, recent: np.ndarray) -> tuple[float, float]:
    """Two-sample KS distance D and its asymptotic p-value.

    Both arrays must be sorted, NaN-free and non-empty. Ties are handled exactly (the
    empirical CDFs are compared after each run of equal values).
    """
    n, m = len(reference), len(recent)
    values = np.concatenate((reference, recent))
    order = np.argsort(values, kind="stable")  # merges the two sorted runs
    # integer steps (m for a reference value, -n for a recent one) keep the CDF
    # difference exact: n*m*(F_ref - F_recent) after each value
    steps = np.where(order < n, m, -n).cumsum()
    ordered = values[order]
    run_ends = np.append(ordered[1:] != ordered[:-1], True)
    d = float(np.abs(steps[run_ends]).max()) / (n * m)
    return d, kolmogorov_sf(math.sqrt(n * m / (n + m)) * d)


def _log_gamma_prefactor(a: float, x: float) -> float:
    return math.exp(-x + a * math.log(x) - math.lgamma(a))


def gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x), a > 0, x >= 0."""
    if x <= 0.0:
        return 1.0
    if x < a + 1.0:  # series for P(a, x), converges fast here
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if term < total * 1e-16:
                break
        return max(0.0, 1.0 - total * _log_gamma_prefactor(a, x))
    # continued fraction for Q(a, x) (modified Lentz)
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, _log_gamma_prefactor(a, x) * h)


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for a chi-square variable X with ``dof`` >= 1 degrees of freedom."""
    return gamma_q(dof / 2.0, x / 2.0)


def chi2_homogeneity(
    reference: np.ndarray, recent: np.ndarray
) -> tuple[float, float, int, int, int]:
    """Pearson chi-square test that two count vectors share one distribution.

    Cells with fewer than 10 counts in both vectors together are pooled into one cell,
    which is dropped if still below 10. Returns (statistic, p-value, degrees of
    freedom, reference total, recent total) over the cells tested; with fewer than two
    cells there is nothing to test and the p-value is 1.
    """
    totals = reference + recent
    big = totals >= _MIN_CELL
    rare = ~big & (totals > 0)
    ref, rec = reference[big], recent[big]
    if rare.any() and totals[rare].sum() >= _MIN_CELL:
        ref = np.append(ref, reference[rare].sum())
        rec = np.append(rec, recent[rare].sum())
    n_ref, n_rec = int(ref.sum()), int(rec.sum())
    if len(ref) < 2 or n_ref == 0 or n_rec == 0:
        return 0.0, 1.0, 0, n_ref, n_rec
    cells = ref + rec
    e_ref = cells * (n_ref / (n_ref + n_rec))
    e_rec = cells * (n_rec / (n_ref + n_rec))
    stat = float(((ref - e_ref) ** 2 / e_ref).sum() + ((rec - e_rec) ** 2 / e_rec).sum())
    dof = len(ref) - 1
    return stat, chi2_sf(stat, dof), dof, n_ref, n_rec


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled z-test of x1/n1 against x2/n2: (z, two-sided p-value); z > 0 if x2/n2 is
    larger. Equal to the 2 x 2 chi-square test, so its tail is as trustworthy."""
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if var <= 0.0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2.0))


# ---------------------------------------------------------------- monitor


def _kind_of(value: Any, prediction: bool) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool | np.bool_ | str):
        return "categorical"
    if isinstance(value, int | np.integer):
        return "categorical" if prediction else "numeric"  # int predictions are classes
    if isinstance(value, float | np.floating):
        return "numeric"
    return "categorical"


def _to_float(value: Any) -> float:
    if isinstance(value, int | float | np.number):
        try:
            return float(value)
        except OverflowError:
            return math.nan
    return math.nan


class _Slot:
    """One monitored feature (or the predictions): pending values, blocks, reference."""

    __slots__ = (
        "blocks",
        "categories",
        "fresh",
        "is_prediction",
        "kind",
        "name",
        "p_values",
        "pending",
        "quiet_until",
        "ref_from",
        "reference",
    )

    def __init__(self, name: str, kind: str | None, n_blocks: int, ref_from: int) -> None:
        self.name = name
        self.is_prediction = name == PREDICTION
        self.kind = kind  # "numeric" or "categorical"; None until a value is seen
        self.pending: list[Any] = []
        # The block in which a feature appears is partial: its history starts after it.
        self.fresh = True
        # (present, values or category counts, None for a block without any value)
        self.blocks: deque[tuple[int, np.ndarray | None]] = deque(maxlen=n_blocks)
        self.categories: dict[Hashable, int] = {}
        self.reference: tuple[int, np.ndarray] | None = None
        self.ref_from = ref_from  # the reference window may not start before this count
        self.quiet_until = 0
        self.p_values: dict[str, float] = {}


class FeatureMonitor:
    """Drift tests on the features and predictions of one model stream.

    Feed samples with :meth:`update` or, cheaper, :meth:`update_many`; both return the
    findings made while ingesting them (tests run every ``check_every`` samples, so
    most calls return ``[]``). Not thread-safe.

    >>> import random
    >>> rng = random.Random(0)
    >>> m = FeatureMonitor(FeatureDriftConfig(window=500, check_every=250, warmup=0))
    >>> rows = [{"x": rng.gauss(0 if i < 5000 else 1, 1), "y": rng.random()} for i in range(7000)]
    >>> [(f.feature, f.kind, f.test) for f in m.update_many(rows)]
    [('x', 'numeric', 'ks')]
    """

    def __init__(self, config: FeatureDriftConfig | None = None) -> None:
        self.config = config or FeatureDriftConfig()
        self.count = 0  # samples seen
        self.features_ignored = 0  # distinct names past max_features (up to 1,024 kept)
        self.values_ignored = 0  # values of ignored features
        self.values_unreadable = 0  # values of numeric features that are not numbers
        self.findings = 0  # drifts reported
        self._n_blocks = self.config.window // self.config.check_every
        self._slots: dict[str, _Slot] = {}
        self._route: dict[str, list[Any]] = {}  # name -> its slot's pending list, or the sink
        self._sink: list[Any] = []  # values of ignored features, counted at each check
        self._prediction: _Slot | None = None

    # -------------------------------------------------------------- introspection

    @property
    def features(self) -> tuple[str, ...]:
        """The monitored feature names, in the order they were first seen."""
        return tuple(self._slots)

    @property
    def features_monitored(self) -> int:
        """How many features are monitored (at most ``max_features``)."""
        return len(self._slots)

    @property
    def p_values(self) -> dict[str, dict[str, float]]:
        """The last p-value of each test by feature and kind, e.g. ``{"x": {"numeric":
        0.4, "missing": 1.0}, "<prediction>": {"prediction": 0.7}}``; a feature appears
        once it has a reference. A test skipped for too few values reads 1.0."""
        slots = [*self._slots.values(), *([self._prediction] if self._prediction else [])]
        return {s.name: dict(s.p_values) for s in slots if s.p_values}

    def categories(self, feature: str) -> tuple[Hashable, ...]:
        """The categories counted separately for a categorical feature (or
        ``"<prediction>"``); any others share the "other" count."""
        slot = self._prediction if feature == PREDICTION else self._slots.get(feature)
        return tuple(slot.categories) if slot else ()

    # -------------------------------------------------------------- ingestion

    def update(self, features: Mapping[str, Any], prediction: Any = None) -> list[FeatureDrift]:
        """Take one sample (and the model's prediction for it, if any)."""
        route = self._route
        for name, value in features.items():
            pending = route.get(name)
            if pending is None:
                pending = self._admit(name, value)
            pending.append(value)
        if prediction is not None:
            self._prediction_pending().append(prediction)
        self.count += 1
        if self.count % self.config.check_every == 0:
            return self._check()
        return []

    def update_many(
        self, rows: Iterable[Mapping[str, Any]], predictions: Iterable[Any] | None = None
    ) -> list[FeatureDrift]:
        """Take a batch of samples; ``predictions``, if given, has one per row (``None``
        for a row without one). Gives the same findings as :meth:`update` row by row."""
        rows = rows if isinstance(rows, Sequence) else list(rows)
        if predictions is not None:
            predictions = predictions if isinstance(predictions, Sequence) else list(predictions)
            if len(predictions) != len(rows):
                msg = f"predictions has {len(predictions)} items for {len(rows)} rows"
                raise ValueError(msg)
        check_every = self.config.check_every
        route = self._route
        found: list[FeatureDrift] = []
        start = 0
        while start < len(rows):
            stop = min(len(rows), start + check_every - self.count % check_every)
            for row in rows[start:stop]:
                for name, value in row.items():
                    pending = route.get(name)
                    if pending is None:
                        pending = self._admit(name, value)
                    pending.append(value)
            if predictions is not None:
                chunk = predictions[start:stop]
                # as in update(): the prediction slot starts with the first real prediction
                if self._prediction is not None or any(p is not None for p in chunk):
                    self._prediction_pending().extend(chunk)
            self.count += stop - start
            if self.count % check_every == 0:
                found += self._check()
            start = stop
        return found

    def _admit(self, name: str, value: Any) -> list[Any]:
        """The pending list of a name seen for the first time (or of an ignored name)."""
        if len(self._slots) < self.config.max_features:
            ref_from = self.config.warmup
            slot = self._slots[name] = _Slot(name, _kind_of(value, False), self._n_blocks, ref_from)
            self._route[name] = slot.pending
            return slot.pending
        if len(self._route) - len(self._slots) < _IGNORED_NAMES_KEPT:
            self._route[name] = self._sink
            self.features_ignored += 1
        return self._sink

    def _prediction_pending(self) -> list[Any]:
        if self._prediction is None:
            self._prediction = _Slot(PREDICTION, None, self._n_blocks, self.config.warmup)
        return self._prediction.pending

    # -------------------------------------------------------------- tests

    def _check(self) -> list[FeatureDrift]:
        self.values_ignored += len(self._sink)
        self._sink.clear()
        found: list[FeatureDrift] = []
        for slot in self._slots.values():
            self._close_block(slot)
            found += self._test(slot)
        if self._prediction is not None:
            self._close_block(self._prediction)
            found += self._test(self._prediction)
        self.findings += len(found)
        return found

    def _close_block(self, slot: _Slot) -> None:
        pending = slot.pending
        if slot.kind is None:
            first = next((v for v in pending if v is not None), None)
            slot.kind = _kind_of(first, slot.is_prediction)
        if slot.fresh:
            slot.fresh = False
        elif slot.kind is None:  # nothing but missing values so far
            slot.blocks.append((0, None))
        elif slot.kind == "numeric":
            slot.blocks.append(self._numeric_block(pending))
        else:
            slot.blocks.append(self._categorical_block(slot, pending))
        pending.clear()  # in place: the route holds this very list

    def _numeric_block(self, pending: list[Any]) -> tuple[int, np.ndarray]:
        try:
            values = np.array(pending, dtype=np.float64)  # None -> NaN
        except (TypeError, ValueError, OverflowError):
            values = np.array([_to_float(v) for v in pending], dtype=np.float64)
            self.values_unreadable += sum(
                1 for v in pending if v is not None and not isinstance(v, int | float | np.number)
            )
        values = values[~np.isnan(values)]
        return len(values), values

    def _categorical_block(self, slot: _Slot, pending: list[Any]) -> tuple[int, np.ndarray]:
        try:
            tally = Counter(pending)
        except TypeError:  # unhashable values: count them as "other"
            tally = Counter(v if isinstance(v, Hashable) else _Other for v in pending)
        counts = [0] * (self.config.max_categories + 1)
        categories, other = slot.categories, self.config.max_categories
        for value, n in tally.items():
            if value is None:
                continue
            index = categories.get(value)
            if index is None:
                index = (
                    other
                    if len(categories) >= other
                    else categories.setdefault(value, len(categories))
                )
            counts[index] += n
        counts_array = np.array(counts, dtype=np.int64)
        return int(counts_array.sum()), counts_array

    def _window(self, slot: _Slot) -> tuple[int, np.ndarray]:
        """(present values, sorted values or category counts) over the recent window."""
        present = sum(p for p, _ in slot.blocks)
        parts = [data for _, data in slot.blocks if data is not None]
        if slot.kind == "categorical":
            return present, sum(parts, np.zeros(self.config.max_categories + 1, np.int64))
        values = np.concatenate(parts) if parts else np.zeros(0)
        values.sort()
        return present, values

    def _test(self, slot: _Slot) -> list[FeatureDrift]:
        config = self.config
        if len(slot.blocks) < self._n_blocks:
            return []
        if slot.reference is None:
            if self.count - config.window >= slot.ref_from:
                slot.reference = self._window(slot)
            return []
        (ref_present, ref_data), (present, data) = slot.reference, self._window(slot)
        kind = "prediction" if slot.is_prediction else slot.kind
        drifts: list[FeatureDrift] = []

        def record(kind: str, test: str, stat: float, p: float, n_ref: int, n_rec: int) -> None:
            slot.p_values[kind] = p
            if p < config.alpha:
                drifts.append(
                    FeatureDrift(slot.name, kind, test, stat, p, n_ref, n_rec, self.count)
                )

        if slot.kind == "numeric":
            if ref_present >= _MIN_VALUES and present >= _MIN_VALUES:
                d, p = ks_test(ref_data, data)
                record(kind, "ks", d, p, ref_present, present)
            else:
                slot.p_values[kind] = 1.0
        elif slot.kind == "categorical":
            if len(ref_data) != len(data):  # the reference predates the first value
                ref_data = np.zeros_like(data)
            stat, p, _, n_ref, n_rec = chi2_homogeneity(ref_data, data)
            record(kind, "chi2", stat, p, n_ref, n_rec)
        if not slot.is_prediction:
            window = config.window
            z, p = two_proportion_z(window - ref_present, window, window - present, window)
            record("missing", "z", z, p, window, window)
        if not drifts or self.count < slot.quiet_until:
            return []
        slot.quiet_until = self.count + config.cooldown
        slot.reference = None  # the next one is the first full window after this finding
        slot.ref_from = self.count
        return drifts


class _Other:
    """Stands for every unhashable categorical value (one shared category)."""
