"""When rounds run and on which thread: ``run_until_idle``, ``serve`` and its graceful stop.

Rounds run under one drive lock: in the thread that called ``run_until_idle``/``serve``, or on
the pool thread that just finished a step, which then runs that run's next step itself (no hop
to another thread). Step outcomes reach the driving thread through a queue; a ``None`` in it
only wakes that thread to look again. ``serve`` stops on ``stop()`` or SIGTERM/SIGINT: it lets
running steps finish, commits them, and lets go of its leases.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ironflow.runtime import leases
from ironflow.runtime.discovery import NEVER, RUNS_PER_THREAD
from ironflow.runtime.driver import Driver
from ironflow.runtime.executor import Executor, Job, Outcome, is_async
from ironflow.runtime.faults import ENABLED as _FAULTS
from ironflow.runtime.faults import crash_point
from ironflow.runtime.models import TERMINAL, Run
from ironflow.runtime.store import StoreUnavailable
from ironflow.runtime.watchdog import Watchdog


class Worker:
    """The threads that drive: the caller's, and the executor's pool."""

    def __init__(self, driver: Driver, max_workers: int | None) -> None:
        self.driver = driver
        self.results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.outcomes: list[Outcome] = []
        # The outcomes the round under way took (fed again if it fails).
        self.drained: Sequence[Outcome] = ()
        self.outstanding = 0  # jobs submitted whose outcome this engine has not drained yet
        self.executor = Executor(self.results, max_workers, self.on_outcome)
        # Claims are capped by what the step threads can run (see ``discovery.room``).
        driver.capacity = self.executor.max_workers * RUNS_PER_THREAD
        self.drive_lock = threading.RLock()
        self.failure: BaseException | None = None  # raised by a pool thread while driving
        self.drivers = 0  # threads in run_until_idle/serve
        self.serving = False
        self.stopping = threading.Event()
        self.watchdog = Watchdog(driver)  # warns of workflow code stuck between yields

    def wake(self) -> None:
        """Make the thread in run_until_idle/serve look again."""
        self.results.put(None)

    def hint(self, run_ids: frozenset[str] | None) -> None:
        """Another process left work (on the listener's thread): in the runs it names, or
        anywhere (``None``: look again)."""
        driver = self.driver
        if run_ids is None:
            driver.hinted = True
        else:
            with driver.hint_lock:
                driver.hinted_runs |= run_ids
        self.wake()

    def kick(self) -> None:
        """Runs were just started or woken (``fresh``, ``woken``): while serving, a free pool
        thread drives them and runs a step it decides itself (one thread hop from here to a
        running step)."""
        if not (self.serving and not self.halting() and self.executor.submit_drive()):
            self.wake()  # not serving, or no pool thread free: the driving thread takes them

    def run_until_idle(self) -> None:
        """Do all work due now (steps, due timers, matched events); return when none is left."""
        self.driver.dirty = True
        with self.driving():
            while True:
                # The lock is held per round only: a pool thread that finishes a step may
                # drive in between (see on_outcome).
                with self.drive_lock:
                    self.raise_failure()
                    if self.tick():
                        continue
                    if not self.outstanding:
                        return
                    timeout = self.executor.expire() or 0.05
                self.wait_for_outcome(timeout)

    @contextlib.contextmanager
    def driving(self) -> Iterator[None]:
        """Count a thread in run_until_idle/serve: pool threads drive only while one is."""
        with self.drive_lock:
            self.drivers += 1
            if self.drivers == 1:
                self.watchdog.start()
        try:
            yield
        finally:
            with self.drive_lock:
                self.drivers -= 1
                if not self.drivers:
                    self.watchdog.stop()

    def wait_for_outcome(self, timeout: float) -> None:
        try:
            item = self.results.get(timeout=timeout)
        except queue.Empty:
            return
        if item is not None:
            with self.drive_lock:
                self.outcomes.append(item)

    def on_outcome(self, outcome: Outcome | None) -> Job | None:
        """On a pool thread that ran a step (or was sent to drive, ``None``): commit the
        outcome now if no one else is driving, and return a next step for this thread to
        run (no hop to another thread)."""
        if self.halting() or not self.drive_lock.acquire(blocking=False):
            if outcome is not None:
                self.results.put(outcome)
            else:
                self.wake()  # the thread driving now takes the woken runs next round
            return None
        wake = True
        driver = self.driver
        try:
            if not self.drivers or self.halting():  # nobody to report to: leave it queued
                if outcome is not None:
                    self.results.put(outcome)
                return None
            if outcome is not None:
                self.outcomes.append(outcome)
            timer_before = driver.next_timer_us
            jobs = self.round() or []
            prefer = outcome.job.run_id if outcome is not None else ""
            kept = self.dispatch(jobs, prefer=prefer)
            # The thread in run_until_idle/serve sleeps on a timeout it computed before this
            # round: it must look again if the round left it new runs, an earlier timer or a
            # step deadline to watch, or if this thread goes back to waiting for jobs.
            wake = (
                kept is None
                or bool(driver.woken or driver.fresh or driver.dirty)
                or driver.next_timer_us < timer_before
                or any(job.timeout is not None for job in jobs)
            )
            return kept
        except BaseException as exc:  # handed to the thread that called run_until_idle/serve
            self.failure = exc
            return None
        finally:
            self.drive_lock.release()
            if wake:
                self.wake()

    def halting(self) -> bool:
        """serve() was asked to stop: start no more steps."""
        return self.serving and self.stopping.is_set()

    def raise_failure(self) -> None:
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure

    def drain(self) -> list[Outcome]:
        outcomes, self.outcomes = self.outcomes, []
        results = self.results
        while not results.empty():
            try:
                item = results.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                outcomes.append(item)
        self.outstanding -= len(outcomes)
        self.drained = outcomes
        return outcomes

    def tick(self, dispatch: bool = True) -> bool:
        """One round of work; True if anything happened. ``dispatch=False`` starts no step."""
        jobs = self.round()
        if jobs is None:
            return False
        if dispatch:
            self.dispatch(jobs)
        return True

    def dispatch(self, jobs: list[Job], prefer: str | None = None) -> Job | None:
        """Start ``jobs``; with ``prefer``, keep one sync job (of the run ``prefer`` names
        if there is one) for the calling pool thread and return it. Once serve() is asked to
        stop, nothing starts: what was decided stays committed for whoever drives next."""
        if self.halting():
            return None
        self.outstanding += len(jobs)
        kept = None
        if prefer is not None and len(jobs) == 1:
            if not is_async(jobs[0].fn):
                kept = jobs[0]
        elif prefer is not None:
            sync = [job for job in jobs if not is_async(job.fn)]
            kept = next((job for job in sync if job.run_id == prefer), None)
            if kept is None and sync:
                kept = sync[0]
        for job in jobs:
            if job is kept:
                self.executor.track(job)  # its deadline is watched before the lock is let go
            else:
                self.executor.submit(job)
            if _FAULTS:
                crash_point("dispatch")  # some of the batch's steps started, not all
        return kept

    def round(self) -> list[Job] | None:
        """One round (see ``Driver.round``), step deadlines checked first."""
        self.executor.expire()
        # A round decodes histories and builds interpreters that live on: the cyclic GC
        # would walk them again and again and free nothing. It catches up once afterwards.
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self.driver.round(self.drain)
        except BaseException:
            # Nothing of the round is known written: its outcomes go into the next round
            # (one whose commit did land is a duplicate there, and dropped), so a step's
            # result is never lost to a failed commit, and the step never run again.
            drained = self.drained
            self.outcomes[:0] = drained
            self.outstanding += len(drained)
            self.driver.stats["steps_executed"] -= len(drained)  # counted again then
            raise
        finally:
            self.drained = ()
            if paused:
                gc.enable()

    def serve(self, install_signals: bool, on_idle: Callable[[], None] | None, stop: Any) -> None:
        """Work until ``stop()`` or SIGTERM/SIGINT: then finish what is held and return."""
        previous: dict[signal.Signals, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: stop())
        self.serving = True
        self.stopping.clear()
        # Wake-ups from other processes (PostgreSQL: a second connection, LISTEN); None: polling.
        unlisten = self.driver.store.listen(self.hint, self.driver.poll)
        try:
            with self.driving():
                self._serve(on_idle)
        finally:
            if unlisten is not None:
                unlisten()
            self.serving = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _serve(self, on_idle: Callable[[], None] | None) -> None:
        while not self.stopping.is_set():
            try:
                with self.drive_lock:
                    self.raise_failure()
                    if self.tick():
                        continue
                    timeout = self.idle_timeout()
                # Idle means no step running either: a long step is not a quiet worker.
                if on_idle is not None and not self.outstanding:
                    on_idle()
                    with self.drive_lock:
                        timeout = self.idle_timeout()
            except StoreUnavailable:
                # The database is out of reach (the store warned once for the outage): look
                # again a poll interval on, or when a step ends, connecting again then.
                self.driver.dirty = True
                timeout = self.driver.poll
            self.wait_for_outcome(timeout)
        # Graceful stop: let running steps finish and commit them, then let go.
        while True:
            with self.drive_lock:
                self.raise_failure()
                if self.outstanding - len(self.outcomes) <= 0:
                    self.tick(dispatch=False)
                    leases.release_all(self.driver)
                    return
                timeout = self.executor.expire() or 0.05
            self.wait_for_outcome(timeout)

    def idle_timeout(self) -> float:
        driver = self.driver
        timeout = max(0.0, driver.next_poll - time.monotonic())
        nearest = self.executor.expire()
        if nearest is not None:
            timeout = min(timeout, nearest)
        if driver.next_timer_us < NEVER and not getattr(driver.clock, "is_virtual", False):
            _, now_us = driver.now()
            timeout = min(timeout, max(0.0, (driver.next_timer_us - now_us) / 1e6))
        return timeout

    def stop(self) -> None:
        self.stopping.set()
        self.wake()

    def wait(self, run_id: str, timeout: float | None, get_run: Callable[[str], Run]) -> Run:
        """Drive (or, while serving, wait) until the run ends or blocks; the run then."""
        driver = self.driver
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = get_run(run_id)
            if run.status in TERMINAL or run.status == "blocked":
                return run
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"run {run_id!r} is still {run.status} after {timeout}s")
            if self.serving:
                with driver.done:
                    driver.done.wait(min(remaining or 1.0, 1.0))
                continue
            self.run_until_idle()
            run = get_run(run_id)
            if run.status in TERMINAL or run.status == "blocked":
                continue
            next_due = driver.store.next_due()
            if getattr(driver.clock, "is_virtual", False) or next_due is None:
                raise TimeoutError(
                    f"run {run_id!r} is {run.status} and nothing is due: it waits for an event, "
                    f"a timer in the future or another worker (advance the clock, emit the "
                    f"event, or call serve())"
                )
            _, now_us = driver.now()
            pause = max(0.0, (next_due - now_us) / 1e6)
            if remaining is not None:
                pause = min(pause, remaining)
            time.sleep(min(pause, driver.poll))
