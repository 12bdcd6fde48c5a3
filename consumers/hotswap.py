"""The hot-swap client that serving code embeds.

It serves the champion's int8 ONNX model of one model stream, follows the
events topic, and when a servable ``model.exported`` (or a rollback) arrives it
loads the new artifact, checks its SHA-256 against the event and the model card,
and swaps it in with one reference assignment: a ``predict`` call in flight
finishes on the model it started with, the next one uses the new model, and no
call ever sees a half-loaded model. A tampered artifact is refused and the
current model keeps serving. ``consumers/serve_example.py`` shows it in use.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from eddy.models.batch import BatchModel, vectorize
from eddy.models.export import run, session
from eddy.models.registry import Registry, RegistryError
from eddy.streams.codec import DecodeError, decode_event
from eddy.streams.exceptions import BadSignature, UnsignedEvent
from eddy.streams.kafka import close_client, end_offsets, make_consumer
from eddy.streams.settings import Settings
from eddy.streams.topics import Topics

log = logging.getLogger(__name__)

INT8 = "model.int8.onnx"


@dataclass(frozen=True)
class Served:
    """One loaded model: immutable, replaced whole on a swap."""

    version: str
    session: Any
    feature_names: list[str]
    classes: list[Any] | None
    sha256: str


class HotSwapClient:
    """Serve the current champion of ``model`` and swap on model events."""

    def __init__(self, settings: Settings, model: str) -> None:
        self.settings = settings
        self.model = model
        self.registry = Registry(settings.data_dir / "registry")
        self.topics = Topics(settings.topic_prefix)
        self._served: Served | None = None
        self.swaps: list[tuple[str, float]] = []  # (version, epoch seconds) of each swap
        self.refused: list[tuple[str, str]] = []  # (version, why) of each refusal
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def version(self) -> str | None:
        """The version being served, if any."""
        served = self._served
        return served.version if served else None

    def predict(self, rows: list[dict[str, float] | list[float]]) -> list[Any]:
        """Predict with whatever model is current when the call starts."""
        served = self._served  # one read: a swap during this call does not affect it
        if served is None:
            msg = f"no servable version of {self.model!r} yet"
            raise RegistryError(msg)
        out = run(served.session, vectorize(rows, served.feature_names)[0])
        if served.classes is None:
            return [float(v) for v in out[:, 0]]
        return [served.classes[i] for i in out.argmax(axis=1)]

    async def start(self) -> None:
        """Load the current champion (if exported) and follow the events topic."""
        try:
            self._load("champion", expected_sha=None)
        except RegistryError as ex:
            log.info("hot-swap: no champion to serve yet (%s)", ex)
        self._task = asyncio.create_task(self._follow())
        await self._ready.wait()

    async def stop(self) -> None:
        """Stop following events."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        consumer = make_consumer(self.settings, "hotswap", enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(self.topics.events, 0)
            consumer.assign([tp])
            consumer.seek(tp, (await end_offsets(consumer, [tp]))[tp])
            self._ready.set()
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    await self._on_event(record.value)
        finally:
            self._ready.set()
            await close_client(consumer)

    async def _on_event(self, raw: bytes) -> None:
        try:
            event = decode_event(
                raw, self.settings.max_message_bytes, self.settings.event_signing_key
            )
        except (UnsignedEvent, BadSignature) as ex:
            self.refused.append(("?", str(ex)))
            log.error("hot-swap %s: %s; still serving %s", self.model, ex, self.version)
            return
        except DecodeError:
            return
        data = event.data
        if data.get("model") != self.model:
            return
        if event.type == "model.exported" and data["servable"]:
            ref, sha = data["version"], data["artifact"]["sha256"]
        elif (
            event.type in ("model.rolled_back", "model.promoted")
            and data.get("alias", "champion") == "champion"
        ):
            ref, sha = data["version"], None
            try:
                if INT8 not in self.registry.get(self.model, ref).card.get("artifacts", {}):
                    return  # promoted before its export: model.exported will follow
            except RegistryError:
                return
        else:
            return
        try:
            await asyncio.to_thread(self._load, ref, sha)
        except RegistryError as ex:
            self.refused.append((ref, str(ex)))
            log.error(
                "hot-swap: refused %s %s: %s; still serving %s", self.model, ref, ex, self.version
            )

    def _load(self, ref: str, expected_sha: str | None) -> None:
        v = self.registry.get(self.model, ref)
        if INT8 not in v.card.get("artifacts", {}):
            msg = f"{self.model} {v.version} has no int8 artifact yet"
            raise RegistryError(msg)
        data = v.artifact(INT8).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        card_sha = v.card["artifacts"][INT8]["sha256"]
        if digest != card_sha or (expected_sha is not None and digest != expected_sha):
            msg = f"{v.version}/{INT8} has SHA-256 {digest[:12]}…, expected {card_sha[:12]}…"
            raise RegistryError(msg)
        if not self.registry.verify(self.model, v.version).get("model.pt", False):
            msg = f"{v.version}/model.pt fails its SHA-256 check"
            raise RegistryError(msg)
        meta = BatchModel.from_bytes(v.artifact("model.pt").read_bytes())
        served = Served(v.version, session(data), meta.feature_names, meta.classes, digest)
        self._served = served  # the swap: one reference assignment
        self.swaps.append((served.version, time.time()))
        log.info("hot-swap: now serving %s %s", self.model, served.version)
