"""A PostgreSQL connection lost and found again (issue 11): the store reconnects at its next use.

- ``test_a_worker_whose_backends_are_terminated_between_steps_goes_on``: while step two's body
  runs, the test ends both of the serving worker's backends (``pg_terminate_backend``, as a
  server restart would); the run completes, each body ran once, one WARNING per connection.
- ``test_a_round_whose_commit_fails_midway_is_driven_again_whole``: the backend is ended inside
  a round's commit transaction, after its first statements: nothing of it is written, the
  round is driven again with the step's result (kept in memory), and no body runs twice;
  ``run_until_idle`` raises ``StoreUnavailable`` and the next call goes on.
- ``test_a_worker_cut_off_from_the_server_recovers``: a TCP proxy in the test closes every
  connection and refuses new ones for a while; the worker keeps trying (quietly after one
  WARNING), and completes the run once the server can be reached again.
- ``test_emit_and_start_recover_after_a_terminated_backend``: the same for a process with no
  functions: ``emit``, ``start`` and reads go on after their session was ended.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from test_crash import _check_history
from test_multi import DEADLINE, Gate, Proxy, Serving, through, wait_until

import ironflow
from ironflow import Engine, step
from ironflow.history.events import StepCompleted
from ironflow.runtime.store import StoreUnavailable
from ironflow.runtime.store.postgres_tx import PostgresTransaction

pytestmark = pytest.mark.postgres

FLOW_ID = "reconnect-flow"
LOST = "lost the connection to the PostgreSQL database"

_gate = Gate()


@ironflow.function(id=FLOW_ID, on="reconnect.go")
def reconnect_flow(ctx: Any) -> Any:
    results = []
    for sid in ("one", "two", "three"):
        results.append((yield step.run(sid, _gate.body, sid)))
    return results


@pytest.fixture
def gate() -> Iterator[Gate]:
    global _gate
    _gate = Gate()
    yield _gate
    _gate.release.set()  # a failed test leaves no body blocked


@pytest.fixture
def serving() -> Iterator[list[Serving]]:
    started: list[Serving] = []
    yield started
    for worker in started:
        if worker.thread.is_alive():
            worker.engine.stop()
            worker.thread.join(DEADLINE)
        worker.engine.close()


def terminate(url: str, where: str, params: tuple[Any, ...]) -> int:
    """End the backends ``where`` selects (``pg_stat_activity``); how many were ended."""
    with psycopg.connect(url, autocommit=True) as admin:
        found = admin.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}", params
        ).fetchall()
    return sum(1 for (ended,) in found if ended)


def backend_pid(engine: Engine) -> int:
    pid: int = engine.store.conn.info.backend_pid  # type: ignore[attr-defined]
    return pid


def lost_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(LOST)]


def check_run(reader: Engine, gate: Gate, run_id: str) -> None:
    """Completed, each body run once, each result committed once, contiguous seqs."""
    history = reader.history(run_id)
    context = f"history {[type(e).__name__ for e in history]}; bodies {dict(gate.ran)}"
    _check_history(run_id, history, context)
    results = {e.id: e.result for e in history if isinstance(e, StepCompleted)}
    assert results == {"one": "one#1", "two": "two#1", "three": "three#1"}, context
    assert gate.ran == {"one": 1, "two": 1, "three": 1}, context
    assert reader.get_run(run_id).output == ["one#1", "two#1", "three#1"], context


def test_a_worker_whose_backends_are_terminated_between_steps_goes_on(
    pg_url: str, gate: Gate, serving: list[Serving], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ironflow")
    reader = Engine(pg_url)
    try:
        worker = Engine(pg_url, poll="20ms")
        worker.register(reconnect_flow)
        serving.append(Serving(worker))
        worker.start(FLOW_ID, run_id="r")
        assert gate.entered.wait(DEADLINE), "step two never started"
        before = backend_pid(worker)
        # The worker's session and its listener's, as a restart of the server would.
        channel = worker.store.channel  # type: ignore[attr-defined]
        ended = terminate(pg_url, "pid = %s OR query = %s", (before, f'LISTEN "{channel}"'))
        assert ended == 2, f"ended {ended} backends"
        gate.release.set()
        wait_until(
            "the run completes after the worker's backends were ended",
            lambda: reader.get_run("r").status == "completed",
            lambda: f"run r is {reader.get_run('r').status}; bodies {dict(gate.ran)}",
        )
        assert backend_pid(worker) != before  # a new session
        serving[0].stop()  # re-raises what serve() raised: nothing
        check_run(reader, gate, "r")
    finally:
        reader.close()
    warnings = lost_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, warnings
    assert "terminating connection due to administrator command" in warnings[0].getMessage()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(f"connected to the PostgreSQL database {worker.store.url} again") == 1
    listener = [m for m in messages if m.startswith("wake-ups: cannot listen")]
    assert len(listener) == 1, listener


def test_a_round_whose_commit_fails_midway_is_driven_again_whole(
    pg_url: str, gate: Gate, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ironflow")
    gate.release.set()  # no body blocks here
    commit_round = PostgresTransaction.commit_round
    ended: list[int] = []

    def ended_midway(self: PostgresTransaction, batch: Any, owner: str) -> None:
        # Step two's result: the transaction's first statements ran (the batch's claims,
        # its mail), then its backend goes, before the round's query.
        if not ended and any(
            row[2] == "StepCompleted" and "two#" in row[4] for row in batch.history
        ):
            ended.append(terminate(pg_url, "pid = %s", (self.store.conn.info.backend_pid,)))
        commit_round(self, batch, owner)

    monkeypatch.setattr(PostgresTransaction, "commit_round", ended_midway)
    engine = Engine(pg_url)
    try:
        engine.register(reconnect_flow)
        engine.start(FLOW_ID, run_id="m")
        with pytest.raises(StoreUnavailable, match=r"^lost the PostgreSQL database .*: terminat"):
            engine.run_until_idle()
        assert ended == [1]
        history = engine.history("m")
        assert [e.id for e in history if isinstance(e, StepCompleted)] == ["one"], history
        engine.run_until_idle()  # a new session; step two's result committed, not run again
        check_run(engine, gate, "m")
        assert engine.stats["steps_executed"] == 3
    finally:
        engine.close()
    assert len(lost_warnings(caplog)) == 1, caplog.records


class Cutter(Proxy):
    """The test's TCP proxy, which can also ``cut()``: every connection closed and new ones
    refused (counted in ``refused``), as a server gone away; ``mend()`` lets them through."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.down = False
        self.refused = 0
        super().__init__(upstream)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                self.refused += 1
                continue
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def cut(self) -> None:
        self.down = True
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):  # one already closed by its peer
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def mend(self) -> None:
        self.down = False


