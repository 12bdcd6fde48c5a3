"""Where ``eddy produce`` gets its samples: River's synthetic streams, River's bundled
datasets, and JSONL or CSV files.

Every source yields ``(features, label)`` pairs with string feature names and
JSON-ready values, ready to be encoded as a sample and a label.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

Example = tuple[dict[str, float], Any]


@dataclass(frozen=True)
class SourceInfo:
    """What a named source is: its task, whether it is endless, and its drift knob."""

    name: str
    task: str  # "binary", "multiclass" or "regression"
    description: str
    endless: bool
    variants: int = 0  # how many concepts --drift-to can switch between (0: no drift option)


# name -> (info, factory(seed, variant))
_SYNTHETIC: dict[str, tuple[SourceInfo, Callable[[int, int], Iterable[Any]]]] = {}
_DATASETS: dict[str, tuple[SourceInfo, Callable[[], Iterable[Any]]]] = {}


def _register_river() -> None:
    from river import datasets
    from river.datasets import synth

    def syn(
        name: str, task: str, desc: str, variants: int, make: Callable[[int, int], Any]
    ) -> None:
        _SYNTHETIC[name] = (SourceInfo(name, task, desc, True, variants), make)

    syn(
        "sea",
        "binary",
        "SEA concepts, 3 features (variant 0-3)",
        4,
        lambda seed, v: synth.SEA(variant=v, seed=seed),
    )
    syn(
        "agrawal",
        "binary",
        "Agrawal loan data, 9 features (function 0-9)",
        10,
        lambda seed, v: synth.Agrawal(classification_function=v, seed=seed),
    )
    syn(
        "stagger",
        "binary",
        "STAGGER concepts, 3 categorical codes (function 0-2)",
        3,
        lambda seed, v: synth.STAGGER(classification_function=v, seed=seed),
    )
    syn(
        "sine",
        "binary",
        "Sine concepts, 2 features (function 0-3)",
        4,
        lambda seed, v: synth.Sine(classification_function=v, seed=seed),
    )
    syn(
        "hyperplane",
        "binary",
        "Rotating hyperplane, 10 features (gradual drift built in)",
        0,
        lambda seed, v: synth.Hyperplane(seed=seed, n_features=10, mag_change=0.001),
    )
    syn(
        "rbf",
        "multiclass",
        "Random RBF, 10 features, 2 classes",
        0,
        lambda seed, v: synth.RandomRBF(seed_model=seed, seed_sample=seed),
    )
    syn(
        "led",
        "multiclass",
        "LED digits, 7 features, 10 classes",
        0,
        lambda seed, v: synth.LED(seed=seed, noise_percentage=0.1),
    )
    syn(
        "friedman",
        "regression",
        "Friedman #1, 10 features",
        0,
        lambda seed, v: synth.Friedman(seed=seed),
    )

    def ds(name: str, task: str, desc: str, make: Callable[[], Any]) -> None:
        _DATASETS[name] = (SourceInfo(name, task, desc, False), make)

    ds(
        "phishing",
        "binary",
        "Phishing websites (1,250 rows, bundled with River)",
        datasets.Phishing,
    )
    ds("bananas", "binary", "Bananas (5,300 rows, bundled with River)", datasets.Bananas)
    ds("shuttle", "multiclass", "Shuttle (49,097 rows, bundled with River)", datasets.Shuttle)
    ds(
        "image_segments",
        "multiclass",
        "Image segments (2,310 rows, bundled)",
        datasets.ImageSegments,
    )
    ds(
        "trump_approval",
        "regression",
        "Trump approval (1,001 rows, bundled)",
        datasets.TrumpApproval,
    )
    ds(
        "chick_weights",
        "regression",
        "Chick weights (578 rows, bundled with River)",
        datasets.ChickWeights,
    )


def catalogue() -> list[SourceInfo]:
    """Every named source, synthetic first."""
    if not _SYNTHETIC:
        _register_river()
    return [info for info, _ in _SYNTHETIC.values()] + [info for info, _ in _DATASETS.values()]


def source_info(name: str) -> SourceInfo:
    """The :class:`SourceInfo` of a named source; ``KeyError`` names the known ones."""
    for info in catalogue():
        if info.name == name:
            return info
    known = ", ".join(i.name for i in catalogue())
    msg = f"no source named {name!r}; known: {known}"
    raise KeyError(msg)


def open_named(
    name: str,
    seed: int = 42,
    variant: int = 0,
    drift_at: int | None = None,
    drift_to: int | None = None,
    drift_width: int = 1,
) -> Iterator[Example]:
    """Iterate a named source; synthetic ones may switch concept at ``drift_at``.

    ``variant`` is the starting concept, ``drift_to`` the concept after the drift
    and ``drift_width`` the length of the transition (1: abrupt).
    """
    info = source_info(name)
    if name in _DATASETS:
        if drift_at is not None:
            msg = f"{name} is a fixed dataset; --drift-at works only with synthetic sources"
            raise ValueError(msg)
        return _clean(_DATASETS[name][1]())
    _, make = _SYNTHETIC[name]
    if info.variants and not 0 <= variant < info.variants:
        msg = f"{name} has variants 0-{info.variants - 1}, got {variant}"
        raise ValueError(msg)
    if drift_at is None:
        return _clean(make(seed, variant))
    if not info.variants:
        msg = f"{name} has no concepts to drift between; use one of: " + ", ".join(
            i.name for i in catalogue() if i.variants
        )
        raise ValueError(msg)
    target = (variant + 1) % info.variants if drift_to is None else drift_to
    if not 0 <= target < info.variants:
        msg = f"{name} has variants 0-{info.variants - 1}, got --drift-to {target}"
        raise ValueError(msg)
    before, after = make(seed, variant), make(seed + 1, target)
    return _clean(concept_drift(before, after, drift_at, drift_width, seed))


def concept_drift(
    before: Iterable[Any], after: Iterable[Any], position: int, width: int, seed: int
) -> Iterator[Any]:
    """Switch from ``before`` to ``after`` around sample ``position`` (1-based).

    The probability of drawing from ``after`` follows a sigmoid centred on
    ``position`` with transition length ``width``, as River's ConceptDriftStream
    does; unlike it, the exponent is clamped, so an abrupt drift (width 1) far into
    the stream does not overflow ``math.exp``.
    """
    if width < 1:
        msg = f"drift width must be at least 1, got {width}"
        raise ValueError(msg)
    rng = random.Random(seed)
    first, second = iter(before), iter(after)
    for t in itertools.count(1):
        exponent = max(-700.0, min(700.0, -4.0 * (t - position) / width))
        p_after = 1.0 / (1.0 + math.exp(exponent))
        try:
            yield next(second) if rng.random() <= p_after else next(first)
        except StopIteration:
            return


def _clean(pairs: Iterable[Any]) -> Iterator[Example]:
    for x, y in pairs:
        yield {str(k): v for k, v in x.items()}, y


def open_file(path: Path, target: str, fmt: str | None = None) -> Iterator[Example]:
    """Iterate a JSONL or CSV file; ``target`` names the label column/field.

    Every other column must be numeric; a row that is not fails with its line
    number. ``fmt`` is ``jsonl`` or ``csv`` (default: from the file suffix).
    """
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if fmt == "csv":
        return _read_csv(path, target)
    if fmt == "jsonl":
        return _read_jsonl(path, target)
    msg = f"unknown file format {fmt!r}: use jsonl or csv"
    raise ValueError(msg)


def _read_jsonl(path: Path, target: str) -> Iterator[Example]:
    with path.open("rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as ex:
                msg = f"{path}:{line_no}: not valid JSON: {ex}"
                raise ValueError(msg) from ex
            if not isinstance(row, dict) or target not in row:
                msg = f"{path}:{line_no}: expected an object with a {target!r} field"
                raise ValueError(msg)
            y = row.pop(target)
            x = row.pop("features", None) or row
            yield {str(k): _number(v, path, line_no, k) for k, v in x.items()}, y


def _read_csv(path: Path, target: str) -> Iterator[Example]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or target not in reader.fieldnames:
            msg = f"{path}: no column {target!r} in the header {reader.fieldnames}"
            raise ValueError(msg)
        for line_no, row in enumerate(reader, 2):
            y: Any = row.pop(target)
            yield {k: _number(v, path, line_no, k) for k, v in row.items()}, _csv_label(y)


def _number(value: Any, path: Path, line_no: int, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x):
        msg = f"{path}:{line_no}: feature {name!r} must be a finite number, got {value!r}"
        raise ValueError(msg)
    return int(value) if isinstance(value, int) else x


def _csv_label(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
