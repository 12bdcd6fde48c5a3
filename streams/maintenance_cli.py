"""The maintenance commands of ``eddy``: the registry, the consumers, manual retrains."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from eddy.models.registry import Registry, RegistryError
from eddy.streams.codec import make_event
from eddy.streams.kafka import start_producer
from eddy.streams.settings import KAFKA_SETTINGS, Settings, add_settings_arguments
from eddy.streams.topics import Topics, require_topics

console = Console()


def add_commands(commands: Any) -> None:
    """Register the maintenance subcommands on the ``eddy`` parser."""
    p = commands.add_parser(
        "models", help="the model registry: list, show, promote, rollback, verify"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="registered models, versions and aliases")
    add_settings_arguments(a, ["data_dir"])
    a.set_defaults(run=cmd_list)
    for name, handler, text in (
        ("show", cmd_show, "a version's model card (default: the champion)"),
        ("verify", cmd_verify, "re-hash a version's artifacts against its card"),
        ("history", cmd_history, "the maintenance log of a model"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("model")
        if name != "history":
            a.add_argument("version", nargs="?", default="champion")
        add_settings_arguments(a, ["data_dir"])
        a.set_defaults(run=handler)
    a = actions.add_parser("promote", help="make a version the champion (announces model.promoted)")
    a.add_argument("model")
    a.add_argument("version")
    a.add_argument("--reason", default="promoted by hand")
    add_settings_arguments(a, [*KAFKA_SETTINGS, "task"])
    a.set_defaults(run=cmd_promote)
    a = actions.add_parser("rollback", help="move the champion back (announces model.rolled_back)")
    a.add_argument("model")
    a.add_argument("--to", help="version to roll back to (default: the champion's parent)")
    a.add_argument("--reason", default="rolled back by hand")
    add_settings_arguments(a, [*KAFKA_SETTINGS, "task"])
    a.set_defaults(run=cmd_rollback)

    for name, text in (
        ("retrainer", "run the retrainer consumer"),
        ("exporter", "run the exporter consumer"),
    ):
        a = commands.add_parser(name, help=text)
        add_settings_arguments(a)
        a.set_defaults(run=cmd_consumer, consumer=name)

    a = commands.add_parser("retrain", help="ask for a retrain by hand (sends retrain.requested)")
    a.add_argument("--stream", default="default", help="model stream to retrain")
    a.add_argument("--last-n", type=int, help="train on the most recent N examples")
    add_settings_arguments(a, [*KAFKA_SETTINGS, "task"])
    a.set_defaults(run=cmd_retrain)


def _registry(settings: Settings) -> Registry:
    return Registry(settings.data_dir / "registry")


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """Registered models with their versions and aliases."""
    registry = _registry(settings)
    table = Table("model", "versions", "champion", "challenger")
    for model in registry.models():
        aliases = registry.aliases(model)
        table.add_row(model, ", ".join(registry.versions(model)), aliases.get("champion", "-"),
                      aliases.get("challenger", "-"))  # fmt: skip
    console.print(table if registry.models() else f"no models registered in {registry.root}")
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    """Print a model card."""
    console.print_json(json.dumps(_registry(settings).get(args.model, args.version).card))
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Re-hash artifacts; exit 1 if any differs from its card."""
    result = _registry(settings).verify(args.model, args.version)
    for name, ok in result.items():
        console.print(f"{'ok      ' if ok else 'MISMATCH'} {args.model} {args.version} {name}")
    return 0 if all(result.values()) else 1


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """Print the maintenance log of a model."""
    table = Table("time", "action", "version", "why", "result")
    for e in _registry(settings).history(args.model):
        table.add_row(e["time"], e["action"], e["version"] or "-", e["why"], e["result"])
    console.print(table)
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    """Make a version the champion and announce it."""
    registry = _registry(settings)
    previous = registry.set_alias(args.model, "champion", args.version)
    registry.log("promote", args.model, args.version, args.reason, "champion", previous=previous)
    data = {"model": args.model, "version": args.version, "alias": "champion",
            "previous_version": previous, "reason": args.reason}  # fmt: skip
    asyncio.run(_announce(settings, "model.promoted", data, args.model))
    console.print(f"{args.model}: champion {previous or '-'} -> {args.version}")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Move the champion back to ``--to`` or to its parent, and announce it."""
    registry = _registry(settings)
    current = registry.get(args.model, "champion")
    target = args.to or current.card.get("parent_version")
    if not target:
        msg = f"{args.model} {current.version} has no parent to roll back to; give --to VERSION"
        raise RegistryError(msg)
    registry.set_alias(args.model, "champion", target)
    registry.log("rollback", args.model, target, args.reason, "champion", previous=current.version)
    data = {"model": args.model, "version": target, "from_version": current.version,
            "reason": args.reason}  # fmt: skip
    asyncio.run(_announce(settings, "model.rolled_back", data, args.model))
    console.print(f"{args.model}: champion {current.version} -> {target}")
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
    from eddy.consumers.exporter import Exporter
    from eddy.consumers.retrainer import Retrainer
    from eddy.consumers.service import run_consumer

    kind = {"retrainer": Retrainer, "exporter": Exporter}[args.consumer]
    asyncio.run(run_consumer(settings, kind, handle_signals=True))
    return 0


async def _announce(
    settings: Settings, kind: str, data: dict[str, Any], subject: str
) -> dict[str, Any]:
    event = make_event(
        kind, f"eddy/{settings.topic_prefix}cli", data, subject=subject,
        signing_key=settings.event_signing_key,
    )  # fmt: skip
    producer = await start_producer(settings, "cli")
    events = Topics(settings.topic_prefix).events
    try:
        await require_topics(producer, [events])
        await producer.send_and_wait(events, orjson.dumps(event), key=subject.encode())
    finally:
        await producer.stop()
    return event
