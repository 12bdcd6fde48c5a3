"""The ``eddy up`` command: broker, topics, supervised processes, live status, summary.

See :mod:`eddy.streams.ops.supervisor` for the supervision contract. ``--demo`` adds a
producer of a drifting synthetic stream with delayed labels; with
``--exit-when-done`` (what ``make demo`` runs) the command stops once every
produced sample is learned or expired and the maintenance loop has answered
every drift, then prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from eddy.models.maintain.registry import Registry
from eddy.streams.exceptions import BrokerError
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.broker import (
    EmbeddedBroker,
    broker_file,
    find_running_broker,
    record_running_broker,
)
from eddy.streams.observe.dashboard import Samples, sum_samples
from eddy.streams.ops.supervisor import (
    Child,
    ChildSpec,
    Supervisor,
    child_specs,
    eddy_argv,
    port_or_free,
    reset_stream_state,
    scrape,
    stop_signals,
    write_status_file,
)
from eddy.streams.settings import Settings
from eddy.streams.state.registry_topic import seed_registry
from eddy.streams.wire.keys import SIGNING_KEY_FILE, create_key_file

DEFAULT_BASE_PORT = 9100


def add_up_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``eddy up`` beyond the settings."""
    p.add_argument(
        "--demo",
        action="store_true",
        help="also produce a drifting SEA stream with labels 500 samples late",
    )
    p.add_argument("--n", type=int, default=20_000, help="samples the demo sends (default 20,000)")
    p.add_argument("--rate", type=float, default=1_000, help="demo samples per second (1,000)")
    p.add_argument(
        "--exit-when-done",
        action="store_true",
        help="with --demo: stop once everything is learned and maintained, print a summary",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600,
        help="with --exit-when-done: give up after this many seconds (600)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="also run `eddy serve`: the Open Inference Protocol over HTTP on EDDY_SERVE_PORT "
        "(8000, or a free port if taken)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start from an empty data directory (removes its registry too)",
    )


@dataclass
class Figures:
    """What the status shows, read from the children's metrics."""

    learned: float = 0.0  # from checkpointed state: survives worker restarts
    rate: float = 0.0
    predicted: float = 0.0  # predictions published (when samples arrived)
    metric: dict[str, float] = field(default_factory=dict)  # "accuracy" -> rolling value
    delayed: dict[str, float] = field(default_factory=dict)  # cumulative, served predictions
    immediate: dict[str, float] = field(default_factory=dict)  # cumulative, labels at once
    drifts: float = 0.0
    lag: float = 0.0
    expired: float = 0.0
    dead_lettered: float = 0.0
    version: str = "-"
    champion: str = "-"
    retrains: float = 0.0
    promoted: float = 0.0
    exports: float = 0.0
    servable: float = 0.0
    last_export: float | None = None


def _label(samples: Samples | None, name: str, label: str) -> str:
    for labels, value in (samples or {}).get(name, []):
        if value:
            return labels[label]
    return "-"


def read_figures(scrapes: dict[str, Samples | None]) -> Figures:
    """Figures from one scrape of each child (a child not answering counts as zero)."""
    w, r, e = scrapes.get("worker"), scrapes.get("retrainer"), scrapes.get("exporter")
    metric: dict[str, float] = {}
    delayed: dict[str, float] = {}
    immediate: dict[str, float] = {}
    scopes = {"rolling": metric, "cumulative": delayed, "immediate": immediate}
    for labels, value in (w or {}).get("eddy_prequential_metric", []):
        if labels["metric"] in ("accuracy", "mae") and labels["scope"] in scopes:
            scopes[labels["scope"]][labels["metric"]] = value
    exported = [v for _, v in (w or {}).get("eddy_last_export_timestamp_seconds", [])]
    return Figures(
        learned=sum_samples(w, "eddy_stream_examples"),
        predicted=sum_samples(w, "eddy_predictions_total"),
        metric=metric,
        delayed=delayed,
        immediate=immediate,
        drifts=sum_samples(w, "eddy_drift_signals_total", level="drift"),
        lag=sum_samples(w, "eddy_consumer_lag"),
        expired=sum_samples(w, "eddy_join_unmatched_state", reason="sample_expired"),
        dead_lettered=sum_samples(w, "eddy_dead_letter_total"),
        version=_label(w, "eddy_model_info", "version"),
        champion=_label(w, "eddy_champion_info", "version"),
        retrains=sum_samples(r, "eddy_control_events_handled_total", type="retrain.requested"),
        promoted=sum_samples(r, "eddy_maintenance_gate_results_total", result="promoted"),
        exports=sum_samples(e, "eddy_control_events_handled_total", type="model.updated"),
        servable=sum_samples(e, "eddy_maintenance_gate_results_total", result="servable"),
        last_export=max(exported) if exported else None,
    )


