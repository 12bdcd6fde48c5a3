"""Atomic, authenticated checkpoint files (the local cache of partition state).

A file is written to a temporary name, fsynced, renamed over the old one and the
directory fsynced, so a crash leaves either the old or the new file, never a torn
one. Its content is sealed (:mod:`eddy.models.sealed`): :func:`load` verifies the
HMAC before unpickling, so a crafted or altered file is refused, never executed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from eddy.models.sealed import SealError, seal, unseal

CheckpointError = SealError


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: threads of one process may write the same file.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, state: Any, key: bytes) -> int:
    """Checkpoint ``state`` to ``path``; returns the size in bytes."""
    data = seal(state, key)
    write_atomic(path, data)
    return len(data)


def load(path: Path, key: bytes) -> Any:
    """Read a checkpoint written by :func:`save`, verifying its HMAC first."""
    return unseal(path.read_bytes(), key, str(path))
