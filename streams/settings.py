"""One frozen settings object for every eddy process.

Each field is read once at start-up from its ``EDDY_*`` environment variable and
may be overridden by the command-line flag of the same name (``--topic-prefix``
for ``topic_prefix``). Nothing reads the environment anywhere else, and there is
no module-level instance: build one with :meth:`Settings.load` and pass it down.

>>> s = Settings.from_env({"EDDY_TOPIC_PREFIX": "demo.", "EDDY_PARTITIONS": "6"})
>>> (s.topic_prefix, s.partitions)
('demo.', 6)
>>> s.with_overrides({"partitions": 2, "bootstrap": None}).partitions
2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eddy.streams.exceptions import ConfigError

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_IDEMPOTENCE = ("auto", "on", "off")
_TASKS = ("binary", "multiclass", "regression")
_DETECTORS = ("adwin", "page_hinkley", "kswin", "ddm")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be a whole number of at least 1, got {text!r}"
        raise ValueError(msg)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        msg = f"must be a number above 0, got {text!r}"
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


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        upper = {c.upper(): c for c in choices}
        if value.upper() not in upper:
            msg = f"must be one of {', '.join(choices)}, got {text!r}"
            raise ValueError(msg)
        return upper[value.upper()]

    return parse


def _setting(
    default: Any,
    help: str,
    parse: Callable[[str], Any] = str,
    secret: bool = False,
) -> Any:
    return field(default=default, metadata={"help": help, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Configuration shared by the broker runner, the CLI, agents and consumers.

    The environment variable of a field is ``EDDY_`` + its name in upper case;
    its flag is ``--`` + its name with dashes.
    """

    bootstrap: str | None = _setting(
        None,
        "Kafka bootstrap servers (host:port[,host:port]). Unset: use the embedded "
        "broker that `eddy broker` or `eddy up` started.",
    )
    topic_prefix: str = _setting("eddy.", "Prefix of every eddy topic name.")
    partitions: int = _setting(
        3,
        "Partitions of the data topics (samples, labels, examples, predictions); "
        "they share one count so that the join is co-partitioned.",
        _positive_int,
    )
    replication_factor: int = _setting(1, "Replication factor of created topics.", _positive_int)
    data_dir: Path = _setting(
        Path("eddy-data"), "Directory for the registry, checkpoints and logs.", Path
    )
    max_message_bytes: int = _setting(
        1_048_576,
        "Largest event eddy accepts or sends; larger ones are dead-lettered "
        "(Tansu does not enforce max.message.bytes, so eddy does).",
        _positive_int,
    )
    client_id: str = _setting("eddy", "Kafka client id prefix.")
    producer_idempotence: str = _setting(
        "auto",
        "Idempotent producers: on, off, or auto (on unless the broker refuses "
        "InitProducerId, as the embedded Tansu does; then acks=all without it).",
        _choice(*_IDEMPOTENCE),
    )
    security_protocol: str = _setting(
        "PLAINTEXT", "Kafka security protocol.", _choice(*_SECURITY_PROTOCOLS)
    )
    sasl_mechanism: str | None = _setting(
        None, "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.", _choice(*_SASL_MECHANISMS)
    )
    sasl_username: str | None = _setting(None, "SASL user name.")
    sasl_password: str | None = _setting(None, "SASL password.", secret=True)
    ssl_cafile: Path | None = _setting(None, "CA bundle for TLS.", Path)
    ssl_certfile: Path | None = _setting(None, "Client certificate for TLS.", Path)
    ssl_keyfile: Path | None = _setting(None, "Client private key for TLS.", Path)
    event_signing_key: str | None = _setting(
        None,
        "HMAC-SHA256 key for control events: when set, eddy signs every control event it "
        "emits and refuses unsigned or badly signed ones (consumers, worker, hot-swap client).",
        secret=True,
    )
    log_level: str = _setting("INFO", "Log level.", _choice("DEBUG", "INFO", "WARNING", "ERROR"))

    # -- learning -----------------------------------------------------------------------------
    model: str = _setting("scaled-logreg", "Online model of new streams (see `eddy models`).")
    task: str = _setting("binary", "Task: binary, multiclass or regression.", _choice(*_TASKS))
    detector: str = _setting(
        "adwin", "Drift detector: adwin, page_hinkley, kswin or ddm.", _choice(*_DETECTORS)
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

    # -- join ---------------------------------------------------------------------------------
    join_ttl_s: float = _setting(
        60.0, "Seconds a sample waits for its label (and a label for its sample).", _positive_float
    )
    join_max_pending: int = _setting(
        100_000,
        "Samples (and labels) waiting per partition before the oldest is evicted.",
        _positive_int,
    )

    max_future_s: float = _setting(
        300.0,
        "How far ahead of this machine's clock an event time may be: samples and labels "
        "with a later `ts` are dead-lettered (ts_future), and later Kafka record "
        "timestamps do not move the join's event-time clock.",
        _positive_float,
    )

    # -- delivery -----------------------------------------------------------------------------
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
    fetch_max_wait_ms: int = _setting(
        10,
        "Longest a fetch waits for data to fill it. Kafka answers as soon as data "
        "comes; the embedded broker only when the wait ends, so it bounds each hop's latency.",
        _positive_int,
    )
    session_timeout_ms: int = _setting(
        9000,
        "Consumer group session timeout (Tansu holds a JoinGroup for half of it).",
        _positive_int,
    )

    # -- maintenance loop ---------------------------------------------------------------------
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
    retrain_hidden: str = _setting("256,256", "Hidden layer widths of the batch model.")
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

    # -- observability ------------------------------------------------------------------------
    metrics_port: int = _setting(
        0, "Port of the Prometheus /metrics endpoint of this process (0: off).", _port
    )
    metrics_interval_s: float = _setting(
        5.0, "Seconds between metric snapshots on the metrics topic.", _positive_float
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # accept str for Path fields, as the env does
            value = getattr(self, f.name)
            if f.metadata["parse"] is Path and isinstance(value, str):
                object.__setattr__(self, f.name, Path(value))
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            msg = (
                f"security_protocol={self.security_protocol} needs EDDY_SASL_MECHANISM, "
                "EDDY_SASL_USERNAME and EDDY_SASL_PASSWORD (or their flags)"
            )
            raise ConfigError(msg)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``EDDY_*`` variables; unset or empty ones keep defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_var(f.name))
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, raw, env_var(f.name))
        return cls(**values)

    @classmethod
    def load(cls, args: argparse.Namespace | None = None) -> Settings:
        """Environment first, then any flag the user actually gave."""
        settings = cls.from_env()
        return settings.with_overrides(vars(args)) if args is not None else settings

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """Return a copy with the given fields replaced; ``None`` values are ignored."""
        names = {f.name for f in dataclasses.fields(self)}
        changes = {k: v for k, v in overrides.items() if k in names and v is not None}
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict for logs, with secrets masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata["secret"] and value else value
        return out


