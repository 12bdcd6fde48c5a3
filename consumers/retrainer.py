"""The retrainer: ``retrain.requested`` → batch training → a registered version → ``model.updated``.

The window is read from the examples topic (what the stream's learner learned, in
order): for a drift, the ``retrain_window`` examples learned after the request came
(waiting up to ``retrain_wait_s`` for them; the examples learned since the drift are
included); for a manual or scheduled request, the most recent ``last_n``. The
window's most recent ``retrain_holdout`` is held out; candidates are scored by
contiguous-fold cross-validation on the rest: the fixed hyperparameters fine-tuning the
champion, from scratch, or both (``retrain_strategy``), and, unless
``retrain_trials`` is 0, the best of a hyperparameter search
(:func:`eddy.models.maintain.tuning.search`, bounded by ``retrain_trials`` and
``retrain_budget_s``). The best candidate is trained on the whole training part,
compared with the champion on the held-out slice (McNemar or a paired bootstrap),
registered with its card, and promoted only when the gate passes. The version's
artifacts are the model (``model.pt``), the held-out slice (``holdout.json``) and a
sample of the training rows (``train.npz``) the exporter distills on.

A request that cannot be served (no such stream, fewer than
``retrain_min_examples`` examples in time, one class only) is refused and recorded
(see :mod:`eddy.consumers.control`); the next request is served as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import numpy as np
import orjson

from eddy.consumers.control import ControlConsumer
from eddy.models.maintain.batch import (
    BatchModel,
    TrainingError,
    TrainParams,
    cross_validate,
    train,
    vectorize,
)
from eddy.models.maintain.evaluation import compare
from eddy.models.maintain.export import train_window_bytes
from eddy.models.maintain.registry import RegistryError
from eddy.models.maintain.tuning import SearchResult, SearchSpace, search
from eddy.streams.kafka.clients import partition_end, read_range
from eddy.streams.kafka.partitioning import partition_of
from eddy.streams.settings import MaintenanceConfig
from eddy.streams.wire.codec import ControlEvent, DecodeError, decode_example, valid_stream_name

log = logging.getLogger(__name__)

# Examples learned between a drift and the retrainer reading its request: included.
_SINCE_DRIFT = 2000


class Retrainer(ControlConsumer):
    """Handles ``retrain.requested``."""

    name = "retrainer"
    types = ("retrain.requested",)
    dead_letters = True  # the one group that dead-letters garbage on the events topic

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        m = self.settings.maintenance
        self.params = TrainParams(hidden=tuple(m.retrain_hidden), epochs=m.retrain_epochs)

    async def handle(self, event: ControlEvent) -> None:
        """Train, compare, register, maybe promote, announce; idempotent by event id."""
        model = event.data["stream"]
        if not valid_stream_name(model):
            msg = f"{model!r} is not a stream name"
            raise RegistryError(msg)
        await self.registry.sync()
        done = self._version_for(model, event.id)
        if done is None:
            started = time.monotonic()
            window = await self._window(event)
            card, artifacts, promote = await asyncio.to_thread(self._train, model, event, window)
            card["seconds"] = round(time.monotonic() - started, 3)
            version = await self.registry.register(model, card, artifacts)
            await self.registry.log(
                "retrain",
                model,
                version.version,
                why=f"{event.data['reason']} ({event.id})",
                result="promoted" if promote else f"kept champion: {card['gate']['reason']}",
                seconds=card["seconds"],
                **search_log(card),
            )
            self.metrics.results.labels(self.name, "promoted" if promote else "kept_champion").inc()
            if promote:
                previous = await self.registry.set_alias(model, "champion", version.version)
                await self.registry.log(
                    "promote", model, version.version, "gate passed", "champion", previous=previous
                )
            done = version.version
        version = self.registry.mirror.get(model, done)
        card = version.card
        updated = await self.emit(
            "model.updated",
            {
                "model": model,
                "version": version.version,
                "parent_version": card.get("parent_version"),
                "card": f"{model}/{version.version}/card.json",
                "promoted": card["gate"]["promoted"],
                "gate": card["gate"],
                "metrics": {k: v for k, v in card["metrics"].items() if isinstance(v, float)},
            },
            subject=model,
            event_id=_derived_id(event, "model.updated"),
        )
        if card["gate"]["promoted"]:
            await self.emit(
                "model.promoted",
                {
                    "model": model,
                    "version": version.version,
                    "alias": "champion",
                    "previous_version": card.get("parent_version"),
                    "reason": card["gate"]["reason"],
                },
                subject=model,
                event_id=_derived_id(event, "model.promoted"),
            )
        log.info(
            "retrainer: %s %s registered (updated event %s)", model, version.version, updated["id"]
        )

    def _version_for(self, model: str, trigger: str) -> str | None:
        mirror = self.registry.mirror
        for version in reversed(mirror.versions(model)):
            if mirror.get(model, version).card.get("trigger_event_id") == trigger:
                return version
        return None

    async def _window(self, event: ControlEvent) -> dict[str, Any]:
        data = event.data
        stream = data["stream"]
        topic = self.topics.examples
        m = self.settings.maintenance
        partition = partition_of(stream, self.settings.topics.partitions)
        end = await partition_end(self.settings.kafka, topic, partition)
        window = data.get("window") or {}
        if window.get("offsets"):
            r = window["offsets"][0]
            partition, start, stop = r["partition"], r["start"], r["end"]
            records = await read_range(
                self.settings.kafka, topic, partition, start, stop, within=m.retrain_wait_s
            )
            examples = self._of_stream(records, stream)
        elif data["reason"] in ("drift", "feature_drift"):
            start = await self._drift_point(stream, partition, end, data.get("position") or {})
            examples = await self._wait_for(stream, partition, start, m.retrain_window)
        else:
            size = window.get("last_n", m.retrain_window)
            start = max(0, end - size)
            records = await read_range(
                self.settings.kafka, topic, partition, start, end, within=m.retrain_wait_s
            )
            examples = self._of_stream(records, stream)[-size:]
        if len(examples) < m.retrain_min_examples:
            msg = (
                f"retrain window {topic}[{partition}] from offset {start} holds "
                f"{len(examples)} examples of {stream!r}, fewer than EDDY_RETRAIN_MIN_EXAMPLES "
                f"({m.retrain_min_examples})"
            )
            raise RegistryError(msg)
        return {"topic": topic, "partition": partition, "examples": examples}

    async def _drift_point(
        self, stream: str, partition: int, end: int, position: dict[str, Any]
    ) -> int:
        """The examples-topic offset of the example that made the detector fire: found by
        the sample position every example carries, reading back from ``end``; if it is
        not there (yet), the most recent ``_SINCE_DRIFT`` examples are taken instead."""
        wanted = (position.get("partition"), position.get("offset"))
        if None in wanted:
            return max(0, end - _SINCE_DRIFT)
        stop, step = end, 5000
        while stop > 0 and end - stop < 200_000:
            start = max(0, stop - step)
            records = await read_range(
                self.settings.kafka, self.topics.examples, partition, start, stop, within=30
            )
            for record, example in reversed(self._of_stream(records, stream)):
                if tuple(example.sample) == wanted:
                    return int(record.offset)
            stop = start
        return max(0, end - _SINCE_DRIFT)

    async def _wait_for(
        self, stream: str, partition: int, start: int, size: int
    ) -> list[tuple[Any, Any]]:
        """The first ``size`` examples of ``stream`` from ``start`` on, waiting up to
        ``retrain_wait_s`` for them to be learned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.maintenance.retrain_wait_s
        examples: list[tuple[Any, Any]] = []
        position = start
        while len(examples) < size and loop.time() < deadline and not self._stopping.is_set():
            end = await partition_end(self.settings.kafka, self.topics.examples, partition)
            if end > position:
                records = await read_range(
                    self.settings.kafka, self.topics.examples, partition, position, end, within=30
                )
                examples += self._of_stream(records, stream)
                position = records[-1].offset + 1 if records else end
            else:
                await asyncio.sleep(0.5)
        return examples[:size]

    def _of_stream(self, records: list[Any], stream: str) -> list[tuple[Any, Any]]:
        out = []
        for record in records:
            try:
                example = decode_example(record.value, self.settings.kafka.max_message_bytes)
            except DecodeError:
                continue  # nothing but eddy writes this topic; skip what does not decode
            if example.stream == stream:
                out.append((record, example))
        return out

    def _train(
        self, model: str, event: ControlEvent, window: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, bytes], bool]:
        m = self.settings.maintenance
        examples = window["examples"]
        champion = self._champion(model)
        names = champion[1].feature_names if champion else None
        matrix, names = vectorize([e.features for _, e in examples], names)
        targets = [e.label for _, e in examples]
        task = self._task(model, champion)
        cut = int(len(targets) * (1 - m.retrain_holdout))
        train_x, train_y, hold_x, hold_y = matrix[:cut], targets[:cut], matrix[cut:], targets[cut:]
        strategies = {"warm": ["warm"], "scratch": ["scratch"], "both": ["warm", "scratch"]}
        tried: dict[str, float] = {}
        params = {"warm": self.params, "scratch": self.params}
        for strategy in strategies[m.retrain_strategy]:
            warm = champion[1] if (strategy == "warm" and champion) else None
            if strategy == "warm" and warm is None:
                continue
            scores = cross_validate(
                train_x, train_y, task, names, self.params, m.retrain_folds, warm
            )
            tried[strategy] = float(np.mean(scores))
        # The search fine-tunes the champion where a trial's layers match it, unless the
        # strategy is scratch; its winner is trained the same way.
        search_warm = champion[1] if (champion and m.retrain_strategy != "scratch") else None
        searched: dict[str, Any] | None = None
        if m.retrain_trials > 0:
            searched, result = self._search(train_x, train_y, task, names, search_warm)
            if result is not None:
                tried["search"] = result.best_score
                params["search"] = result.best
        best = choose(tried)
        warm = None
        if best == "warm" and champion:
            warm = champion[1]
        elif best == "search":
            warm = search_warm
        candidate = train(train_x, train_y, task, names, params[best], warm)
        champion_predictions = champion[1].predict_matrix(hold_x) if champion else None
        comparison = compare(
            task, hold_y, candidate.predict_matrix(hold_x), champion_predictions, m.promote_alpha
        )
        promote = comparison.significant if champion else True
        reason = (
            "no champion yet"
            if not champion
            else (
                "better and significant"
                if promote
                else ("not better" if not comparison.better else "not significant")
            )
        )
        records = [r for r, _ in examples]
        card = {
            "parent_version": champion[0] if champion else None,
            "trigger_event_id": event.id,
            "trigger": {"type": event.type, "source": event.source, "reason": event.data["reason"]},
            "task": task,
            "window": {
                "offsets": [
                    {
                        "topic": window["topic"],
                        "partition": window["partition"],
                        "start": records[0].offset,
                        "end": records[-1].offset + 1,
                    }
                ],
                "time_ms": [records[0].timestamp, records[-1].timestamp],
                "examples": len(examples),
                "train": cut,
                "holdout": len(targets) - cut,
            },
            "hyperparameters": params[best].as_dict()
            | {"strategy": best, "epochs_run": candidate.epochs_run},
            "metrics": {"cv_" + k: v for k, v in tried.items()}
            | {"holdout_" + comparison.metric: comparison.candidate},
            "comparison": comparison.as_dict(),
            "gate": {"promoted": promote, "reason": reason, "alpha": m.promote_alpha},
        }
        if searched is not None:
            card["search"] = searched | {"candidates": tried, "chosen": best}
        holdout = {"feature_names": names, "X": hold_x.tolist(), "y": hold_y}
        artifacts = {
            "model.pt": candidate.to_bytes(),
            "holdout.json": orjson.dumps(holdout),
            "train.npz": train_window_bytes(train_x, names),
        }
        return card, artifacts, promote

    def _search(
        self,
        matrix: np.ndarray,
        targets: list[Any],
        task: str,
        names: list[str],
        warm: BatchModel | None,
    ) -> tuple[dict[str, Any], SearchResult | None]:
        """The search's card section and result; no result when it could not run or no
        trial completed (``skipped`` says why: the fixed candidates are then the only ones)."""
        m = self.settings.maintenance
        space = search_space(m)
        started = time.monotonic()
        try:
            result = search(
                matrix,
                targets,
                task,
                names,
                folds=m.retrain_folds,
                trials=m.retrain_trials,
                budget_s=m.retrain_budget_s,
                seed=self.params.seed,
                base=self.params,
                space=space,
                warm_start=warm,
                try_base=False,
                startup_trials=startup_trials(m.retrain_trials),
            )
        except TrainingError as ex:
            log.warning("retrainer: search skipped, keeping the fixed candidates: %s", ex)
            skipped = {
                "space": space.as_dict(),
                "skipped": str(ex),
                "trials": [],
                "seconds": round(time.monotonic() - started, 3),
            }
            return skipped, None
        return result.as_dict() | {"warm_start": warm is not None}, result

    def _task(self, model: str, champion: tuple[str, BatchModel] | None) -> str:
        """The stream's task: its champion's, else its online model's (as the worker
        published it), else its [streams] table's, else the default."""
        if champion is not None:
            return champion[1].task
        try:
            return str(self.registry.mirror.get(model, "online").card["task"])
        except (RegistryError, KeyError):
            pass
        table = self.settings.streams.get(model, {})
        return str(table.get("task", self.settings.learning.task))

    def _champion(self, model: str) -> tuple[str, BatchModel] | None:
        mirror = self.registry.mirror
        try:
            version = mirror.get(model, "champion")
        except RegistryError:
            return None
        if not all(mirror.verify(model, version.version).values()):
            msg = f"{model} champion {version.version} fails its checksums; refusing to load it"
            raise RegistryError(msg)
        return version.version, BatchModel.from_bytes(version.artifact("model.pt").read_bytes())


