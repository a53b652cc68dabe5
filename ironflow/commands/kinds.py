"""Every kind ironflow stores or dispatches on, named once.

The values are stored (history rows, the ``timers`` and ``inbox`` tables, exported histories)
and never change: these names are for code, the strings are the format. The module sits in
the lowest layer so that the commands, the interpreter, the runtime, the CLI and the test kit
all import it (imports point down only).

**Work kinds** (``Work.kind``, ``CommandScheduled.kind``): a command's ``kind``, plus ``undo``
for a compensation being run. ``parallel``, ``map`` and ``compensate`` are recorded but never
become work.

**Timer kinds** (the ``timers`` table's ``kind`` column) name what a timer is *for*, which is
not always the kind of the work that set it. Two names for one thing, mapped at one boundary,
``ironflow.runtime.decisions.apply`` (work becomes timers; a wait's timer is set by
``events.index_wait``, which ``apply`` reaches through ``events.register_wait``)
and read back by ``ironflow.runtime.timers.fired``:

| work kind                | timer kind       | when due, the run receives               |
|--------------------------|------------------|------------------------------------------|
| ``run``, ``undo``        | ``retry``        | nothing: the attempt is due and starts   |
| ``sleep``, ``sleep_until`` | ``sleep``      | ``TimerFired``                           |
| ``wait_event``           | ``wait``         | ``WaitTimedOut`` (and its wait is dropped) |
| ``invoke``               | ``invoke``       | ``ChildFailed`` (a ``TimeoutError``)     |

**Mail kinds** (the ``inbox`` table's ``type`` column) are the names of the history events a
run receives as mail: the mail becomes that event in the run's next round.
"""

from __future__ import annotations

from typing import Final

# --- work kinds: Work.kind and CommandScheduled.kind ---------------------------------------

RUN: Final = "run"
SLEEP: Final = "sleep"
SLEEP_UNTIL: Final = "sleep_until"
WAIT_EVENT: Final = "wait_event"
PARALLEL: Final = "parallel"
MAP: Final = "map"
INVOKE: Final = "invoke"
INVOKE_ASYNC: Final = "invoke_async"
PUBLISH: Final = "publish"
COMPENSATE: Final = "compensate"
UNDO: Final = "undo"
"""A compensation being run: work, but not a command's kind (``step.compensate`` registers)."""

STEPS: Final[tuple[str, ...]] = (RUN, UNDO)
"""Work done by calling a function; answered by ``StepCompleted``, ``StepFailed``."""
SLEEPS: Final[tuple[str, ...]] = (SLEEP, SLEEP_UNTIL)
"""Durable sleeps; answered by ``TimerFired``."""
CHILDREN: Final[tuple[str, ...]] = (INVOKE, INVOKE_ASYNC)
"""Child runs; answered by ``ChildStarted`` (and, for ``invoke``, the child's end)."""
GROUPS: Final[tuple[str, ...]] = (PARALLEL, MAP)
"""Commands whose branches' steps become work; they never do."""
TIMED: Final[tuple[str, ...]] = (SLEEP, SLEEP_UNTIL, WAIT_EVENT, INVOKE)
"""Commands with a deadline of their own, recorded as ``detail["due"]``."""
REGISTRATIONS: Final[tuple[str, ...]] = (PARALLEL, MAP, COMPENSATE)
"""Recorded as scheduled, never work (``Decision.pending`` does not list them)."""
WORK: Final[tuple[str, ...]] = (
    *STEPS,
    *SLEEPS,
    WAIT_EVENT,
    *CHILDREN,
    PUBLISH,
)
"""Every kind a ``Work`` can have: what a runtime must be able to carry out."""

# --- timer kinds: the timers table's kind column (see the table above) ----------------------

TIMER_RETRY: Final = "retry"
TIMER_SLEEP: Final = "sleep"
TIMER_WAIT: Final = "wait"
TIMER_INVOKE: Final = "invoke"

# --- mail kinds: the inbox table's type column, the name of the event the mail becomes -------

MAIL_WAIT_MATCHED: Final = "WaitMatched"
MAIL_CHILD_COMPLETED: Final = "ChildCompleted"
MAIL_CHILD_FAILED: Final = "ChildFailed"
MAIL_RUN_CANCELLED: Final = "RunCancelled"
MAIL_RUN_TIMED_OUT: Final = "RunTimedOut"
MAIL_RUN_RESUMED: Final = "RunResumed"
"""Only in databases written by earlier versions: ``resume`` now writes ``RunResumed`` itself."""
