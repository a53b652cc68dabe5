"""``step.parallel`` and ``step.map``: branches in their own scopes (docs/primitives/parallel.md,
docs/primitives/map.md).

| yields           | ``Parallel`` (kind ``"parallel"``) or ``Map`` (``"map"``)              |
|------------------|------------------------------------------------------------------------|
| records          | ``CommandScheduled`` (fingerprint: ``"<n> branches"``/``"<n> items"``; |
|                  | detail: ``concurrency``, ``on_error``); then each branch's own commands|
| runtime answers  | nothing for the parallel itself (it is no ``Work``); its branches'     |
|                  | commands are answered as anywhere else                                 |
| workflow receives| the branch results in branch order; ``fail_fast``: the first failure   |
|                  | in history order; ``all_settled``: a failed branch's exception in place|

    yielded --CommandScheduled--> branches running (at most ``concurrency`` at once)
    every branch done --> resumed with the results
    fail_fast, a branch failed --> the others abandoned, resumed with its error

Branch ``i`` of the parallel ``p`` is a task with the scope ``p/i/``. A parallel whose
branches all finish while it is being scheduled (each returned a value at once, say) answers
its ``yield`` synchronously, as a scheduler answers with ``(value, error)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ironflow.commands.builders as step_namespace
from ironflow.commands.classes import COMMAND_TYPES, Map, Parallel
from ironflow.interpreter.determinism import Detail, Fingerprint
from ironflow.interpreter.tasks import (
    PENDING,
    Scheduler,
    Slot,
    Task,
    claim,
    describe,
    new_slot,
)

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter


class ParallelState:
    """A ``parallel`` or ``map`` in progress: its branch window and results so far."""

    __slots__ = (
        "calls",
        "concurrency",
        "fail_fast",
        "finished",
        "id",
        "next",
        "prefix",
        "pumping",
        "results",
        "running",
        "settled",
        "sync",
        "sync_result",
        "task",
        "tasks",
    )

    def __init__(
        self,
        sid: str,
        task: Task,
        calls: list[Callable[[], Any]],
        concurrency: int | None,
        fail_fast: bool,
    ) -> None:
        self.id = sid
        self.task = task
        self.prefix = sid + "/"
        self.calls = calls
        self.concurrency = concurrency
        self.fail_fast = fail_fast
        self.results: list[Any] = [None] * len(calls)
        self.tasks: list[Task | None] = [None] * len(calls)
        self.next = 0
        self.running = 0
        self.finished = 0
        self.settled = False
        self.pumping = False
        self.sync = True
        self.sync_result: tuple[Any, BaseException | None] | None = None


def parallel_detail(interp: Interpreter, slot: Slot, made: dict[str, Any]) -> None:
    command = slot.command
    made["concurrency"] = command.concurrency
    made["on_error"] = command.on_error


def parallel_fingerprint(command: Parallel) -> str:
    return f"{len(command.branches)} branches"


def map_fingerprint(command: Map) -> str:
    return f"{len(command.items)} items"


def _bind_branch(branch: Callable[[Any], Any]) -> Callable[[], Any]:
    return lambda: branch(step_namespace)


def _bind_item(fn: Callable[..., Any], item: Any, index: int) -> Callable[[], Any]:
    return lambda: fn(item, step_namespace, index)


def schedule_parallel(interp: Interpreter, task: Task, command: Parallel | Map) -> Any:
    sid = claim(interp, task, command.name)
    if not isinstance(sid, str):
        return (None, sid)
    new_slot(interp, task, sid, command, command.kind)
    calls: list[Callable[[], Any]]
    if isinstance(command, Parallel):
        calls = [_bind_branch(branch) for branch in command.branches]
    else:
        calls = [_bind_item(command.fn, item, i) for i, item in enumerate(command.items)]
    state = ParallelState(sid, task, calls, command.concurrency, command.on_error == "fail_fast")
    task.waiting = state
    pump(interp, state)
    state.sync = False
    if state.sync_result is not None:
        return state.sync_result
    return PENDING


def pump(interp: Interpreter, state: ParallelState) -> None:
    """Start branches while the window allows; resolve the parallel once all have finished."""
    if state.pumping:
        return
    state.pumping = True
    total = len(state.calls)
    while (
        not state.settled
        and state.next < total
        and (state.concurrency is None or state.running < state.concurrency)
    ):
        index = state.next
        state.next += 1
        state.running += 1
        start_branch(interp, state, index)
    state.pumping = False
    if not state.settled and state.finished == total:
        state.settled = True
        # Every branch has ended, and each refers to this state: let them go now rather
        # than leave them to the cyclic garbage collector.
        state.tasks = []
        resolved(interp, state, state.results, None)


def start_branch(interp: Interpreter, state: ParallelState, index: int) -> None:
    task = Task(None, f"{state.prefix}{index}/", state, index)
    state.tasks[index] = task
    try:
        out = state.calls[index]()
    except Exception as exc:
        interp._task_done(task, None, exc)
        return
    if inspect.isgenerator(out):
        task.gen = out
        interp._advance(task, None, None)
    elif isinstance(out, COMMAND_TYPES):
        interp._start_command(task, out)
    else:
        interp._task_done(
            task,
            None,
            TypeError(
                f"branch {index} of {state.id!r} returned {describe(out)}; a branch returns a "
                f"command (`s.run(...)`) or a generator"
            ),
        )


def branch_done(interp: Interpreter, task: Task, value: Any, error: BaseException | None) -> None:
    """Branch ``task`` returned ``value`` or raised ``error``: note it, start the next one."""
    state = task.parallel
    assert state is not None
    if state.settled:
        return
    state.running -= 1
    state.finished += 1
    if error is not None:
        if state.fail_fast:
            state.settled = True
            abandon_state(interp, state)
            resolved(interp, state, None, error)
            return
        state.results[task.index] = error
    else:
        state.results[task.index] = value
    pump(interp, state)


def resolved(
    interp: Interpreter, state: ParallelState, value: Any, error: BaseException | None
) -> None:
    if state.sync:
        state.sync_result = (value, error)
    else:
        interp._resume(state.task, value, error)


def abandon_state(interp: Interpreter, state: ParallelState) -> None:
    state.settled = True
    for task in state.tasks:
        if task is not None and not task.abandoned:
            abandon_task(interp, task)


def abandon_task(interp: Interpreter, task: Task) -> None:
    task.abandoned = True
    waiting = task.waiting
    if isinstance(waiting, str):
        if interp._waiting.pop(waiting, None) is not None:
            interp._abandoned.add(waiting)
    elif isinstance(waiting, ParallelState):
        abandon_state(interp, waiting)


SCHEDULERS: dict[type, Scheduler] = {Parallel: schedule_parallel, Map: schedule_parallel}
FINGERPRINTS: dict[type, Fingerprint] = {Parallel: parallel_fingerprint, Map: map_fingerprint}
DETAILS: dict[type, Detail] = {Parallel: parallel_detail, Map: parallel_detail}
