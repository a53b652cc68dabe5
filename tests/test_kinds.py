"""One vocabulary (issue 12, item 2): every kind is named once, in ``ironflow.commands.kinds``.

The values are stored (history, the timers and inbox tables): the first test pins them, so a
constant can be renamed but its value cannot change. The rest check that the layers which
dispatch on kinds agree with the vocabulary: the command classes, the test kit's simulator
(one answer per kind of work), the runtime's mail, and the timer each kind of work sets.
"""

from __future__ import annotations

from typing import Any

import pendulum

import ironflow
from ironflow import Engine, RetryPolicy, step
from ironflow.commands import COMMAND_TYPES, kinds
from ironflow.history import EVENT_TYPES
from ironflow.runtime.events import INBOX_TYPES
from ironflow.testing import VirtualClock
from ironflow.testing.simulator import Simulator

STORED = {
    "RUN": "run",
    "SLEEP": "sleep",
    "SLEEP_UNTIL": "sleep_until",
    "WAIT_EVENT": "wait_event",
    "PARALLEL": "parallel",
    "MAP": "map",
    "INVOKE": "invoke",
    "INVOKE_ASYNC": "invoke_async",
    "PUBLISH": "publish",
    "COMPENSATE": "compensate",
    "UNDO": "undo",
    "TIMER_RETRY": "retry",
    "TIMER_SLEEP": "sleep",
    "TIMER_WAIT": "wait",
    "TIMER_INVOKE": "invoke",
    "MAIL_WAIT_MATCHED": "WaitMatched",
    "MAIL_CHILD_COMPLETED": "ChildCompleted",
    "MAIL_CHILD_FAILED": "ChildFailed",
    "MAIL_RUN_CANCELLED": "RunCancelled",
    "MAIL_RUN_TIMED_OUT": "RunTimedOut",
    "MAIL_RUN_RESUMED": "RunResumed",
}


def test_every_kind_constant_names_the_value_histories_and_tables_store() -> None:
    named = {name: value for name, value in vars(kinds).items() if name.isupper()}
    singles = {name: value for name, value in named.items() if isinstance(value, str)}
    assert singles == STORED


def test_every_command_kind_is_in_the_vocabulary_and_work_or_a_registration() -> None:
    command_kinds = {cls.kind for cls in COMMAND_TYPES}
    assert len(command_kinds) == len(COMMAND_TYPES) == 10
    assert command_kinds | {kinds.UNDO} == set(kinds.WORK) | set(kinds.REGISTRATIONS)
    assert not set(kinds.WORK) & set(kinds.REGISTRATIONS)
    assert set(kinds.STEPS) | set(kinds.SLEEPS) | set(kinds.CHILDREN) < set(kinds.WORK)
    assert set(kinds.GROUPS) < set(kinds.REGISTRATIONS)


def test_the_simulator_answers_every_kind_of_work_exactly_once() -> None:
    assert sorted(Simulator.ANSWERS) == sorted(kinds.WORK)
    assert len(kinds.WORK) == len(set(kinds.WORK)) == 8


def test_mail_kinds_are_the_names_of_the_history_events_mail_becomes() -> None:
    mail = {value for name, value in STORED.items() if name.startswith("MAIL_")}
    assert set(INBOX_TYPES) == mail
    assert all(INBOX_TYPES[kind] is EVENT_TYPES[kind] for kind in mail)


def test_each_kind_of_work_sets_the_timer_kind_the_vocabulary_maps_it_to(
    engine: Engine, clock: VirtualClock
) -> None:
    """``wait_event`` sets a ``wait`` timer, both sleeps a ``sleep`` one, a delayed retry of
    a step a ``retry`` one and an invoke's timeout an ``invoke`` one, on either store."""
    later = pendulum.instance(clock.now()).add(hours=3)
    slow = RetryPolicy(3, initial_delay="1h", max_delay="2h")

    def flaky() -> None:
        raise ConnectionError("down")

    @ironflow.function(id="kinds-child")
    def child(ctx: Any) -> Any:
        return (yield step.wait_for_event("never", "kinds.never", timeout="1d")).data

    @ironflow.function(id="kinds-parent")
    def parent(ctx: Any) -> Any:
        return (
            yield step.parallel(
                "all",
                [
                    lambda s: s.sleep("nap", "1h"),
                    lambda s: s.sleep_until("until", later),
                    lambda s: s.wait_for_event("wait", "kinds.ping", timeout="1h"),
                    lambda s: s.invoke("call", "kinds-child", timeout="1h"),
                    lambda s: s.run("flaky", flaky, retry=slow),
                ],
            )
        )

    engine.register(child)
    engine.register(parent)
    run_id = engine.start("kinds-parent")
    engine.run_until_idle()
    rows = engine.store.query("SELECT run_id, step_id, kind FROM timers")
    assert sorted((step_id, kind) for found, step_id, kind in rows if found == run_id) == [
        ("all/0/nap", kinds.TIMER_SLEEP),
        ("all/1/until", kinds.TIMER_SLEEP),
        ("all/2/wait", kinds.TIMER_WAIT),
        ("all/3/call", kinds.TIMER_INVOKE),
        ("all/4/flaky", kinds.TIMER_RETRY),
    ]