def status_view(supervisor: Supervisor, figures: Figures, header: str) -> Group:
    """The live status: a line of figures and a table of processes."""
    metric = ", ".join(f"{k} {v:.3f}" for k, v in figures.metric.items()) or "-"
    export = "-"
    if figures.last_export is not None:
        export = f"{time.time() - figures.last_export:.0f} s ago"
    line = Text.assemble(
        (header + "\n", "bold"),
        f"predicted {figures.predicted:,.0f} · learned {figures.learned:,.0f} "
        f"({figures.rate:,.0f}/s) · rolling {metric} · "
        f"drifts {figures.drifts:.0f} · lag {figures.lag:,.0f} · expired {figures.expired:,.0f} "
        f"· dead-lettered {figures.dead_lettered:,.0f}\n",
        f"online model {figures.version} · champion {figures.champion} · retrains "
        f"{figures.retrains:.0f} ({figures.promoted:.0f} promoted) · exports "
        f"{figures.exports:.0f} ({figures.servable:.0f} servable) · last export {export}",
    )
    table = Table("process", "state", "pid", "restarts", "metrics", box=None, pad_edge=False)
    for child in supervisor.children:
        table.add_row(
            child.spec.name,
            _state(child),
            str(child.pid or "-"),
            str(child.restarts),
            f":{child.spec.metrics_port}" if child.spec.metrics_port else "-",
        )
    return Group(line, table)


def _state(child: Child) -> str:
    if child.finished:
        code = child.exit_codes[-1] if child.exit_codes else None
        return "[green]done[/]" if code == 0 else f"[red]failed ({code})[/]"
    if child.process is None and child.restart_at is None:
        return f"waiting for {child.spec.after_ready}"
    if child.restart_at is not None:
        return f"[yellow]restarting in {max(0.0, child.restart_at - time.monotonic()):.0f} s[/]"
    return "[green]running[/]"


def demo_done(figures: Figures, supervisor: Supervisor, n: int) -> bool:
    """Every sample learned or expired, and every drift retrained and exported."""
    producer = next(c for c in supervisor.children if c.spec.name == "producer")
    if not (producer.finished and producer.exit_codes[-1:] == [0]):
        return False
    if figures.learned + figures.expired < n:
        return False
    return figures.retrains >= figures.drifts and figures.exports >= figures.retrains