def _derived_id(event: ControlEvent, kind: str) -> str:
    # The same trigger always yields the same follow-up ids, so a redo is deduplicated.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/{kind}"))


def search_space(m: MaintenanceConfig) -> SearchSpace:
    """Where the retrainer's search looks: 2 or 3 hidden layers of 64, 128 or 256
    units, learning rate 1e-4 to 1e-2, weight decay 0 or 1e-6 to 1e-2, and up to
    ``retrain_epochs`` epochs (a ceiling, as for the fixed candidates: training stops
    early once the validation loss is stale).

    No narrower or shallower network: its int8 ONNX graph is not
    ``export_min_ratio`` (3) times smaller than its fp32 one, even pruned (a few KB of
    graph overhead dominate), so a search that picked one would promote a champion
    the export gate never lets serve.
    """
    return SearchSpace(
        widths=(64, 128, 256), depth=(2, 3), epochs=(min(5, m.retrain_epochs), m.retrain_epochs)
    )


def startup_trials(trials: int) -> int:
    """Trials that complete before the median pruner judges any: a third of the
    search, between 1 and 5 (5 is Optuna's default)."""
    return max(1, min(5, trials // 3))


def choose(cv_scores: dict[str, float]) -> str:
    """The candidate with the best mean CV score; on a tie the first one (the fixed
    candidates come before the search's). ``scratch`` when there is none (today's
    ``warm`` strategy with no champion: no CV to run)."""
    return max(cv_scores, key=cv_scores.__getitem__) if cv_scores else "scratch"


def search_log(card: dict[str, Any]) -> dict[str, Any]:
    """The maintenance-log fields of a card's search: how long, how many trials, which
    candidate won (nothing when no search ran)."""
    searched = card.get("search")
    if searched is None:
        return {}
    return {
        "search_seconds": round(searched["seconds"], 3),
        "search_trials": len(searched["trials"]),
        "candidate": card["hyperparameters"]["strategy"],
    }
