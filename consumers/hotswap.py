"""The hot-swap client that serving code embeds.

It serves one model stream from the registry on Kafka (:mod:`eddy.streams.state.registry_topic`),
which it follows into a mirror of its own, so it works on any machine with an empty
data directory:

- ``follow="champion"``: the champion's int8 ONNX model, once its export passed the
  gate. The registry's champion alias decides, not an event: a forged or replayed
  event changes nothing. Each artifact is checked against the SHA-256 its (signed,
  with a key) card lists before it is loaded.
- ``follow="online"``: the stream's online model, from its first snapshot on
  (``EDDY_SNAPSHOT_INTERVAL_S``); a sealed pickle, loaded only after its HMAC checks
  with the workers' key (``EDDY_SIGNING_KEY``).
- ``follow="both"``: serve one (``serve=``), keep the other in shadow; :meth:`observe`
  scores both on labels as they come, side by side in :attr:`scores`.

A swap is one reference assignment: a ``predict`` in flight finishes on the model it
started with, the next one uses the new model, and no call sees a half-loaded model.
A model that fails its checks is refused and the current one keeps serving.
``consumers/serve_example.py`` shows it in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eddy.models.learners import Prediction
from eddy.models.maintain.batch import BatchModel, vectorize
from eddy.models.maintain.export import run, session
from eddy.models.maintain.registry import ONLINE, RegistryError
from eddy.models.metrics import PrequentialMetrics
from eddy.models.sealed import SealError, unseal
from eddy.streams.kafka.clients import close_client, make_consumer
from eddy.streams.settings import KafkaConfig, Secret, StateConfig
from eddy.streams.state.registry_topic import KafkaRegistry
from eddy.streams.wire.keys import signing_key as configured_signing_key
from eddy.streams.wire.keys import state_key

log = logging.getLogger(__name__)

INT8 = "model.int8.onnx"
ONLINE_ARTIFACT = "model.sealed"
Kind = Literal["champion", "online"]


class ServingError(RegistryError):
    """Nothing to serve yet, or a request the served model cannot answer."""


@dataclass(frozen=True)
class Served:
    """One loaded model: immutable, replaced whole on a swap."""

    kind: Kind
    version: str
    predict: Any  # rows -> predictions
    detail: str
    infer: Any = None  # rows -> list[Prediction]: the label (or value) and class probabilities
    columns: tuple[str, ...] | None = None  # the champion's feature columns (``name=value``)
    classes: tuple[Any, ...] | None = None  # the champion's classes, in its output order
    model: Any = None  # what predicts: the online learner, or None for an ONNX session


class HotSwapClient:
    """Serve ``model`` (a stream) and swap as the registry changes.

    ``strict`` (default): a row missing one of the champion's features, or carrying
    one it does not know, raises :class:`ServingError` naming them (a silent zero
    would be a wrong answer); with ``strict=False`` missing features count as 0 and
    unknown ones are ignored.

    ``registry``: a :class:`KafkaRegistry` shared by several clients (``eddy serve``
    holds one client per stream): its owner syncs and follows it and calls
    :meth:`refresh` when this client's model changes; this client neither reads the
    topic itself nor closes the registry.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        model: str,
        *,
        prefix: str = "eddy.",
        data_dir: Path = Path("eddy-data"),
        signing_key: Secret | str | None = None,
        follow: Literal["champion", "online", "both"] = "champion",
        serve: Kind | None = None,
        strict: bool = True,
        registry: KafkaRegistry | None = None,
    ) -> None:
        if follow not in ("champion", "online", "both"):
            msg = f"follow must be champion, online or both, got {follow!r}"
            raise ValueError(msg)
        self.kafka = kafka
        self.model = model
        self.follow_mode = follow
        self.serving: Kind = serve or ("online" if follow == "online" else "champion")
        self.strict = strict
        key = Secret(signing_key) if isinstance(signing_key, str) else signing_key
        state = StateConfig(data_dir=data_dir, signing_key=key)
        self._key = state_key(state)
        self._shared = registry is not None
        self.registry = registry or KafkaRegistry(
            kafka, prefix, data_dir / "registry", configured_signing_key(state)
        )
        self._models: dict[Kind, Served] = {}
        self.swaps: list[tuple[str, str, float]] = []  # (kind, version, epoch s) of each swap
        self.refused: list[tuple[str, str]] = []  # (version, why) of each refusal
        self.scores: dict[Kind, PrequentialMetrics] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Any, model: str, **options: Any) -> HotSwapClient:
        """A client with an eddy process's Kafka, prefix, data directory and key."""
        return cls(
            settings.kafka,
            model,
            prefix=settings.topics.prefix,
            data_dir=settings.data_dir,
            signing_key=settings.state.signing_key,
            **options,
        )

    def held(self) -> dict[str, str]:
        """``{kind: version}`` of every model loaded (served and shadow)."""
        return {kind: served.version for kind, served in self._models.items()}

    @property
    def version(self) -> str | None:
        """The version being served, if any."""
        served = self._models.get(self.serving)
        return served.version if served else None

    def current(self, kind: Kind | None = None) -> Served | None:
        """The loaded model of ``kind``, read once.

        ``kind`` defaults to the one served. Read once, what a caller predicts with and the
        version it reports stay together across a swap.
        """
        return self._models.get(kind or self.serving)

    def predict(self, rows: Sequence[dict[str, Any] | list[float]]) -> list[Any]:
        """Predict with whatever model is current when the call starts."""
        served = self._models.get(self.serving)  # one read: a swap during the call is unseen
        if served is None:
            wanted = "online model" if self.serving == "online" else "servable champion"
            msg = f"no {wanted} of {self.model!r} yet"
            raise ServingError(msg)
        return list(served.predict(rows))

    def observe(self, rows: Sequence[dict[str, Any]], labels: Sequence[Any]) -> None:
        """Score every loaded model (served and shadow) on labelled rows."""
        for kind, served in list(self._models.items()):
            try:
                predictions = served.predict(rows)
            except ServingError:
                continue
            scores = self.scores.setdefault(kind, PrequentialMetrics(self._task_of(labels)))
            for p, y in zip(predictions, labels, strict=True):
                if p is not None:
                    scores.update(y, p)

    @staticmethod
    def _task_of(labels: Sequence[Any]) -> str:
        if all(isinstance(y, bool) for y in labels):
            return "binary"
        if all(isinstance(y, float) for y in labels):
            return "regression"
        return "multiclass"

    async def start(self) -> None:
        """Load what the registry says to serve, and follow it.

        A registry shared with its owner is the owner's to read and follow.
        """
        if not self._shared:
            await self.registry.sync()
        await asyncio.to_thread(self._refresh)
        if not self._shared:
            self._task = asyncio.create_task(self._follow())

    def refresh(self) -> None:
        """Load what the mirror now says to serve (blocking: call it in a thread)."""
        self._refresh()

    async def stop(self) -> None:
        """Stop following the registry."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if not self._shared:
            await self.registry.close()

    async def _follow(self) -> None:
        consumer = make_consumer(
            self.kafka, "hotswap", enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            async for models in self.registry.follow(consumer, self._stop):
                if self.model in models:
                    await asyncio.to_thread(self._refresh)
        finally:
            await close_client(consumer)

    # -- loading -----------------------------------------------------------------------------

    def _refresh(self) -> None:
        mirror = self.registry.mirror
        kinds: list[Kind] = (
            ["champion", "online"] if self.follow_mode == "both" else [self.follow_mode]  # type: ignore[list-item]
        )
        for kind in kinds:
            try:
                if kind == "champion":
                    ref = mirror.aliases(self.model).get("champion")
                    if ref is None:
                        continue
                    v = mirror.get(self.model, ref)
                    if not v.card.get("export_gate", {}).get("passed") or INT8 not in v.card.get(
                        "artifacts", {}
                    ):
                        continue  # not servable (yet): keep serving what is there
                    detail = v.card["artifacts"][INT8]["sha256"]
                else:
                    v = mirror.get(self.model, ONLINE)
                    detail = v.card["artifacts"][ONLINE_ARTIFACT]["sha256"]
            except (RegistryError, KeyError):
                continue
            current = self._models.get(kind)
            if current is not None and current.detail == detail:
                continue
            try:
                served = self._load(kind, v)
            except (RegistryError, SealError) as ex:
                self.refused.append((v.version, str(ex)))
                log.error(
                    "hot-swap: refused %s %s %s: %s; still serving %s",
                    self.model,
                    kind,
                    v.version,
                    ex,
                    self.version,
                )
                continue
            self._models[kind] = served  # the swap: one reference assignment
            self.swaps.append((kind, served.version, time.time()))
            log.info("hot-swap: now holding %s %s %s", self.model, kind, served.version)

    def _load(self, kind: Kind, v: Any) -> Served:
        if not all(self.registry.mirror.verify(self.model, v.version).values()):
            msg = f"{self.model} {v.version} fails its SHA-256 checks"
            raise RegistryError(msg)
        if kind == "online":
            learner = unseal(
                v.artifact(ONLINE_ARTIFACT).read_bytes(),
                self._key,
                f"online model of {self.model!r}",
            )
            label = v.card.get("online_version", ONLINE)

            def predict_online(rows: Sequence[Any]) -> list[Any]:
                return [p.value for p in learner.predict_many(rows)]

            return Served(
                "online",
                f"{label}@{v.card.get('learned', 0)}",
                predict_online,
                v.card["artifacts"][ONLINE_ARTIFACT]["sha256"],
                infer=learner.predict_many,
                model=learner,
            )
        meta = BatchModel.from_bytes(v.artifact("model.pt").read_bytes())
        sess = session(v.artifact(INT8).read_bytes())
        names, classes, strict, model = meta.feature_names, meta.classes, self.strict, self.model

        def predict_champion(rows: Sequence[Any]) -> list[Any]:
            if strict:
                check_features(rows, names, model)
            out = run(sess, vectorize(rows, names)[0])
            if classes is None:
                return [float(value) for value in out[:, 0]]
            return [classes[i] for i in out.argmax(axis=1)]

        def infer_champion(rows: Sequence[Any]) -> list[Prediction]:
            if strict:
                check_features(rows, names, model)
            out = run(sess, vectorize(rows, names)[0])
            if classes is None:
                return [Prediction(float(value)) for value in out[:, 0]]
            return [
                Prediction(classes[best], dict(zip(classes, row, strict=True)))
                for best, row in zip(out.argmax(axis=1).tolist(), out.tolist(), strict=True)
            ]

        return Served(
            "champion",
            v.version,
            predict_champion,
            v.card["artifacts"][INT8]["sha256"],
            infer=infer_champion,
            columns=tuple(names),
            classes=tuple(classes) if classes is not None else None,
        )


def check_features(rows: Sequence[Any], columns: list[str], model: str) -> None:
    """Raise :class:`ServingError` naming features a row lacks or the model does not know.

    Text features are one-hot columns ``name=value``: the row needs ``name``; a value
    the model never saw is allowed (all its columns are 0).

    >>> check_features([{"x": 1.0, "color": "red"}], ["x", "color=red"], "m")
    >>> try:  # doctest: +NORMALIZE_WHITESPACE
    ...     check_features([{"color": "red"}], ["x", "color=red"], "m")
    ... except ServingError as ex:
    ...     print(ex)
    row 0 of a request to model 'm' lacks feature(s) x (strict serving:
    HotSwapClient(strict=False) counts missing features as 0 and ignores unknown ones)
    """
    raw = set()
    for column in columns:
        name, eq, _ = column.partition("=")
        raw.add(name if eq and column not in ("=",) and name not in columns else column)
    for i, row in enumerate(rows):
        keys = {str(k) for k in (row if isinstance(row, dict) else range(len(row)))}
        missing = sorted(raw - keys)
        unknown = sorted(keys - raw)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"lacks feature(s) {', '.join(missing[:10])}")
            if unknown:
                parts.append(f"has feature(s) {', '.join(unknown[:10])} it does not know")
            msg = (
                f"row {i} of a request to model {model!r} {' and '.join(parts)} (strict "
                "serving: HotSwapClient(strict=False) counts missing features as 0 and "
                "ignores unknown ones)"
            )
            raise ServingError(msg)
