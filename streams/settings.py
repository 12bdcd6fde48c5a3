"""Configuration by concern.

Small frozen objects read once from a file, ``EDDY_*`` variables and flags.

:class:`KafkaConfig`, :class:`TopicConfig`, :class:`JoinConfig`,
:class:`LearningConfig`, :class:`StateConfig`, :class:`MaintenanceConfig` and
:class:`ObservabilityConfig` each hold one concern; :class:`Settings` holds one of
each and is what an eddy process loads at start-up. Every field has a setting name
(``topic_prefix``), an environment variable (``EDDY_TOPIC_PREFIX``) and a flag
(``--topic-prefix``); values are validated when read, choices are literals, and
secrets are :class:`Secret` objects whose ``repr`` and ``str`` never show them.

Precedence, lowest first: defaults, the config file (``--config eddy.toml``), the
environment, flags. Nothing reads the environment anywhere else, and there is no
module-level instance.

>>> s = Settings.from_env({"EDDY_TOPIC_PREFIX": "demo.", "EDDY_PARTITIONS": "6"})
>>> (s.topics.prefix, s.topics.partitions)
('demo.', 6)
>>> s.with_overrides({"partitions": 2, "bootstrap": None}).topics.partitions
2
>>> "pw" in repr(KafkaConfig("kafka:9092", sasl_password=Secret("pw")))
False
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from eddy.streams.exceptions import ConfigError

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TASKS = ("binary", "multiclass", "regression")
DETECTORS = ("adwin", "page_hinkley", "kswin", "ddm")


class Secret:
    """A secret value (a password, a key): shown as ``***`` in every ``repr`` and ``str``.

    >>> s = Secret("hunter2")
    >>> (str(s), repr(s), s.reveal())
    ('***', "Secret('***')", 'hunter2')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            msg = "a secret must be a non-empty string"
            raise ConfigError(msg)
        self._value = value

    def reveal(self) -> str:
        """The secret itself: for the one place that needs it (a client, an HMAC)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- parsers of text values (environment, flags, config file) ----------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be a whole number of at least 1, got {text!r}"
        raise ValueError(msg)
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        msg = f"must be a whole number of at least 0, got {text!r}"
        raise ValueError(msg)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        msg = f"must be a finite number above 0, got {text!r}"
        raise ValueError(msg)
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        msg = f"must be a finite number of at least 0, got {text!r}"
        raise ValueError(msg)
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        msg = f"must be a fraction in [0, 1), got {text!r}"
        raise ValueError(msg)
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        msg = f"must be a port number 0-65535, got {text!r}"
        raise ValueError(msg)
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    msg = f"must be true or false, got {text!r}"
    raise ValueError(msg)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        upper = {c.upper(): c for c in choices}
        value = text.strip().upper()
        if value not in upper:
            msg = f"must be one of {', '.join(choices)}, got {text!r}"
            raise ValueError(msg)
        return upper[value]

    return parse


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        widths = (0,)
    if not widths or min(widths) < 1:
        msg = f"must be comma-separated layer widths of at least 1, e.g. 256,256; got {text!r}"
        raise ValueError(msg)
    return widths


def _setting(
    default: Any,
    help: str,
    parse: Callable[[str], Any] = str,
    *,
    name: str | None = None,
    secret: bool = False,
) -> Any:
    """A config field.

    Its default, help text, parser, and setting name if it differs from the field's (the
    variable is ``EDDY_`` + the setting name in upper case).
    """
    meta = {"help": help, "parse": parse, "secret": secret, "setting": name}
    return field(default=default, metadata=meta)


def _fields(cls: type) -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """``(setting name, field)`` of a config class."""
    for f in dataclasses.fields(cls):
        yield (f.metadata.get("setting") or f.name), f


class _Config:
    """What every config class shares: validation of text values and the section name."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for _, f in _fields(type(self)):
            value = getattr(self, f.name)
            if f.metadata["secret"] and isinstance(value, str):
                object.__setattr__(self, f.name, Secret(value))
            elif f.metadata["parse"] is Path and isinstance(value, str):
                object.__setattr__(self, f.name, Path(value))


