"""The watchdog: a WARNING when workflow code holds a drive too long between yields.

Workflow code runs while a round folds a run (``Driver.folding`` names the run, and
``Driver.folds`` counts folds). Code that blocks or spins there (a network call, a sleep, a
busy loop that belongs in a step) stops every run this worker drives. One thread per engine,
alive while a thread drives (``run_until_idle``/``serve``), looks every quarter of
``STUCK_AFTER``: a fold seen in progress for longer gets one WARNING on ``ironflow.runs``,
naming the run and the event it is stuck after (Temporal's "potential deadlock"). Nothing
is added to the round but two attribute writes per fold; nothing here stops the run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

STUCK_AFTER = 2.0  # seconds of workflow code between two yields before a warning

_RUNS_LOG = logging.getLogger("ironflow.runs")


class Watchdog:
    """Watches one driver's folds from a thread of its own while someone drives."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.lock = threading.Lock()
        self.stop_event: threading.Event | None = None  # set: the running thread ends
        self.seen: tuple[int, int] | None = None  # (folds, id of the run) at the last look
        self.since = 0.0  # when that fold was first seen
        self.warned = False

    def start(self) -> None:
        """Watch (a thread driving began); a no-op if already watching."""
        with self.lock:
            if self.stop_event is not None:
                return
            self.stop_event = stop = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(stop,), name="ironflow-watchdog", daemon=True
        )
        thread.start()

    def stop(self) -> None:
        """Stop watching (no thread drives any more)."""
        with self.lock:
            stop, self.stop_event = self.stop_event, None
        if stop is not None:
            stop.set()

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(STUCK_AFTER / 4):
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
