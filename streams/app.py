"""eddy's Python API: an :class:`App` with model streams.

The thing ``eddy worker`` and ``eddy up`` build from their settings and config file.

Streams are declared with :meth:`App.stream`: a River estimator or pipeline (cloned per
stream), a :class:`~eddy.models.learners.TorchModel`, or a catalogue name; a River
drift detector or a detector name; the task and the metrics. Declared streams are an
allow-list; an app that declares none learns any stream (up to ``max_streams``) with
the defaults. Hooks (:meth:`App.on_prediction`, :meth:`App.on_drift`,
:meth:`App.on_error`) run in the worker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import pickle
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eddy.models.catalogue import CATALOGUE, describe, make_learner
from eddy.models.exceptions import ModelConfigError
from eddy.models.prequential import StreamSpec
from eddy.streams.engine.context import Hooks
from eddy.streams.engine.policy import Streams
from eddy.streams.exceptions import ConfigError
from eddy.streams.settings import KafkaConfig, Settings
from eddy.streams.wire.codec import valid_stream_name


@dataclass
class App:
    """A streaming online-learning application on Kafka.

    ``kafka`` is a :class:`~eddy.streams.settings.KafkaConfig` or a bootstrap string;
    ``prefix`` names the topics (``<prefix>samples``…). Anything else comes from
    ``settings`` (default: eddy's defaults; the ``eddy`` command loads them from the
    environment, flags and ``--config``).

    >>> from river import linear_model, preprocessing
    >>> app = App(KafkaConfig("localhost:9092"), prefix="fraud.")
    >>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    >>> spec = app.stream("cards", model=model)
    >>> spec.task, sorted(app.streams)
    ('binary', ['cards'])
    """

    kafka: KafkaConfig | str | None = None
    prefix: str | None = None
    settings: Settings | None = None

    def __post_init__(self) -> None:
        settings = self.settings or Settings()
        if isinstance(self.kafka, str):
            self.kafka = KafkaConfig(self.kafka)
        if self.kafka is not None:
            settings = replace(settings, kafka=self.kafka)
        if self.prefix is not None:
            settings = settings.with_overrides({"topic_prefix": self.prefix})
        self.settings = settings
        self.streams: dict[str, StreamSpec] = {}
        self.hooks = Hooks()

    # -- declaring ---------------------------------------------------------------------------

    def stream(
        self,
        name: str,
        *,
        model: Any = None,
        task: str | None = None,
        detector: Any = None,
        metrics: Sequence[str] | None = None,
        drift_min_examples: int | None = None,
        drift_cooldown: int | None = None,
        metrics_window: int | None = None,
        batch_size: int | None = None,
        score_at_label_time: bool | None = None,
        feature_drift: bool | None = None,
        feature_drift_retrain: bool | None = None,
    ) -> StreamSpec:
        """Declare a model stream.

        Samples whose ``stream`` is ``name`` are predicted and learned by ``model``.
        Declared streams are an allow-list: samples of other streams are dead-lettered
        (``unknown_stream``). Every option left out (``None``) takes the learning
        settings' value (``EDDY_MODEL``, ``EDDY_TASK``…).

        Parameters
        ----------
        name
            The stream's name: 1-128 letters, digits, ``.``, ``_`` or ``-``.
        model
            A River estimator or pipeline (cloned: the stream learns its own copy), an
            :class:`~eddy.models.learners.TorchModel`, or a catalogue name
            (``eddy catalogue``; :func:`~eddy.models.catalogue.register_model` adds
            yours). ``EDDY_MODEL`` when left out.
        task
            ``"binary"``, ``"multiclass"`` or ``"regression"`` (``EDDY_TASK``).
        detector
            A River drift detector with your thresholds (``drift.ADWIN(delta=0.001)``),
            or ``"adwin"``, ``"page_hinkley"``, ``"kswin"``, ``"ddm"``
            (``EDDY_DETECTOR``).
        metrics
            The task's metrics to keep (``accuracy``, ``f1``, ``log_loss``,
            ``roc_auc``; ``mae``, ``rmse``, ``r2``); all of them when left out.
        drift_min_examples
            Examples learned before drift can be signalled (``EDDY_DRIFT_MIN_EXAMPLES``).
        drift_cooldown
            Examples after a drift during which no new one is signalled
            (``EDDY_DRIFT_COOLDOWN``).
        metrics_window
            Window of the rolling metrics (``EDDY_METRICS_WINDOW``).
        batch_size
            Mini-batch size of PyTorch models (``EDDY_BATCH_SIZE``).
        score_at_label_time
            Also score the model as it is when each label comes: the "labels at once"
            figure (``EDDY_SCORE_AT_LABEL_TIME``).
        feature_drift
            Watch the features and predictions for drift at sample time
            (``EDDY_FEATURE_DRIFT``).
        feature_drift_retrain
            Whether a feature drift also requests a retrain (``EDDY_FEATURE_DRIFT_RETRAIN``).

        Returns
        -------
        StreamSpec
            How the stream learns, all options resolved.

        Raises
        ------
        ConfigError
            For a bad name, an unknown model or metric, a task the model cannot do, or
            a model eddy cannot checkpoint (it is pickled: use module-level functions,
            not lambdas), so that none of it surfaces mid-stream.

        Examples
        --------
        >>> from river import drift, linear_model, preprocessing
        >>> app = App()
        >>> spec = app.stream(
        ...     "cards",
        ...     model=preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        ...     detector=drift.ADWIN(delta=0.001),
        ...     metrics=["accuracy", "log_loss"],
        ... )
        >>> spec.task, spec.metrics, spec.model_name.split(" | ")[0]
        ('binary', ('accuracy', 'log_loss'), 'StandardScaler')
        >>> app.stream("merchants", model="hoeffding", task="regression")
        Traceback (most recent call last):
        ...
        eddy.streams.exceptions.ConfigError: stream 'merchants': model 'hoeffding' does binary, \
