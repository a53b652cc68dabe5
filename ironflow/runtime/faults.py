"""Crash injection for the crash tests: ``IRONFLOW_CRASH_AT=point[:n]`` SIGKILLs the process.

The process kills itself the n-th time (default 1st) it reaches ``point``. Points: ``commit``
(a round's commit just committed), ``fold`` (between a round's two transactions: its take
committed leases and read mail, its fold is done, nothing of it is committed), ``dispatch``
(after handing one step to the executor), ``step-start`` / ``step-end`` (around a step
body), ``timer-fire`` and ``event-deliver`` (while folding, before the commit that records
them), ``arrival-judge`` (a deferred event judged, before the commit that records it).
Unset, it costs one comparison.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("IRONFLOW_CRASH_AT", "")
_point, _, _count = _spec.partition(":")
_remaining = int(_count) if _count else 1
ENABLED = bool(_point)


def crash_point(name: str) -> None:
    """SIGKILL this process here if ``IRONFLOW_CRASH_AT`` names this point (and hit count)."""
    global _remaining
    if name != _point:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
