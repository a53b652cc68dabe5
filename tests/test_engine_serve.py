"""serve() in-process: a pool thread that finishes a step commits it and runs the next one,
start/emit hand woken runs to a free pool thread, and the serving thread drives when none is
free. Every wait here is bounded; nothing sleeps to synchronise."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

import ironflow
from ironflow import Engine, step

WAIT = 10.0


@contextlib.contextmanager
def serving(engine: Engine) -> Iterator[None]:
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            engine.serve(install_signals=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        engine.stop()
        thread.join(WAIT)
        assert not thread.is_alive(), f"serve() did not return within {WAIT}s of stop()"
    if errors:
        raise errors[0]


def _add(a: int, b: int) -> int:
    return a + b


@ironflow.function(id="chain")
def chain(ctx):
    total = 0
    for i in range(20):
        total = yield step.run(f"add-{i}", _add, total, i)
    return total


@ironflow.function(id="on-go")
def on_go(ctx):
    event = yield step.wait_for_event("go", "go", match="data.k", timeout="1d")
    return (yield step.run("after", _add, event.data["k"], 100))


@pytest.fixture
def real_engine(tmp_path) -> Iterator[Engine]:
    engine = Engine(str(tmp_path / "serve.db"), durability="normal")
    yield engine
    engine.close()


def test_a_sequential_run_completes_while_serving_with_one_commit_per_step(real_engine):
    real_engine.register(chain)
    with serving(real_engine):
        run_id = real_engine.start("chain")
        assert real_engine.wait(run_id, timeout=WAIT) == sum(range(20))
    history = real_engine.history(run_id)
    assert [e.seq for e in history] == list(range(len(history)))
    completed = [e for e in history if type(e).__name__ == "StepCompleted"]
    assert [e.id for e in completed] == [f"add-{i}" for i in range(20)]


def test_emit_while_serving_resumes_the_waiting_runs(real_engine):
    real_engine.register(on_go)
    runs = [real_engine.start("on-go", {"k": k}) for k in range(5)]
    real_engine.run_until_idle()
    assert {real_engine.get_run(r).status for r in runs} == {"waiting"}
    with serving(real_engine):
        for k in range(5):
            real_engine.emit("go", {"k": k})
        outputs = [real_engine.wait(r, timeout=WAIT) for r in runs]
    assert outputs == [100 + k for k in range(5)]


def test_a_woken_run_is_driven_while_every_pool_thread_is_busy(tmp_path):
    # A poll interval longer than the test: only the emit's own wake-up can deliver.
    engine = Engine(str(tmp_path / "busy.db"), durability="normal", max_workers=1, poll="1h")
    entered, release = threading.Event(), threading.Event()
    holds = []

    def hold() -> str:
        holds.append(1)
        entered.set()
        assert release.wait(3 * WAIT), "the test never released the step"
        return "held"

    @ironflow.function(id="holder")
    def holder(ctx):
        return (yield step.run("hold", hold))

    engine.register(holder)
    engine.register(on_go)
    waiting = engine.start("on-go", {"k": 1})
    engine.run_until_idle()
    try:
        with serving(engine):
            held = engine.start("holder")
            assert entered.wait(WAIT), "the holding step never started"
            engine.emit("go", {"k": 1})  # the only pool thread is busy: serve() must drive
            # Polled from the store, within a deadline far shorter than the held step's.
            matched, deadline = threading.Event(), time.monotonic() + WAIT / 2
            while not matched.is_set() and time.monotonic() < deadline:
                if any(type(e).__name__ == "WaitMatched" for e in engine.history(waiting)):
                    matched.set()
                matched.wait(0.01)
            assert matched.is_set(), "the event was not delivered while the pool was busy"
            assert not release.is_set() and holds == [1]
            release.set()
            assert engine.wait(held, timeout=WAIT) == "held"
            assert engine.wait(waiting, timeout=WAIT) == 101
            assert holds == [1]
    finally:
        release.set()
        engine.close()


def test_stop_lets_a_running_step_finish_and_commits_it(real_engine):
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        assert release.wait(WAIT), "the test never released the step"
        return "done"

    @ironflow.function(id="slow")
    def slow_flow(ctx):
        first = yield step.run("slow", slow)
        second = yield step.run("next", _add, 1, 1)
        return [first, second]

    real_engine.register(slow_flow)
    run_id = real_engine.start("slow")
    with serving(real_engine):
        assert entered.wait(WAIT), "the step never started"
        real_engine.stop()
        release.set()
    kinds = [type(e).__name__ for e in real_engine.history(run_id)]
    assert "StepCompleted" in kinds  # the step that was running is committed
    assert real_engine.get_run(run_id).status == "running"  # nothing new started after stop
    real_engine.run_until_idle()
    assert real_engine.get_run(run_id).output == ["done", 2]


def test_a_step_kept_by_a_pool_thread_still_times_out_while_serving(tmp_path):
    # A poll interval longer than the test: only the wake-up after the round that decided the
    # step can make serve() watch its deadline.
    engine = Engine(str(tmp_path / "deadline.db"), durability="normal", poll="1h")
    release = threading.Event()

    def hang() -> str:
        release.wait(3 * WAIT)
        return "late"

    @ironflow.function(id="deadline", retry=ironflow.RetryPolicy(max_attempts=1))
    def deadline(ctx):
        yield step.run("quick", _add, 1, 2)  # its pool thread keeps the next step
        return (yield step.run("hang", hang, timeout="200ms"))

    engine.register(deadline)
    try:
        with serving(engine):
            run_id = engine.start("deadline")
            with pytest.raises(ironflow.StepTimeoutError):
                engine.wait(run_id, timeout=WAIT)
            release.set()
    finally:
        release.set()
        engine.close()
