"""`eddy models …` against a registry and a real broker (promote and rollback announce)."""

import asyncio

from eddy.models.registry import Registry
from eddy.streams.cli import main
from eddy.streams.codec import decode_event
from eddy.streams.topics import Topics
from tests.integration.conftest import read_topic


def _flags(settings):
    return ["--data-dir", str(settings.state.data_dir), "--bootstrap", settings.kafka.bootstrap,
            "--topic-prefix", settings.topics.prefix]  # fmt: skip


def test_list_show_verify_promote_rollback(settings, capsys):
    registry = Registry(settings.state.data_dir / "registry")
    registry.register("fraud", {"parent_version": None}, {"model.pt": b"one"})
    registry.register("fraud", {"parent_version": "v0001"}, {"model.pt": b"two"})
    registry.set_alias("fraud", "champion", "v0001")
    data_dir = ["--data-dir", str(settings.state.data_dir)]

    assert main(["models", "list", *data_dir]) == 0
    assert "v0001, v0002" in capsys.readouterr().out
    assert main(["models", "show", "fraud", "v0002", *data_dir]) == 0
    assert '"parent_version": "v0001"' in capsys.readouterr().out

    assert main(["models", "promote", "fraud", "v0002", *_flags(settings)]) == 0
    assert registry.aliases("fraud")["champion"] == "v0002"
    assert main(["models", "rollback", "fraud", "--reason", "bad in prod", *_flags(settings)]) == 0
    assert registry.aliases("fraud")["champion"] == "v0001"
    events = [decode_event(r.value) for r in asyncio.run(
        read_topic(settings, Topics(settings.topics.prefix).events, at_least=2))]  # fmt: skip
    assert [e.type for e in events] == ["model.promoted", "model.rolled_back"]
    assert events[1].data == {"model": "fraud", "version": "v0001", "from_version": "v0002",
                              "reason": "bad in prod"}  # fmt: skip
    assert [e["action"] for e in registry.history("fraud")] == ["promote", "rollback"]

    (registry.get("fraud", "v0002").path / "model.pt").write_bytes(b"tampered")
    capsys.readouterr()
    assert main(["models", "verify", "fraud", "v0002", *data_dir]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["models", "show", "fraud", "v0009", *data_dir]) == 1
    assert "no version v0009" in capsys.readouterr().err