def cmd_up(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    """Run the system until SIGTERM/Ctrl-C (or, bounded, until the demo is done)."""
    if args.exit_when_done and not args.demo:
        console.print("[red]eddy up: --exit-when-done needs --demo[/]")
        return 2
    data_dir = settings.state.data_dir
    other = find_running_broker(data_dir)
    if settings.kafka.bootstrap is None and other is not None:
        msg = (
            f"an embedded broker ({other}) already runs for data directory {data_dir} "
            f"({broker_file(data_dir)}): stop it, or give eddy up another --data-dir"
        )
        raise BrokerError(msg)
    for path in reset_stream_state(data_dir, everything=args.fresh):
        console.print(f"eddy up: removed {path} (state of an earlier run)")
    if settings.state.signing_key is None and not (data_dir / SIGNING_KEY_FILE).exists():
        path = create_key_file(data_dir / SIGNING_KEY_FILE)
        console.print(
            f"eddy up: signing events and registry records with a new key in {path} "
            "(mode 0600; give EDDY_SIGNING_KEY to use your own)"
        )
    broker: EmbeddedBroker | None = None
    with contextlib.ExitStack() as stack:
        if settings.kafka.bootstrap is None:
            broker = stack.enter_context(EmbeddedBroker())
            record_running_broker(data_dir, broker)
            stack.callback(lambda: broker_file(data_dir).unlink(missing_ok=True))
            # Tansu refuses InitProducerId, so producers run without idempotence.
            settings = settings.with_overrides(
                {"bootstrap": broker.bootstrap, "producer_idempotence": "off"}
            )
            console.print(f"eddy up: embedded Kafka broker (Tansu) on {broker.bootstrap}")
        if args.demo:
            settings = settings.with_overrides(
                {
                    "metrics_interval_s": 1.0,
                    "join_ttl_s": min(settings.join.ttl_s, 5.0),
                    # A drift near the end of the demo stream never fills its window.
                    "retrain_wait_s": min(settings.maintenance.retrain_wait_s, 15.0),
                    # The summary shows what the metric would be with labels at once.
                    "score_at_label_time": True,
                    "snapshot_interval_s": min(settings.learning.snapshot_interval_s, 5.0),
                }
            )
        created = asyncio.run(create_topics(settings.kafka, settings.topics))
        if broker is not None:
            seeded = asyncio.run(seed_registry(settings))
            if seeded:
                console.print(
                    f"eddy up: the registry mirror's {seeded} versions republished "
                    "to the new broker (it keeps topics in memory only)"
                )
        console.print(
            f"eddy up: topics ready ({sum(v == 'created' for v in created.values())} "
            f"created) with prefix {settings.topics.prefix!r}"
        )
        base = settings.observability.metrics_port or DEFAULT_BASE_PORT
        demo = {"n": args.n, "rate": args.rate} if args.demo else None
        specs = child_specs(settings, base, demo, getattr(args, "config", None))
        if getattr(args, "serve", False):
            specs.append(serve_spec(settings, specs[0].env, base + 3, console))
        return _supervise(args, settings, specs, console, broker)
    return 0  # unreachable; keeps type checkers content


def serve_spec(
    settings: Settings, env: dict[str, str], metrics_port: int, console: Console
) -> ChildSpec:
    """``eddy serve`` as a child of ``eddy up``, on EDDY_SERVE_PORT (or a free port)."""
    port = settings.serving.port and port_or_free(settings.serving.port)
    metrics = port_or_free(metrics_port)
    env = env | {"EDDY_METRICS_PORT": str(metrics), "EDDY_SERVE_PORT": str(port)}
    host = settings.serving.host
    shown = f"[{host}]" if ":" in host else host
    where = f"http://{shown}:{port}/v2" if port else f"{settings.data_dir / 'serve.json'}"
    console.print(f"eddy up: eddy serve (Open Inference Protocol) on {where}")
    return ChildSpec("serve", eddy_argv("serve"), env, metrics)


def _supervise(
    args: argparse.Namespace,
    settings: Settings,
    specs: list[ChildSpec],
    console: Console,
    broker: EmbeddedBroker | None,
) -> int:
    logs = settings.state.data_dir / "logs"
    children = [Child(spec, logs / f"{spec.name}.log") for spec in specs]
    messages: list[str] = []
    about = {"bootstrap": settings.kafka.bootstrap, "broker_pid": broker.pid if broker else None}
    supervisor = Supervisor(children, messages.append, about)
    status_path = settings.state.data_dir / "up.json"
    worker_port = children[0].spec.metrics_port
    console.print(
        f"eddy up: dashboard http://127.0.0.1:{worker_port}/ · logs in {logs}/ · "
        "Ctrl-C stops everything"
    )
    figures = Figures()
    last_learned, last_t = 0.0, time.monotonic()
    deadline = time.monotonic() + args.timeout
    outcome = "stopped"
    with stop_signals() as received:
        supervisor.start()
        try:
            with Live(console=console, refresh_per_second=2, transient=False) as live:
                while not received:
                    supervisor.step()
                    if broker is not None and broker.exited:
                        _restart_broker(broker, settings, messages.append)
                        about["broker_pid"] = broker.pid
                    for message in messages:
                        live.console.print(f"[bold yellow]eddy up:[/] {message}")
                    messages.clear()
                    now = time.monotonic()
                    scrapes = {c.spec.name: scrape(c.spec.metrics_port) for c in children}
                    if scrapes.get("worker", {}) and "eddy_consumer_lag" in scrapes["worker"]:
                        supervisor.start_waiting({"worker"})  # partitions assigned, fetching
                    figures = read_figures(scrapes)
                    figures.rate = max(0.0, figures.learned - last_learned) / max(
                        now - last_t, 1e-9
                    )
                    last_learned, last_t = figures.learned, now
                    live.update(status_view(supervisor, figures, "eddy up"))
                    write_status_file(status_path, supervisor.describe())
                    if args.exit_when_done:
                        if demo_done(figures, supervisor, args.n):
                            outcome = "done"
                            break
                        if now > deadline:
                            outcome = "timeout"
                            break
                    time.sleep(1.0)
        finally:
            codes = supervisor.stop()
            status_path.unlink(missing_ok=True)
    console.print()
    console.print(f"eddy up: stopped every process (exit codes {codes})")
    if args.demo:
        _summary(console, settings, figures, supervisor, args.n, outcome)
    return 1 if outcome == "timeout" else 0


async def _what_serving_holds(settings: Settings) -> list[tuple[str, str]]:
    """The int8 export of the champion, and what a serving client following both the
    champion and the online model holds now (read from the registry on Kafka)."""
    from eddy.consumers.hotswap import HotSwapClient

    rows: list[tuple[str, str]] = []
    try:
        client = HotSwapClient.from_settings(settings, "default", follow="both")
        await asyncio.wait_for(client.start(), 60)
    except Exception as ex:  # noqa: BLE001 - a summary line, not a failure
        return [("serving client", f"could not read the registry: {ex}")]
    try:
        mirror = client.registry.mirror
        champion = mirror.aliases("default").get("champion") if mirror.models() else None
        if champion is not None:
            q = mirror.get("default", champion).card.get("quantization", {})
            if q:
                rows.append(
                    (
                        "int8 export of the champion",
                        f"{q['size_ratio']:.2f}x smaller than fp32, accuracy "
                        f"{q['accuracy_delta']:+.4f}, batch-1 {q['int8_batch1_us']:.1f} vs "
                        f"{q['fp32_batch1_us']:.1f} µs, batch-256 "
                        f"{q['int8_batch256_per_s']:,.0f} vs {q['fp32_batch256_per_s']:,.0f}/s",
                    )
                )
        held = ", ".join(f"{kind} {version}" for kind, version in client.held().items())
        rows.append(("serving client (follows both) holds", held or "nothing yet"))
    finally:
        await client.stop()
    return rows


def _restart_broker(
    broker: EmbeddedBroker, settings: Settings, report: Callable[[str], None]
) -> None:
    """The embedded broker died: bring it back on its address, with the topics.

    It keeps everything in memory, so it comes back empty; the agents notice that
    their checkpoints point into topics that are gone and read the new ones from
    the start, keeping what they learned.
    """
    report(
        f"the embedded broker (pid {broker.pid}) exited; its topics are gone (memory only). "
        f"Restarting it on {broker.bootstrap} and recreating the topics; processes "
        "reconnect by themselves"
    )
    broker.restart()
    asyncio.run(create_topics(settings.kafka, settings.topics))
    asyncio.run(seed_registry(settings))
    report(f"the embedded broker is back on {broker.bootstrap} (pid {broker.pid})")


def _summary(
    console: Console,
    settings: Settings,
    figures: Figures,
    supervisor: Supervisor,
    n: int,
    outcome: str,
) -> None:
    accounted = figures.learned + figures.expired
    table = Table("figure", "value", title=f"eddy demo summary ({outcome})")
    metric = ", ".join(f"{k} {v:.3f}" for k, v in figures.metric.items()) or "-"
    delayed = ", ".join(f"{k} {v:.4f}" for k, v in figures.delayed.items()) or "-"
    immediate = ", ".join(f"{k} {v:.4f}" for k, v in figures.immediate.items()) or "-"
    served = asyncio.run(_what_serving_holds(settings))
    rows = [
        ("samples produced", f"{n:,}"),
        ("predicted when the sample came", f"{figures.predicted:,.0f}"),
        (
            "learned / expired (no label)",
            f"{figures.learned:,.0f} / {figures.expired:,.0f} "
            f"({accounted:,.0f} of {n:,} accounted for)",
        ),
        (
            "prequential metric, labels 500 late",
            f"{delayed} (the prediction served when each sample came, scored when its label did)",
        ),
        ("…had the labels come at once", immediate),
        ("rolling metric at the end", metric),
        ("drifts detected", f"{figures.drifts:.0f} (the concept changed at sample {n // 2:,})"),
        ("retrains / promoted", f"{figures.retrains:.0f} / {figures.promoted:.0f}"),
        ("exports / servable", f"{figures.exports:.0f} / {figures.servable:.0f}"),
        *served,
        ("online model / champion", f"{figures.version} / {figures.champion}"),
        ("restarts", ", ".join(f"{c.spec.name} {c.restarts}" for c in supervisor.children)),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    registry = Registry(settings.state.data_dir / "registry")
    for model in registry.models():
        champion = registry.aliases(model).get("champion")
        console.print(
            f"registry {Path(settings.state.data_dir) / 'registry' / model}: versions "
            f"{', '.join(registry.versions(model)) or '-'}; champion {champion}"
        )
    if outcome == "timeout":
        logs = settings.state.data_dir / "logs"
        console.print(
            "[red]eddy demo: the deadline passed before everything was learned and "
            f"maintained; see the logs in {logs}[/]"
        )
