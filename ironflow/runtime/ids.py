"""Ids for runs and events: UUIDv7 (RFC 9562) as 32 hex digits.

The first 48 bits are the wall-clock millisecond, so runs started together get neighbouring
keys: their rows and history land on the same few b-tree pages instead of one page each,
which is most of what a commit of many runs writes.
"""

from __future__ import annotations

import os
import threading
import time

_CHUNK = 10  # random bytes per id (80 bits, 74 of them kept)
_REFILL = 4096 // _CHUNK * _CHUNK

_lock = threading.Lock()
_pool = b""
_at = 0


def _forget() -> None:
    # A forked child must not hand out the ids its parent will: it draws its own bytes.
    global _pool, _at
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_forget)


def new_id() -> str:
    """A fresh UUIDv7: time-ordered by millisecond, 74 random bits from ``os.urandom``."""
    global _pool, _at
    with _lock:  # urandom in bulk: one system call per 409 ids, not one per id
        if _at >= len(_pool):
            _pool, _at = os.urandom(_REFILL), 0
        at = _at
        _at = at + _CHUNK
        r = _pool[at : at + _CHUNK]
    ms = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    # Version 7 in the high nibble of byte 6, variant 0b10 in the top bits of byte 8.
    return (ms + bytes((0x70 | (r[0] & 0x0F), r[1], 0x80 | (r[2] & 0x3F))) + r[3:]).hex()
