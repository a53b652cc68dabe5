"""Damaged and read-only databases (issue 10, items 4 and 5).

A row that cannot be decoded blocks the run it belongs to, naming the run and the row, and
every other run goes on. A file that is not a database, or a damaged one, raises
``StoreError``. A database the engine cannot write is refused by ``Engine(...)`` at once; the
CLI's read-only commands still read it.

Read-only files are real here: as root (which ignores file modes), the commands run in a child
process whose capability bounding set lacks ``CAP_DAC_OVERRIDE`` and ``CAP_DAC_READ_SEARCH``,
so root is held to the file modes like any user.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import ironflow
from ironflow import Engine, step
from ironflow.cli import cli
from ironflow.errors import NonDeterminismError
from ironflow.runtime import StoreError, control
from ironflow.runtime import live as live_module
from ironflow.runtime.driver import Driver
from ironflow.testing import VirtualClock

WAIT = 30.0
HEALTHY = 300


def _plus_one(x: int) -> int:
    return x + 1


@ironflow.function(id="waiter")
def waiter(ctx: Any) -> Any:
    event = yield step.wait_for_event("go", "go", timeout="1d")
    return (yield step.run("after", _plus_one, event.data["n"]))


def _engine(path: str, clock: VirtualClock) -> Engine:
    engine = Engine(path, clock=clock, durability="normal")
    engine.register(waiter)
    return engine


@contextlib.contextmanager
def _writable_history(path: str) -> Iterator[sqlite3.Connection]:
    """A connection that may damage ``path``'s history (its append-only triggers lifted)."""
    conn = sqlite3.connect(path, isolation_level=None)
    triggers = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'history'"
    ).fetchall()
    conn.execute("DROP TRIGGER history_no_update")
    conn.execute("DROP TRIGGER history_no_delete")
    try:
        yield conn
    finally:
        for (sql,) in triggers:
            conn.execute(sql)
        conn.close()


@pytest.fixture
def waiting(tmp_path: Path) -> tuple[str, VirtualClock, list[str]]:
    """301 runs waiting for "go" (``bad`` last), the engine that made them closed."""
    path = str(tmp_path / "app.db")
    clock = VirtualClock()
    engine = _engine(path, clock)
    ids = [engine.start("waiter", run_id=f"ok-{i:03d}") for i in range(HEALTHY)]
    ids.append(engine.start("waiter", run_id="bad"))
    engine.run_until_idle()
    assert {run.status for run in engine.list_runs(limit=1000)} == {"waiting"}
    engine.close()
    return path, clock, ids


def _go_and_drive(path: str, clock: VirtualClock) -> Engine:
    engine = _engine(path, clock)
    engine.emit("go", {"n": 1})
    engine.run_until_idle()  # returns: one bad row does not stop the round
    return engine


def _assert_healthy_done(engine: Engine) -> None:
    done = engine.list_runs(status="completed", limit=1000)
    assert len(done) == HEALTHY
    assert {run.output for run in done} == {2}


# --- item 4: one damaged row ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("body", "garbage{", "its body is not JSON: Expecting value"),
        ("body", "1,2", "its body is not JSON: Extra data"),  # commas would shift the others
        ("body", '{"colour": "red"}', "unexpected keyword argument 'colour'"),
        ("body", '"a string"', "TypeError"),
        ("type", "NoSuchEvent", "unknown event type 'NoSuchEvent'"),
    ],
)
def test_a_damaged_history_row_blocks_its_run_and_the_others_finish(
    waiting: Any, column: str, value: str, problem: str
) -> None:
    path, clock, _ = waiting
    with _writable_history(path) as conn:
        conn.execute(f"UPDATE history SET {column} = ? WHERE run_id = 'bad' AND seq = 1", (value,))
        kind = conn.execute("SELECT type FROM history WHERE run_id = 'bad' AND seq = 1").fetchone()

    engine = _go_and_drive(path, clock)
    _assert_healthy_done(engine)
    bad = engine.get_run("bad")
    assert bad.status == "blocked"
    assert bad.error.type.endswith(".StoreError")
    assert bad.error.message.startswith(
        f"run 'bad': history row seq 1 ({kind[0]}) cannot be decoded: "
    ), bad.error.message
    assert problem in bad.error.message
    assert bad.error.traceback is None  # the message says it all
    # Every reader of that history says the same, as a StoreError.
    with pytest.raises(StoreError, match=r"run 'bad': history row seq 1 .* cannot be decoded"):
        engine.history("bad")
    with pytest.raises(StoreError, match=r"run 'bad': history row seq 1"):
        engine.wait("bad")
    engine.resume("bad")  # resumed before the row is repaired: blocked again, nothing lost
    engine.run_until_idle()
    assert engine.get_run("bad").status == "blocked"
    engine.close()