multiclass, not 'regression': set the stream's task (--task, EDDY_TASK, or task in its \
[streams.<name>] table)
        """
        options = {
            "model": model,
            "task": task,
            "detector": detector,
            "metrics": metrics,
            "drift_min_examples": drift_min_examples,
            "drift_cooldown": drift_cooldown,
            "metrics_window": metrics_window,
            "batch_size": batch_size,
            "score_at_label_time": score_at_label_time,
            "feature_drift": feature_drift,
            "feature_drift_retrain": feature_drift_retrain,
        }
        if not valid_stream_name(name):
            msg = f"stream name {name!r}: use 1-128 letters, digits, '.', '_' or '-'"
            raise ConfigError(msg)
        spec = self._spec(options)
        _check_model(name, spec)
        self.streams[name] = spec
        return spec

    def on_prediction(self, hook: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
        """Call ``hook`` with every prediction event (a dict) as it is published."""
        self.hooks.on_prediction = hook
        return hook

    def on_drift(self, hook: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
        """Call ``hook`` with the data of every drift (error or feature) event."""
        self.hooks.on_drift = hook
        return hook

    def on_error(self, hook: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
        """Call ``hook`` with every dead-lettered event's reason, message and position."""
        self.hooks.on_error = hook
        return hook

    def default_spec(self) -> StreamSpec:
        """How a stream learns when it is not declared (the learning settings)."""
        return self._spec({})

    def policy(self) -> Streams:
        """The stream policy the worker applies (declared streams, or the defaults)."""
        assert self.settings is not None
        return Streams(self.default_spec(), self.streams, self.settings.learning.max_streams)

    def _spec(self, options: Mapping[str, Any]) -> StreamSpec:
        assert self.settings is not None
        learning = self.settings.learning
        values: dict[str, Any] = {
            "model": learning.model,
            "task": learning.task,
            "detector": learning.detector,
            "drift_min_examples": learning.drift_min_examples,
            "drift_cooldown": learning.drift_cooldown,
            "metrics_window": learning.metrics_window,
            "batch_size": learning.batch_size,
            "score_at_label_time": learning.score_at_label_time,
            "feature_drift": learning.feature_drift,
            "feature_drift_retrain": learning.feature_drift_retrain,
        }
        values |= {k: v for k, v in options.items() if v is not None}
        if isinstance(values.get("metrics"), list):
            values["metrics"] = tuple(values["metrics"])
        try:
            return StreamSpec(**values)
        except ModelConfigError as ex:
            raise ConfigError(str(ex)) from ex

    # -- building from settings --------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings) -> App:
        """The app a config file describes.

        Its ``[streams.<name>]`` tables give the streams, models as catalogue names or
        ``package.module:factory`` (called with no arguments).
        """
        app = cls(settings=settings)
        _check_model("(any, with the defaults)", app.default_spec())
        for name, table in settings.streams.items():
            options = dict(table)
            unknown = sorted(set(options) - set(STREAM_KEYS))
            if unknown:
                msg = (
                    f"[streams.{name}]: unknown setting(s) {unknown}; known: "
                    f"{', '.join(STREAM_KEYS)}"
                )
                raise ConfigError(msg)
            if "model" in options:
                options["model"] = resolve_model(str(options["model"]), name)
            app.stream(name, **options)
        return app

    # -- running -----------------------------------------------------------------------------

    async def create_topics(self) -> dict[str, str]:
        """Create the app's topics (idempotent).

        An existing topic must have the same partition count.
        """
        from eddy.streams.kafka.admin import create_topics

        assert self.settings is not None
        return await create_topics(self.settings.kafka, self.settings.topics)

    async def run_async(
        self, create_topics: bool = True, on_start: asyncio.Future[Any] | None = None
    ) -> None:
        """Run the worker in the current event loop until it is stopped.

        ``on_start`` receives the :class:`~eddy.streams.agents.worker.Worker`, whose ``stop()``
        ends it.
        """
        from eddy.streams.agents.worker import run_worker

        assert self.settings is not None
        if create_topics:
            await self.create_topics()
        await run_worker(self.settings, self.policy(), self.hooks, on_start=on_start)

    def run(self, create_topics: bool = True) -> None:
        """Run the worker until SIGTERM or Ctrl-C; it checkpoints and leaves cleanly."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            started: asyncio.Future[Any] = loop.create_future()
            task = asyncio.ensure_future(self.run_async(create_topics, started))
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            try:
                waiter = asyncio.ensure_future(stop.wait())
                await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
                if started.done() and not started.cancelled():
                    started.result().stop()  # checkpoints and leaves the group
                elif not task.done():
                    task.cancel()  # stopped while starting: nothing to checkpoint yet
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

        asyncio.run(main())


def resolve_model(reference: str, stream: str = "") -> Any:
    """A model from a catalogue name or ``package.module:factory``.

    A factory is called with no arguments; it returns a River estimator or pipeline, or a
    ``TorchModel``.
    """
    if reference in CATALOGUE:
        return reference
    module_name, _, attribute = reference.partition(":")
    if not attribute:
        msg = (
            f"stream {stream!r}: model {reference!r} is neither a catalogue name "
            f"({', '.join(CATALOGUE)}) nor package.module:factory"
        )
        raise ConfigError(msg)
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as ex:
        msg = (
            f"stream {stream!r}: cannot load model {reference!r} ({ex}); is {module_name!r} "
            "importable from the worker's working directory or PYTHONPATH?"
        )
        raise ConfigError(msg) from ex
    return factory() if callable(factory) and not _is_model(factory) else factory


def _is_model(obj: Any) -> bool:
    from river import base

    from eddy.models.learners import TorchModel

    return isinstance(obj, base.Estimator | TorchModel)


def _check_model(name: str, spec: StreamSpec) -> None:
    try:
        learner = make_learner(spec.model, spec.task, spec.batch_size)
    except (ModelConfigError, ValueError) as ex:
        msg = f"stream {name!r}: {ex}"
        raise ConfigError(msg) from ex
    if not isinstance(spec.model, str) and hasattr(learner, "estimator"):
        try:
            pickle.dumps(learner)
        except Exception as ex:
            msg = (
                f"stream {name!r}: model {describe(spec.model)} cannot be pickled ({ex!r}); "
                "eddy checkpoints it, so use functions defined at module level, not lambdas"
            )
            raise ConfigError(msg) from ex


def load_app(settings: Settings, path: Path | None = None) -> App:
    """The app of a worker process: from the config file's streams (if any)."""
    return App.from_settings(settings)


# Per-stream settings a [streams.<name>] table (or App.stream) may give.
STREAM_KEYS = tuple(inspect.signature(App.stream).parameters)[2:]
