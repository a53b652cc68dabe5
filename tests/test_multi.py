"""Many workers on one database (issue 11, item 7), on each store where it applies.

- ``test_three_worker_processes_one_killed``: three ``tests/multi_worker.py`` processes drive a
  few hundred runs of three steps, started in batches while they serve; the test SIGKILLs one
  mid-way, inside a step body (its run held, that result uncommitted), while it drives others.
  The other two take its runs over once its lease (2 s) expires. Every run completes;
  histories are contiguous with one completion per step and per run; from the journal every
  body appends to, and the process each committed result names: no step ran again once its
  result was committed, and only the killed process lost body runs (at most one per step).
- ``test_a_partitioned_worker_loses_its_lease`` (PostgreSQL): a worker reaches the database
  through a TCP proxy in the test, which freezes it mid-step; another worker takes the run over
  once the lease expires and completes it. Thawed, the first worker's late commit is refused
  (``LeaseLost``): it drops the round and forgets the run, logging a warning, raising nothing.
- ``test_a_stalled_worker_loses_its_lease``: the same on each store, without a network: the
  first worker's step outlives its lease on the second worker's (virtual) clock.
- ``test_concurrent_emitters_race_waits``: runs waiting twice for events of their key, events
  emitted before the waits are reached and concurrently by several emitting engines while two
  workers drive: each wait gets exactly one event, no event twice per run, none lost; an event
  emitted before a run started reaches none of its waits.
- ``test_a_timer_fires_once_among_three_workers``: three serving engines, runs whose timers all
  fall due at one instant: one ``TimerFired`` per run, the step after it ran once.

Waits are bounded (they fail with the state found); nothing sleeps to synchronise. The sizes
are small by default; ``IRONFLOW_MULTI_RUNS=2000`` makes the multi-process test a soak.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import multi_worker as mw
import pytest
from test_crash import _check_history

import ironflow
from ironflow import Engine, step
from ironflow.history.events import StepCompleted, TimerFired, WaitMatched
from ironflow.runtime.store import is_postgres_url
from ironflow.testing import VirtualClock

WORKER = Path(__file__).with_name("multi_worker.py")
RUNS = int(os.environ.get("IRONFLOW_MULTI_RUNS", "300"))
BATCH = 10  # runs started at a time
BLOCK_AFTER = 10  # the doomed worker is killed in its 10th step body
DEADLINE = 60.0  # seconds any phase may take before the test gives up
POLL = 0.01


def wait_until(what: str, check: Callable[[], bool], describe: Callable[[], str]) -> None:
    """Poll ``check`` until true; fail after ``DEADLINE`` with ``describe()``."""
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE}s\n{describe()}")
        time.sleep(POLL)


def statuses(engine: Engine) -> collections.Counter[str]:
    return collections.Counter(run.status for run in engine.list_runs())


# --- three worker processes, one SIGKILLed ----------------------------------------------------


class WorkerProc:
    def __init__(self, tmp: Path, db: str, journal: Path, name: str, block_after: int = 0):
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRONFLOW_CRASH")}
        self.out = tmp / f"{name}.out"
        self.err = tmp / f"{name}.err"
        cmd = [sys.executable, str(WORKER), db, str(journal), "--lease", "2s"]
        cmd += ["--block-after", str(block_after)]
        cmd += ["--deadline", str(2 * DEADLINE)]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        self.pid = self.proc.pid

    def output(self) -> str:
        return (
            f"--- stdout of worker {self.pid}:\n{self.out.read_text(errors='replace')}"
            f"--- stderr of worker {self.pid}:\n{self.err.read_text(errors='replace')}"
        )


@pytest.fixture
def procs() -> Iterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    yield started
    for worker in started:  # a failed test leaves no process behind
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


def test_three_worker_processes_one_killed(
    tmp_path: Path, store_url: str, procs: list[WorkerProc]
) -> None:
    journal = tmp_path / "journal.txt"
    engine = mw.make_engine(store_url, durability="normal")  # the test's: start and read
    try:
        # The doomed worker's 10th step body blocks: the test SIGKILLs it there, its run held
        # and that step's result uncommitted, while its other runs are wherever they are.
        procs.extend(
            WorkerProc(tmp_path, store_url, journal, f"w{n}", BLOCK_AFTER if n == 1 else 0)
            for n in range(3)
        )
        doomed = procs[1]
        survivors = [procs[0], procs[2]]
        blocked = Path(f"{journal}.blocked")

        def describe() -> str:
            done = statuses(engine)
            outputs = "\n".join(worker.output() for worker in procs)
            return f"runs by status: {dict(done)}\n{outputs}"

        def start(low: int) -> None:
            # In batches, each taken before the next: a worker takes every ready run it finds
            # (one round can take a thousand), so a burst would go to whoever looks first.
            for i in range(low, min(low + BATCH, RUNS)):
                engine.start(mw.MULTI_ID, {"i": i}, run_id=f"m{i:04d}")
            wait_until(
                f"runs up to m{low + BATCH:04d} taken",
                lambda: not statuses(engine)["pending"],
                describe,
            )

        wait_until(
            "three workers serving",
            lambda: all("serving" in w.out.read_text() for w in procs),
            describe,
        )
        batches = iter(range(0, RUNS, BATCH))
        for low in batches:
            start(low)
            if blocked.exists():
                break
        else:
            wait_until("the doomed worker blocks in a step", blocked.exists, describe)
        stuck_run, stuck_step, stuck_pid = blocked.read_text().split()
        assert int(stuck_pid) == doomed.pid, describe()
        os.kill(doomed.pid, signal.SIGKILL)
        assert doomed.proc.wait(timeout=DEADLINE) == -signal.SIGKILL, describe()
        ended_at_kill = statuses(engine)["completed"]
        for low in batches:
            start(low)
        wait_until(
            f"all {RUNS} runs complete",
            lambda: statuses(engine)["completed"] == RUNS,
            describe,
        )
        for worker in survivors:
            worker.proc.send_signal(signal.SIGTERM)
        for worker in survivors:
            try:
                code = worker.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {worker.pid} ignored SIGTERM\n{describe()}")
            assert code == 0, f"worker {worker.pid} exited with {code}\n{describe()}"
        context = f"killed worker {doomed.pid}\n{describe()}"
        assert ended_at_kill < RUNS, f"the kill came after the end\n{context}"

        pids = {worker.pid for worker in procs}
        lines = mw.journal_lines(str(journal))
        ran: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
        for run_id, sid, pid in lines:
            assert pid in pids, f"journal line from unknown process {pid}\n{context}"
            ran[run_id, sid].append(pid)
        assert set(ran) == {(f"m{i:04d}", sid) for i in range(RUNS) for sid in mw.STEPS}, (
            f"steps that never ran, or unknown ones\n{context}"
        )
        for run in engine.list_runs():
            history = engine.history(run.id)
            _check_history(run.id, history, context)
            assert run.status == "completed", f"run {run.id} is {run.status}\n{context}"
            done = [e for e in history if isinstance(e, StepCompleted)]
            assert [e.id for e in done] == list(mw.STEPS), f"run {run.id}: {done}\n{context}"
            assert run.output == [e.result for e in done], context
            for event in done:
                committer = int(event.result.rsplit("@", 1)[1])
                bodies = ran[run.id, event.id]
                # The committed body run is the last: none ran again after its result.
                assert bodies[-1] == committer, (
                    f"run {run.id} step {event.id}: result committed from process "
                    f"{committer}, body runs by {bodies}\n{context}"
                )
                # Any other run of the body was lost with the killed process, once at most.
                assert bodies[:-1] in ([], [doomed.pid]), (
                    f"run {run.id} step {event.id}: body runs by {bodies}, committed by "
                    f"{committer}, killed process {doomed.pid}\n{context}"
                )
        # The step killed in ran again in a survivor, which committed it: the run was taken
        # over (and its earlier results, if any, were the killed worker's).
        again = ran[stuck_run, stuck_step]
        assert again[0] == doomed.pid and again[1] in {w.pid for w in survivors}, (
            f"{stuck_run} {stuck_step} (killed in it) ran in {again}\n{context}"
        )
    finally:
        engine.close()


# --- in-process workers (threads, each its own Engine and connection) --------------------------


class Serving:
    """An engine serving on a thread of the test process; ``stop()`` re-raises its failure."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.engine.serve(install_signals=False)
        except BaseException as exc:
            self.failure = exc

    def stop(self) -> None:
        self.engine.stop()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"{self.engine.worker_id} did not stop"
        self.engine.close()
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def serving() -> Iterator[list[Serving]]:
    started: list[Serving] = []
    yield started
    for worker in started:
        if worker.thread.is_alive():
            worker.engine.stop()
            worker.thread.join(DEADLINE)
        worker.engine.close()


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The journal step bodies run in this process append to."""
    path = tmp_path / "journal.txt"
    monkeypatch.setattr(mw, "_journal", str(path))
    return path


def test_concurrent_emitters_race_waits(store_url: str, serving: list[Serving]) -> None:
    keys = [f"k{n:02d}" for n in range(20)]
    reader = mw.make_engine(store_url)
    emitters = [Engine(store_url) for _ in range(4)]  # no functions: they only emit
    try:
        # Emitted before the runs started: no wait of theirs may take these.
        for key in keys:
            emitters[0].emit(mw.RACE_EVENT, {"key": key, "tag": "stale"})
        run_ids = {
            reader.start(mw.RACE_ID, {"key": key}, run_id=f"{key}-{copy}"): key
            for key in keys
            for copy in range(2)
        }
        events = [(key, "a") for key in keys] + [(key, "b") for key in keys]
        random.Random(11).shuffle(events)
        # A third before any worker runs (the runs have not reached their waits yet), the
        # rest while two workers drive, from four emitting engines at once.
        early, late = events[: len(events) // 3], events[len(events) // 3 :]

        def emit_all(batch: list[tuple[str, str]]) -> None:
            together = threading.Barrier(len(emitters))  # all four begin at once
            threads = []
            for n, emitter in enumerate(emitters):
                mine = batch[n :: len(emitters)]

                def emit(engine: Engine = emitter, mine: list[tuple[str, str]] = mine) -> None:
                    try:
                        together.wait(DEADLINE)
                        for key, tag in mine:
                            engine.emit(mw.RACE_EVENT, {"key": key, "tag": tag})
                    except BaseException as exc:
                        failures.append(exc)

                threads.append(threading.Thread(target=emit))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DEADLINE)
                assert not thread.is_alive(), "an emitter hung"
            assert not failures, f"emit raised: {failures!r}"

        failures: list[BaseException] = []
        emit_all(early)
        for _ in range(2):
            serving.append(Serving(mw.make_engine(store_url, lease="2s", poll="20ms")))
        emit_all(late)

        def describe() -> str:
            lines = [f"runs by status: {dict(statuses(reader))}"]
            for run in reader.list_runs():
                if run.status != "completed":
                    kinds = [type(e).__name__ for e in reader.history(run.id)]
                    lines.append(f"  {run.id} {run.status}: {kinds}")
            return "\n".join(lines)

        wait_until(
            f"all {len(run_ids)} runs complete",
            lambda: statuses(reader)["completed"] == len(run_ids),
            describe,
        )
        for worker in serving:
            worker.stop()
        context = describe()
        seen: dict[str, set[str]] = collections.defaultdict(set)
        for run_id, key in run_ids.items():
            run = reader.get_run(run_id)
            assert sorted(run.output) == ["a", "b"], f"run {run_id} got {run.output}\n{context}"
            history = reader.history(run_id)
            _check_history(run_id, history, context)
            matched = [e for e in history if isinstance(e, WaitMatched)]
            assert [e.id for e in matched] == ["w1", "w2"], context
            ids = [e.event.id for e in matched]
            assert len(set(ids)) == 2, f"run {run_id}: one event matched twice: {ids}\n{context}"
            for event in matched:
                assert event.event.data["key"] == key, context
                seen[key].add(event.event.id)
        # Both runs of a key took the same two events (an event reaches every run's wait).
        assert all(len(ids) == 2 for ids in seen.values()), seen
    finally:
        reader.close()
        for emitter in emitters:
            emitter.close()


def test_a_timer_fires_once_among_three_workers(
    store_url: str, serving: list[Serving], journal: Path
) -> None:
    reader = mw.make_engine(store_url)
    try:
        # One instant for every run's timer, far enough ahead for the runs to park first.
        at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
        run_ids = [reader.start(mw.TIMER_ID, {"at": at}, run_id=f"t{n:02d}") for n in range(20)]
        for _ in range(3):
            serving.append(Serving(mw.make_engine(store_url, lease="2s", poll="10ms")))
        wait_until(
            "every timer fires and every run completes",
            lambda: statuses(reader)["completed"] == len(run_ids),
            lambda: f"runs by status: {dict(statuses(reader))}",
        )
        for worker in serving:
            worker.stop()
        ran = collections.Counter(run_id for run_id, _, _ in mw.journal_lines(str(journal)))
        for run_id in run_ids:
            history = reader.history(run_id)
            kinds = [type(e).__name__ for e in history]
            _check_history(run_id, history, str(kinds))
            fired = [e for e in history if isinstance(e, TimerFired)]
            assert [e.id for e in fired] == ["nap"], f"run {run_id}: {kinds}"
            assert ran[run_id] == 1, f"run {run_id}: the step after the timer ran {ran[run_id]}x"
    finally:
        reader.close()


# --- a worker cut off from PostgreSQL by a TCP proxy ------------------------------------------


class Proxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; ``freeze()`` holds every byte in both
    directions (the connections stay open, as in a network partition), ``thaw()`` lets them
    flow again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.cond = threading.Condition()
        self.flowing = True
        self.closed = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([src], [], [], 0.05)
                if not readable:
                    if self.closed:
                        return
                    continue
                # Under the condition: freeze() returns only once no byte is in transit.
                with self.cond:
                    while not self.flowing and not self.closed:
                        self.cond.wait()
                    if self.closed:
                        return
                    data = src.recv(65536)
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
        except OSError:
            return

    def freeze(self) -> None:
        with self.cond:
            self.flowing = False

    def thaw(self) -> None:
        with self.cond:
            self.flowing = True
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


PARTITION_ID = "partition-flow"


class Gate:
    """Step ``two``'s first body run blocks until released; later runs (the other worker's)
    return at once. A body returns ``<step>#<n>``: its n-th run."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.ran: collections.Counter[str] = collections.Counter()

    def body(self, sid: str) -> str:
        with self.lock:
            self.ran[sid] += 1
            n = self.ran[sid]
        if sid == "two" and n == 1:
            self.entered.set()
            assert self.release.wait(DEADLINE), "step two was never released"
        return f"{sid}#{n}"


