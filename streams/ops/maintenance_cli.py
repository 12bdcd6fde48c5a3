"""The maintenance commands of ``eddy``: the registry, the consumers, manual retrains.

The registry commands read the registry topic into the local mirror first
(:mod:`eddy.streams.state.registry_topic`), so they work from any machine with an empty
data directory; with Kafka unreachable they say so and show the mirror as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from eddy.models.exceptions import EddyError
from eddy.models.maintain.registry import ONLINE, Registry, RegistryError
from eddy.streams.exceptions import BrokerError
from eddy.streams.kafka.admin import require_topics
from eddy.streams.kafka.clients import start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.settings import KAFKA_SETTINGS, Settings, add_settings_arguments
from eddy.streams.state.registry_topic import KafkaRegistry
from eddy.streams.wire.codec import make_event
from eddy.streams.wire.keys import signing_key

console = Console()
log = logging.getLogger(__name__)


def add_commands(commands: Any) -> None:
    """Register the maintenance subcommands on the ``eddy`` parser."""
    p = commands.add_parser(
        "models", help="the model registry: list, show, verify, history, promote, rollback"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="registered models, versions, aliases, online model")
    add_settings_arguments(a, KAFKA_SETTINGS)
    a.set_defaults(run=cmd_list)
    for name, handler, text in (
        ("show", cmd_show, "a version's model card (default: the champion; or 'online')"),
        ("verify", cmd_verify, "re-hash a version's artifacts against its card"),
        ("history", cmd_history, "the maintenance log of a model"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("model")
        if name != "history":
            a.add_argument("version", nargs="?", default="champion")
        add_settings_arguments(a, KAFKA_SETTINGS)
        a.set_defaults(run=handler)
    a = actions.add_parser("promote", help="make a version the champion (announces model.promoted)")
    a.add_argument("model")
    a.add_argument("version")
    a.add_argument("--reason", default="promoted by hand")
    add_settings_arguments(a, KAFKA_SETTINGS)
    a.set_defaults(run=cmd_promote)
    a = actions.add_parser("rollback", help="move the champion back (announces model.rolled_back)")
    a.add_argument("model")
    a.add_argument("--to", help="version to roll back to (default: the champion's parent)")
    a.add_argument("--reason", default="rolled back by hand")
    add_settings_arguments(a, KAFKA_SETTINGS)
    a.set_defaults(run=cmd_rollback)

    for name, text in (
        ("retrainer", "run the retrainer consumer"),
        ("exporter", "run the exporter consumer"),
    ):
        a = commands.add_parser(name, help=text)
        add_settings_arguments(a, config_file=True)
        a.set_defaults(run=cmd_consumer, consumer=name)

    a = commands.add_parser("retrain", help="ask for a retrain by hand (sends retrain.requested)")
    a.add_argument("--stream", default="default", help="model stream to retrain")
    a.add_argument("--last-n", type=int, help="train on the most recent N examples")
    add_settings_arguments(a, KAFKA_SETTINGS)
    a.set_defaults(run=cmd_retrain)


def _with_registry(
    settings: Settings, work: Callable[[KafkaRegistry], Coroutine[Any, Any, Any]]
) -> Any:
    """Run ``work`` with the registry synced from Kafka (or the mirror alone, said so)."""

    async def main() -> Any:
        registry = KafkaRegistry(
            settings.kafka,
            settings.topics.prefix,
            settings.data_dir / "registry",
            signing_key(settings.state),
        )
        try:
            try:
                await registry.sync()
            except (BrokerError, EddyError, OSError) as ex:
                console.print(
                    f"[yellow]eddy: the registry topic could not be read ({ex}); "
                    f"showing the local mirror {registry.mirror.root}[/]"
                )
            return await work(registry)
        finally:
            await registry.close()

    return asyncio.run(main())


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """Registered models with their versions, aliases and online model."""

    async def work(registry: KafkaRegistry) -> None:
        mirror = registry.mirror
        table = Table("model", "versions", "champion", "challenger", "online model")
        for model in mirror.models():
            aliases = mirror.aliases(model)
            table.add_row(
                model,
                ", ".join(mirror.versions(model)) or "-",
                aliases.get("champion", "-"),
                aliases.get("challenger", "-"),
                _online(mirror, model),
            )
        console.print(table if mirror.models() else f"no models registered ({registry.topic})")

    _with_registry(settings, work)
    return 0


def _online(mirror: Registry, model: str) -> str:
    try:
        card = mirror.get(model, ONLINE).card
    except RegistryError:
        return "-"
    return f"{card.get('online_version', ONLINE)}, {card.get('learned', 0):,} learned"


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    """Print a model card, with its search and compression tables when it has them."""

    async def work(registry: KafkaRegistry) -> None:
        card = registry.mirror.get(args.model, args.version).card
        console.print_json(json.dumps(card))
        for title, rows in _tables(card):
            console.print(title)
            console.print(rows, markup=False, highlight=False)

    _with_registry(settings, work)
    return 0


def _tables(card: dict[str, Any]) -> list[tuple[str, str]]:
    """``(title, text)`` of the card's hyperparameter search (every trial, the best
    values, the candidate the cross-validation chose) and compression table, when it
    has them."""
    out = []
    search = card.get("search")
    if isinstance(search, dict) and search.get("skipped"):
        out.append(("hyperparameter search: skipped", str(search["skipped"])))
    elif isinstance(search, dict) and search.get("trials"):
        lines = [f"{'trial':>5}  {'state':9} {'score':>8} {'s':>6}  params"]
        for trial in search["trials"]:
            score = trial.get("score")
            shown = f"{score:.4f}" if isinstance(score, float) else "-"
            lines.append(
                f"{trial.get('number', '?'):>5}  {trial.get('state', '?'):9} {shown:>8} "
                f"{trial.get('seconds', 0):>6.2f}  {trial.get('params')}"
            )
        candidates = ", ".join(f"{k} {v:.4f}" for k, v in search.get("candidates", {}).items())
        lines.append(f"best: trial {search.get('best_trial')} {search.get('best_params')}")
        lines.append(f"cross-validation: {candidates}; chosen: {search.get('chosen')}")
        title = (
            f"hyperparameter search ({search.get('n_complete')} complete, "
            f"{search.get('n_pruned')} pruned, {search.get('n_failed')} failed; "
            f"stopped by {search.get('stopped_by')} after {search.get('seconds', 0):.1f} s):"
        )
        out.append((title, "\n".join(lines)))
    compression = card.get("compression")
    if isinstance(compression, dict) and compression.get("table"):
        served = compression.get("served") or compression.get("chosen")
        out.append((f"compression (served: {served}):", compression["table"]))
    elif isinstance(compression, dict) and compression.get("skipped"):
        out.append(("compression: skipped", str(compression["skipped"])))
    return out


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Re-hash artifacts; exit 1 if any differs from its card."""

    async def work(registry: KafkaRegistry) -> dict[str, bool]:
        return registry.mirror.verify(args.model, args.version)

    result = _with_registry(settings, work)
    for name, ok in result.items():
        console.print(f"{'ok      ' if ok else 'MISMATCH'} {args.model} {args.version} {name}")
    return 0 if all(result.values()) else 1


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """Print the maintenance log of a model."""

    async def work(registry: KafkaRegistry) -> None:
        table = Table("time", "action", "version", "why", "result")
        for e in registry.mirror.history(args.model):
            table.add_row(e["time"], e["action"], e["version"] or "-", e["why"], e["result"])
        console.print(table)

    _with_registry(settings, work)
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    """Make a version the champion and announce it."""

    async def work(registry: KafkaRegistry) -> str | None:
        previous = await registry.set_alias(args.model, "champion", args.version)
        await registry.log(
            "promote", args.model, args.version, args.reason, "champion", previous=previous
        )
        return previous

    previous = _with_registry(settings, work)
    data = {
        "model": args.model,
        "version": args.version,
        "alias": "champion",
        "previous_version": previous,
        "reason": args.reason,
    }
    asyncio.run(_announce(settings, "model.promoted", data, args.model))
    console.print(f"{args.model}: champion {previous or '-'} -> {args.version}")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Move the champion back to ``--to`` or to its parent, and announce it."""

    async def work(registry: KafkaRegistry) -> tuple[str, str]:
        current = registry.mirror.get(args.model, "champion")
        target = args.to or current.card.get("parent_version")
        if not target:
            msg = f"{args.model} {current.version} has no parent to roll back to; give --to VERSION"
            raise RegistryError(msg)
        await registry.set_alias(args.model, "champion", target)
        await registry.log(
            "rollback", args.model, target, args.reason, "champion", previous=current.version
        )
        return current.version, target

    current, target = _with_registry(settings, work)
    data = {"model": args.model, "version": target, "from_version": current, "reason": args.reason}
    asyncio.run(_announce(settings, "model.rolled_back", data, args.model))
    console.print(f"{args.model}: champion {current} -> {target}")
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    """Send a manual retrain.requested event."""
    data: dict[str, Any] = {"stream": args.stream, "reason": "manual"}
    if args.last_n:
        data["window"] = {"last_n": args.last_n}
    event = asyncio.run(_announce(settings, "retrain.requested", data, args.stream))
    console.print(f"retrain.requested {event['id']} sent for {args.stream}")
    return 0


def cmd_consumer(args: argparse.Namespace, settings: Settings) -> int:
    """Run the retrainer or the exporter until SIGTERM."""
    import torch

    from eddy.consumers.exporter import Exporter
    from eddy.consumers.retrainer import Retrainer
    from eddy.consumers.service import run_consumer

    # Process-wide tuning, in eddy's own entry point only: one core for training, the
    # other serves the worker.
    torch.set_num_threads(1)
    kind = {"retrainer": Retrainer, "exporter": Exporter}[args.consumer]
    asyncio.run(run_consumer(settings, kind, handle_signals=True))
    return 0


async def _announce(
    settings: Settings, kind: str, data: dict[str, Any], subject: str
) -> dict[str, Any]:
    event = make_event(
        kind,
        f"eddy/{settings.topics.prefix}cli",
        data,
        subject=subject,
        signing_key=signing_key(settings.state),
    )
    producer = await start_producer(settings.kafka, "cli")
    events = Topics(settings.topics.prefix).events
    try:
        await require_topics(producer, [events])
        await producer.send_and_wait(events, orjson.dumps(event), key=subject.encode())
    finally:
        await producer.stop()
    return event
