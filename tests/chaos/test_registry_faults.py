"""Registry faults: a full disk mid-write leaves the previous version intact."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import eddy.models.maintain.registry as registry_module
from eddy.models.checkpoint import write_atomic
from eddy.models.maintain.registry import Registry, RegistryError

CARD = {"task": "binary", "gate": {"promoted": True}}


def test_a_full_disk_mid_register_leaves_the_previous_version_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(tmp_path / "registry")
    v1 = registry.register("default", CARD, {"model.pt": b"one" * 1000, "holdout.json": b"{}"})
    registry.set_alias("default", "champion", v1.version)
    writes = []

    def full_after_one(path: Path, data: bytes) -> None:
        writes.append(path.name)
        if len(writes) > 1:  # the second file of v0002 hits a full disk half-way
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_atomic(path, data)

    monkeypatch.setattr(registry_module, "write_atomic", full_after_one)
    with pytest.raises(RegistryError, match="No space left"):
        registry.register("default", CARD, {"model.pt": b"two" * 1000, "holdout.json": b"{}"})
    monkeypatch.undo()

    assert registry.versions("default") == ["v0001"]
    assert all(registry.verify("default", "v0001").values())
    assert registry.aliases("default")["champion"] == "v0001"
    leftovers = [p.name for p in (tmp_path / "registry" / "default").iterdir()]
    assert not [name for name in leftovers if name.startswith(".v0002")], leftovers
    # Once there is room again, the next version registers whole.
    v2 = registry.register("default", CARD, {"model.pt": b"two" * 1000})
    assert v2.version == "v0002" and all(registry.verify("default", "v0002").values())