_gate = Gate()


@ironflow.function(id=PARTITION_ID)
def partition_flow(ctx: Any) -> Any:
    results = []
    for sid in ("one", "two", "three"):
        results.append((yield step.run(sid, _gate.body, sid)))
    return results


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def describe_part(reader: Engine, gate: Gate) -> str:
    run = reader.get_run("part")
    kinds = [(type(e).__name__, getattr(e, "id", "")) for e in reader.history("part")]
    return f"run part is {run.status}: {kinds}; bodies {dict(gate.ran)}"


def check_refused(
    reader: Engine,
    gate: Gate,
    late: Serving,
    completed: list[Any],
    caplog: pytest.LogCaptureFixture,
    lost: str,
) -> None:
    """``late``'s step two ended after another worker completed the run: its round is refused
    with a warning, it raises nothing and forgets the run, and the history is the other's."""

    def refused() -> bool:
        return any("lost the lease" in r.getMessage() for r in caplog.records)

    wait_until(
        "the first worker's commit is refused, with a warning",
        refused,
        lambda: describe_part(reader, gate),
    )
    late.stop()  # raises what its serve() raised: nothing
    assert "part" not in late.engine._live, "the worker that lost the lease still drives it"
    history = reader.history("part")
    context = describe_part(reader, gate)
    assert history == completed, f"history changed after the takeover ended\n{context}"
    _check_history("part", history, context)
    # Step two's result is the second body run's (the other worker's); the first's, which
    # ended after the takeover, was refused with its whole round.
    results = {e.id: e.result for e in history if isinstance(e, StepCompleted)}
    assert results == {"one": "one#1", "two": "two#2", "three": "three#1"}, context
    assert reader.get_run("part").output == ["one#1", "two#2", "three#1"], context
    assert gate.ran == {"one": 1, "two": 2, "three": 1}, context
    warnings = [r for r in caplog.records if "lost the lease" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, warnings
    assert warnings[0].name == "ironflow.runs", warnings[0].name
    worker = late.engine.worker_id
    assert warnings[0].getMessage() == (
        f"worker {worker} lost the lease of run(s) part to another worker: its round of 1 "
        f"run(s) was refused, nothing of it written, and those runs are forgotten here ({lost})"
    )


def test_a_partitioned_worker_loses_its_lease(
    pg_url: str, serving: list[Serving], caplog: pytest.LogCaptureFixture
) -> None:
    global _gate
    _gate = gate = Gate()
    parts = urlsplit(pg_url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None, pg_url
    proxy = Proxy((parts.hostname, parts.port))
    reader = Engine(pg_url)
    caplog.set_level(logging.WARNING, logger="ironflow")
    try:
        cut_off = Engine(through(pg_url, proxy.port), lease="1s", poll="20ms")
        cut_off.register(partition_flow)
        serving.append(Serving(cut_off))
        cut_off.start(PARTITION_ID, run_id="part")
        assert gate.entered.wait(DEADLINE), "the first worker never started step two"
        proxy.freeze()  # cut off mid-step: it can neither renew its lease nor commit

        other = Engine(pg_url, lease="1s", poll="20ms")
        other.register(partition_flow)
        serving.append(Serving(other))
        wait_until(
            "the other worker takes the run over and completes it",
            lambda: reader.get_run("part").status == "completed",
            lambda: describe_part(reader, gate),
        )
        completed = reader.history("part")

        # The first worker comes back: its step two ends, and its commit must be refused.
        gate.release.set()
        proxy.thaw()
        lost = f"lease lost: 0 of 1 runs still held by {cut_off.worker_id}"
        check_refused(reader, gate, serving[0], completed, caplog, lost)
    finally:
        gate.release.set()
        proxy.thaw()
        reader.close()
        proxy.close()


def test_a_stalled_worker_loses_its_lease(
    store_url: str, serving: list[Serving], caplog: pytest.LogCaptureFixture
) -> None:
    """The same on each store without a network: the first worker's step outlives its lease
    on the second worker's clock (virtual clocks, a minute apart)."""
    global _gate
    _gate = gate = Gate()
    reader = Engine(store_url)
    caplog.set_level(logging.WARNING, logger="ironflow")
    early = VirtualClock()
    try:
        stalled = Engine(store_url, clock=early, lease="10s")
        stalled.register(partition_flow)
        serving.append(Serving(stalled))
        stalled.start(PARTITION_ID, run_id="part")
        assert gate.entered.wait(DEADLINE), "the first worker never started step two"

        other = Engine(store_url, clock=VirtualClock(early.now() + dt.timedelta(minutes=1)))
        other.register(partition_flow)
        try:
            assert other.wait("part", timeout=DEADLINE) == ["one#1", "two#2", "three#1"]
        finally:
            other.close()
        completed = reader.history("part")

        gate.release.set()
        if is_postgres_url(store_url):
            lost = f"lease lost: 0 of 1 runs still held by {stalled.worker_id}"
        else:  # the round's history rows collide with the other worker's first
            lost = "lease lost: UNIQUE constraint failed: history.run_id, history.seq"
        check_refused(reader, gate, serving[0], completed, caplog, lost)
    finally:
        gate.release.set()
        reader.close()
