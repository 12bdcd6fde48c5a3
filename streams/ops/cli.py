"""The ``eddy`` command line.

Every command reads :class:`~eddy.streams.settings.Settings` from ``EDDY_*`` variables
and its flags; every command that talks to Kafka takes ``--bootstrap`` (or uses
the embedded broker that ``eddy broker`` recorded in the data directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from eddy.models.catalogue import CATALOGUE
from eddy.models.exceptions import EddyError
from eddy.streams.kafka.admin import create_topics, topic_sizes
from eddy.streams.kafka.broker import (
    EmbeddedBroker,
    broker_file,
    find_running_broker,
    record_running_broker,
)
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import maintenance_cli, sources, up
from eddy.streams.ops.producer import ProduceOptions, ProduceReport, produce
from eddy.streams.ops.supervisor import stop_signals
from eddy.streams.settings import (
    KAFKA_SETTINGS,
    Settings,
    add_settings_arguments,
    env_var,
    setting_help,
    setting_names,
    settings_reference,
)

# `eddy serve`'s own flags beyond KAFKA_SETTINGS: its [serving] table, the metrics endpoint,
# and the bounds it shares with the worker.
SERVE_SETTINGS = [
    *(n for n in setting_names() if n.startswith("serve_")),
    "metrics_port",
    "metrics_host",
    "max_streams",
    "max_feature_magnitude",
]

log = logging.getLogger("eddy")
T = TypeVar("T")

console = Console()
errors = Console(stderr=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``eddy`` command."""
    parser = argparse.ArgumentParser(
        prog="eddy",
        description="Streaming online learning on Kafka: learn, evaluate, detect drift, retrain, "
        "export and hot-swap models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "broker", help="run the embedded Kafka broker (Tansu) in the foreground"
    )
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    add_settings_arguments(p, ["data_dir", "log_level"])
    p.set_defaults(run=cmd_broker)

    p = commands.add_parser("topics", help="create or list eddy's topics")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, text in (
        ("create", cmd_topics_create, "create every eddy topic (idempotent)"),
        ("list", cmd_topics_list, "list eddy's topics with partition and message counts"),
    ):
        a = actions.add_parser(name, help=text)
        add_settings_arguments(a, KAFKA_SETTINGS)
        a.set_defaults(run=handler)

    p = commands.add_parser(
        "produce", help="send samples and labels from a synthetic stream, a dataset or a file"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", help="a named source (see --list)")
    what.add_argument("--file", type=Path, help="a JSONL or CSV file")
    what.add_argument("--list", action="store_true", help="list the named sources and exit")
    p.add_argument("--target", help="with --file: the label column/field")
    p.add_argument("--format", choices=["jsonl", "csv"], help="with --file (default: by suffix)")
    p.add_argument("--n", type=int, help="how many samples (default: all; required if endless)")
    p.add_argument(
        "--label-delay",
        type=int,
        default=0,
        metavar="N",
        help="send each label N samples after its sample (default 0)",
    )
    p.add_argument(
        "--label-drop",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of labels never sent (seeded), e.g. 0.01",
    )
    p.add_argument("--inline-labels", action="store_true", help="put labels inside the samples")
    p.add_argument("--rate", type=float, help="samples per second (default: as fast as possible)")
    p.add_argument("--seed", type=int, default=42, help="seed of the stream and label drops")
    p.add_argument("--variant", type=int, default=0, help="starting concept of a synthetic stream")
    p.add_argument("--drift-at", type=int, metavar="N", help="switch concept around sample N")
    p.add_argument("--drift-to", type=int, metavar="V", help="concept after the drift")
    p.add_argument(
        "--drift-width",
        type=int,
        default=1,
        metavar="W",
        help="length of the drift transition in samples (1: abrupt)",
    )
    p.add_argument("--stream", default="default", help="model stream the samples belong to")
    p.add_argument("--id-prefix", help="prefix of event ids (default: random)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_settings_arguments(p, KAFKA_SETTINGS)
    p.set_defaults(run=cmd_produce)

    p = commands.add_parser(
        "worker",
        help="run a worker: predict samples as they arrive, join labels, evaluate, learn, "
        "detect drift (streams from --config, or any stream with the defaults)",
    )
    add_settings_arguments(p, config_file=True)
    p.set_defaults(run=cmd_worker)

    p = commands.add_parser(
        "serve",
        help="serve every stream's online model and int8 champion over HTTP, on the Open "
        "Inference Protocol (KServe v2), hot-swapped as the registry on Kafka moves",
    )
    add_settings_arguments(p, [*KAFKA_SETTINGS, *SERVE_SETTINGS])
    p.set_defaults(run=cmd_serve)

    p = commands.add_parser(
        "config", help="every setting: its variable, flag and the value this shell gives it"
    )
    p.add_argument("--markdown", action="store_true", help="the reference table in Markdown")
    p.set_defaults(run=cmd_config)

    p = commands.add_parser("catalogue", help="list the online models (EDDY_MODEL)")
    p.set_defaults(run=cmd_catalogue)
    maintenance_cli.add_commands(commands)

    p = commands.add_parser(
        "up",
        help="the whole system: embedded broker (unless --bootstrap), topics, worker, "
        "retrainer and exporter supervised, with a live status and dashboard",
    )
    up.add_up_arguments(p)
    add_settings_arguments(p, config_file=True)
    p.set_defaults(run=cmd_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eddy`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args)
        if args.command not in _NOT_A_CLIENT:
            settings = with_embedded_broker(settings)
        _setup_logging(settings.observability.log_level)
        return int(args.run(args, settings) or 0)
    except EddyError as ex:
        errors.print(f"[bold red]eddy: error:[/] {ex}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


# Commands that are no Kafka client of a running broker: they start their own (broker,
# up), or only show settings (config, catalogue).
_NOT_A_CLIENT = frozenset({"broker", "up", "config", "catalogue"})


def with_embedded_broker(settings: Settings) -> Settings:
    """With no bootstrap configured, the embedded broker that ``eddy broker`` or ``eddy
    up`` recorded in the data directory, if it still runs (it offers no idempotent
    producers); what every other command connects to."""
    if settings.kafka.bootstrap:
        return settings
    found = find_running_broker(settings.data_dir)
    if found is None:
        return settings
    overrides: dict[str, Any] = {"bootstrap": found}
    if settings.kafka.producer_idempotence == "auto":
        overrides["producer_idempotence"] = "off"
    return settings.with_overrides(overrides)


def _setup_logging(level: str) -> None:
    # Rich for a person at a terminal; plain timestamped lines for log files.
    if errors.is_terminal:
        handler: logging.Handler = RichHandler(
            console=errors, show_path=False, rich_tracebacks=False
        )
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    # aiokafka logs every reconnect attempt at ERROR, hundreds a second during an
    # outage; eddy's agents report outages themselves, so repeats are condensed.
    aiokafka = logging.getLogger("aiokafka")
    aiokafka.setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for h in logging.getLogger().handlers:
        h.addFilter(RepeatFilter("aiokafka"))


class RepeatFilter(logging.Filter):
    """Let one record per (logger, message template) through every ``every_s`` seconds
    from loggers under ``prefix``; the next one says how many were held back."""

    def __init__(self, prefix: str, every_s: float = 30.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.every_s = every_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last, held = self._last.get(key, (-self.every_s, 0))
        if now - last < self.every_s:
            self._last[key] = (last, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} [{held} similar messages in the last {self.every_s:.0f} s]"
        self._last[key] = (now, 0)
        return True


def run_until_signalled(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; SIGTERM or SIGINT cancels it, so its ``finally`` blocks run."""

    async def runner() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await coro
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


# -- commands ------------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the embedded broker until SIGTERM or Ctrl-C."""
    with stop_signals() as received, EmbeddedBroker(port=args.port, host=args.host) as broker:
        path = record_running_broker(settings.state.data_dir, broker)
        console.print(f"eddy: embedded Kafka broker (Tansu) ready on [bold]{broker.bootstrap}[/]")
        console.print(f"  other eddy commands in {Path.cwd()} find it through {path};")
        console.print(f"  elsewhere: export EDDY_BOOTSTRAP={broker.bootstrap}")
        console.print("  memory-only: topics vanish when it stops. Ctrl-C or SIGTERM stops it.")
        sys.stdout.flush()
        try:
            while not received:
                signal.pause()
        finally:
            with contextlib.suppress(FileNotFoundError):
                broker_file(settings.state.data_dir).unlink()
    console.print("eddy: broker stopped")
    return 0


def cmd_topics_create(args: argparse.Namespace, settings: Settings) -> int:
    """Create every eddy topic; print what was created and what existed."""
    result = run_until_signalled(create_topics(settings.kafka, settings.topics))
    counts = _topic_table(settings, result)
    console.print(counts)
    return 0


def _topic_table(settings: Settings, status: dict[str, str]) -> Table:
    table = Table("topic", "partitions", "status")
    counts = Topics(settings.topics.prefix).partition_counts(settings.topics.partitions)
    for topic, n in counts.items():
        table.add_row(topic, str(n), status.get(topic, "?"))
    return table


def cmd_topics_list(args: argparse.Namespace, settings: Settings) -> int:
    """List eddy's topics with their partition and message counts."""
    sizes = run_until_signalled(topic_sizes(settings.kafka, settings.topics))
    table = Table("topic", "partitions", "messages")
    for topic, (parts, msgs) in sorted(sizes.items()):
        table.add_row(topic, str(parts), f"{msgs:,}")
    console.print(table if sizes else "no eddy topics: run `eddy topics create`")
    return 0


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    """Send samples and labels from a named source or a file."""
    if args.list:
        table = Table("name", "task", "length", "drift (--drift-at)", "what")
        for info in sources.catalogue():
            drift = f"variants 0-{info.variants - 1}" if info.variants else "-"
            length = "endless" if info.endless else "fixed"
            table.add_row(info.name, info.task, length, drift, info.description)
        console.print(table)
        return 0
    try:
        examples, total = _open_source(args)
        options = ProduceOptions(
            n=args.n,
            label_delay=args.label_delay,
            label_drop=args.label_drop,
            inline_labels=args.inline_labels,
            rate=args.rate,
            seed=args.seed,
            stream=args.stream,
            id_prefix=args.id_prefix,
        )
    except (KeyError, ValueError) as ex:
        errors.print(f"[bold red]eddy produce: error:[/] {ex.args[0] if ex.args else ex}")
        return 2
    _freeze_heap()  # a paced producer's full collections would stall its sends
    report = _produce_with_progress(settings, examples, options, total, not args.no_progress)
    _print_report(report)
    return 0


def _open_source(args: argparse.Namespace) -> tuple[Any, int | None]:
    if args.file is not None:
        if not args.target:
            msg = "--file needs --target, the name of the label column/field"
            raise ValueError(msg)
        if not args.file.is_file():
            msg = f"no such file: {args.file}"
            raise ValueError(msg)
        return sources.open_file(args.file, args.target, args.format), args.n
    info = sources.source_info(args.dataset)
    if info.endless and args.n is None:
        msg = f"{info.name} is endless: give --n, the number of samples to send"
        raise ValueError(msg)
    examples = sources.open_named(
        info.name,
        seed=args.seed,
        variant=args.variant,
        drift_at=args.drift_at,
        drift_to=args.drift_to,
        drift_width=args.drift_width,
    )
    return examples, args.n


def _produce_with_progress(
    settings: Settings, examples: Any, options: ProduceOptions, total: int | None, show: bool
) -> ProduceReport:
    progress = Progress(
        TextColumn("producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=errors,
        disable=not show,
    )
    with progress:
        task = progress.add_task("samples", total=total)
        return run_until_signalled(
            produce(
                settings.kafka,
                settings.topics.prefix,
                examples,
                options,
                lambda n: progress.advance(task, n),
            )
        )


def _print_report(report: ProduceReport) -> None:
    console.print(
        f"eddy: sent {report.samples:,} samples and {report.labels:,} labels "
        f"({report.labels_dropped:,} labels withheld) in {report.seconds:.1f}s "
        f"({report.rate:,.0f} samples/s); ids {report.id_prefix}-*"
    )


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the worker until SIGTERM or Ctrl-C; it checkpoints and leaves cleanly."""
    from eddy.streams.agents.worker import run_worker
    from eddy.streams.app import App

    app = App.from_settings(settings)  # loads the streams' models (and torch) now
    _freeze_heap()
    asyncio.run(run_worker(app.settings, app.policy(), app.hooks, handle_signals=True))  # type: ignore[arg-type]
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the models until SIGTERM or Ctrl-C; see :mod:`eddy.consumers.inference`."""
    from eddy.consumers.inference.server import run_serve

    _freeze_heap()
    asyncio.run(run_serve(settings, handle_signals=True))
    return 0


def _freeze_heap() -> None:
    """Process-wide tuning, in eddy's own entry points only (never on ``import eddy``):
    what was imported and loaded so far (torch and River leave ~240,000 long-lived
    objects) is moved out of the collector's reach, so full collections stop walking it.
    Unfrozen, each one paused the process 50-150 ms mid-stream, the worst of the p99
    latency (bench/README.md)."""
    gc.collect()
    gc.freeze()


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the settings as this environment resolves them (secrets masked)."""
    if args.markdown:
        console.print(settings_reference(), end="", markup=False, highlight=False, soft_wrap=True)
        return 0
    table = Table("variable", "value", "what")
    for name, value in settings.redacted().items():
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        table.add_row(env_var(name), "unset" if value is None else shown, setting_help(name))
    console.print(table)
    return 0


def cmd_catalogue(args: argparse.Namespace, settings: Settings) -> int:
    """List the model catalogue."""
    table = Table("model", "tasks", "what")
    for spec in CATALOGUE.values():
        table.add_row(spec.name, ", ".join(spec.tasks), spec.description)
    console.print(table)
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Run eddy's processes supervised; see :mod:`eddy.streams.ops.up`."""
    return up.cmd_up(args, settings, console)


if __name__ == "__main__":
    sys.exit(main())