# -- the configs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaConfig(_Config):
    """How to reach Kafka: every eddy client is built from this (``eddy.streams.kafka.clients``)."""

    section: ClassVar[str] = "kafka"

    bootstrap: str | None = _setting(
        None,
        "Kafka bootstrap servers (host:port[,host:port]). Unset: use the embedded "
        "broker that `eddy broker` or `eddy up` started.",
    )
    client_id: str = _setting("eddy", "Kafka client id prefix.")
    producer_idempotence: str = _setting(
        "auto",
        "Idempotent producers: on, off, or auto (on unless the broker refuses "
        "InitProducerId, as the embedded Tansu does; then acks=all without it).",
        _choice("auto", "on", "off"),
    )
    security_protocol: str = _setting(
        "PLAINTEXT", "Kafka security protocol.", _choice(*_SECURITY_PROTOCOLS)
    )
    sasl_mechanism: str | None = _setting(
        None, "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.", _choice(*_SASL_MECHANISMS)
    )
    sasl_username: str | None = _setting(None, "SASL user name.")
    sasl_password: Secret | None = _setting(None, "SASL password.", secret=True)
    ssl_cafile: Path | None = _setting(None, "CA bundle for TLS.", Path)
    ssl_certfile: Path | None = _setting(None, "Client certificate for TLS.", Path)
    ssl_keyfile: Path | None = _setting(None, "Client private key for TLS.", Path)
    session_timeout_ms: int = _setting(
        9000,
        "Consumer group session timeout (Tansu holds a JoinGroup for half of it).",
        _positive_int,
    )
    fetch_max_wait_ms: int = _setting(
        10,
        "Longest a fetch waits for data to fill it. Kafka answers as soon as data "
        "comes; the embedded broker only when the wait ends, so it bounds each hop's latency.",
        _positive_int,
    )
    fetch_max_records: int = _setting(
        5000,
        "Most records the worker takes from its consumer at once (one batch of the engine).",
        _positive_int,
    )
    fetch_partition_bytes: int = _setting(
        4 * 1024 * 1024,
        "Most bytes one fetch reads from each partition (max.partition.fetch.bytes). "
        "Results do not depend on it (nor on fetch_max_records): the merge orders events "
        "by their time, not by how fetches split them.",
        _positive_int,
    )
    max_message_bytes: int = _setting(
        1_048_576,
        "Largest event eddy accepts or sends; larger ones are dead-lettered (Tansu does not "
        "enforce max.message.bytes, so eddy does). State and artifacts travel in chunks "
        "of half this size.",
        _positive_int,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            msg = (
                f"security_protocol={self.security_protocol} needs EDDY_SASL_MECHANISM, "
                "EDDY_SASL_USERNAME and EDDY_SASL_PASSWORD (or their flags)"
            )
            raise ConfigError(msg)


@dataclass(frozen=True)
class TopicConfig(_Config):
    """eddy's topic names (a prefix) and how they are created."""

    section: ClassVar[str] = "topics"

    prefix: str = _setting("eddy.", "Prefix of every eddy topic name.", name="topic_prefix")
    partitions: int = _setting(
        3,
        "Partitions of the data topics (samples, labels, predictions, examples and the "
        "internal ones); eddy joins samples with labels whatever partitioner their "
        "producers used.",
        _positive_int,
    )
    replication_factor: int = _setting(1, "Replication factor of created topics.", _positive_int)


@dataclass(frozen=True)
class JoinConfig(_Config):
    """How samples wait for their labels."""

    section: ClassVar[str] = "join"

    ttl_s: float = _setting(
        60.0,
        "Seconds a sample waits for its label (and a label for its sample).",
        _positive_float,
        name="join_ttl_s",
    )
    max_pending: int = _setting(
        100_000,
        "Samples (and labels) waiting per partition before the oldest is evicted.",
        _positive_int,
        name="join_max_pending",
    )
    max_future_s: float = _setting(
        300.0,
        "How far ahead of this machine's clock an event time may be: samples and labels "
        "with a later `ts` are dead-lettered (ts_future), and later Kafka record "
        "timestamps do not move the join's event-time clock.",
        _positive_float,
    )
    merge_wait_s: float = _setting(
        0.5,
        "Longest the event-time merge of a partition's samples and labels waits for an "
        "input that may still hold earlier events (unread records on the broker) before it "
        "goes on; what that input brings later is processed as late data.",
        _non_negative_float,
    )
    merge_grace_ms: int = _setting(
        10,
        "How long after a record was sent (its record timestamp) the merge still waits for "
        "a fetch of the other inputs before it counts them caught up: a producer that "
        "batches topics separately (linger.ms) may append an earlier event to one topic "
        "after a later one to another. Cover your producers' linger; 0: no grace. A "
        "backlog, sent long before it is read, never waits for it.",
        _non_negative_int,
    )


@dataclass(frozen=True)
class LearningConfig(_Config):
    """How streams learn: the defaults of every stream.

    A config file or ``App.stream`` can set them per stream.
    """

    section: ClassVar[str] = "learning"

    model: str = _setting("scaled-logreg", "Online model of new streams (see `eddy catalogue`).")
    task: str = _setting("binary", "Task: binary, multiclass or regression.", _choice(*TASKS))
    detector: str = _setting(
        "adwin", "Drift detector: adwin, page_hinkley, kswin or ddm.", _choice(*DETECTORS)
    )
    drift_min_examples: int = _setting(
        1000, "Examples a stream learns before drift can be signalled.", _positive_int
    )
    drift_cooldown: int = _setting(
        2000, "Examples after a drift during which no new drift is signalled.", _positive_int
    )
    metrics_window: int = _setting(1000, "Window of the rolling metrics.", _positive_int)
    batch_size: int = _setting(
        256, "Mini-batch size of the PyTorch learners (River learns per example).", _positive_int
    )
    max_streams: int = _setting(
        100,
        "Most model streams a worker learns when no stream is configured; samples of "
        "further streams are dead-lettered (too_many_streams). Configured streams "
        "(--config) are an allow-list instead.",
        _positive_int,
    )
    max_feature_magnitude: float = _setting(
        1e12,
        "Largest absolute feature (and regression label) value accepted; larger ones are "
        "dead-lettered at the edge (value_too_large), since they overflow learning.",
        _positive_float,
    )
    max_staleness_ms: int = _setting(
        2000,
        "Largest age of the model that predicts a sample when its stream is learned in "
        "another process (a replica of the online model): learners publish a changed "
        "model at least every half of it.",
        _positive_int,
    )
    snapshot_interval_s: float = _setting(
        30.0,
        "Seconds between online-model versions in the registry (what serving clients "
        "following the online model load).",
        _positive_float,
    )
    score_at_label_time: bool = _setting(
        False,
        "Also score each example with the model as it is when the label arrives (what "
        "the metric would be with labels at once; costs a second prediction per example).",
        _boolean,
    )
    feature_drift: bool = _setting(
        True, "Watch each stream's features and predictions for drift at sample time.", _boolean
    )
    feature_drift_retrain: bool = _setting(
        False, "A feature drift also requests a retrain (off: an alert only).", _boolean
    )


@dataclass(frozen=True)
class StateConfig(_Config):
    """Where state lives, how often it is checkpointed, and the key that authenticates it."""

    section: ClassVar[str] = "state"

    data_dir: Path = _setting(
        Path("eddy-data"),
        "Directory for the local registry mirror, checkpoint cache and logs.",
        Path,
    )
    checkpoint_every: int = _setting(
        10_000, "Checkpoint a partition's state after this many records.", _positive_int
    )
    checkpoint_interval_s: float = _setting(
        5.0, "…and at least this often (seconds) while records flow.", _positive_float
    )
    dedup_horizon: int = _setting(
        200_000,
        "Example ids remembered per partition to drop re-sent examples after a crash.",
        _positive_int,
    )
    start_from: str = _setting(
        "earliest",
        "Where a partition with no checkpoint starts: earliest or latest.",
        _choice("earliest", "latest"),
    )
    signing_key: Secret | None = _setting(
        None,
        "HMAC-SHA256 key: eddy signs every control event and registry record and refuses "
        "unsigned or badly signed ones, and authenticates state and model pickles with it. "
        "Unset: the key in EDDY_DATA_DIR/signing.key if there is one (`eddy up` creates "
        "it). Give every machine the same key. (EDDY_EVENT_SIGNING_KEY also works.)",
        secret=True,
    )


@dataclass(frozen=True)
class MaintenanceConfig(_Config):
    """The retrainer and the exporter."""

    section: ClassVar[str] = "maintenance"

    retrain_window: int = _setting(
        5000, "Examples a retrain reads (after the drift point, or the most recent).", _positive_int
    )
    retrain_min_examples: int = _setting(
        500, "Fewest examples a retrain accepts when the window is not full in time.", _positive_int
    )
    retrain_wait_s: float = _setting(
        120.0, "Seconds a retrain waits for its window to fill after a drift.", _positive_float
    )
    retrain_holdout: float = _setting(
        0.2,
        "Fraction of the window (its most recent end) held out for the comparison.",
        _fraction,
    )
    retrain_strategy: str = _setting(
        "both",
        "warm (fine-tune the champion), scratch, or both (keep the better by CV).",
        _choice("warm", "scratch", "both"),
    )
    retrain_folds: int = _setting(3, "Folds of the cross-validation.", _positive_int)
    retrain_epochs: int = _setting(
        30,
        "Most epochs of batch training; it stops earlier once the loss on the window's most "
        "recent tenth has not improved for 3 epochs.",
        _positive_int,
    )
    retrain_hidden: tuple[int, ...] = _setting(
        (256, 256), "Hidden layer widths of the batch model.", _widths
    )
    retrain_trials: int = _setting(
        20,
        "Trials of the hyperparameter search (width, depth, learning rate, weight decay, "
        "epochs) whose best joins the fixed candidates in the cross-validation (0: no search).",
        _non_negative_int,
    )
    retrain_budget_s: float = _setting(
        20.0,
        "Seconds the hyperparameter search may take: no trial starts after them, and one "
        "running stops before its next fold.",
        _positive_float,
    )
    promote_alpha: float = _setting(
        0.05, "Significance level a challenger must beat the champion at.", _fraction
    )
    export_min_ratio: float = _setting(
        3.0, "Smallest fp32/int8 size ratio an export must reach to be servable.", _positive_float
    )
    export_max_delta: float = _setting(
        0.01,
        "Largest accuracy loss (or MAE gain) of int8 against fp32 that is servable.",
        _fraction,
    )
    export_prune: float = _setting(
        0.0, "Fraction of smallest weights zeroed before quantization (0: no pruning).", _fraction
    )
    export_distill: bool = _setting(
        True,
        "Distill a smaller student network from the model on its training window and "
        "measure it among the export variants.",
        _boolean,
    )
    export_ladder: tuple[float, ...] = _setting(
        (0.25, 0.5, 0.75),
        "Structured pruning levels measured at export: fractions of each hidden layer's units "
        "removed, comma-separated (0: none). With EDDY_EXPORT_DISTILL off and no level, the "
        "export is the model's own int8.",
        lambda text: tuple(_fraction(level) for level in text.split(",")),
    )
    export_student_size: float = _setting(
        0.25,
        "Size target of the distilled student: at most this fraction of the model's parameters.",
        _positive_float,
    )


@dataclass(frozen=True)
class ObservabilityConfig(_Config):
    """Logs, metrics and the dashboard."""

    section: ClassVar[str] = "observability"

    log_level: str = _setting("INFO", "Log level.", _choice("DEBUG", "INFO", "WARNING", "ERROR"))
    metrics_port: int = _setting(
        0, "Port of the Prometheus /metrics endpoint of this process (0: off).", _port
    )
    metrics_host: str = _setting(
        "127.0.0.1",
        "Address the /metrics endpoint and dashboard listen on (0.0.0.0: every interface).",
    )
    metrics_interval_s: float = _setting(
        5.0, "Seconds between metric snapshots on the metrics topic.", _positive_float
    )


@dataclass(frozen=True)
class ServingConfig(_Config):
    """``eddy serve``: the Open Inference Protocol endpoint (eddy.consumers.inference)."""

    section: ClassVar[str] = "serving"

    host: str = _setting(
        "127.0.0.1",
        "Address `eddy serve` listens on (0.0.0.0: every interface; set a token then).",
        name="serve_host",
    )
    port: int = _setting(
        8000, "Port of `eddy serve` (0: a free one, printed at start).", _port, name="serve_port"
    )
    token: Secret | None = _setting(
        None,
        "Bearer token `eddy serve` requires on every route but /v2/health/* (unset: none).",
        secret=True,
        name="serve_token",
    )
    models: tuple[str, ...] = _setting(
        (),
        "Streams `eddy serve` serves, comma-separated (they answer 503 until loaded); "
        "unset: every stream the registry holds, up to EDDY_MAX_STREAMS.",
        lambda text: tuple(n.strip() for n in text.split(",") if n.strip()),
        name="serve_models",
    )
    default: str = _setting(
        "auto",
        "What a request without a version gets: champion, online, or auto (the int8 "
        "champion once one is servable, else the online model).",
        _choice("auto", "champion", "online"),
        name="serve_default",
    )
    max_batch: int = _setting(
        1024, "Most rows one inference request may carry.", _positive_int, name="serve_max_batch"
    )
    max_body_bytes: int = _setting(
        4_194_304,
        "Largest request body `eddy serve` reads; larger ones get 413.",
        _positive_int,
        name="serve_max_body_bytes",
    )
    shadow: bool = _setting(
        True,
        "Also predict each request with the stream's other model (online or champion) "
        "after answering, and count where they agree.",
        _boolean,
        name="serve_shadow",
    )
    strict: bool = _setting(
        True,
        "Refuse (400) a row missing one of the champion's features or carrying one it "
        "does not know (off: missing count as 0, unknown ones are ignored).",
        _boolean,
        name="serve_strict",
    )


CONFIGS: tuple[type[_Config], ...] = (
    KafkaConfig,
    TopicConfig,
    JoinConfig,
    LearningConfig,
    StateConfig,
    MaintenanceConfig,
    ObservabilityConfig,
    ServingConfig,
)
# Old names that keep working (environment variable → setting name).
_ALIASES = {"EDDY_EVENT_SIGNING_KEY": "signing_key"}


def _index() -> dict[str, tuple[type[_Config], dataclasses.Field[Any]]]:
    """Every setting name → (its config class, its field)."""
    out = {}
    for cls in CONFIGS:
        for name, f in _fields(cls):
            out[name] = (cls, f)
    return out


_SETTINGS = _index()
_SECTION_ATTRIBUTE = {
    KafkaConfig: "kafka",
    TopicConfig: "topics",
    JoinConfig: "join",
    LearningConfig: "learning",
    StateConfig: "state",
    MaintenanceConfig: "maintenance",
    ObservabilityConfig: "observability",
    ServingConfig: "serving",
}


@dataclass(frozen=True)
class Settings:
    """Every concern's config: what an eddy process loads once at start-up.

    Build one with :meth:`load` (file, environment, flags), :meth:`from_env`, or
    :meth:`build` from setting names (``Settings.build(partitions=1)``); hand each
    component only the config it needs.
    """

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    join: JoinConfig = field(default_factory=JoinConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    state: StateConfig = field(default_factory=StateConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    # Per-stream tables of the config file ([streams.<name>]), validated by the app.
    streams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    # -- building --------------------------------------------------------------------------

    @classmethod
    def build(cls, **values: Any) -> Settings:
        """Settings from setting names and typed values; unknown names are an error.

        >>> Settings.build(partitions=2, topic_prefix="t.").topics
        TopicConfig(prefix='t.', partitions=2, replication_factor=1)
        """
        return cls().with_overrides(values, strict=True)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, base: Settings | None = None
    ) -> Settings:
        """Settings from ``EDDY_*`` variables over ``base``; unset or empty ones keep it."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, name in _ALIASES.items():
            if environ.get(var):
                values[name] = _parse(name, environ[var], var)
        for name in _SETTINGS:
            raw = environ.get(env_var(name))
            if raw:
                values[name] = _parse(name, raw, env_var(name))
        return (base or cls()).with_overrides(values)

    @classmethod
    def from_file(cls, path: Path) -> Settings:
        """Settings from a TOML file.

        A table per concern (``[kafka]``, ``[topics]``, ``[join]``, ``[learning]``,
        ``[state]``, ``[maintenance]``, ``[observability]``, ``[serving]``) with setting names
        as keys, and ``[streams.<name>]`` tables for per-stream configuration.
        """
        try:
            document = tomllib.loads(Path(path).read_text())
        except OSError as ex:
            msg = f"cannot read the config file {path}: {ex}"
            raise ConfigError(msg) from ex
        except tomllib.TOMLDecodeError as ex:
            msg = f"{path} is not valid TOML: {ex}"
            raise ConfigError(msg) from ex
        values: dict[str, Any] = {}
        sections = {cls_.section: cls_ for cls_ in CONFIGS}
        for section, table in document.items():
            if section == "streams":
                continue
            if section not in sections or not isinstance(table, dict):
                msg = (
                    f"{path}: unknown table [{section}]; known: "
                    f"{', '.join(f'[{s}]' for s in sections)}, [streams.<name>]"
                )
                raise ConfigError(msg)
            for name, value in table.items():
                owner = _SETTINGS.get(name, (None, None))[0]
                if owner is not sections[section]:
                    known = ", ".join(n for n, _ in _fields(sections[section]))
                    msg = f"{path}: [{section}] has no setting {name!r}; known: {known}"
                    raise ConfigError(msg)
                text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
                values[name] = _parse(name, text, f"{path} [{section}] {name}")
        streams = document.get("streams", {})
        if not isinstance(streams, dict) or not all(isinstance(t, dict) for t in streams.values()):
            msg = f"{path}: [streams] must hold one table per stream, e.g. [streams.cards]"
            raise ConfigError(msg)
        return dataclasses.replace(cls().with_overrides(values), streams=streams)

    @classmethod
    def load(cls, args: argparse.Namespace | None = None) -> Settings:
        """The config file (``--config``), then the environment, then any flag given."""
        path = getattr(args, "config", None) if args is not None else None
        base = cls.from_file(path) if path else None
        settings = cls.from_env(base=base)
        return settings.with_overrides(vars(args)) if args is not None else settings

    def with_overrides(self, overrides: Mapping[str, Any], strict: bool = False) -> Settings:
        """A copy with the named settings replaced.

        ``None`` values are ignored, and so are unknown names unless ``strict``.
        """
        changes: dict[type[_Config], dict[str, Any]] = {}
        for name, value in overrides.items():
            if name not in _SETTINGS:
                if strict:
                    msg = f"unknown setting {name!r}; known: {', '.join(_SETTINGS)}"
                    raise ConfigError(msg)
                continue
            if value is None:
                continue
            cls, f = _SETTINGS[name]
            changes.setdefault(cls, {})[f.name] = value
        replaced = {
            _SECTION_ATTRIBUTE[cls]: dataclasses.replace(
                getattr(self, _SECTION_ATTRIBUTE[cls]), **fields_
            )
            for cls, fields_ in changes.items()
        }
        return dataclasses.replace(self, **replaced)

    # -- reading ---------------------------------------------------------------------------

    def value(self, name: str) -> Any:
        """The value of the setting ``name`` (``topic_prefix``…)."""
        cls, f = _SETTINGS[name]
        return getattr(getattr(self, _SECTION_ATTRIBUTE[cls]), f.name)

    def flat(self) -> dict[str, Any]:
        """``{setting name: value}`` of every setting (secrets as :class:`Secret`)."""
        return {name: self.value(name) for name in _SETTINGS}

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict for logs and ``eddy config``, with secrets masked."""
        return {k: ("***" if isinstance(v, Secret) else v) for k, v in self.flat().items()}

    @property
    def data_dir(self) -> Path:
        """Shorthand for ``state.data_dir``."""
        return self.state.data_dir

    @property
    def prefix(self) -> str:
        """Shorthand for ``topics.prefix``."""
        return self.topics.prefix


# The settings every command that talks to Kafka takes as flags.
KAFKA_SETTINGS = [
    *(name for name, _ in _fields(KafkaConfig)),
    *(name for name, _ in _fields(TopicConfig)),
    "data_dir",
    "signing_key",
    "log_level",
]


def env_var(name: str) -> str:
    """The environment variable that sets the setting ``name``."""
    return "EDDY_" + name.upper()


def setting_help(name: str) -> str:
    """The help text of the setting ``name``."""
    return str(_SETTINGS[name][1].metadata["help"])


def setting_names() -> list[str]:
    """Every setting name, in reference order."""
    return list(_SETTINGS)


def _parse(name: str, raw: str, source: str) -> Any:
    _, f = _SETTINGS[name]
    try:
        value = f.metadata["parse"](raw)
    except ValueError as ex:
        shown = "***" if f.metadata["secret"] else raw
        msg = f"{source}={shown!r} is not valid: {ex}"
        raise ConfigError(msg) from ex
    return Secret(value) if f.metadata["secret"] else value


def add_settings_arguments(
    parser: argparse.ArgumentParser, names: list[str] | None = None, config_file: bool = False
) -> None:
    """Add a flag for each setting to ``parser``.

    Or for ``names`` only; with ``config_file``, also ``--config FILE``.

    Flags default to ``None`` so that :meth:`Settings.load` keeps the environment's
    value when a flag is not given.
    """
    if config_file:
        parser.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="a TOML config file (tables per concern and [streams.<name>]); the "
            "environment and flags override it",
        )
    group = parser.add_argument_group("settings (each also read from its EDDY_* variable)")
    for name, (_, f) in _SETTINGS.items():
        if names is not None and name not in names:
            continue
        flag = "--" + name.replace("_", "-")

        def parse(text: str, f: dataclasses.Field[Any] = f) -> Any:
            try:
                value = f.metadata["parse"](text)
            except ValueError as ex:
                raise argparse.ArgumentTypeError(str(ex)) from ex
            return Secret(value) if f.metadata["secret"] else value

        group.add_argument(
            flag,
            dest=name,
            default=None,
            type=parse,
            metavar=name.upper(),
            help=f"{f.metadata['help']} [{env_var(name)}]",
        )


def settings_env(settings: Settings) -> dict[str, str]:
    """``EDDY_*`` variables that make a child process load exactly ``settings``.

    Secrets included: a child's environment is how they reach it, never a command line.

    >>> settings_env(Settings.build(partitions=2))["EDDY_PARTITIONS"]
    '2'
    >>> "EDDY_BOOTSTRAP" in settings_env(Settings())  # unset stays unset
    False
    """
    env = {}
    for name, value in settings.flat().items():
        if value is None:
            continue
        if isinstance(value, Secret):
            env[env_var(name)] = value.reveal()
        elif isinstance(value, tuple):
            env[env_var(name)] = ",".join(map(str, value))
        else:
            env[env_var(name)] = str(value)
    return env


def settings_reference() -> str:
    """The configuration reference as a Markdown table.

    README.md holds a copy; a test keeps it current.
    """
    rows = ["| variable | flag | default | what |", "| --- | --- | --- | --- |"]
    current = None
    for name, (cls, f) in _SETTINGS.items():
        if cls is not current:
            current = cls
            rows.append(f"| **{cls.__name__}** `[{cls.section}]` | | | |")
        default = f.default
        if default is None or default == ():
            shown = "unset"
        elif isinstance(default, tuple):
            shown = f"`{','.join(map(str, default))}`"
        else:
            shown = f"`{default}`"
        text = f.metadata["help"].replace("|", "\\|")
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `{env_var(name)}` | `{flag}` | {shown} | {text} |")
    return "\n".join(rows) + "\n"
