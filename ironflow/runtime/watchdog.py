"""The watchdog: a WARNING when workflow code holds a drive too long between yields.

Workflow code runs while a round folds a run (``Driver.folding`` names the run, and
``Driver.folds`` counts folds). Code that blocks or spins there (a network call, a sleep, a
busy loop that belongs in a step) stops every run this worker drives. One thread per engine,
alive while a thread drives (``run_until_idle``/``serve``) and a little longer, looks every
quarter of ``STUCK_AFTER``: a fold seen in progress for longer gets one WARNING on
``ironflow.runs``, naming the run and the event it is stuck after (Temporal's "potential
deadlock"). Nothing is added to the round but two attribute writes per fold; nothing here
stops the run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

STUCK_AFTER = 2.0  # seconds of workflow code between two yields before a warning
LINGER = 4  # looks (a quarter of STUCK_AFTER apart) the thread waits for the next drive

_RUNS_LOG = logging.getLogger("ironflow.runs")


class Watchdog:
    """Watches one driver's folds from a thread of its own while someone drives.

    The thread outlives a drive by ``LINGER`` looks: starting one per ``run_until_idle`` (a
    caller that starts a run and drives it, over and over) cost more than the drive."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.lock = threading.Lock()
        self.watching = False  # a thread drives: look at its folds
        self.running = False  # the watching thread is alive (it ends once idle for LINGER)
        self.seen: tuple[int, int] | None = None  # (folds, id of the run) at the last look
        self.since = 0.0  # when that fold was first seen
        self.warned = False

    def start(self) -> None:
        """Watch (a thread driving began)."""
        with self.lock:
            self.watching = True
            if self.running:
                return
            self.running = True
        thread = threading.Thread(target=self._watch, name="ironflow-watchdog", daemon=True)
        thread.start()

    def stop(self) -> None:
        """Stop watching (no thread drives any more); the thread ends by itself."""
        with self.lock:
            self.watching = False

    def _watch(self) -> None:
        idle = 0  # looks in a row with no thread driving
        while True:
            time.sleep(STUCK_AFTER / 4)
            with self.lock:
                if not self.watching:
                    idle += 1
                    if idle >= LINGER:
                        self.running = False
                        return
                    continue
            idle = 0
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """Look once: warn if the fold in progress has been so since ``STUCK_AFTER`` ago."""
        driver = self.driver
        live = driver.folding
        if live is None:
            self.seen = None
            return
        key = (driver.folds, id(live))
        if key != self.seen:  # another fold than at the last look
            self.seen, self.since, self.warned = key, now, False
            return
        held = now - self.since
        if self.warned or held < STUCK_AFTER:
            return
        self.warned = True  # once per stuck fold
        history = live.interpreter.events
        last = history[-1] if history else None
        step_id = getattr(last, "id", None)
        if last is None:
            after = "before its first event"
        elif step_id is not None:
            after = f"after step {step_id!r} ({type(last).__name__}, seq {last.seq})"
        else:
            after = f"after {type(last).__name__} (seq {last.seq})"
        _RUNS_LOG.warning(
            "run %s (%s): workflow code has run for over %.1fs without yielding, %s: potential "
            "deadlock (a blocking call or a long loop in the workflow function holds the "
            "worker; move it into a step)",
            live.run_id,
            live.function.id,
            held,
            after,
            extra={"run_id": live.run_id, "function_id": live.function.id, "step_id": step_id},
        )
