"""A simulated runtime for checking workflows: every schedule the checker picks, played out.

``Simulation`` is the kit's ``Simulator`` (the real interpreter, fed as the engine feeds it;
``carry_out`` answers each kind of work) with its open choices put to a *script*: which
pending work goes next, how a step's attempt ends, whether an event arrives or a child
succeeds, how much time passes, and where the worker crashes. The checker backs the script
with Hypothesis draws.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from ironflow.commands import kinds
from ironflow.errors import NonDeterminismError
from ironflow.history.events import HistoryEvent
from ironflow.interpreter import Decision, Interpreter, replay
from ironflow.testing.perturb import perturbed
from ironflow.testing.simulator import START, Simulator

__all__ = ["START", "Action", "CheckFailure", "Outcome", "Script", "Simulation", "perturbed"]


class CheckFailure(AssertionError):
    """A schedule under which the workflow did not hold up."""


@attrs.frozen
class Action:
    """One thing the script decided: resolve ``step`` with ``outcome`` (or crash)."""

    kind: str
    step: str = ""
    outcome: str = ""

    def __str__(self) -> str:
        if self.kind == "crash":
            return "crash: the worker dies; the run is rebuilt from stored history"
        return f"{self.kind} {self.step!r}: {self.outcome}"


@attrs.frozen
class _Taken:
    """One batch the live run was fed: ``history[start:end]``, and what it decided."""

    start: int
    end: int
    decision: Decision
    actions: int  # how many actions the schedule had taken by then


_SHADOW = (
    "a step-by-step replay of the history, with other executions of the workflow running "
    "between its steps,"
)
_SHARED = (
    "(does the workflow read something that changes from one execution to the next: "
    "a module-level variable, a cache, the clock, random numbers?)"
)


Script = Callable[[str, list[Any]], Any]
"""``script(question, options) -> choice``: the checker answers with Hypothesis draws."""


@attrs.define
class Outcome:
    status: str
    output: Any
    error: str | None
    history: list[HistoryEvent]
    actions: list[Action]


class Simulation(Simulator):
    """One run of ``flow`` under a script; raises ``CheckFailure`` when a property breaks."""

    def __init__(
        self,
        flow: Any,
        data: Any,
        script: Script,
        *,
        mocks: dict[str, Callable[..., Any]] | None = None,
        crashes: bool = True,
        max_decisions: int = 200,
        check_prefixes: bool = True,
    ) -> None:
        super().__init__(flow, now=START, mocks=mocks)
        self.data = data
        self.script = script
        self.crashes = crashes
        self.max_decisions = max_decisions
        self.check_prefixes = check_prefixes
        self.actions: list[Action] = []
        self.epoch = 1  # the live execution's; each replay runs in an epoch of its own
        self.completed: set[str] = set()
        self.taken: list[_Taken] = []

    # --- the Simulator's hooks: the script chooses, the environment is perturbed -----------

    def choose(self, question: str, options: list[Any]) -> Any:
        return self.script(question, options)

    def note(self, kind: str, step_id: str, outcome: str) -> None:
        self.actions.append(Action(kind, step_id, outcome))

    def fold(self, events: list[HistoryEvent]) -> Decision:
        with perturbed(self.flow, self.epoch):
            return self.interpreter.feed(events)

    def decided(self, start: int, decision: Decision) -> None:
        # Recorded, not checked here: a replay run now would execute the workflow while the
        # live generator is suspended, and the live run would see what that replay changed
        # in module-level state (a counter, a cache) as if it were its own.
        self.taken.append(_Taken(start, len(self.history), decision, len(self.actions)))

    def _check_replays(self) -> None:
        """After the live run: each prefix's fresh replay must decide as the live run did.

        A second incremental execution (the *shadow*) is then fed the same batches with those
        replays running between its steps, as other runs of the same workflow do in a real
        worker: it must decide as the live run, which ran alone, did.
        """
        shadow = Interpreter(self.flow)
        self.epoch += 1
        shadow_epoch = self.epoch
        for taken in self.taken:
            self.epoch += 1
            try:
                with perturbed(self.flow, self.epoch):
                    fresh = replay(self.flow, self.history[: taken.end])
            except NonDeterminismError as exc:
                self._fail_at(taken, f"a fresh replay of the history diverged: {exc}")
            if fresh != taken.decision:
                self._fail_at(
                    taken,
                    "a fresh replay of the history gives a different decision than the live "
                    f"run made:\n  live:   {_brief(taken.decision)}\n  replay: {_brief(fresh)}",
                )
            try:
                with perturbed(self.flow, shadow_epoch):
                    seen = shadow.feed(self.history[taken.start : taken.end])
            except NonDeterminismError as exc:
                self._fail_at(taken, f"{_SHADOW} diverged {_SHARED}: {exc}")
            if seen != taken.decision:
                self._fail_at(
                    taken,
                    f"{_SHADOW} decided differently than the live run {_SHARED}:\n"
                    f"  live:   {_brief(taken.decision)}\n  second: {_brief(seen)}",
                )
            scheduled = self.history[taken.end : taken.end + len(taken.decision.events)]
            if scheduled:
                with perturbed(self.flow, shadow_epoch):
                    shadow.feed(scheduled)

    def _fail_at(self, taken: _Taken, reason: str) -> NoReturn:
        # The schedule up to the divergence is the counterexample; what came after is noise.
        del self.actions[taken.actions :]
        raise CheckFailure(reason)

    def run(self) -> Outcome:
        """Play the run out under the script, then check replays of every history prefix."""
        try:
            outcome = self._run_live()
        except CheckFailure:
            if self.check_prefixes:
                # A replay that diverged earlier explains a stuck or endless run better.
                self._check_replays()
            raise
        if self.check_prefixes:
            self._check_replays()
        return outcome

    def _run_live(self) -> Outcome:
        self.start(self.data, run_id="check-run", event_id="check-event")
        for _ in range(self.max_decisions):
            decision = self.decision
            assert decision is not None
            if decision.done:
                error = (
                    None
                    if decision.error is None
                    else f"{type(decision.error).__name__}: {decision.error}"
                )
                return Outcome(decision.status, decision.output, error, self.history, self.actions)
            pending = sorted(decision.pending, key=lambda work: work.id)
            if not pending:
                raise CheckFailure("the run is stuck: nothing pending and not done")
            for work in pending:
                if work.kind in kinds.STEPS and work.id in self.completed:
                    raise CheckFailure(
                        f"step {work.id!r} has a recorded completion but is pending again"
                    )
            if self.crashes and self.script("crash", [False, True]):
                self.actions.append(Action("crash"))
                self.epoch += 1
                self.interpreter = Interpreter(self.flow)
                try:
                    self.decision = self.fold(list(self.history))
                except NonDeterminismError as exc:
                    raise CheckFailure(
                        f"rebuilding the run from its history failed: {exc}"
                    ) from None
                continue
            work = self.script("next", pending)
            self.now = self.now + _dt.timedelta(seconds=self.script("wait", [0, 1, 60, 86400]))
            if work.due is not None and work.due > self.now:
                self.now = work.due
            self.carry_out(work)
            if work.kind in kinds.STEPS and self.results[work.id, work.attempt][0]:
                self.completed.add(work.id)
        raise CheckFailure(f"did not finish in {self.max_decisions} decisions")


def _brief(decision: Decision) -> str:
    commands = ", ".join(f"{w.kind} {w.id!r}" for w in decision.commands) or "nothing new"
    return f"status={decision.status} output={decision.output!r} commands=[{commands}]"
