"""check_workflow catches the classic bugs within the default budget and passes good code.

Runs are derandomized (check_workflow's default), so these results are the same every time.
"""

import planted_bugs as bugs
import pytest

import ironflow
from examples import order, saga
from ironflow import step
from ironflow.testing import check_workflow
from ironflow.testing.simulate import Simulation
from ironflow.testing.strategies import Tape


@pytest.mark.parametrize(
    ("flow", "needle"),
    [
        (bugs.branches_on_wall_clock, "replay"),
        (bugs.branches_on_random, "replay"),
        (bugs.side_effect_outside_step, "replay"),
        (bugs.counts_executions_in_a_global, "replay"),
    ],
    ids=["datetime.now", "random.random", "side-effect", "global-counter"],
)
def test_planted_bugs_are_caught_with_a_schedule(flow, needle):
    bugs.executions["count"] = 0  # a fresh process, as far as the planted counter knows
    with pytest.raises(AssertionError) as caught:
        check_workflow(flow)
    message = str(caught.value)
    assert flow.id in message
    assert needle in message
    assert "minimal schedule:" in message


def test_state_kept_between_executions_is_caught():
    # As in a freshly started worker: nothing has executed this workflow yet.
    bugs.executions["count"] = 0
    with pytest.raises(AssertionError) as caught:
        check_workflow(bugs.counts_executions_in_a_global)
    message = str(caught.value)
    assert "counts-executions-in-a-global" in message
    assert "a fresh replay of the history gives a different decision" in message
    # The live run ran alone and took the "first execution" branch; a replay did not.
    assert "live:   status=running output=None commands=[run 'send-receipt']" in message
    assert "replay: status=completed output='done'" in message
    schedule = message.split("minimal schedule:")[1].strip().splitlines()
    assert schedule == ["1. step 'charge': attempt 1 returned {'id': 7}"]


def test_the_live_run_does_not_see_what_replays_change():
    seen = []
    executions = {"count": 0}

    @ironflow.function(id="reads-a-global")
    def reads_a_global(ctx):
        executions["count"] += 1
        yield step.run("first", bugs.echo, 1)
        seen.append(executions["count"])
        return "done"

    outcome = Simulation(reads_a_global, None, Tape([]), crashes=False).run()
    assert outcome.status == "completed"
    # The live generator runs to its end before any replay executes the workflow: it reads
    # 1, as it would alone in a worker. The replays and the step-by-step second execution
    # come afterwards and read what the executions before them left.
    assert seen[0] == 1
    assert len(seen) == 3 and all(count > 1 for count in seen[1:])


def test_depending_on_other_executions_in_between_is_still_caught():
    executions = {"count": 0}

    @ironflow.function(id="alone")
    def alone(ctx):
        executions["count"] += 1
        mine = executions["count"]
        yield step.run("first", bugs.echo, 1)
        if executions["count"] == mine:  # "nobody else ran meanwhile"
            yield step.run("second", bugs.echo, 2)
        return "done"

    with pytest.raises(AssertionError) as caught:
        check_workflow(alone, max_examples=10)
    message = str(caught.value)
    assert "with other executions of the workflow running between its steps" in message
    assert "module-level variable" in message
    assert message.split("minimal schedule:")[1].strip().splitlines() == [
        "1. step 'first': attempt 1 returned 1"
    ]


def test_the_failure_shrinks_to_a_short_schedule():
    with pytest.raises(AssertionError) as caught:
        check_workflow(bugs.branches_on_random)
    schedule = str(caught.value).split("minimal schedule:")[1].strip().splitlines()
    # Two successful steps are enough to show that a replay asks for a third one.
    assert len(schedule) <= 3, schedule


def test_a_deterministic_workflow_passes():
    check_workflow(bugs.deterministic, max_examples=60)


def test_the_demo_order_workflow_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(order, "JOURNAL", tmp_path / "journal.txt")
    data = {"orderId": "A-1", "userId": "u-1", "total": 5.0, "items": ["book"]}
    check_workflow(order.process_order, data, max_examples=60)


def test_the_saga_example_passes():
    check_workflow(saga.book_trip, {"trip": "rome"}, max_examples=60)


def test_mocks_replace_steps_by_name():
    seen = []

    def fake_echo(value):
        seen.append(value)
        return "mocked"

    outcome = Simulation(
        bugs.deterministic, None, Tape([]), mocks={"left": fake_echo}, crashes=False
    ).run()
    assert outcome.status == "completed"
    assert outcome.output["both"] == ["mocked", 2]
    assert seen == [1]


def test_crashes_do_not_change_a_good_outcome():
    crashes = iter([True, False] * 200)

    def script(question, options):
        # Crash at every other decision; otherwise take the plain path.
        return next(crashes) if question == "crash" else options[0]

    outcome = Simulation(bugs.deterministic, None, script).run()
    assert outcome.status == "completed"
    assert any(action.kind == "crash" for action in outcome.actions)


def test_a_run_that_never_ends_is_reported():
    @ironflow.function(id="forever")
    def forever(ctx):
        i = 0
        while True:
            yield step.sleep(f"tick-{i}", "1s")
            i += 1

    with pytest.raises(AssertionError, match="did not finish in 12 decisions"):
        check_workflow(forever, max_examples=3, max_decisions=12)
