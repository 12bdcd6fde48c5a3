"""The retrainer with and without its hyperparameter search, and the exporter's compression.

For each drifted stream (SEA concept 0 → 3, Agrawal function 0 → 2), a champion is
trained before the drift and the retrainer's window is the ``--window`` examples after
it. The retrainer's own training step (``Retrainer._train``, no Kafka) runs twice on
that window: as today (``EDDY_RETRAIN_TRIALS=0``: the fixed warm/scratch candidates)
and with the search (``--trials``, ``--budget``). Each resulting model is compared on
the held-out slice with the champion and with each other (accuracy, McNemar p), with
the seconds each retrain took. Then the exporter's compression (``Exporter._export``:
distillation, the structured pruning ladder, int8) runs on the searched model and its
table is printed. Torch and ONNX Runtime run on one thread, as the consumers do.

Run: ``.venv/bin/python bench/maintenance_search.py [--window 5000] [--trials 20] [--budget 20]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from eddy.consumers.exporter import Exporter
from eddy.consumers.retrainer import Retrainer
from eddy.models.maintain.batch import BatchModel, TrainParams, train, vectorize
from eddy.models.maintain.evaluation import mcnemar_p
from eddy.streams.ops import sources
from eddy.streams.settings import Settings
from eddy.streams.wire.codec import ControlEvent

STREAMS = {  # name: (source, variant before, variant after)
    "SEA 0→3": ("sea", 0, 3),
    "Agrawal 0→2": ("agrawal", 0, 2),
}
DRIFT_AT = 6000
EVENT = ControlEvent(
    "retrain.requested",
    "bench",
    "eddy/bench",
    "2026-01-01T00:00:00Z",
    {"stream": "default", "reason": "drift"},
)


def pairs(name: str, before: int, after: int, start: int, n: int) -> list[tuple[Any, Any]]:
    """(record, example) pairs as the retrainer reads them from the examples topic."""
    stream = sources.open_named(name, seed=4, variant=before, drift_at=DRIFT_AT, drift_to=after)
    out = []
    for i, (x, y) in enumerate(itertools.islice(stream, start, start + n)):
        record = SimpleNamespace(offset=start + i, timestamp=start + i)
        out.append((record, SimpleNamespace(features=x, label=y)))
    return out


def retrain(
    settings: Settings, champion: BatchModel, window: list[Any]
) -> tuple[dict, dict, float]:
    """``Retrainer._train`` without Kafka: the champion is given, the task is binary."""
    r = object.__new__(Retrainer)
    r.settings = settings
    m = settings.maintenance
    r.params = TrainParams(hidden=tuple(m.retrain_hidden), epochs=m.retrain_epochs)
    r._champion = lambda model: ("v0001", champion)
    r._task = lambda model, champ: "binary"
    started = time.monotonic()
    card, artifacts, _ = r._train(
        "default", EVENT, {"topic": "examples", "partition": 0, "examples": window}
    )
    return card, artifacts, time.monotonic() - started


def export(settings: Settings, artifacts: dict[str, bytes]) -> tuple[dict, float]:
    """``Exporter._export`` on a registered version's artifacts, without Kafka."""
    exporter = object.__new__(Exporter)
    exporter.settings = settings
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in artifacts.items():
            (Path(tmp) / name).write_bytes(data)
        version = SimpleNamespace(
            model="default",
            version="v0002",
            card={"artifacts": dict.fromkeys(artifacts)},
            artifact=lambda name: Path(tmp) / name,
        )
        started = time.monotonic()
        updates, _ = exporter._export(version)
        return updates, time.monotonic() - started


def right(model: BatchModel, matrix: np.ndarray, targets: list[Any]) -> list[bool]:
    return [p == t for p, t in zip(model.predict_matrix(matrix), targets, strict=True)]


