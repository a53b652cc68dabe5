"""Flow control for runs created by a process without the function's code (``ironflow emit``
from the CLI without ``--app``, a bare ``Engine(url)``, the HTTP API), on each store.

- ``singleton`` keyed by a path is applied where the run is created, from the registry's
  settings, on the same rows and lock as a worker with the code: exact across processes.
- A key that is a callable needs the code: an emit defers the event to a worker that has it
  (``emit`` returns no run id for it); the worker judges it exactly once, in emit order, in
  the commit that creates its run or records its skip. A run made at once (``start``) is
  marked, and the worker taking it applies ``singleton`` before it starts.
- Two worker processes judge deferred events exactly once, and a worker SIGKILLed while
  judging leaves the event to the other.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import flow_worker as fw
import pytest
from test_flow_multi import (
    Proc,
    procs,  # noqa: F401 - the fixture
    registered,
    wait_until,
)

import ironflow
from ironflow import Engine, RateLimit, Singleton, step
from ironflow.testing import VirtualClock

GO = "solo.go"


def solo(mode: str, key: Any) -> ironflow.Function:
    @ironflow.function(id="solo", on="solo.ev", singleton=Singleton(key=key, mode=mode))
    def fn(ctx: Any) -> Any:
        yield step.wait_for_event("go", event=GO, match="data.n", timeout="1d")
        return ctx.event.data["n"]

    return fn


def by_k(event: Any) -> Any:
    return event.data["k"]


def pair(store_url: str, clock: VirtualClock, fn: ironflow.Function) -> tuple[Engine, Engine]:
    worker = Engine(store_url, clock=clock)
    worker.register(fn)
    return worker, Engine(store_url, clock=clock)  # no code: as the CLI without --app


def status(engine: Engine, run_id: str) -> str:
    return engine.get_run(run_id).status


@pytest.mark.parametrize("key", ["data.k", None], ids=["path", "no-key"])
def test_singleton_skip_holds_for_an_emitter_without_the_code(
    store_url: str, clock: VirtualClock, key: Any
) -> None:
    worker, bare = pair(store_url, clock, solo("skip", key))
    try:
        (first,) = bare.emit("solo.ev", {"k": "a", "n": 1})
        assert bare.emit("solo.ev", {"k": "a", "n": 2}) == []  # skipped right there
        assert worker.emit("solo.ev", {"k": "a", "n": 3}) == []  # and by the worker alike
        (skipped_n2, skipped_n3) = sorted(
            bare.list_events(function="solo"), key=lambda s: s.data["n"]
        )
        assert (skipped_n2.reason, skipped_n3.reason) == ("singleton", "singleton")
        assert skipped_n2.detail.startswith(f"singleton: run {first}")
        assert bare.start("solo", {"k": "a", "n": 4}) == first  # the run that stands
        worker.run_until_idle()
        assert status(worker, first) == "waiting"
        bare.emit(GO, {"n": 1})
        worker.run_until_idle()
        assert worker.wait(first) == 1
        (second,) = bare.emit("solo.ev", {"k": "a", "n": 5})  # the key is free again
        assert second != first
        assert len(worker.list_runs(function="solo")) == 2
    finally:
        bare.close()
        worker.close()


def test_singleton_cancel_holds_for_an_emitter_without_the_code(
    store_url: str, clock: VirtualClock
) -> None:
    worker, bare = pair(store_url, clock, solo("cancel", "data.k"))
    try:
        (first,) = worker.emit("solo.ev", {"k": "a", "n": 1})
        worker.run_until_idle()
        assert status(worker, first) == "waiting"
        (second,) = bare.emit("solo.ev", {"k": "a", "n": 2})
        (other,) = bare.emit("solo.ev", {"k": "b", "n": 3})  # another key: untouched
        worker.run_until_idle()
        run = worker.get_run(first)
        assert run.status == "cancelled"
        assert run.error is not None and run.error.message == f"singleton: replaced by run {second}"
        assert (status(worker, second), status(worker, other)) == ("waiting", "waiting")
        bare.emit(GO, {"n": 2})
        worker.run_until_idle()
        assert worker.wait(second) == 2
        assert bare.list_events() == []  # cancel mode skips nothing
    finally:
        bare.close()
        worker.close()


@pytest.mark.parametrize("mode", ["skip", "cancel"])
def test_a_callable_singleton_key_defers_the_emit_to_a_worker(
    store_url: str, clock: VirtualClock, mode: str
) -> None:
    worker, bare = pair(store_url, clock, solo(mode, by_k))
    try:
        for n in (1, 2, 3):  # left for the worker
            assert bare.emit("solo.ev", {"k": "a", "n": n}, idempotency_key=f"e-{n}") == []
        assert bare.emit("solo.ev", {"k": "b", "n": 4}) == []
        assert bare.list_runs() == []
        worker.run_until_idle()  # judged in emit order, once each
        runs = {run.trigger_data()["n"]: run for run in _runs(worker)}
        skipped = sorted(s.data["n"] for s in worker.list_events(function="solo"))
        if mode == "skip":
            assert sorted(runs) == [1, 4] and skipped == [2, 3]
            assert {run.status for run in runs.values()} == {"waiting"}
        else:
            assert sorted(runs) == [1, 2, 3, 4] and skipped == []
            assert [runs[n].status for n in (1, 2, 3, 4)] == [
                "cancelled",
                "cancelled",
                "waiting",
                "waiting",
            ]
            assert runs[2].error is not None
            assert runs[2].error.message == f"singleton: replaced by run {runs[3].id}"
        # Each event records the run the worker started for it (a retried emit returns it).
        for n in (1, 2, 3):
            again = bare.emit("solo.ev", {"k": "a", "n": n}, idempotency_key=f"e-{n}")
            assert again == ([runs[n].id] if n in runs else [])
        worker.run_until_idle()  # a second look judges nothing again
        assert len(_runs(worker)) == len(runs)
    finally:
        bare.close()
        worker.close()


@pytest.mark.parametrize("mode", ["skip", "cancel"])
def test_a_callable_singleton_key_on_a_start_is_applied_by_the_worker_that_takes_it(
    store_url: str, clock: VirtualClock, mode: str
) -> None:
    worker, bare = pair(store_url, clock, solo(mode, by_k))
    try:
        first = bare.start("solo", {"k": "a", "n": 1})
        worker.run_until_idle()
        assert status(worker, first) == "waiting"
        second = bare.start("solo", {"k": "a", "n": 2})  # cannot judge: the worker does
        other = bare.start("solo", {"k": "b", "n": 3})
        assert second != first
        worker.run_until_idle()
        assert status(worker, other) == "waiting"
        if mode == "skip":
            run = worker.get_run(second)
            assert run.status == "cancelled"
            assert run.error is not None
            assert run.error.message == f"singleton: run {first} for key 'a' has not ended"
            assert status(worker, first) == "waiting"
        else:
            run = worker.get_run(first)
            assert run.status == "cancelled"
            assert run.error is not None
            assert run.error.message == f"singleton: replaced by run {second}"
            assert status(worker, second) == "waiting"
        # The mark is gone once applied: no flow rows are left behind for these runs.
        marks = worker.store.query("SELECT COUNT(*) FROM flow_state WHERE kind = 'singleton'")
        assert marks[0][0] == 0
    finally:
        bare.close()
        worker.close()


def _runs(engine: Engine) -> list[Any]:
    found = []
    for run in engine.list_runs(function="solo"):
        data = engine.history(run.id)[0].event.data  # type: ignore[attr-defined]
        found.append(_Run(run.id, run.status, run.error, data))
    return found


class _Run:
    def __init__(self, id: str, status: str, error: Any, data: Any) -> None:
        self.id, self.status, self.error, self._data = id, status, error, data

    def trigger_data(self) -> Any:
        return self._data


def fails_on_bad(event: Any) -> Any:
    if event.data.get("bad"):
        raise KeyError("no such field")
    return event.data["k"]


def test_a_deferred_event_whose_key_fails_is_listed_and_the_others_go_on(
    store_url: str, clock: VirtualClock
) -> None:
    @ironflow.function(id="limited", on="lim.ev", rate_limit=RateLimit(5, "1h", key=fails_on_bad))
    def limited(ctx: Any) -> Any:
        return ctx.event.data["n"]
        yield

    worker, bare = pair(store_url, clock, limited)
    try:
        bare.emit("lim.ev", {"k": 1, "n": 1})
        bad_id, _ = bare.emit_event("lim.ev", {"bad": True, "n": 2})
        bare.emit("lim.ev", {"k": 1, "n": 3})
        worker.run_until_idle()
        outputs = sorted(run.output for run in worker.list_runs(function="limited"))
        assert outputs == [1, 3]
        (skip,) = worker.list_events(function="limited")
        assert (skip.id, skip.reason) == (bad_id, "key_error")
        assert "the rate_limit key of function 'limited' failed" in skip.detail
        assert "KeyError" in skip.detail
        left = worker.store.query("SELECT COUNT(*) FROM flow_state WHERE kind = 'arrival'")
        assert left[0][0] == 0
    finally:
        bare.close()
        worker.close()


# --- two worker processes -------------------------------------------------------------------


def _deferred_left(engine: Engine) -> int:
    return int(engine.store.query("SELECT COUNT(*) FROM flow_state WHERE kind = 'arrival'")[0][0])


def _journal_counts(journal: Path) -> collections.Counter[str]:
    if not journal.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in journal.read_text().splitlines())


@pytest.mark.parametrize("crash", [False, True], ids=["two-workers", "one-killed-judging"])
def test_deferred_events_are_judged_once_across_worker_processes(
    tmp_path: Path,
    store_url: str,
    procs: list[Proc],  # noqa: F811 - the fixture
    crash: bool,
) -> None:
    journal = tmp_path / "journal.txt"
    bare = Engine(store_url)  # no code: every event below is deferred to the workers
    try:
        if crash:  # the first judge dies before its commit; two other workers judge it all
            procs.append(Proc(tmp_path, store_url, journal, "doomed", crash_at="arrival-judge"))
        else:  # two workers judge while the events come in
            procs.extend(Proc(tmp_path, store_url, journal, f"w{n}") for n in range(2))
        registered(bare, procs)
        orders = [f"o-{n % 10}" for n in range(30)]  # ten orders, each three times
        for n, order in enumerate(orders):
            assert bare.emit("once.ev", {"order": order, "n": n}) == []
        for n in range(12):  # three keys, four events each: one run per key stands
            assert bare.emit("solo.ev", {"k": f"k-{n % 3}", "i": f"i-{n}"}) == []
        if crash:
            doomed = procs[0].proc
            wait_until(
                "the doomed worker was killed", lambda: doomed.poll() is not None, procs[0].output
            )
            assert doomed.returncode == -9, procs[0].output()
            assert _deferred_left(bare) == 42  # nothing of its judging was committed
            procs.extend(Proc(tmp_path, store_url, journal, f"w{n}") for n in range(2))

        def describe() -> str:
            runs = collections.Counter((r.function_id, r.status) for r in bare.list_runs())
            reasons = collections.Counter((s.function, s.reason) for s in bare.list_events())
            return f"runs {dict(runs)}; skips {dict(reasons)}; left {_deferred_left(bare)}\n" + (
                "\n".join(p.output() for p in procs)
            )

        def settled() -> bool:
            solo_runs = bare.list_runs(function=fw.SOLO_ID)
            once_runs = bare.list_runs(function=fw.ONCE_ID)
            return (
                _deferred_left(bare) == 0
                and len(solo_runs) == 3
                and all(r.status == "waiting" for r in solo_runs)
                and len(once_runs) == 10
                and all(r.status == "completed" for r in once_runs)
            )

        wait_until("every deferred event judged", settled, describe)
        reasons = collections.Counter((s.function, s.reason) for s in bare.list_events())
        assert reasons == {(fw.ONCE_ID, "idempotency"): 20, (fw.SOLO_ID, "singleton"): 9}
        # The first event of each key is the one that started its run (emit order).
        firsts = sorted(
            bare.history(r.id)[0].event.data["n"]  # type: ignore[attr-defined]
            for r in bare.list_runs(function=fw.ONCE_ID)
        )
        assert firsts == list(range(10))
        stood = sorted(
            bare.history(r.id)[0].event.data["i"]  # type: ignore[attr-defined]
            for r in bare.list_runs(function=fw.SOLO_ID)
        )
        assert stood == ["i-0", "i-1", "i-2"]
        for i in stood:
            bare.emit("flow.go", {"i": i})
        wait_until(
            "the singleton runs completed",
            lambda: all(r.status == "completed" for r in bare.list_runs(function=fw.SOLO_ID)),
            describe,
        )
        counts = _journal_counts(journal)
        assert sorted(counts.values()) == [1] * 13, counts  # every body ran once
    finally:
        bare.close()
