"""`eddy models …` from a machine with an empty data directory: the registry is on Kafka."""

import asyncio

from eddy.streams.kafka.broker import free_port
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops.cli import main
from eddy.streams.state.registry_topic import KafkaRegistry
from eddy.streams.wire.codec import decode_event
from tests.integration.conftest import read_topic


def _flags(settings, data_dir):
    return [
        "--data-dir",
        str(data_dir),
        "--bootstrap",
        settings.kafka.bootstrap,
        "--topic-prefix",
        settings.topics.prefix,
        "--producer-idempotence",
        "off",
    ]


def test_list_show_verify_promote_rollback_history_from_an_empty_data_dir(
    settings, tmp_path, capsys
):
    async def register() -> None:
        async with KafkaRegistry.open(
            settings.kafka, settings.topics.prefix, settings.data_dir / "registry"
        ) as registry:
            await registry.register("fraud", {"parent_version": None}, {"model.pt": b"one"})
            await registry.register("fraud", {"parent_version": "v0001"}, {"model.pt": b"two"})
            await registry.set_alias("fraud", "champion", "v0001")
            await registry.log("retrain", "fraud", "v0002", "manual", "kept champion")

    asyncio.run(register())
    elsewhere = tmp_path / "another-machine"  # nothing there: everything comes from Kafka
    flags = _flags(settings, elsewhere)

    assert main(["models", "list", *flags]) == 0
    out = capsys.readouterr().out
    assert "v0001, v0002" in out and "fraud" in out
    assert main(["models", "show", "fraud", "v0002", *flags]) == 0
    assert '"parent_version": "v0001"' in capsys.readouterr().out
    assert main(["models", "history", "fraud", *flags]) == 0
    assert "kept champion" in capsys.readouterr().out

    assert main(["models", "promote", "fraud", "v0002", *flags]) == 0
    assert main(["models", "rollback", "fraud", "--reason", "bad in prod", *flags]) == 0
    events = [
        decode_event(r.value)
        for r in asyncio.run(
            read_topic(settings, Topics(settings.topics.prefix).events, at_least=2)
        )
    ]
    assert [e.type for e in events] == ["model.promoted", "model.rolled_back"]
    assert events[1].data == {
        "model": "fraud",
        "version": "v0001",
        "from_version": "v0002",
        "reason": "bad in prod",
    }

    # A third machine sees the aliases and the log the second one wrote.
    third = _flags(settings, tmp_path / "a-third-machine")
    assert main(["models", "list", *third]) == 0
    assert "v0001" in capsys.readouterr().out.split("fraud")[1].split("\n")[0]
    assert main(["models", "history", "fraud", *third]) == 0
    history = capsys.readouterr().out
    assert "promote" in history and "rollback" in history and "bad in prod" in history

    (elsewhere / "registry" / "fraud" / "v0002" / "model.pt").write_bytes(b"tampered")
    capsys.readouterr()
    offline = [*flags[:2], "--bootstrap", f"127.0.0.1:{free_port()}", *flags[4:]]
    assert main(["models", "verify", "fraud", "v0002", *offline]) == 1  # Kafka unreachable
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "showing the local mirror" in out
    # the mirror is rebuilt from Kafka on the next read: what the registry holds verifies
    assert main(["models", "verify", "fraud", "v0002", *flags]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["models", "show", "fraud", "v0009", *flags]) == 1
    assert "no version v0009" in capsys.readouterr().err