def bench_stream(title: str, source: tuple[str, int, int], args: argparse.Namespace) -> None:
    name, before, after = source
    base = Settings.build(retrain_window=args.window)
    old = pairs(name, before, after, DRIFT_AT - args.window - 500, args.window)
    matrix, names = vectorize([e.features for _, e in old])
    champion = train(
        matrix,
        [e.label for _, e in old],
        "binary",
        names,
        TrainParams(hidden=base.maintenance.retrain_hidden),
    )
    window = pairs(name, before, after, DRIFT_AT + 200, args.window)
    runs = {
        "today (no search)": base.with_overrides({"retrain_trials": 0}),
        f"search ({args.trials} trials, {args.budget:g} s)": base.with_overrides(
            {"retrain_trials": args.trials, "retrain_budget_s": args.budget}
        ),
    }
    cut = int(len(window) * (1 - base.maintenance.retrain_holdout))
    hold_x = vectorize([e.features for _, e in window[cut:]], names)[0]
    hold_y = [e.label for _, e in window[cut:]]
    champion_right = right(champion, hold_x, hold_y)
    print(
        f"\n== {title}: window of {len(window):,} examples from the drift on "
        f"({cut:,} train, {len(window) - cut:,} held out); champion trained before it, "
        f"holdout accuracy {np.mean(champion_right):.4f}"
    )
    print(
        f"{'retrain':32} {'chosen':8} {'hidden':12} {'cv':>7} {'holdout':>8} "
        f"{'p vs champion':>14} {'p vs today':>11} {'seconds':>8}"
    )
    results: dict[str, Any] = {}
    for label, settings in runs.items():
        card, artifacts, seconds = retrain(settings, champion, window)
        model = BatchModel.from_bytes(artifacts["model.pt"])
        is_right = right(model, hold_x, hold_y)
        today = results.get("today (no search)")
        p_today = f"{mcnemar_p(today['right'], is_right):.3g}" if today else "-"
        h = card["hyperparameters"]
        cv = card["metrics"].get(f"cv_{h['strategy']}", float("nan"))
        print(
            f"{label:32} {h['strategy']:8} {'x'.join(map(str, h['hidden'])):12} {cv:7.4f} "
            f"{np.mean(is_right):8.4f} {mcnemar_p(champion_right, is_right):14.3g} "
            f"{p_today:>11} {seconds:8.1f}"
        )
        results[label] = {
            "card": card,
            "artifacts": artifacts,
            "right": is_right,
            "seconds": seconds,
        }
    today, searched = results.values()
    search = searched["card"]["search"]
    print(
        f"search: {len(search['trials'])} trials ({search.get('n_complete', 0)} complete, "
        f"{search.get('n_pruned', 0)} pruned) in {search['seconds']:.1f} s, stopped by "
        f"{search.get('stopped_by')}; CV of the candidates "
        f"{json.dumps({k: round(v, 4) for k, v in search['candidates'].items()})}"
    )
    if "best_params" in search:
        print(f"best trial {search['best_trial']}: {search['best_params']}")
    acc_today, acc_search = np.mean(today["right"]), np.mean(searched["right"])
    print(
        f"search vs today: holdout accuracy {acc_search - acc_today:+.4f}, "
        f"time x{searched['seconds'] / today['seconds']:.1f} "
        f"({searched['seconds']:.1f} s vs {today['seconds']:.1f} s)"
    )
    updates, seconds = export(base, searched["artifacts"])
    q = updates["quantization"]
    print(
        f"\nexport of the searched model ({seconds:.1f} s; gate: accuracy loss <= "
        f"{base.maintenance.export_max_delta}, size ratio >= {base.maintenance.export_min_ratio}; "
        f"student: {updates['compression']['student']}):"
    )
    print(updates["compression"]["table"])
    print(
        f"served {q['variant']}: {q['size_ratio']:.2f}x smaller than the teacher fp32, "
        f"accuracy {q['accuracy_delta']:+.4f}, batch-1 {q['int8_batch1_us']:.1f} µs vs "
        f"{q['fp32_batch1_us']:.1f}, batch-256 {q['int8_batch256_per_s']:,.0f} vs "
        f"{q['fp32_batch256_per_s']:,.0f} rows/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=5000, help="retrain window (examples)")
    parser.add_argument("--trials", type=int, default=20, help="EDDY_RETRAIN_TRIALS")
    parser.add_argument("--budget", type=float, default=20.0, help="EDDY_RETRAIN_BUDGET_S")
    parser.add_argument("--streams", default=",".join(STREAMS), help="which streams")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    for title in args.streams.split(","):
        bench_stream(title, STREAMS[title], args)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