def test_a_worker_cut_off_from_the_server_recovers(
    pg_url: str, gate: Gate, serving: list[Serving], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ironflow")
    parts = urlsplit(pg_url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None, pg_url
    cutter = Cutter((parts.hostname, parts.port))
    reader = Engine(pg_url)
    try:
        worker = Engine(through(pg_url, cutter.port), poll="20ms", lease="60s")
        worker.register(reconnect_flow)
        serving.append(Serving(worker))
        worker.start(FLOW_ID, run_id="c")
        assert gate.entered.wait(DEADLINE), "step two never started"
        cutter.cut()
        gate.release.set()  # step two ends while the server is out of reach
        # The worker tries again and again, without stopping and without a word more.
        wait_until(
            "the worker tries to connect again, several times",
            lambda: cutter.refused >= 5,
            lambda: f"refused {cutter.refused}; serving: {serving[0].thread.is_alive()}",
        )
        assert serving[0].thread.is_alive(), f"the worker stopped: {serving[0].failure!r}"
        assert reader.get_run("c").status == "running"
        assert len(lost_warnings(caplog)) == 1, [r.getMessage() for r in caplog.records]
        cutter.mend()
        wait_until(
            "the run completes once the server can be reached again",
            lambda: reader.get_run("c").status == "completed",
            lambda: f"run c is {reader.get_run('c').status}; bodies {dict(gate.ran)}",
        )
        serving[0].stop()  # re-raises what serve() raised: nothing
        check_run(reader, gate, "c")
    finally:
        reader.close()
        cutter.close()
    warnings = lost_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, warnings
    again = f"connected to the PostgreSQL database {worker.store.url} again"
    assert [r.getMessage() for r in caplog.records].count(again) == 1


def test_emit_and_start_recover_after_a_terminated_backend(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ironflow")
    worker = Engine(pg_url)
    worker.register(reconnect_flow)  # the registry: what a bare engine's emit/start starts
    worker.close()
    bare = Engine(pg_url)  # no functions: emits and starts only
    try:
        first = bare.emit("reconnect.go", {"n": 1})
        assert terminate(pg_url, "pid = %s", (backend_pid(bare),)) == 1
        second = bare.emit("reconnect.go", {"n": 2})  # a new session, at once
        assert terminate(pg_url, "pid = %s", (backend_pid(bare),)) == 1
        started = bare.start(FLOW_ID, run_id="s")
        assert terminate(pg_url, "pid = %s", (backend_pid(bare),)) == 1
        assert bare.get_run("s").status == "pending"
        assert terminate(pg_url, "pid = %s", (backend_pid(bare),)) == 1
        assert [type(e).__name__ for e in bare.history("s")] == ["RunStarted"]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            events = admin.execute("SELECT data FROM events ORDER BY pos").fetchall()
            runs = admin.execute("SELECT COUNT(*) FROM runs").fetchone()
        assert [row[0] for row in events] == ['{"n":1}', '{"n":2}'], events
        assert runs == (3,)
        assert len(first) == len(second) == 1 and started == "s"
    finally:
        bare.close()
    # Each ended session is an outage of its own, found and mended by the next use.
    assert len(lost_warnings(caplog)) == 4, [r.getMessage() for r in caplog.records]
