"""Concept-drift monitoring on the prequential error stream, with River's detectors.

:class:`DriftMonitor` feeds each example's error (0/1 for classification, the
absolute error for regression) to a drift detector and to a more sensitive twin
for the warning level (or to the detector's own warning, where it has one). It
adds what the raw detectors lack in production:

- a minimum number of examples before the first signal, since ADWIN fires while
  a fresh model is still learning;
- a cooldown after each drift, so that one change does not fire a burst of
  retrains;
- a direction: detectors fire when the error *falls* too (a model recovering
  after a drift), which is no reason to retrain. A detection counts as a drift
  only when the error of the most recent ``recent_window`` examples is above the
  error since the last reset, or above that of the window before them: with labels
  late, the served predictions of a stream's first examples (a model still
  learning) can raise the first baseline above a real drift's error, and a slow
  detector may fire when both windows are already past the change.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from typing import Any

from river import base, drift
from river.drift import binary

from eddy.models.exceptions import ModelConfigError

DETECTORS = ("adwin", "page_hinkley", "kswin", "ddm")


def make_detector(name: str, seed: int = 42, warning: bool = False) -> Any:
    """A River detector by name; ``warning=True`` gives its more sensitive twin."""
    if name == "adwin":
        return drift.ADWIN(delta=0.02 if warning else 0.002)
    if name == "page_hinkley":
        return drift.PageHinkley(threshold=25.0 if warning else 50.0)
    if name == "kswin":
        return drift.KSWIN(alpha=0.05 if warning else 0.005, seed=seed)
    if name == "ddm":
        return binary.DDM()
    msg = f"unknown drift detector {name!r}; known: {', '.join(DETECTORS)}"
    raise ModelConfigError(msg)


@dataclass(frozen=True)
class DriftSignal:
    """A warning or a drift, at the monitor's ``count``-th example."""

    level: str  # "warning" or "drift"
    detector: str
    count: int


class DriftMonitor:
    """Warning and drift levels on an error stream, gated and cooled down.

    >>> m = DriftMonitor("adwin", min_examples=100, cooldown=500)
    >>> signals = [m.update(0.0 if i < 1000 else 1.0) for i in range(1300)]
    >>> first = next(s for s in signals if s and s.level == "drift")
    >>> 1000 < first.count < 1100
    True
    """

    def __init__(
        self,
        detector: Any = "adwin",
        min_examples: int = 500,
        cooldown: int = 1000,
        seed: int = 42,
        recent_window: int = 200,
    ) -> None:
        self.min_examples = min_examples
        self.cooldown = cooldown
        if isinstance(detector, str):
            self.detector_name = detector
            self._detector = make_detector(detector, seed)
            self._native_warning = hasattr(self._detector, "warning_detected")
            self._warning = None if self._native_warning else make_detector(detector, seed, True)
        elif isinstance(detector, base.DriftDetector):
            # The user's detector with their thresholds: its own warning level, if any.
            self.detector_name = type(detector).__name__
            self._detector = detector.clone()
            self._native_warning = hasattr(self._detector, "warning_detected")
            self._warning = None
        else:
            msg = (
                f"a drift detector is a name ({', '.join(DETECTORS)}) or a River drift "
                f"detector, got {type(detector).__name__}"
            )
            raise ModelConfigError(msg)
        self._pristine = (copy.deepcopy(self._detector), copy.deepcopy(self._warning))
        self.count = 0
        self.drifts = 0
        self.warnings = 0
        self.improvements = 0
        self.recent_window = recent_window
        self._last_drift_at: int | None = None
        self._in_warning = False
        self._recent: deque[float] = deque(maxlen=2 * recent_window)
        self._since_reset_sum = 0.0
        self._since_reset_n = 0

    def update(self, error: float) -> DriftSignal | None:
        """Feed one example's error; return a signal when a level is newly reached."""
        self.count += 1
        self._recent.append(error)
        self._since_reset_sum += error
        self._since_reset_n += 1
        detector = self._detector
        before = (getattr(detector, "width", None), getattr(detector, "estimation", None))
        detector.update(error)
        if self._warning is not None:
            self._warning.update(error)
        if self.count < self.min_examples or self._cooling_down():
            return None
        if detector.drift_detected:
            worse = self._worse(before, error)
            self._in_warning = False
            self._reset_detectors()
            if not worse:
                self.improvements += 1
                return None
            self.drifts += 1
            self._last_drift_at = self.count
            return DriftSignal("drift", self.detector_name, self.count)
        warned = (
            self._detector.warning_detected
            if self._native_warning
            else bool(self._warning and self._warning.drift_detected)
        )
        if warned and not self._in_warning:
            self._in_warning = True
            self.warnings += 1
            return DriftSignal("warning", self.detector_name, self.count)
        return None

    @property
    def recent_error(self) -> float:
        """Mean error over the recent window."""
        recent = list(self._recent)[-self.recent_window :]
        return sum(recent) / len(recent) if recent else 0.0

    def _worse(self, before: tuple[Any, Any], error: float) -> bool:
        """Whether the change the detector found is a rise of the error.

        ADWIN says so itself: on a detection it drops the older sub-window and keeps the
        newer one, so the two means follow from its width and mean before and after.
        Other detectors: the recent window's error against the error since the last
        reset, or against the window before it (see the module docstring).
        """
        width, mean = before
        detector = self._detector
        if isinstance(width, int | float) and isinstance(mean, int | float):
            kept, kept_mean = detector.width, detector.estimation
            total, total_sum = width + 1, width * mean + error
            if 0 < kept < total:
                dropped_mean = (total_sum - kept * kept_mean) / (total - kept)
                return bool(kept_mean > dropped_mean)
        recent = self.recent_error
        return recent > self._since_reset_sum / self._since_reset_n or (
            recent > self._window_before()
        )

    def _window_before(self) -> float:
        """Mean error of the window before the recent one (infinite until there is one)."""
        if len(self._recent) < (self._recent.maxlen or 0):
            return float("inf")
        before = list(self._recent)[: self.recent_window]
        return sum(before) / len(before)

    def _cooling_down(self) -> bool:
        return self._last_drift_at is not None and self.count - self._last_drift_at < self.cooldown

    def _reset_detectors(self) -> None:
        # Start the next concept from a clean window: the old errors would re-fire.
        self._detector = copy.deepcopy(self._pristine[0])
        self._warning = copy.deepcopy(self._pristine[1])
        recent = list(self._recent)[-self.recent_window :]
        self._since_reset_sum = sum(recent)
        self._since_reset_n = len(recent)
