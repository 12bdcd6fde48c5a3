"""The model registry: one folder per model version, a card, aliases and a maintenance log.

Layout under the registry root (default ``eddy-data/registry``)::

    <model>/v0001/card.json        the model card (schemas/model_card.json)
    <model>/v0001/<artifact>       files, each with its SHA-256 in the card
    <model>/aliases.json           {"champion": "v0001", "challenger": "v0002"}
    maintenance.jsonl              append-only: when, what, which version, why, result

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eddy.models.checkpoint import write_atomic
from eddy.models.exceptions import EddyError

ALIASES = ("champion", "challenger")
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
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def aliases(self, model: str) -> dict[str, str]:
        """``{alias: version}`` of ``model``."""
        path = self._model_dir(model) / "aliases.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def get(self, model: str, ref: str) -> Version:
        """A version by name (``v0002``) or alias (``champion``)."""
        version = self.aliases(model).get(ref, ref) if ref in ALIASES else ref
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
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

    def register(self, model: str, card: dict[str, Any], artifacts: dict[str, bytes]) -> Version:
        """Register a new version with ``artifacts``; the card gets version and hashes."""
        folder = self._model_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        existing = self.versions(model)
        number = int(existing[-1][1:]) + 1 if existing else 1
        version = f"v{number:04d}"
        tmp = folder / f".{version}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        card = dict(card, model=model, version=version, created=utc_now(), artifacts={})
        try:
            for name, data in artifacts.items():
                write_atomic(tmp / _check_name("artifact", name), data)
                card["artifacts"][name] = _artifact_info(data)
            write_atomic(tmp / "card.json", json.dumps(card, indent=2).encode())
            os.rename(tmp, folder / version)  # a version appears whole or not at all
        except OSError as ex:  # a full disk, a read-only mount: nothing half-written stays
            shutil.rmtree(tmp, ignore_errors=True)
            msg = f"could not register {model} {version}: {ex}"
            raise RegistryError(msg) from ex
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
            card["artifacts"][name] = _artifact_info(data)
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
        write_atomic(self._model_dir(model) / "aliases.json", json.dumps(aliases).encode())
        return previous

    def log(
        self, action: str, model: str, version: str | None, why: str, result: str, **extra: Any
    ) -> None:
        """Append one maintenance action to the log (fsynced)."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"time": utc_now(), "action": action, "model": model, "version": version}
        entry |= {"why": why, "result": result} | extra
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


def _artifact_info(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
