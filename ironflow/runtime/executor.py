"""Runs step bodies: sync ones on a bounded thread pool, async ones on an event loop thread.

Results come back through a queue as ``Outcome`` values; the engine commits them. A body's
``timeout=`` is real time, measured here, whatever clock the engine uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from ironflow.commands.jsonvalue import NotJSONError, public_error
from ironflow.errors import NonRetryableError, StepTimeoutError
from ironflow.history.errors import encode_error
from ironflow.history.events import ErrorInfo
from ironflow.runtime import telemetry as _tel
from ironflow.runtime.faults import ENABLED as _FAULTS
from ironflow.runtime.faults import crash_point
from ironflow.runtime.results import serialize_result


@attrs.frozen
class Job:
    run_id: str
    step_id: str
    attempt: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    timeout: float | None = None
    # For telemetry only: the run's function, the step's kind ("run" or "undo") and the
    # run's stored trace context (W3C traceparent), names that exist already.
    function_id: str = ""
    kind: str = "run"
    trace: str | None = None


@attrs.frozen
class Outcome:
    job: Job
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None
    retryable: bool = True


def _outcome(job: Job, value: Any) -> Outcome:
    try:
        return Outcome(job, True, serialize_result(value, job.step_id))
    except NotJSONError as exc:
        return Outcome(job, False, error=encode_error(public_error(exc)), retryable=False)
    except Exception as exc:  # a result even cattrs cannot take apart
        error = TypeError(f"the result of step {job.step_id!r} cannot be stored: {exc!r}")
        return Outcome(job, False, error=encode_error(error), retryable=False)


def _failure(job: Job, exc: BaseException) -> Outcome:
    retryable = not isinstance(exc, NonRetryableError)
    return Outcome(job, False, error=encode_error(exc, with_traceback=True), retryable=retryable)


def _timed_out(job: Job) -> Outcome:
    error = StepTimeoutError(f"step {job.step_id!r} ran longer than its timeout of {job.timeout}s")
    return Outcome(job, False, error=encode_error(error), retryable=True)


_async_cache: dict[Any, bool] = {}


def is_async(fn: Callable[..., Any]) -> bool:
    try:
        return _async_cache[fn]
    except (KeyError, TypeError):
        pass
    found = _is_async(fn)
    with contextlib.suppress(TypeError):
        _async_cache[fn] = found
    return found


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    )


class Executor:
    """Executes jobs concurrently and puts their ``Outcome`` on ``results``.

    With ``on_outcome``, a pool thread first offers its outcome there: the callback may take it
    (commit it at once) and return the next job for the same thread, which saves two thread
    hops per step. A job returned that way must have been passed to ``track`` already (so its
    deadline is watched from the start); returning ``None`` ends the chain, and if the callback
    did not take the outcome it must have put it on ``results`` itself.
    """

    def __init__(
        self,
        results: queue.SimpleQueue[Any],
        max_workers: int | None = None,
        on_outcome: Callable[[Outcome | None], Job | None] | None = None,
    ):
        self.results = results
        self.on_outcome = on_outcome
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) * 4)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._deadlines: dict[tuple[str, str, int], float] = {}

    def track(self, job: Job) -> None:
        """Watch ``job``'s deadline, if it has one (``submit`` does this itself)."""
        if job.timeout is not None:
            with self._lock:
                self._deadlines[(job.run_id, job.step_id, job.attempt)] = (
                    time.monotonic() + job.timeout
                )

    def submit(self, job: Job) -> None:
        self.track(job)
        if is_async(job.fn):
            self._submit_async(job)
            return
        self._enqueue(job)

    def submit_drive(self) -> bool:
        """Have a pool thread call ``on_outcome(None)`` (and run the job it returns), if one
        is free to do it now; False (nothing sent) when every thread is busy."""
        with self._lock:
            if self._idle <= 0 and len(self._threads) >= self.max_workers:
                return False
            self._claim_thread()
        self._jobs.put(_DRIVE)
        return True

    def _enqueue(self, item: Any) -> None:
        with self._lock:
            self._claim_thread()
        self._jobs.put(item)

    def _claim_thread(self) -> None:
        """Count one more queued item: an idle thread takes it, or a new one if none is idle
        (a bounded pool, started lazily); beyond the bound it waits its turn."""
        if self._idle <= 0 and len(self._threads) < self.max_workers:
            thread = threading.Thread(
                target=self._work, name=f"ironflow-step-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        else:
            self._idle -= 1

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job is _DRIVE:
                assert self.on_outcome is not None
                job = self.on_outcome(None)
            while job is not None:
                outcome = self._run_sync(job)
                job = self._handoff(outcome)
            with self._lock:
                self._idle += 1

    def _settle(self, outcome: Outcome) -> bool:
        """Bookkeeping for a finished job; False if it was already reported as timed out."""
        job = outcome.job
        if job.timeout is not None:
            with self._lock:
                key = (job.run_id, job.step_id, job.attempt)
                if self._deadlines.pop(key, None) is None:
                    return False
        return True

    def _finish(self, outcome: Outcome) -> None:
        if self._settle(outcome):
            self.results.put(outcome)

    def _handoff(self, outcome: Outcome) -> Job | None:
        """Report a pool thread's outcome; the next job this thread should run, if any."""
        if not self._settle(outcome):
            return None
        if self.on_outcome is None:
            self.results.put(outcome)
            return None
        return self.on_outcome(outcome)

    def _run_sync(self, job: Job) -> Outcome:
        if _tel.ON:  # the one check per step when no OpenTelemetry SDK is configured
            return _tel.run_step(job, self._execute)
        return self._execute(job)

    def _execute(self, job: Job) -> Outcome:
        if _FAULTS:
            crash_point("step-start")
        try:
            value = job.fn(*job.args)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
        except BaseException as exc:
            return _failure(job, exc)
        if _FAULTS:
            crash_point("step-end")
        return _outcome(job, value)

    def _submit_async(self, job: Job) -> None:
        loop = self._loop_get()
        asyncio.run_coroutine_threadsafe(self._run_async(job), loop)

    async def _run_async(self, job: Job) -> None:
        if _tel.ON:
            outcome = await _tel.run_step_async(job, self._execute_async)
        else:
            outcome = await self._execute_async(job)
        self._finish(outcome)

    async def _execute_async(self, job: Job) -> Outcome:
        try:
            coro = job.fn(*job.args)
            if job.timeout is not None:
                value = await asyncio.wait_for(coro, job.timeout)
            else:
                value = await coro
        except TimeoutError:
            if job.timeout is not None:
                return _timed_out(job)
            return _failure(job, TimeoutError())
        except BaseException as exc:
            return _failure(job, exc)
        return _outcome(job, value)

    def _loop_get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="ironflow-async", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def expire(self) -> float | None:
        """Report sync jobs past their deadline as timed out; seconds to the next deadline."""
        if not self._deadlines:
            return None
        now = time.monotonic()
        expired: list[tuple[str, str, int]] = []
        nearest: float | None = None
        with self._lock:
            for key, deadline in self._deadlines.items():
                if deadline <= now:
                    expired.append(key)
                elif nearest is None or deadline < nearest:
                    nearest = deadline
            for key in expired:
                del self._deadlines[key]
        for run_id, step_id, attempt in expired:
            job = Job(run_id, step_id, attempt, _never, ())
            self.results.put(Outcome(job, False, error=_timeout_info(step_id), retryable=True))
        return None if nearest is None else max(0.0, nearest - now)

    def shutdown(self, wait: bool = True) -> None:
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join(timeout=30)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None and wait:
                self._loop_thread.join(timeout=5)
            self._loop = None


_DRIVE = object()  # a pool-thread task: drive now (see Executor.submit_drive)


def _timeout_info(step_id: str) -> ErrorInfo:
    return encode_error(StepTimeoutError(f"step {step_id!r} ran longer than its timeout"))


def _never() -> None:  # pragma: no cover - placeholder function of a synthesized job
    raise AssertionError("never called")


async def _await(value: Any) -> Any:
    return await value
