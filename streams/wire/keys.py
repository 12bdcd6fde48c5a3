"""The keys that authenticate eddy's events, registry records, state and model pickles.

The signing key is ``EDDY_SIGNING_KEY`` (``StateConfig.signing_key``) or, when that is
unset, the key in ``<data dir>/signing.key`` if the file exists (``eddy up`` creates
one, mode 0600, unless a key is given). With a signing key, control events and
registry records are signed and unsigned ones refused. Pickles (checkpoints, online
models) are always authenticated: with the signing key, else with a key of this data
directory (``state.key``, created on first use), which only this machine has.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from eddy.streams.exceptions import ConfigError
from eddy.streams.settings import StateConfig

SIGNING_KEY_FILE = "signing.key"
STATE_KEY_FILE = "state.key"


def signing_key(state: StateConfig) -> bytes | None:
    """The key that signs events and registry records, if one is configured."""
    if state.signing_key is not None:
        return state.signing_key.reveal().encode()
    path = state.data_dir / SIGNING_KEY_FILE
    return _read_key(path) if path.exists() else None


def state_key(state: StateConfig) -> bytes:
    """The key that authenticates pickles: the signing key, else this data directory's."""
    key = signing_key(state)
    if key is not None:
        return key
    path = state.data_dir / STATE_KEY_FILE
    if not path.exists():
        create_key_file(path)
    return _read_key(path)


def create_key_file(path: Path) -> Path:
    """Write a new random key to ``path`` (mode 0600) unless one is there; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def _read_key(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        msg = f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        raise ConfigError(msg)
    key = path.read_text().strip()
    if not key:
        msg = f"{path} is empty; delete it to have eddy create a new key"
        raise ConfigError(msg)
    return key.encode()
