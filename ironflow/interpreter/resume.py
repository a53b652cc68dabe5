"""Resuming a failed run: ``RunResumed``, and folding the history again past the failure.

A ``RunResumed`` on a failed run marks what made it fail, then folds the stored history again
from scratch (``Interpreter._refeed``) with those marks: a step whose attempts ran out is
retried, a wait or child run that failed the workflow is waited for again with a fresh timeout,
and the failure's own events (its undos and its ``RunFailed``) no longer count. On a run that
is not failed it re-arms the retries that a failure had left suspended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ironflow.history.events import (
    ChildFailed,
    CompensationScheduled,
    HistoryEvent,
    RetryScheduled,
    RunFailed,
    RunResumed,
    StepCompleted,
    StepFailed,
    WaitTimedOut,
)
from ironflow.interpreter.determinism import RETRY_KEY, add_other, work
from ironflow.interpreter.tasks import Handler, Slot

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter


class ResumeState:
    """What resuming a failed run marked in its history: made by the first mark, else None.

    Lifetime: the interpreter's. A refeed (``Interpreter._refeed``) resets all other fold
    state and folds the history again from its first event; it keeps these marks, since they
    are what carries that fold, and every later one, past the failure: ``dead`` events are
    skipped, an outcome in ``suspend_keys`` suspends its step instead of failing the workflow,
    ``rearm`` gives waits and child runs a fresh timeout at their ``RunResumed``, and a
    ``RunResumed`` in ``unfailed`` is not taken for a new resume. Only ``suspended`` belongs to
    one fold: the refeed empties it, and the ``RunResumed`` being folded retries what it holds.
    """

    __slots__ = ("dead", "rearm", "suspend_keys", "suspended", "unfailed")

    def __init__(self) -> None:
        # Seqs the fold skips: failures taken back, and what they led to (undos, RunFailed).
        self.dead: set[int] = set()
        # (step id, attempt) of step failures that a resume retries rather than hands over.
        self.suspend_keys: set[tuple[str, int]] = set()
        # RunResumed seq -> ids of the waits and child runs it waits for again.
        self.rearm: dict[int, set[str]] = {}
        self.unfailed: set[int] = set()  # RunResumed seqs already folded as such
        # Steps suspended in this fold, waiting for the RunResumed that retries them.
        self.suspended: list[Slot] = []


def marks(interp: Interpreter) -> ResumeState:
    """``interp``'s resume state, made on first use (most runs never resume)."""
    state = interp._resumed
    if state is None:
        state = interp._resumed = ResumeState()
    return state


def on_run_resumed(interp: Interpreter, event: RunResumed) -> None:
    interp.now = event.ts
    state = interp._resumed
    if (
        interp.status == "failed"
        and interp._failed_at is not None
        and (state is None or event.seq not in state.unfailed)
    ):
        marks(interp).unfailed.add(event.seq)
        unfail(interp, interp._failed_at, event.seq)
        # Folds this event again: on a run that got past its failure, or on one that
        # failed again the same way (its code raised again), which then ends failed.
        interp._refeed()
        return
    if state is None:  # nothing was marked: nothing to retry or wait for again
        return
    if interp._ended:  # failed again while folding again (its code raised again)
        state.suspended.clear()
        return
    for slot in state.suspended:
        slot.attempt += 1
        slot.due = event.ts
        add_other(
            interp,
            (RETRY_KEY, slot.id, slot.attempt),
            RetryScheduled,
            {"id": slot.id, "attempt": slot.attempt, "at": event.ts, "jitter": 0.0},
            work(interp, slot),
        )
    state.suspended.clear()
    for sid in sorted(state.rearm.get(event.seq, ())):
        again = interp._waiting.get(sid)
        if again is None:
            continue
        timeout = getattr(again.command, "timeout", None)
        again.due = None if timeout is None else event.ts + timeout


def unfail(interp: Interpreter, failed_at: int, resumed_at: int) -> None:
    """Mark what made the run fail so that folding the history again gets past it.

    If the run failed of the very error an event handed the workflow, that event is
    taken up again: a step whose attempts ran out is retried; a wait that timed out, or a
    child run that failed or timed out, is waited for again with a fresh timeout (the
    runtime hands over the child's outcome if it has ended since). So are failures that
    arrived afterwards for work the failure abandoned. Otherwise (the workflow caught
    that error and raised its own, or its code raised) the history is folded again by
    the code as it is now. What the failure itself led to (undos, the RunFailed) no
    longer counts.
    """
    state = marks(interp)
    later = interp.events[failed_at + 1 : resumed_at]
    undo_ids = {e.id for e in later if isinstance(e, CompensationScheduled)}
    # Failures that arrived for work the failure had abandoned (a sibling branch's wait
    # timing out in the same batch, say) were never handled: they are taken up too.
    taken: list[HistoryEvent] = [
        e
        for e in later
        if isinstance(e, StepFailed | WaitTimedOut | ChildFailed)
        and e.seq not in state.dead
        and e.id not in undo_ids
    ]
    if interp._failed_of_handed:
        taken.append(interp.events[failed_at])
    for cause in taken:
        if isinstance(cause, StepFailed):
            state.suspend_keys.add((cause.id, cause.attempt))
        elif isinstance(cause, WaitTimedOut | ChildFailed):
            state.dead.add(cause.seq)
            state.rearm.setdefault(resumed_at, set()).add(cause.id)
    bury(interp, later)


def bury(interp: Interpreter, events: list[HistoryEvent]) -> None:
    """Mark dead, among ``events``, what a failure led to: its undos and its RunFailed."""
    dead = marks(interp).dead
    undo_ids: set[str] = set()
    for event in events:
        if isinstance(event, CompensationScheduled):
            undo_ids.add(event.id)
            dead.add(event.seq)
        elif isinstance(event, RunFailed) or (
            isinstance(event, StepCompleted | StepFailed) and event.id in undo_ids
        ):
            dead.add(event.seq)


def taken_back(interp: Interpreter, seq: int) -> bool:
    """Whether the failure recorded at ``seq`` was taken back by a later resume.

    Code fixed after a run failed does not fail where the old code did: its undos and
    RunFailed are then skipped, up to the RunResumed that follows them in the history
    being folded. Only the failure's own events are skipped; anything else the code no
    longer decides is still a divergence. The resume must be in the same feed as the
    failure (a runtime rebuilding a run folds its stored history whole).
    """
    events = interp._batch
    if not events or events[-1].seq <= seq:
        return False
    first = events[0].seq
    resumed = next((e.seq for e in events[seq - first + 1 :] if type(e) is RunResumed), None)
    if resumed is None:
        return False
    bury(interp, events[seq - first : resumed - first])
    return True


HANDLERS: dict[type, Handler] = {RunResumed: on_run_resumed}
