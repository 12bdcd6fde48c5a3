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
        return pickle.loads(zlib.decompress(payload))
    except (zlib.error, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as ex:
        # Authentic but unreadable: written by an incompatible version of eddy or a library.
        msg = f"{what} is authentic but cannot be loaded by this version ({ex!r})"
        raise SealError(msg) from ex


def mac(data: bytes, key: bytes) -> str:
    """Hex HMAC-SHA256 of ``data`` under ``key``."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()
