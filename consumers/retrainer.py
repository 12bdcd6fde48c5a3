"""The retrainer: ``retrain.requested`` → batch training → a registered version → ``model.updated``.

For a drift, the window is the ``retrain_window`` examples from the drift point
on (waiting up to ``retrain_wait_s`` for them); otherwise the event's offsets or
the most recent examples. The window's most recent ``retrain_holdout`` is held
out; candidates (fine-tuning the champion, from scratch, or both, compared by
cross-validation) are trained on the rest, the winner is compared with the
champion on the held-out slice (McNemar or paired bootstrap), registered with
its card, and promoted only when the gate passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import numpy as np
import orjson
from aiokafka.partitioner import DefaultPartitioner

from eddy.consumers.control import ControlConsumer
from eddy.models.batch import BatchModel, TrainParams, cross_validate, train, vectorize
from eddy.models.evaluation import compare
from eddy.models.registry import Registry, RegistryError
from eddy.streams.codec import ControlEvent, DecodeError, decode_example
from eddy.streams.kafka import partition_end, read_range
from eddy.streams.settings import Settings

log = logging.getLogger(__name__)


def registry_of(settings: Settings) -> Registry:
    """The registry under the data directory."""
    return Registry(settings.data_dir / "registry")


class Retrainer(ControlConsumer):
    """Handles ``retrain.requested``."""

    name = "retrainer"
    types = ("retrain.requested",)

    def __init__(self, settings: Settings, producer: Any, metrics: Any = None) -> None:
        super().__init__(settings, producer, metrics)
        self.registry = registry_of(settings)
        hidden = tuple(int(h) for h in settings.retrain_hidden.split(",") if h.strip())
        self.params = TrainParams(hidden=hidden, epochs=settings.retrain_epochs)

    async def handle(self, event: ControlEvent) -> None:
        """Train, compare, register, maybe promote, announce; idempotent by event id."""
        model = event.data["stream"]
        done = self._version_for(model, event.id)
        if done is None:
            started = time.monotonic()
            window = await self._window(event)
            card, artifacts, promote = await asyncio.to_thread(self._train, model, event, window)
            card["seconds"] = round(time.monotonic() - started, 3)
            version = self.registry.register(model, card, artifacts)
            self.registry.log(
                "retrain", model, version.version, why=f"{event.data['reason']} ({event.id})",
                result="promoted" if promote else f"kept champion: {card['gate']['reason']}",
            )  # fmt: skip
            self.metrics.results.labels(self.name, "promoted" if promote else "kept_champion").inc()
            if promote:
                previous = self.registry.set_alias(model, "champion", version.version)
                self.registry.log("promote", model, version.version, "gate passed", "champion",
                                  previous=previous)  # fmt: skip
            done = version.version
        version = self.registry.get(model, done)
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
                {"model": model, "version": version.version, "alias": "champion",
                 "previous_version": card.get("parent_version"), "reason": card["gate"]["reason"]},
                subject=model,
                event_id=_derived_id(event, "model.promoted"),
            )  # fmt: skip
        log.info(
            "retrainer: %s %s registered (updated event %s)", model, version.version, updated["id"]
        )

    def _version_for(self, model: str, trigger: str) -> str | None:
        for version in reversed(self.registry.versions(model)):
            if self.registry.get(model, version).card.get("trigger_event_id") == trigger:
                return version
        return None

    async def _window(self, event: ControlEvent) -> dict[str, Any]:
        data = event.data
        topic = self.topics.examples
        size = self.settings.retrain_window
        window = data.get("window") or {}
        if window.get("offsets"):
            r = window["offsets"][0]
            partition, start, end = r["partition"], r["start"], r["end"]
        else:
            partition = data.get("position", {}).get("partition")
            if partition is None:
                parts = sorted(await self.producer.partitions_for(topic))
                partition = DefaultPartitioner()(data["stream"].encode(), parts, parts)
            if data["reason"] == "drift" and "offset" in data.get("position", {}):
                start = data["position"]["offset"]
                end = start + size
            else:
                end = await partition_end(self.settings, topic, partition)
                start = max(0, end - window.get("last_n", size))
        records = await read_range(
            self.settings, topic, partition, start, end, within=self.settings.retrain_wait_s
        )
        examples = []
        for record in records:
            try:
                example = decode_example(record.value, self.settings.max_message_bytes)
            except DecodeError:
                continue  # the learner dead-letters these; the window just skips them
            if example.stream == data["stream"]:
                examples.append((record, example))
        if len(examples) < self.settings.retrain_min_examples:
            msg = (
                f"retrain window {topic}[{partition}] {start}-{end} holds {len(examples)} examples "
                f"of {data['stream']!r}, fewer than EDDY_RETRAIN_MIN_EXAMPLES "
                f"({self.settings.retrain_min_examples})"
            )
            raise RegistryError(msg)
        return {"topic": topic, "partition": partition, "examples": examples}

    def _train(
        self, model: str, event: ControlEvent, window: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, bytes], bool]:
        examples = window["examples"]
        champion = self._champion(model)
        names = champion[1].feature_names if champion else None
        matrix, names = vectorize([e.features for _, e in examples], names)
        targets = [e.label for _, e in examples]
        task = self.settings.task
        cut = int(len(targets) * (1 - self.settings.retrain_holdout))
        train_x, train_y, hold_x, hold_y = matrix[:cut], targets[:cut], matrix[cut:], targets[cut:]
        strategies = {"warm": ["warm"], "scratch": ["scratch"], "both": ["warm", "scratch"]}
        tried: dict[str, float] = {}
        for strategy in strategies[self.settings.retrain_strategy]:
            warm = champion[1] if (strategy == "warm" and champion) else None
            if strategy == "warm" and warm is None:
                continue
            scores = cross_validate(
                train_x, train_y, task, names, self.params, self.settings.retrain_folds, warm
            )
            tried[strategy] = float(np.mean(scores))
        best = max(tried, key=tried.get) if tried else "scratch"
        warm = champion[1] if (best == "warm" and champion) else None
        candidate = train(train_x, train_y, task, names, self.params, warm)
        champion_predictions = champion[1].predict_matrix(hold_x) if champion else None
        comparison = compare(
            task, hold_y, candidate.predict_matrix(hold_x), champion_predictions,
            self.settings.promote_alpha,
        )  # fmt: skip
        promote = comparison.significant if champion else True
        reason = (
            "no champion yet" if not champion
            else ("better and significant" if promote else
                  ("not better" if not comparison.better else "not significant"))
        )  # fmt: skip
        records = [r for r, _ in examples]
        card = {
            "parent_version": champion[0] if champion else None,
            "trigger_event_id": event.id,
            "trigger": {"type": event.type, "source": event.source, "reason": event.data["reason"]},
            "task": task,
            "window": {
                "offsets": [{"topic": window["topic"], "partition": window["partition"],
                             "start": records[0].offset, "end": records[-1].offset + 1}],
                "time_ms": [records[0].timestamp, records[-1].timestamp],
                "examples": len(examples), "train": cut, "holdout": len(targets) - cut,
            },
            "hyperparameters": self.params.as_dict() | {"strategy": best,
                                                         "epochs_run": candidate.epochs_run},
            "metrics": {"cv_" + k: v for k, v in tried.items()} | {
                "holdout_" + comparison.metric: comparison.candidate},
            "comparison": comparison.as_dict(),
            "gate": {"promoted": promote, "reason": reason, "alpha": self.settings.promote_alpha},
        }  # fmt: skip
        holdout = {"feature_names": names, "X": hold_x.tolist(), "y": hold_y}
        artifacts = {"model.pt": candidate.to_bytes(), "holdout.json": orjson.dumps(holdout)}
        return card, artifacts, promote

    def _champion(self, model: str) -> tuple[str, BatchModel] | None:
        try:
            version = self.registry.get(model, "champion")
        except RegistryError:
            return None
        if not all(self.registry.verify(model, version.version).values()):
            msg = f"{model} champion {version.version} fails its checksums; refusing to load it"
            raise RegistryError(msg)
        return version.version, BatchModel.from_bytes(version.artifact("model.pt").read_bytes())


def _derived_id(event: ControlEvent, kind: str) -> str:
    # The same trigger always yields the same follow-up ids, so a redo is deduplicated.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/{kind}"))