def test_a_history_with_a_missing_row_blocks_its_run_naming_the_gap(waiting: Any) -> None:
    path, clock, _ = waiting
    with _writable_history(path) as conn:
        conn.execute("DELETE FROM history WHERE run_id = 'bad' AND seq = 0")
    engine = _go_and_drive(path, clock)
    _assert_healthy_done(engine)
    bad = engine.get_run("bad")
    assert bad.status == "blocked"
    assert bad.error.message == (
        "run 'bad': history row seq 1 (CommandScheduled) cannot be decoded: "
        "expected seq 0 there (a row is missing)"
    )
    engine.close()


def test_a_worker_serving_a_database_with_a_damaged_row_keeps_working(waiting: Any) -> None:
    path, clock, ids = waiting
    with _writable_history(path) as conn:
        conn.execute("UPDATE history SET body = 'x' WHERE run_id = 'bad' AND seq = 0")
    engine = _engine(path, clock)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            engine.serve(install_signals=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        engine.emit("go", {"n": 1})
        for run_id in ids[:-1]:
            assert engine.wait(run_id, timeout=WAIT) == 2
        with pytest.raises(StoreError, match=r"run 'bad': history row seq 0 \(RunStarted\)"):
            engine.wait("bad", timeout=WAIT)
    finally:
        engine.stop()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    engine.close()


def test_damaged_mail_blocks_the_run_it_was_sent_to(waiting: Any) -> None:
    path, clock, _ = waiting
    engine = _engine(path, clock)
    engine.emit("go", {"n": 1})  # mail (WaitMatched) for every run, not read yet
    pos = engine.store.query("SELECT pos FROM inbox WHERE run_id = 'bad'")[0][0]
    engine.store.query("UPDATE inbox SET body = '{not json' WHERE pos = ?", (pos,))
    engine.run_until_idle()
    _assert_healthy_done(engine)
    bad = engine.get_run("bad")
    assert bad.status == "blocked"
    assert bad.error.message.startswith(
        f"run 'bad': inbox row pos {pos} (WaitMatched) cannot be decoded: not JSON"
    )
    engine.close()


def test_mail_of_an_unknown_kind_blocks_the_run_it_was_sent_to(waiting: Any) -> None:
    path, clock, _ = waiting
    engine = _engine(path, clock)
    engine.emit("go", {"n": 1})
    engine.store.query("UPDATE inbox SET type = 'Gossip' WHERE run_id = 'bad'")
    engine.run_until_idle()
    _assert_healthy_done(engine)
    assert "(Gossip) cannot be decoded: unknown mail type 'Gossip'" in (
        engine.get_run("bad").error.message
    )
    engine.close()


def test_a_damaged_trigger_of_a_run_not_driven_yet_blocks_it(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    clock = VirtualClock()
    engine = _engine(path, clock)
    fine = [engine.start("waiter") for _ in range(3)]
    engine.start("waiter", run_id="bad")
    engine.close()  # started, never driven: their RunStarted is still in the runs row
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET trigger = 'oops' WHERE id = 'bad'")
    conn.close()

    engine = _engine(path, clock)
    with pytest.raises(StoreError, match=r"run 'bad': its runs row \(trigger\) cannot be decoded"):
        engine.history("bad")
    engine.run_until_idle()
    assert [engine.get_run(run_id).status for run_id in fine] == ["waiting"] * 3
    bad = engine.get_run("bad")
    assert bad.status == "blocked"
    assert bad.error.message == (
        "run 'bad': its runs row (trigger) cannot be decoded: not JSON "
        "(Expecting value: line 1 column 1 (char 0))"
    )
    engine.cancel("bad")  # a blocked run is cancelled at once, damaged or not
    assert engine.get_run("bad").status == "cancelled"
    engine.close()


@pytest.mark.sqlite_only  # damages a row with SQLite's SQL
def test_a_damaged_output_is_the_runs_error_and_wait_raises_it(engine: Engine) -> None:
    @ironflow.function(id="quick")
    def quick(ctx: Any) -> Any:
        return (yield step.run("one", _plus_one, 1))

    engine.register(quick)
    done = engine.start("quick")
    other = engine.start("quick")
    engine.run_until_idle()
    engine.store.query("UPDATE runs SET output = '[1,' WHERE id = ?", (done,))

    listed = {run.id: run for run in engine.list_runs()}  # the listing does not fail
    assert listed[other].output == 2 and listed[other].error is None
    damaged = engine.get_run(done)
    assert damaged.status == "completed" and damaged.output is None
    assert damaged.error is not None
    assert damaged.error.message.startswith(
        f"run {done!r}: its runs row (output) cannot be decoded: not JSON"
    )
    with pytest.raises(StoreError, match=r"its runs row \(output\) cannot be decoded"):
        engine.wait(done)
    assert engine.wait(other) == 2


@pytest.mark.sqlite_only  # damages a row with SQLite's SQL
def test_a_blocked_run_still_raises_non_determinism_from_wait(engine: Engine) -> None:
    """Unchanged: only a damaged row makes wait() raise StoreError."""

    @ironflow.function(id="diverges")
    def diverges(ctx: Any) -> Any:
        return (yield step.run("one", _plus_one, 1))

    engine.register(diverges)
    run_id = engine.start("diverges")
    engine.run_until_idle()
    engine.store.query(
        "UPDATE runs SET status = 'blocked', error = ? WHERE id = ?",
        (
            json.dumps({"type": "ironflow.errors.NonDeterminismError", "message": "diverged"}),
            run_id,
        ),
    )
    with pytest.raises(NonDeterminismError, match="diverged"):
        engine.wait(run_id)


# --- review: many damaged runs at once; blocking counted and logged once committed ---------


def test_many_damaged_runs_are_blocked_together_in_one_recovery(
    waiting: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each damaged run used to roll back and redo the whole batch: quadratic in their number.
    Now one pass finds them all (bad history bodies, unknown types, damaged mail), they are
    blocked in one transaction, and the rest are driven again once."""
    path, clock, _ = waiting
    not_json = [f"ok-{i:03d}" for i in range(0, 6)]
    unknown = [f"ok-{i:03d}" for i in range(6, 10)]
    with _writable_history(path) as conn:
        conn.execute(
            f"UPDATE history SET body = 'x' WHERE seq = 1 AND run_id IN ({_marks(not_json)})",
            not_json,
        )
        conn.execute(
            f"UPDATE history SET type = 'NoSuchEvent' WHERE seq = 1 "
            f"AND run_id IN ({_marks(unknown)})",
            unknown,
        )
    engine = _engine(path, clock)
    engine.emit("go", {"n": 1})  # mail for every run, not read yet
    bad_mail = ["ok-010", "ok-011", "bad"]
    engine.store.query(
        f"UPDATE inbox SET body = '{{not json' WHERE run_id IN ({_marks(bad_mail)})", bad_mail
    )
    rollbacks: list[list[str]] = []
    drive_all = Driver.drive_all

    def counting(self: Driver, *args: Any) -> Any:
        try:
            return drive_all(self, *args)
        except live_module.Broken as broken:
            rollbacks.append(sorted(broken.args))  # the runs it names
            raise

    monkeypatch.setattr(Driver, "drive_all", counting)
    engine.run_until_idle()
    damaged = not_json + unknown + bad_mail
    assert rollbacks == [sorted(damaged)]  # one rollback for all of them, not one each
    assert engine.stats["runs_blocked"] == len(damaged)
    blocked = engine.list_runs(status="blocked", limit=1000)
    assert sorted(run.id for run in blocked) == sorted(damaged)
    for run in blocked:
        message = run.error.message
        if run.id in not_json:
            expected = "history row seq 1 (CommandScheduled) cannot be decoded: its body is not"
        elif run.id in unknown:
            expected = "cannot be decoded: unknown event type 'NoSuchEvent'"
        else:
            expected = "(WaitMatched) cannot be decoded: not JSON"
        assert message.startswith(f"run {run.id!r}: ") and expected in message, message
    done = engine.list_runs(status="completed", limit=1000)
    assert len(done) == HEALTHY + 1 - len(damaged)
    assert {run.output for run in done} == {2}
    engine.close()


def _marks(values: list[str]) -> str:
    return ", ".join("?" * len(values))


class _FailingCommit:
    """The store's connection, whose next COMMIT fails once when asked (as on a full disk)."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.fail_next = False

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _Lines(logging.Handler):
    """Records each line logged and whether the store's write transaction was open then."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self.conn = conn
        self.lines: list[tuple[str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), self.conn.in_transaction))


def test_a_blocked_run_is_counted_and_logged_only_once_its_block_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "app.db")
    clock = VirtualClock()
    engine = _engine(path, clock)
    engine.start("waiter", run_id="bad")
    engine.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET trigger = 'oops' WHERE id = 'bad'")
    conn.close()
    engine = _engine(path, clock)
    real = engine.store.conn
    proxy = _FailingCommit(real)
    engine.store.conn = proxy  # type: ignore[assignment]
    block = control.block

    def block_then_fail(*args: Any) -> Any:
        done = block(*args)
        proxy.fail_next = True  # the commit of the blocking transaction fails
        return done

    monkeypatch.setattr(control, "block", block_then_fail)
    lines = _Lines(real)
    runs_log = logging.getLogger("ironflow.runs")
    runs_log.addHandler(lines)
    try:
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            engine.run_until_idle()
        # Not blocked: nothing to report. (Running: the round's first transaction, which
        # takes the lease, committed; the run is driven again next round.)
        assert engine.get_run("bad").status == "running"
        assert engine.stats["runs_blocked"] == 0
        assert lines.lines == []
        monkeypatch.setattr(control, "block", block)
        engine.run_until_idle()
    finally:
        runs_log.removeHandler(lines)
    assert engine.get_run("bad").status == "blocked"
    assert engine.stats["runs_blocked"] == 1  # once, not once per attempt
    assert lines.lines == [
        (
            "run bad (waiter) blocked: ironflow.errors.StoreError: run 'bad': its runs row "
            "(trigger) cannot be decoded: not JSON (Expecting value: line 1 column 1 (char 0))",
            False,  # logged after the commit: no write lock held while a handler runs
        )
    ]
    engine.close()


@ironflow.function(id="order")
def order(ctx: Any) -> Any:
    yield step.sleep("settle", "1s")  # the wait is registered after the events below
    event = yield step.wait_for_event("approval", "approved", match="data.orderId", timeout="1h")
    return event.data


def test_a_damaged_event_row_matches_no_wait_and_blocks_no_run(tmp_path: Path) -> None:
    """A damaged events row (another order's) used to block every run waiting for that name,
    the one whose own event is intact too. Now it matches nothing and is reported once."""
    path = str(tmp_path / "app.db")
    clock = VirtualClock()
    engine = Engine(path, clock=clock)
    engine.register(order)
    for n in (1, 2, 3):
        engine.start("order", {"orderId": n}, run_id=f"o{n}")
    engine.run_until_idle()
    engine.emit("approved", {"orderId": 99})  # some other order's, damaged below
    engine.emit("approved", {"orderId": 2})
    [(damaged,)] = engine.store.query("SELECT id FROM events WHERE data LIKE '%99%'")
    engine.store.query("UPDATE events SET data = '{trunc' WHERE id = ?", (damaged,))
    lines = _Lines(engine.store.conn)
    runs_log = logging.getLogger("ironflow.runs")
    runs_log.addHandler(lines)
    try:
        clock.advance("2s")
        engine.run_until_idle()  # o1, o2 and o3 all register their wait past both events
    finally:
        runs_log.removeHandler(lines)
    assert engine.get_run("o2").status == "completed"
    assert engine.get_run("o2").output == {"orderId": 2}
    assert [engine.get_run(r).status for r in ("o1", "o3")] == ["waiting", "waiting"]
    assert lines.lines == [  # once, though three waits skipped it
        (
            f"event {damaged} (approved): its events row (data) cannot be decoded: not JSON "
            "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); "
            "waits for 'approved' skip it",
            False,
        )
    ]
    engine.emit("approved", {"orderId": 1})  # later events still match
    engine.run_until_idle()
    assert engine.get_run("o1").output == {"orderId": 1}
    engine.close()


# --- item 4: the CLI on damaged rows and damaged files ----------------------------------------


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _assert_one_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ironflow: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


APP = """
import ironflow
from ironflow import step


def plus_one(x):
    return x + 1


@ironflow.function(id="waiter")
def waiter(ctx):
    event = yield step.wait_for_event("go", "go", timeout="1d")
    return (yield step.run("after", plus_one, event.data["n"]))
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module declaring ``waiter``; its ``module:function`` spec."""
    name = f"sharp_store_app_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IRONFLOW_DB", raising=False)
    monkeypatch.delenv("IRONFLOW_APP", raising=False)
    return f"{name}:waiter"


def test_the_cli_names_a_damaged_history_row_in_one_line(waiting: Any, app: str) -> None:
    path, _, _ = waiting
    with _writable_history(path) as conn:
        conn.execute("UPDATE history SET body = 'garbage{' WHERE run_id = 'bad' AND seq = 1")
    expected = "run 'bad': history row seq 1 (CommandScheduled) cannot be decoded"
    _assert_one_line(_cli("runs", "show", "bad", "--db", path), expected)
    _assert_one_line(_cli("runs", "export", "bad", "--db", path), expected)
    _assert_one_line(_cli("replay", app, "bad", "--db", path), expected)
    healthy = _cli("runs", "show", "ok-000", "--db", path)
    assert healthy.exit_code == 0, healthy.stderr
    listed = _cli("runs", "list", "--db", path, "--limit", "1000", "--json")
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == HEALTHY + 1


def test_a_text_file_is_a_store_error_not_a_sqlite_error(tmp_path: Path, app: str) -> None:
    path = tmp_path / "app.db"
    path.write_text("these are my notes, not a database\n" * 50)
    with pytest.raises(StoreError, match=f"{path} is not a SQLite database"):
        Engine(str(path))
    short = tmp_path / "short.db"
    short.write_text("hello\n")
    with pytest.raises(StoreError, match="is not a SQLite database"):
        Engine(str(short))
    _assert_one_line(_cli("start", "waiter", "--app", app, "--db", str(path)), str(path))
    _assert_one_line(_cli("emit", "go", "--db", str(path)), str(path))
    _assert_one_line(_cli("runs", "list", "--db", str(path)), str(path))


def _damaged_copy(waiting: Any, tmp_path: Path, name: str, damage: Any) -> Path:
    path, _, _ = waiting
    with sqlite3.connect(path) as conn:  # everything into the main file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(Path(path).read_bytes())
    target = tmp_path / name
    target.write_bytes(bytes(damage(data)))
    return target


def _truncated(data: bytearray) -> bytearray:
    return data[: len(data) // 2]


def _garbage_inside(data: bytearray) -> bytearray:
    page = int.from_bytes(data[16:18], "big") or 65536
    for at in range(2 * page, len(data), 2 * page):  # every other page from the third
        data[at : at + page] = bytes((at + i) % 251 for i in range(page))
    return data


@pytest.mark.parametrize("damage", [_truncated, _garbage_inside])
def test_a_damaged_database_is_a_store_error_naming_it(
    waiting: Any, tmp_path: Path, app: str, damage: Any
) -> None:
    target = _damaged_copy(waiting, tmp_path, "damaged.db", damage)
    failure: BaseException | None = None
    try:  # refused at once, or at the first use: never a raw sqlite3 error
        engine = _engine(str(target), VirtualClock())
        try:
            engine.emit("go", {"n": 1})
            engine.run_until_idle()
            engine.list_runs(limit=1000)
            for run_id in ("ok-000", "ok-150", "bad"):
                engine.history(run_id)
        finally:
            engine.close()
    except Exception as exc:
        failure = exc
    assert isinstance(failure, StoreError), repr(failure)
    assert f"{target} is a damaged SQLite database" in str(failure)
    assert "restore it from a backup" in str(failure)
    result = _cli("emit", "go", "--db", str(target))
    _assert_one_line(result, str(target))


# --- item 5: read-only databases ----------------------------------------------------------------

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_NO_CAPS = 97  # the child's exit status when it cannot drop them
_LIBC = ctypes.CDLL(None, use_errno=True)


def _without_root_powers() -> None:  # pragma: no cover - runs in the child, before exec
    """Hold a root child to file modes: no DAC override after it execs."""
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if _LIBC.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(_NO_CAPS)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python args`` with file modes enforced (also for root), this worktree importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), str(cwd)])
    env.pop("IRONFLOW_DB", None)
    env.pop("IRONFLOW_APP", None)
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        preexec_fn=_without_root_powers if os.geteuid() == 0 else None,
    )
    if done.returncode == _NO_CAPS and not done.stdout and not done.stderr:
        pytest.skip("cannot drop root's file permissions override here")
    return done


@pytest.fixture
def read_only(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A database with one waiting run ``r1``, made read-only as ``request.param`` says:
    ``"file"`` (mode 0444, its directory writable) or ``"directory"`` (the file writable,
    its directory 0555: no -wal/-shm file can be made there)."""
    folder = tmp_path / "data"
    folder.mkdir()
    (tmp_path / "ro_app.py").write_text(APP)
    path = folder / "ro.db"
    engine = _engine(str(path), VirtualClock())
    engine.start("waiter", run_id="r1")
    engine.run_until_idle()
    engine.close()
    assert not (folder / "ro.db-wal").exists()  # closed cleanly: all in the main file
    before = sorted(os.listdir(folder))
    if request.param == "file":
        path.chmod(0o444)
    else:
        folder.chmod(0o555)
    try:
        yield path
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert sorted(os.listdir(folder)) == before  # nothing left beside it


_READ_ONLY = {
    "file": "the file is read-only for this user (permission denied)",
    "directory": "is not writable, and SQLite must create ro.db-wal and ro.db-shm there",
}


@pytest.mark.parametrize("read_only", ["file", "directory"], indirect=True)
def test_engine_on_a_read_only_database_says_so_at_once(
    read_only: Path, request: pytest.FixtureRequest
) -> None:
    code = textwrap.dedent(
        f"""
        from ironflow import Engine
        from ironflow.runtime import StoreError
        try:
            Engine({str(read_only)!r})
        except StoreError as exc:
            print(exc)
        else:
            print("opened")
        """
    )
    done = _run(["-c", code], read_only.parent.parent)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith(f"cannot write to the database {read_only}: "), message
    assert "an Engine must write to its database" in message
    assert _READ_ONLY[request.node.callspec.params["read_only"]] in message, message


@pytest.mark.parametrize("read_only", ["file", "directory"], indirect=True)
def test_cli_start_emit_and_worker_on_a_read_only_database_fail_in_one_line(
    read_only: Path,
) -> None:
    db = str(read_only)
    root = read_only.parent.parent
    for args in (
        ["start", "waiter", "--app", "ro_app:waiter", "--db", db],
        ["emit", "go", '{"n": 1}', "--db", db],
        ["worker", "ro_app:waiter", "--db", db],  # refused before it serves: no SIGTERM needed
    ):
        done = _run(["-m", "ironflow", *args], root)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1, (args, done.stderr)
        assert lines[0].startswith(f"ironflow: error: cannot write to the database {db}: ")


@pytest.mark.parametrize("read_only", ["file", "directory"], indirect=True)
def test_cli_reads_a_read_only_database(read_only: Path) -> None:
    db = str(read_only)
    root = read_only.parent.parent
    listed = _run(["-m", "ironflow", "runs", "list", "--db", db, "--json"], root)
    assert listed.returncode == 0, listed.stderr
    assert [run["id"] for run in json.loads(listed.stdout)] == ["r1"]
    shown = _run(["-m", "ironflow", "runs", "show", "r1", "--db", db], root)
    assert shown.returncode == 0, shown.stderr
    assert "waiting" in shown.stdout
    exported = _run(["-m", "ironflow", "runs", "export", "r1", "--db", db], root)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)[0]["type"] == "RunStarted"


def _read_only_connection(engine: Engine) -> None:
    """Swap the engine's connection for one SQLite may only read, as a file system
    remounted read-only under a running worker would leave it."""
    path = os.path.abspath(engine.store.path)
    engine.store.conn.close()
    engine.store.conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )


def test_writes_to_a_database_that_became_read_only_raise_store_error(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    engine = _engine(path, VirtualClock())
    engine.start("waiter", run_id="r1")
    engine.run_until_idle()
    _read_only_connection(engine)
    expected = f"cannot write to the database {path}: attempt to write a readonly database"
    with pytest.raises(StoreError, match=expected):
        engine.start("waiter")
    with pytest.raises(StoreError, match=expected):
        engine.emit("go", {"n": 1})
    assert engine.get_run("r1").status == "waiting"  # reads still work
    engine.close()


def test_a_worker_whose_database_became_read_only_stops_with_store_error(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "app.db")
    engine = _engine(path, VirtualClock())
    engine.start("waiter", run_id="r1")
    _read_only_connection(engine)  # its first round cannot take the run
    outcome: list[BaseException] = []

    def serve() -> None:
        try:
            engine.serve(install_signals=False)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(WAIT)
    if thread.is_alive():  # pragma: no cover - the failure this test guards against
        engine.stop()
        thread.join(WAIT)
        pytest.fail("serve() kept running on a read-only database")
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError), outcome
    assert "cannot write to the database" in str(outcome[0])
    engine.close()


def test_engine_opens_at_once_while_another_connection_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    """The read-only probe does not wait for (nor fail on) another writer's transaction."""
    path = str(tmp_path / "app.db")
    clock = VirtualClock()
    first = _engine(path, clock)
    first.start("waiter", run_id="r1")
    first.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO ironflow_meta VALUES ('held', 'by another writer')")
    try:
        began = time.monotonic()
        engine = _engine(path, clock)  # waited the 10 s busy timeout, then raised, before
        assert time.monotonic() - began < 5.0  # far below the busy timeout: it did not wait
        assert engine.get_run("r1").status == "pending"  # reads go on beside the writer
        # The probe's busy_timeout of 0 is not left behind: writes still wait their turn.
        assert engine.store.conn.execute("PRAGMA busy_timeout").fetchone() == (10000,)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    engine.run_until_idle()
    assert engine.get_run("r1").status == "waiting"
    engine.close()


def test_the_fixture_really_makes_files_read_only(tmp_path: Path) -> None:
    """Guards the tests above: a mode-0444 file cannot be opened for writing in _run()."""
    target = tmp_path / "locked.txt"
    target.write_text("x")
    target.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    done = _run(["-c", f"open({str(target)!r}, 'a')"], tmp_path)
    assert done.returncode != 0 and "PermissionError" in done.stderr
