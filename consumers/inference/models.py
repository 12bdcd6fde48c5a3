"""The models ``eddy serve`` holds: one hot-swap client per stream, found in the registry.

One :class:`~eddy.streams.state.registry_topic.KafkaRegistry` follows the registry topic for the
whole server (an empty data directory is enough: everything comes over Kafka); each stream
it names gets a :class:`~eddy.consumers.hotswap.HotSwapClient` that follows both the online
model and the int8 champion on that shared registry, verifying every artifact as it does
for any serving code. Streams appear as the registry names them (``EDDY_SERVE_MODELS``
restricts them and serves the named ones from the start, 503 until loaded), at most
``EDDY_MAX_STREAMS``.

A request names a model (the stream) and optionally a version:

- no version: ``EDDY_SERVE_DEFAULT``, ``auto`` (the champion once one is servable, else
  the online model), ``champion`` or ``online``;
- ``champion`` or ``online``: that kind, whatever version it is now;
- ``v0002`` (a registry version): the champion, if it is that version;
- ``online-1@5230`` or ``online-1``: the online model, if it is that snapshot (or any
  snapshot of that online version).

The response's ``model_version`` is the version that answered, read together with the
model in one reference: a swap during a request is never half seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass
from typing import Any

from eddy.consumers.hotswap import HotSwapClient, Served
from eddy.consumers.inference.protocol import (
    NOT_READY,
    UNKNOWN_MODEL,
    UNKNOWN_VERSION,
    Feature,
    ProtocolError,
    features_of_columns,
)
from eddy.models.maintain.registry import RegistryError
from eddy.streams.kafka.clients import close_client, make_consumer
from eddy.streams.settings import Secret, Settings
from eddy.streams.state.registry_topic import KafkaRegistry
from eddy.streams.wire.keys import signing_key, state_key

log = logging.getLogger(__name__)

ALIASES = ("champion", "online")


@dataclass(frozen=True)
class Signature:
    """What a loaded model takes and gives.

    For metadata, the ``features`` input and the outputs; worked out once per loaded
    model.
    """

    features: tuple[Feature, ...] | None  # None: not known (any names are passed on)
    source: str  # where the names come from: "champion", "online model", "unknown"
    task: str  # binary, multiclass or regression
    classes: tuple[Any, ...] | None  # fixed classes in output order (the champion's)

    @property
    def regression(self) -> bool:
        """Whether the model predicts values rather than classes."""
        return self.task == "regression"

    @property
    def feature_order(self) -> list[str] | None:
        """Columns of a ``features`` input: the number features, in the model's order."""
        if self.features is None:
            return None
        return [f.name for f in self.features if f.kind == "number"]


def metric_version(version: str) -> str:
    """A version as a metric label.

    An online snapshot loses its example count (``online-1@5230`` -> ``online-1``), so the
    label set grows with retrains only.
    """
    return version.partition("@")[0]


