"""Pause Python's cyclic garbage collector around bulk work that makes no garbage cycles."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Defer cyclic collection for the duration of the block.

    Decoding a history and driving a batch of runs allocate many objects that live on: each
    allocation burst would trigger collections that walk them all and free nothing. The
    collector is re-enabled afterwards (unless it was off already) and catches up once.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
