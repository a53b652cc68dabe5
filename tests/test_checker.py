"""check_workflow catches the classic bugs within the default budget and passes good code.

Runs are derandomized (check_workflow's default), so these results are the same every time.
"""

import planted_bugs as bugs
import pytest

from examples import order, saga
from ironflow.testing import check_workflow
from ironflow.testing.simulate import Simulation
from ironflow.testing.strategies import Tape


@pytest.mark.parametrize(
    ("flow", "needle"),
    [
        (bugs.branches_on_wall_clock, "replay"),
        (bugs.branches_on_random, "replay"),
        (bugs.side_effect_outside_step, "replay"),
    ],
    ids=["datetime.now", "random.random", "side-effect"],
)
def test_planted_bugs_are_caught_with_a_schedule(flow, needle):
    with pytest.raises(AssertionError) as caught:
        check_workflow(flow)
    message = str(caught.value)
    assert flow.id in message
    assert needle in message
    assert "minimal schedule:" in message


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
    import ironflow
    from ironflow import step

    @ironflow.function(id="forever")
    def forever(ctx):
        i = 0
        while True:
            yield step.sleep(f"tick-{i}", "1s")
            i += 1

    with pytest.raises(AssertionError, match="did not finish in 12 decisions"):
        check_workflow(forever, max_examples=3, max_decisions=12)