class ModelSet:
    """The streams served, each a hot-swap client on one shared registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serving = settings.serving
        root = settings.data_dir / "serve" / "registry"
        key = signing_key(settings.state)
        self.registry = KafkaRegistry(settings.kafka, settings.topics.prefix, root, key)
        # Online models are pickles sealed with the workers' key: the signing key, else the
        # key of this data directory (only a worker sharing it can have sealed them).
        self._pickle_key = Secret(state_key(settings.state).decode())
        if key is None:
            log.warning(
                "eddy serve: no signing key (EDDY_SIGNING_KEY or %s/signing.key): registry "
                "records are not checked, and online models load only if the workers use "
                "this data directory",
                settings.data_dir,
            )
        self.clients: dict[str, HotSwapClient] = {}
        self.allowed = set(self.serving.models) or None
        self.max_models = settings.learning.max_streams
        self.synced = False
        self.skipped: set[str] = set()
        self._signatures: dict[tuple[str, str], Signature] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- following the registry ----------------------------------------------------------------

    async def start(self) -> None:
        """Read the registry to its end, load every stream's models, then follow it.

        The mirror is rebuilt from Kafka each time: what is served is what the registry
        topic holds now (a memory-only broker restarted empty holds none of the last run's
        versions).
        """
        if not self.registry.fold.position:
            shutil.rmtree(self.registry.mirror.root, ignore_errors=True)
        for name in self.serving.models:
            await self._add(name)
        await self.registry.sync()
        await self._update(set(self.registry.mirror.models()))
        self.synced = True
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stop following the registry."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in self.clients.values():
            await client.stop()
        await self.registry.close()

    async def _follow(self) -> None:
        consumer = make_consumer(
            self.settings.kafka, "serve", enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            while not self._stop.is_set():
                try:
                    async for changed in self.registry.follow(consumer, self._stop):
                        await self._update(changed)
                except (RegistryError, OSError) as ex:
                    log.warning("eddy serve: following the registry: %s; going on", ex)
                    await asyncio.sleep(1.0)
        finally:
            await close_client(consumer)

    async def _update(self, names: set[str]) -> None:
        for name in sorted(names):
            client = self.clients.get(name) or await self._add(name)
            if client is not None:
                await asyncio.to_thread(client.refresh)

    async def _add(self, name: str) -> HotSwapClient | None:
        if name in self.clients:
            return self.clients[name]
        if self.allowed is not None and name not in self.allowed:
            return None
        if len(self.clients) >= self.max_models:
            if name not in self.skipped:
                self.skipped.add(name)
                log.warning(
                    "eddy serve: not serving stream %r: %d streams served already "
                    "(EDDY_MAX_STREAMS; EDDY_SERVE_MODELS names the ones to serve)",
                    name,
                    len(self.clients),
                )
            return None
        client = HotSwapClient(
            self.settings.kafka,
            name,
            prefix=self.settings.topics.prefix,
            data_dir=self.settings.data_dir / "serve",
            signing_key=self._pickle_key,
            follow="both",
            serve="online" if self.serving.default == "online" else "champion",
            strict=self.serving.strict,
            registry=self.registry,
        )
        self.clients[name] = client
        await client.start()  # a shared registry: loads what the mirror holds, follows nothing
        log.info("eddy serve: serving stream %r (now holding %s)", name, client.held() or "nothing")
        return client

    # -- answering -------------------------------------------------------------------------------

    def client(self, name: str) -> HotSwapClient:
        """The client of model ``name``, or a 404 naming the models served."""
        client = self.clients.get(name)
        if client is not None:
            return client
        served = ", ".join(sorted(self.clients)) or "none yet"
        why = ""
        if name in self.skipped:
            why = f" (more streams than EDDY_MAX_STREAMS={self.max_models})"
        elif self.allowed is not None:
            why = " (EDDY_SERVE_MODELS names the models served)"
        msg = f"no model {name!r}{why}; models served: {served}"
        raise ProtocolError(404, UNKNOWN_MODEL, msg)

    def resolve(self, name: str, version: str | None) -> tuple[HotSwapClient, Served]:
        """The loaded model a request for ``name`` gets.

        At ``version`` if given; 404 for a model or version not served, 503 with the reason
        for one not loaded (yet).
        """
        client = self.client(name)
        if not self.synced:
            raise ProtocolError(503, NOT_READY, "eddy serve is still reading the registry")
        kind = self._kind(client, version)
        served = client.current(kind)  # type: ignore[arg-type]
        if served is None:
            raise ProtocolError(503, NOT_READY, self.why_not(client, kind))
        return client, served

    def _kind(self, client: HotSwapClient, version: str | None) -> str:
        if version is None:
            if self.serving.default != "auto":
                return self.serving.default
            return "champion" if client.current("champion") is not None else "online"
        if version in ALIASES:
            return version
        for kind in ALIASES:
            served = client.current(kind)  # type: ignore[arg-type]
            if served is not None and version in (served.version, metric_version(served.version)):
                return kind
        held = ", ".join(f"{k} {v}" for k, v in client.held().items()) or "nothing yet"
        msg = (
            f"model {client.model!r} has no version {version!r} loaded: it holds {held} "
            f"(versions 'champion' and 'online' always name what it holds)"
        )
        raise ProtocolError(404, UNKNOWN_VERSION, msg)

    def why_not(self, client: HotSwapClient, kind: str) -> str:
        """Why ``client`` holds no model of ``kind``, for the 503's message."""
        name = client.model
        mirror = self.registry.mirror
        refused = [why for version, why in client.refused[-1:]]
        if kind == "online":
            why = (
                f"no online model of {name!r} yet: a worker publishes one every "
                "EDDY_SNAPSHOT_INTERVAL_S once the stream has learned"
            )
        else:
            try:
                champion = mirror.aliases(name).get("champion")
            except RegistryError:
                champion = None
            if champion is None:
                why = f"no champion of {name!r} yet: no retrained version has been promoted"
            else:
                why = (
                    f"the champion of {name!r}, {champion}, has no int8 export that passed "
                    "its gate yet"
                )
        if refused:
            why += f"; the last model refused: {refused[0]}"
        return why

    def signature(self, client: HotSwapClient, served: Served) -> Signature:
        """What ``served`` takes and gives (cached per loaded model)."""
        key = (client.model, served.detail)
        found = self._signatures.get(key)
        if found is not None:
            return found
        if served.kind == "champion":
            n = len(served.classes or ())
            task = "binary" if n == 2 else "multiclass"
            if served.classes is None:
                task = "regression"
            features = tuple(features_of_columns(served.columns or ()))
            signature = Signature(features, "champion", task, served.classes)
        else:
            learner = served.model
            task = getattr(learner, "task", "binary")
            names = online_features(learner)
            source = "online model"
            if names is None:
                champion = client.current("champion")
                if champion is not None and champion.columns is not None:
                    names, source = features_of_columns(champion.columns), "champion"
            classes = getattr(learner, "classes", None)
            fixed = tuple(classes) if isinstance(classes, list) and classes else None
            signature = Signature(
                tuple(names) if names is not None else None,
                source if names is not None else "unknown",
                task,
                fixed,
            )
        if len(self._signatures) > 4 * max(len(self.clients), 1):
            self._signatures.clear()  # swapped-out models: keep the cache small
        self._signatures[key] = signature
        return signature


