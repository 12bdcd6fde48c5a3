"""The model registry's files: one folder per model version, a card, aliases and a
maintenance log.

Layout under the registry root (default ``eddy-data/registry``)::

    <model>/v0001/card.json        the model card (schemas/model_card.json)
    <model>/v0001/<artifact>       files, each with its SHA-256 in the card
    <model>/online/                the latest snapshot of the online model (kind "online")
    <model>/aliases.json           {"champion": "v0001", "challenger": "v0002"}
    maintenance.jsonl              append-only: when, what, which version, why, result

This is the *local* side. In a running system the registry's truth is a compacted
Kafka topic (:mod:`eddy.streams.state.registry_topic`), and these files are its mirror,
which any machine can rebuild from Kafka.

A version appears whole or not at all: it is written into a hidden temporary
folder, every file fsynced, and renamed into place. Later additions (the
exporter's artifacts) are written as new files first and the card is replaced
atomically last. Model names and artifact names are checked so that nothing
from an event can point outside the registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eddy.models.checkpoint import write_atomic
from eddy.models.exceptions import EddyError

ALIASES = ("champion", "challenger")
ONLINE = "online"  # the version name of a model's online snapshot
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"v(\d{4,})")


class RegistryError(EddyError):
    """A registry operation failed: unknown model or version, bad name, checksum mismatch."""


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        msg = f"{kind} {value!r} is not a safe name (letters, digits, '.', '_', '-')"
        raise RegistryError(msg)
    return value


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def utc_now() -> str:
    """Now, as RFC 3339 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Version:
    """A registered version: its folder and card."""

    model: str
    version: str
    path: Path
    card: dict[str, Any]

    def artifact(self, name: str) -> Path:
        """Path of an artifact listed in the card."""
        if name not in self.card.get("artifacts", {}):
            msg = f"{self.model} {self.version} has no artifact {name!r}"
            raise RegistryError(msg)
        return self.path / _check_name("artifact", name)


