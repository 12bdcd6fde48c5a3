"""Authenticated pickles: every pickle eddy loads is checked with an HMAC first.

Unpickling runs code, so a pickle is only ever loaded from bytes that carry a valid
HMAC-SHA256 under eddy's key: a checkpoint file someone crafted, a state chunk on a
Kafka topic someone wrote to, or a model artifact that was swapped, is refused with
:class:`SealError` before a single byte is unpickled.

Sealed bytes: ``MAGIC``, the hex HMAC-SHA256 of the payload, a newline, the payload
(zlib-compressed pickle; state holds long lists of ids and compresses ~5x).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import pickle
import zlib
from typing import Any

from eddy.models.exceptions import EddyError

MAGIC = b"EDDY-SEALED-1\n"


class SealError(EddyError):
    """Sealed bytes that are not eddy's, were altered, or were sealed with another key."""


def seal(obj: Any, key: bytes, level: int = 1) -> bytes:
    """Pickle ``obj`` and authenticate it with ``key``.

    >>> unseal(seal({"a": 1}, b"k"), b"k")
    {'a': 1}
    """
    return seal_pickled(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), key, level)


def seal_pickled(pickled: bytes, key: bytes, level: int = 1) -> bytes:
    """:func:`seal` of an object already pickled: ``pickled`` compressed and
    authenticated. Split from the pickle so that a caller can snapshot a state that is
    about to change (the pickle) and do the rest while it changes."""
    payload = zlib.compress(pickled, level)
    return MAGIC + mac(payload, key).encode() + b"\n" + payload


# Modules whose classes moved in eddy 0.1's layout by concern: pickles written before
# it (checkpoints, online models) name the old module. Only names, nothing imported.
MOVED_MODULES = {
    "eddy.models.adoption": "eddy.models.maintain.adoption",
    "eddy.models.batch": "eddy.models.maintain.batch",
    "eddy.models.compress": "eddy.models.maintain.compress",
    "eddy.models.drift": "eddy.models.monitor.drift",
    "eddy.models.evaluation": "eddy.models.maintain.evaluation",
    "eddy.models.export": "eddy.models.maintain.export",
    "eddy.models.feature_drift": "eddy.models.monitor.feature_drift",
    "eddy.models.registry": "eddy.models.maintain.registry",
    "eddy.models.tuning": "eddy.models.maintain.tuning",
    "eddy.streams.broker": "eddy.streams.kafka.broker",
    "eddy.streams.changelog": "eddy.streams.state.changelog",
    "eddy.streams.chunks": "eddy.streams.state.chunks",
    "eddy.streams.cli": "eddy.streams.ops.cli",
    "eddy.streams.codec": "eddy.streams.wire.codec",
    "eddy.streams.dashboard": "eddy.streams.observe.dashboard",
    "eddy.streams.deadletter": "eddy.streams.wire.deadletter",
    "eddy.streams.engine": "eddy.streams.engine.unit",
    "eddy.streams.kafka": "eddy.streams.kafka.clients",
    "eddy.streams.keys": "eddy.streams.wire.keys",
    "eddy.streams.maintenance_cli": "eddy.streams.ops.maintenance_cli",
    "eddy.streams.merge": "eddy.streams.engine.merge",
    "eddy.streams.metrics": "eddy.streams.observe.metrics",
    "eddy.streams.partitioning": "eddy.streams.kafka.partitioning",
    "eddy.streams.policy": "eddy.streams.engine.policy",
    "eddy.streams.producer": "eddy.streams.ops.producer",
    "eddy.streams.registry_topic": "eddy.streams.state.registry_topic",
    "eddy.streams.replicas": "eddy.streams.agents.replicas",
    "eddy.streams.sender": "eddy.streams.kafka.sender",
    "eddy.streams.sources": "eddy.streams.ops.sources",
    "eddy.streams.supervisor": "eddy.streams.ops.supervisor",
    "eddy.streams.topics": "eddy.streams.kafka.topics",
    "eddy.streams.up": "eddy.streams.ops.up",
    "eddy.streams.worker": "eddy.streams.agents.worker",
}
MOVED_CLASSES = {
    ("eddy.streams.engine", "UnitState"): ("eddy.streams.engine.checkpoint", "UnitState"),
    ("eddy.streams.agents.partitions", "Checkpointed"): (
        "eddy.streams.engine.checkpoint",
        "Checkpoint",
    ),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module, name = MOVED_CLASSES.get((module, name), (MOVED_MODULES.get(module, module), name))
        return super().find_class(module, name)


def unseal(data: bytes, key: bytes, what: str = "sealed data") -> Any:
    """Verify and unpickle bytes made by :func:`seal`; :class:`SealError` if they fail.

    >>> try:
    ...     unseal(seal([1], b"k")[:-1] + b"x", b"k", "p0.ckpt")
    ... except SealError as ex:
    ...     print(ex)
    p0.ckpt fails its HMAC check (altered, or sealed with another key); it was not loaded
    """
    if not data.startswith(MAGIC):
        msg = f"{what} is not sealed by eddy (bad header); it was not loaded"
        raise SealError(msg)
    digest, _, payload = data[len(MAGIC) :].partition(b"\n")
    if not hmac.compare_digest(digest, mac(payload, key).encode()):
        msg = (
            f"{what} fails its HMAC check (altered, or sealed with another key); it was not loaded"
        )
        raise SealError(msg)
    try:
        return _Unpickler(io.BytesIO(zlib.decompress(payload))).load()
    except (zlib.error, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as ex:
        # Authentic but unreadable: written by an incompatible version of eddy or a library.
        msg = f"{what} is authentic but cannot be loaded by this version ({ex!r})"
        raise SealError(msg) from ex


def mac(data: bytes, key: bytes) -> str:
    """Hex HMAC-SHA256 of ``data`` under ``key``."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()