def online_features(learner: Any) -> list[Feature] | None:
    """The features an online learner has seen.

    Where its state names them: a PyTorch learner's columns, or in a River model the
    features of its ``StandardScaler`` (numbers) and ``OneHotEncoder`` (categories), else a
    linear model's weights. ``None`` where the model keeps no such list (trees): requests
    may then name any features.

    >>> from eddy.models.catalogue import make_learner
    >>> learner = make_learner("scaled-logreg", "binary")
    >>> learner.learn_many([{"x": 1.0, "c": "a"}, {"x": 2.0, "c": "b"}], [True, False], [0, 1])
    >>> [(f.name, f.kind) for f in online_features(learner)]
    [('x', 'number'), ('c', 'category')]
    """
    columns = getattr(learner, "features", None)
    if isinstance(columns, dict):
        return features_of_columns(str(c) for c in columns) if columns else None
    estimator = getattr(learner, "estimator", None)
    if estimator is None:
        return None
    found: dict[str, str] = {}
    weights: list[str] = []
    stack = [estimator]
    seen = 0
    while stack and seen < 1000:
        seen += 1
        node = stack.pop(0)
        steps = getattr(node, "steps", None)
        if isinstance(steps, dict):
            stack[:0] = list(steps.values())
            continue
        transformers = getattr(node, "transformers", None)
        if isinstance(transformers, dict):
            transformers = list(transformers.values())
        if isinstance(transformers, list | tuple):
            stack[:0] = list(transformers)
            continue
        kind = type(node).__name__
        if kind == "StandardScaler":
            for name in getattr(node, "counts", {}):
                found.setdefault(str(name), "number")
        elif kind == "OneHotEncoder":
            for name in getattr(node, "values", {}):
                found.setdefault(str(name), "category")
        elif hasattr(getattr(node, "_weights", None), "keys"):
            weights = [str(name) for name in node._weights.keys()]  # noqa: SIM118 - VectorDict
    if found:
        return [Feature(name, kind) for name, kind in found.items()]
    if weights:
        return [Feature(name, "number") for name in weights]
    return None