# The settings every command that talks to Kafka takes as flags.
KAFKA_SETTINGS = [
    "session_timeout_ms",
    "bootstrap",
    "topic_prefix",
    "partitions",
    "replication_factor",
    "data_dir",
    "max_message_bytes",
    "client_id",
    "producer_idempotence",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "event_signing_key",
    "log_level",
]


def env_var(name: str) -> str:
    """The environment variable that sets field ``name``."""
    return "EDDY_" + name.upper()


def _parse(f: dataclasses.Field[Any], raw: str, source: str) -> Any:
    try:
        return f.metadata["parse"](raw)
    except ValueError as ex:
        msg = f"{source}={raw!r} is not valid: {ex}"
        raise ConfigError(msg) from ex


def add_settings_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Add a flag for each setting (or for ``names`` only) to ``parser``.

    Flags default to ``None`` so that :meth:`Settings.load` keeps the environment's
    value when a flag is not given.
    """
    group = parser.add_argument_group("settings (each also read from its EDDY_* variable)")
    for f in dataclasses.fields(Settings):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")

        def parse(text: str, f: dataclasses.Field[Any] = f, flag: str = flag) -> Any:
            try:
                return f.metadata["parse"](text)
            except ValueError as ex:
                raise argparse.ArgumentTypeError(str(ex)) from ex

        group.add_argument(
            flag,
            dest=f.name,
            default=None,
            type=parse,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} [{env_var(f.name)}]",
        )


def settings_env(settings: Settings) -> dict[str, str]:
    """``EDDY_*`` variables that make a child process load exactly ``settings``.

    >>> settings_env(Settings(partitions=2))["EDDY_PARTITIONS"]
    '2'
    >>> "EDDY_BOOTSTRAP" in settings_env(Settings())  # unset stays unset
    False
    """
    env = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is not None:
            env[env_var(f.name)] = str(value)
    return env


def settings_reference() -> str:
    """The configuration reference as a Markdown table (README.md holds a copy; a test
    keeps it current)."""
    rows = ["| variable | flag | default | what |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = "unset" if f.default is None else f"`{f.default}`"
        text = f.metadata["help"].replace("|", "\\|")
        flag = "--" + f.name.replace("_", "-")
        rows.append(f"| `{env_var(f.name)}` | `{flag}` | {default} | {text} |")
    return "\n".join(rows) + "\n"