class Registry:
    """A model registry rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading ------------------------------------------------------------------------------

    def _model_dir(self, model: str) -> Path:
        return self.root / _check_name("model", model)

    def versions(self, model: str) -> list[str]:
        """Registered versions of ``model``, oldest first."""
        folder = self._model_dir(model)
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def models(self) -> list[str]:
        """Every model with at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and (self.versions(p.name) or (p / ONLINE / "card.json").exists())
        )

    def aliases(self, model: str) -> dict[str, str]:
        """``{alias: version}`` of ``model``."""
        path = self._model_dir(model) / "aliases.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def get(self, model: str, ref: str) -> Version:
        """A version by name (``v0002``), alias (``champion``), or ``online``."""
        version = self.aliases(model).get(ref, ref) if ref in ALIASES else ref
        if version != ONLINE and (not isinstance(version, str) or not _VERSION.fullmatch(version)):
            msg = f"{model} has no {ref!r}; versions: {', '.join(self.versions(model)) or 'none'}"
            raise RegistryError(msg)
        path = self._model_dir(model) / version
        card_path = path / "card.json"
        if not card_path.exists():
            msg = f"{model} has no version {version}; known: {', '.join(self.versions(model))}"
            raise RegistryError(msg)
        return Version(model, version, path, json.loads(card_path.read_text()))

    def verify(self, model: str, ref: str) -> dict[str, bool]:
        """Re-hash every artifact of a version: ``{artifact: matches its card}``."""
        v = self.get(model, ref)
        out = {}
        for name, info in v.card.get("artifacts", {}).items():
            path = v.path / name
            out[name] = path.exists() and sha256_file(path) == info["sha256"]
        return out

    # -- writing ------------------------------------------------------------------------------

    def next_version(self, model: str) -> str:
        """The name the next registered version of ``model`` gets."""
        existing = self.versions(model)
        return f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"

    def register(self, model: str, card: dict[str, Any], artifacts: dict[str, bytes]) -> Version:
        """Register a new version with ``artifacts``; the card gets version and hashes."""
        version = self.next_version(model)
        card = dict(card, model=model, version=version, created=utc_now(), artifacts={})
        for name, data in artifacts.items():
            card["artifacts"][_check_name("artifact", name)] = artifact_info(data)
        return self.write_version(model, version, card, artifacts)

    def write_version(
        self, model: str, version: str, card: dict[str, Any], artifacts: dict[str, bytes]
    ) -> Version:
        """Write a version whole (card and artifacts, as the card lists them), replacing
        any folder of that name: the mirror's way in."""
        folder = self._model_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        if version != ONLINE and not _VERSION.fullmatch(version):
            msg = f"{version!r} is not a version name (v0001…, or online)"
            raise RegistryError(msg)
        for name, data in artifacts.items():
            if card.get("artifacts", {}).get(name, {}).get("sha256") != _digest(data):
                msg = f"{model} {version}/{name} does not match its card's SHA-256"
                raise RegistryError(msg)
        # Folders of their own: threads and processes may mirror the same version at once.
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{version}.tmp-"))
        old = Path(tempfile.mkdtemp(dir=folder, prefix=f".{version}.old-"))
        try:
            for name, data in artifacts.items():
                write_atomic(tmp / _check_name("artifact", name), data)
            write_atomic(tmp / "card.json", json.dumps(card, indent=2).encode())
            target = folder / version
            for _ in range(3):
                try:
                    if target.exists():
                        os.replace(target, old / "v")
                    os.rename(tmp, target)  # a version appears whole or not at all
                    break
                except OSError:
                    if not (target / "card.json").exists():
                        raise
                    # another writer put the version in place meanwhile: the same one
                    if json.loads((target / "card.json").read_text()) == card:
                        break
        except OSError as ex:  # a full disk, a read-only mount: nothing half-written stays
            msg = f"could not register {model} {version}: {ex}"
            raise RegistryError(msg) from ex
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(folder)
        return self.get(model, version)

    def add_artifacts(
        self, model: str, version: str, artifacts: dict[str, bytes], card_updates: dict[str, Any]
    ) -> Version:
        """Add files to a version and merge ``card_updates`` into its card, card last."""
        v = self.get(model, version)
        card = dict(v.card)
        card["artifacts"] = dict(card.get("artifacts", {}))
        for name, data in artifacts.items():
            write_atomic(v.path / _check_name("artifact", name), data)
            card["artifacts"][name] = artifact_info(data)
        card.update(card_updates)
        write_atomic(v.path / "card.json", json.dumps(card, indent=2).encode())
        return self.get(model, version)

    def set_alias(self, model: str, alias: str, version: str) -> str | None:
        """Point ``alias`` at ``version``; returns the version it pointed at before."""
        if alias not in ALIASES:
            msg = f"unknown alias {alias!r}; aliases: {', '.join(ALIASES)}"
            raise RegistryError(msg)
        self.get(model, version)
        aliases = self.aliases(model)
        previous = aliases.get(alias)
        aliases[alias] = version
        self.write_aliases(model, aliases)
        return previous

    def write_aliases(self, model: str, aliases: dict[str, str]) -> None:
        """Replace the aliases of ``model``."""
        folder = self._model_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "aliases.json", json.dumps(aliases).encode())

    def write_history(self, entries: list[dict[str, Any]]) -> None:
        """Replace the maintenance log with ``entries`` (the mirror's way in)."""
        self.root.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(e) + "\n" for e in entries)
        write_atomic(self.root / "maintenance.jsonl", text.encode())

    def log(
        self, action: str, model: str, version: str | None, why: str, result: str, **extra: Any
    ) -> dict[str, Any]:
        """Append one maintenance action to the log (fsynced); returns the entry."""
        entry = log_entry(action, model, version, why, result, **extra)
        self.append_history(entry)
        return entry

    def append_history(self, entry: dict[str, Any]) -> None:
        """Append one entry to the maintenance log (fsynced)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "maintenance.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def history(self, model: str | None = None) -> list[dict[str, Any]]:
        """The maintenance log, oldest first (of one model, if given)."""
        path = self.root / "maintenance.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if model is None or e["model"] == model]


def log_entry(
    action: str, model: str, version: str | None, why: str, result: str, **extra: Any
) -> dict[str, Any]:
    """One maintenance log entry: when, what, which version, why, with what result."""
    entry = {"time": utc_now(), "action": action, "model": model, "version": version}
    return entry | {"why": why, "result": result} | extra


def artifact_info(data: bytes) -> dict[str, Any]:
    """What a card records of an artifact: its SHA-256 and size."""
    return {"sha256": _digest(data), "size_bytes": len(data)}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
