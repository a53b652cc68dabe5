"""``check_workflow``: run a workflow under many schedules and fail with a minimal one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, example, given, settings

from ironflow.testing.simulate import CheckFailure, Outcome, Simulation
from ironflow.testing.strategies import Recording, Replaying, Tape, tapes


def check_workflow(
    flow: Any,
    event: Any = None,
    *,
    max_examples: int = 100,
    mocks: dict[str, Callable[..., Any]] | None = None,
    max_decisions: int = 200,
    crashes: bool = True,
    derandomize: bool = True,
) -> None:
    """Return quietly if ``flow`` holds up under every schedule tried, else raise
    ``AssertionError`` showing the minimal failing schedule.

    ``event`` is the triggering event's data; ``mocks`` replaces step functions by step name.
    Checked: a fresh replay of every history prefix decides as the live run did; no step with a
    recorded completion runs again; crashes (the run rebuilt from history) never change the
    outcome; the run ends within ``max_decisions``.
    """

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=False,
    )
    @given(tapes(max_size=max_decisions * 4))
    # The plain schedule (no crash, every step succeeds, events arrive) comes first, while
    # module-level state is as fresh as the caller left it: a workflow that behaves
    # differently on its first execution in a process shows it there.
    @example([])
    def check(numbers: list[int]) -> None:
        script = Recording(Tape(numbers))
        simulation = Simulation(
            flow, event, script, mocks=mocks, crashes=crashes, max_decisions=max_decisions
        )
        try:
            outcome = simulation.run()
        except CheckFailure as failure:
            raise AssertionError(_report(flow, str(failure), simulation.actions)) from None
        if any(action.kind == "crash" for action in outcome.actions):
            twin = Simulation(
                flow,
                event,
                Replaying(script.answers),
                mocks=mocks,
                crashes=False,
                max_decisions=max_decisions,
                check_prefixes=False,
            )
            try:
                calm = twin.run()
            except CheckFailure as failure:
                raise AssertionError(_report(flow, str(failure), twin.actions)) from None
            if (calm.status, calm.output, calm.error) != (
                outcome.status,
                outcome.output,
                outcome.error,
            ):
                raise AssertionError(
                    _report(
                        flow,
                        "the outcome depends on where the worker crashed:\n"
                        f"  without crashes: {_summary(calm)}\n"
                        f"  with crashes:    {_summary(outcome)}",
                        outcome.actions,
                    )
                )

    check()


def _summary(outcome: Outcome) -> str:
    if outcome.status == "completed":
        return f"completed with {outcome.output!r}"
    return f"{outcome.status}: {outcome.error}"


def _report(flow: Any, reason: str, actions: list[Any]) -> str:
    name = getattr(flow, "id", None) or getattr(flow, "__qualname__", repr(flow))
    lines = [f"workflow {name!r} does not hold up: {reason}", "minimal schedule:"]
    lines += [f"  {i}. {action}" for i, action in enumerate(actions, 1)] or ["  (no actions)"]
    return "\n".join(lines)


__all__ = ["Tape", "check_workflow"]
