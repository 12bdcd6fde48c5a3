"""Atomic, checksummed checkpoints of learning state.

A checkpoint is written to a temporary file, flushed with fsync, renamed over
the old one and the directory fsynced, so a crash leaves either the old or the
new checkpoint, never a torn one. The payload is a pickle preceded by its
SHA-256; :func:`load` verifies the hash before unpickling, so a truncated or
altered file is refused rather than half-loaded. Only load checkpoints that eddy
itself wrote into its own data directory: pickle runs code on load.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

from eddy.models.exceptions import EddyError

MAGIC = b"EDDY-CHECKPOINT-1\n"


class CheckpointError(EddyError):
    """A checkpoint could not be read: missing magic, bad checksum or truncated."""


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, state: Any) -> int:
    """Checkpoint ``state`` to ``path``; returns the size in bytes."""
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    data = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    write_atomic(path, data)
    return len(data)


def load(path: Path) -> Any:
    """Read a checkpoint written by :func:`save`, verifying its checksum first."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        msg = f"{path} is not an eddy checkpoint (bad header); delete it to start afresh"
        raise CheckpointError(msg)
    digest, _, payload = data[len(MAGIC) :].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        msg = f"{path} fails its SHA-256 check (truncated or altered); refusing to load it"
        raise CheckpointError(msg)
    return pickle.loads(payload)
