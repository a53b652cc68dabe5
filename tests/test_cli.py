"""The ``ironflow`` command line against real SQLite databases in a temporary directory."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ironflow import Engine
from ironflow.cli import cli
from ironflow.history import loads
from ironflow.interpreter import replay
from ironflow.runtime.store.sqlite_schema import connect_readonly
from ironflow.testing import VirtualClock
from ironflow.testing import replay as golden_replay

APP = """
import os

import ironflow
from ironflow import Engine, NonRetryableError, step


def add(a, b):
    return a + b


def decline(card):
    raise NonRetryableError(f"card {card} declined")


def refund(amount):
    return {"refunded": amount}


@ironflow.function(id="greet", on="user.created")
def greet(ctx):
    total = yield step.run("add", add, 1, 2)
    pair = yield step.parallel(
        "both",
        [lambda s: s.run("left", add, total, 1), lambda s: s.run("right", add, total, 2)],
    )
    return {"name": ctx.event.data.get("name"), "total": total, "pair": pair}


@ironflow.function(id="checkout")
def checkout(ctx):
    yield step.run("reserve", add, 0, 1)
    yield step.compensate("reserve", refund, 10)
    yield step.run("charge", decline, ctx.event.data.get("card", "4242"))


@ironflow.function(id="approval")
def approval(ctx):
    yield step.sleep("COOL", "1h")
    event = yield step.wait_for_event(
        "approved", event="order.approved", match="data.orderId", timeout="7d"
    )
    return event.data


def bare(ctx):
    yield step.run("add", add, 1, 2)


engine = Engine(os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.db"))
for fn in (greet, checkout, approval):
    engine.register(fn)
"""


class Project:
    """A directory with an app module (a unique name per test) and a database path."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.db = root / "runs.db"
        self.module: ModuleType = importlib.import_module(name)
        self.runner = CliRunner()

    def spec(self, attribute: str = "engine") -> str:
        return f"{self.name}:{attribute}"

    def cli(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    def engine(self, **kwargs: Any) -> Engine:
        engine = Engine(str(self.db), **kwargs)
        for function in self.module.engine.functions.values():
            engine.register(function)
        return engine

    def drive(self, **kwargs: Any) -> None:
        """Do, in this process, all the work that is due on ``runs.db``."""
        engine = self.engine(**kwargs)
        try:
            engine.run_until_idle()
        finally:
            engine.close()

    def started(self, function_id: str, data: Any = None) -> str:
        """Start a run through the CLI and return its id."""
        args = ["start", function_id, json.dumps(data), "--app", self.spec(), "--db", str(self.db)]
        result = self.cli(*args)
        assert result.exit_code == 0, result.stderr
        return result.stdout.strip()

    def status(self, run_id: str) -> str:
        conn = connect_readonly(str(self.db))  # leaves no -wal/-shm files behind
        try:
            return conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
        finally:
            conn.close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    name = f"cliapp_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("IRONFLOW_DB", raising=False)
    monkeypatch.delenv("IRONFLOW_APP", raising=False)
    proj = Project(tmp_path, name)
    yield proj
    proj.module.engine.close()
    sys.modules.pop(name, None)


@pytest.fixture
def populated(project: Project) -> tuple[Project, dict[str, str]]:
    """runs.db with a completed greet, a failed checkout and an approval that is sleeping."""
    ids = {
        "greet": project.started("greet", {"name": "ann"}),
        "checkout": project.started("checkout", {"card": "4242"}),
        "approval": project.started("approval", {"orderId": 7}),
    }
    project.drive()
    assert project.status(ids["greet"]) == "completed"
    assert project.status(ids["checkout"]) == "failed"
    assert project.status(ids["approval"]) == "waiting"
    return project, ids


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``directory``: content hash and mtime.

    Not bytecode caches, nor the side files of ``app.db``: the app modules open that database
    themselves when they are imported (which touches its shared-memory file).
    """
    found = {}
    for path in sorted(directory.rglob("*")):
        if "__pycache__" in path.parts or path.name in ("app.db-wal", "app.db-shm"):
            continue
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(directory))] = (digest, path.stat().st_mtime_ns)
    return found


def assert_bad_input(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ironflow: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- entry points -----------------------------------------------------------------------------


def test_python_dash_m_ironflow_shows_every_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ironflow", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for command in ("worker", "start", "emit", "runs", "replay"):
        assert command in done.stdout
    for args in (["runs", "--help"], ["runs"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0
        for command in ("list", "show", "export", "cancel", "resume"):
            assert command in result.stdout
    unknown = CliRunner().invoke(cli, ["nope"])
    assert_bad_input(unknown, "No such command 'nope'")
    assert list(tmp_path.iterdir()) == []


# --- start and emit ---------------------------------------------------------------------------


def test_start_prints_the_run_id_and_a_given_run_id_is_idempotent(project: Project) -> None:
    run_id = project.started("greet", {"name": "ann"})
    assert project.status(run_id) == "pending"
    as_json = project.cli(
        "start", "greet", "--app", project.spec("greet"), "--db", str(project.db), "--json"
    )
    assert as_json.exit_code == 0, as_json.stderr
    assert project.status(json.loads(as_json.stdout)["run_id"]) == "pending"
    args = ["start", "greet", "{}", "--app", project.spec(), "--db", str(project.db)]
    first = project.cli(*args, "--run-id", "order-1")
    again = project.cli(*args, "--run-id", "order-1")
    assert first.stdout.strip() == again.stdout.strip() == "order-1"
    project.drive()
    assert project.status(run_id) == project.status("order-1") == "completed"
    before = snapshot(project.root)
    taken = project.cli(
        "start", "checkout", "--run-id", "order-1", "--app", project.spec(), "--db", "runs.db"
    )
    assert_bad_input(taken, "'order-1' already belongs to a run of 'greet'")
    assert snapshot(project.root) == before


def test_start_reads_data_from_stdin(project: Project) -> None:
    args = ["start", "greet", "-", "--app", project.spec("greet"), "--db", str(project.db)]
    result = project.cli(*args, input='{"name": "bob"}')
    assert result.exit_code == 0, result.stderr
    project.drive()
    engine = project.engine()
    try:
        assert engine.get_run(result.stdout.strip()).output["name"] == "bob"
    finally:
        engine.close()


def test_module_engine_runs_on_its_own_database_unless_db_is_given(project: Project) -> None:
    result = project.cli("start", "greet", "--app", project.spec())
    assert result.exit_code == 0, result.stderr
    run_id = result.stdout.strip()
    assert project.module.engine.get_run(run_id).status == "pending"
    assert not project.db.exists()
    assert not (project.root / "ironflow.db").exists()


def test_db_defaults_to_the_environment_then_ironflow_db(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = project.cli("start", "greet", "--app", project.spec("greet"))
    assert result.exit_code == 0, result.stderr
    assert (project.root / "ironflow.db").exists()
    monkeypatch.setenv("IRONFLOW_DB", str(project.db))
    monkeypatch.setenv("IRONFLOW_APP", project.spec())
    result = project.cli("start", "checkout")
    assert result.exit_code == 0, result.stderr
    assert project.status(result.stdout.strip()) == "pending"
    listed = project.cli("runs", "list", "--json")
    assert [run["function"] for run in json.loads(listed.stdout)] == ["checkout"]


def test_emit_with_app_starts_the_runs_it_triggers_once_per_key(project: Project) -> None:
    args = ["emit", "user.created", '{"name": "cy"}', "--app", project.spec()]
    args += ["--db", str(project.db), "--idempotency-key", "k1"]
    first = project.cli(*args)
    assert first.exit_code == 0, first.stderr
    started = first.stdout.split()
    assert len(started) == 1
    again = project.cli(*args, "--json")
    assert json.loads(again.stdout) == {"event": "user.created", "run_ids": started}
    project.drive()
    assert project.status(started[0]) == "completed"


def test_emit_without_app_satisfies_a_waiting_run(populated: Any) -> None:
    project, ids = populated
    clock = VirtualClock(_dt.datetime.now(_dt.UTC) + _dt.timedelta(hours=2))
    project.drive(clock=clock)  # the cool-off timer fires: the run now waits for approval
    result = project.cli(
        "emit", "order.approved", '{"orderId": 7, "by": "dee"}', "--db", str(project.db)
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "started no runs" in result.stderr
    project.drive(clock=clock)
    engine = project.engine()
    try:
        run = engine.get_run(ids["approval"])
    finally:
        engine.close()
    assert (run.status, run.output) == ("completed", {"orderId": 7, "by": "dee"})


# --- runs list / show / export ----------------------------------------------------------------


def test_runs_list_is_a_table_with_filters_and_json(populated: Any) -> None:
    project, ids = populated
    before = snapshot(project.root)
    result = project.cli("runs", "list", "--db", str(project.db))
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "FUNCTION", "STATUS", "STARTED", "(UTC)", "DURATION"]
    assert len(rows) == 3
    assert "\x1b[" not in result.stdout  # no color when stdout is not a terminal
    by_id = {row.split()[0]: row.split() for row in rows}
    assert by_id[ids["greet"]][1:3] == ["greet", "completed"]
    assert by_id[ids["checkout"]][1:3] == ["checkout", "failed"]
    assert by_id[ids["approval"]][1:3] == ["approval", "waiting"]
    assert by_id[ids["approval"]][-1] == "-"

    failed = project.cli("runs", "list", "--status", "failed", "--db", str(project.db), "--json")
    assert [run["id"] for run in json.loads(failed.stdout)] == [ids["checkout"]]
    greet = project.cli("runs", "list", "--function", "greet", "--db", str(project.db), "--json")
    [run] = json.loads(greet.stdout)
    assert run["status"] == "completed"
    assert run["output"]["pair"] == [4, 5]
    assert run["duration_s"] >= 0
    limited = project.cli("runs", "list", "--limit", "1", "--db", str(project.db))
    assert len(limited.stdout.splitlines()) == 2
    assert snapshot(project.root) == before


def test_runs_show_is_a_readable_timeline(populated: Any) -> None:
    project, ids = populated
    before = snapshot(project.root)
    shown = project.cli("runs", "show", ids["greet"], "--db", str(project.db))
    assert shown.exit_code == 0, shown.stderr
    text = shown.stdout
    assert "\x1b[" not in text
    assert "status    completed" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "-> 3" in lines["add"]
    assert lines["both"].split()[1:3] == ["parallel", "completed"]
    branch = next(line for line in text.splitlines() if "both/0/left" in line)
    assert branch.startswith("  both/0/left")  # a branch is indented under its parallel
    assert branch.split()[1:4] == ["run", "completed", "1"]
    assert "-> 4" in branch

    failed = project.cli("runs", "show", ids["checkout"], "--db", str(project.db)).stdout
    assert "status    failed" in failed
    assert "card 4242 declined" in failed
    undo = next(line for line in failed.splitlines() if line.startswith("compensate:reserve"))
    assert undo.split()[1:3] == ["compensate", "completed"]
    charge = next(line for line in failed.splitlines() if line.startswith("charge"))
    assert charge.split()[1:4] == ["run", "failed", "1"]

    waiting = project.cli("runs", "show", ids["approval"], "--db", str(project.db)).stdout
    cool = next(line for line in waiting.splitlines() if line.startswith("COOL"))
    assert cool.split()[1:3] == ["sleep", "sleeping"]
    assert "until 20" in cool

    as_json = project.cli("runs", "show", ids["greet"], "--db", str(project.db), "--json")
    data = json.loads(as_json.stdout)
    assert data["run"]["id"] == ids["greet"]
    steps = {step["id"]: step for step in data["steps"]}
    assert list(steps) == ["add", "both", "both/0/left", "both/1/right"]
    assert steps["both/1/right"]["depth"] == 1
    assert steps["both/1/right"]["output"] == 5
    assert snapshot(project.root) == before


def test_runs_export_round_trips_through_the_history_codec(populated: Any, tmp_path: Path) -> None:
    project, ids = populated
    exported = project.cli("runs", "export", ids["checkout"], "--db", str(project.db))
    assert exported.exit_code == 0, exported.stderr
    history = loads(exported.stdout)
    engine = project.engine()
    try:
        assert history == engine.history(ids["checkout"])
    finally:
        engine.close()
    decision = replay(project.module.checkout, history)
    assert decision.done and decision.status == "failed"
    target = tmp_path / "golden.json"
    written = project.cli("runs", "export", ids["checkout"], "-o", str(target), "--db", "runs.db")
    assert written.exit_code == 0, written.stderr
    assert loads(target.read_text()) == history
    assert golden_replay(project.module.checkout, target).status == "failed"
    assert golden_replay(project.module.checkout, str(target)) == decision


# --- replay -----------------------------------------------------------------------------------


def test_replay_passes_for_unchanged_code(populated: Any, tmp_path: Path) -> None:
    project, ids = populated
    golden = tmp_path / "greet.json"
    project.cli("runs", "export", ids["greet"], "-o", str(golden), "--db", str(project.db))
    before = snapshot(project.root)
    from_file = project.cli("replay", project.spec(), str(golden))
    assert from_file.exit_code == 0, from_file.stdout + from_file.stderr
    assert from_file.stdout.startswith("ok: ")
    from_db = project.cli("replay", project.spec("checkout"), ids["checkout"], "--db", "runs.db")
    assert from_db.exit_code == 0, from_db.stdout + from_db.stderr
    bare = project.cli("replay", project.spec("bare"), str(golden), "--json")
    assert bare.exit_code == 1  # another workflow diverges from the recorded history
    assert json.loads(bare.stdout)["ok"] is False
    assert snapshot(project.root) == before


def test_replay_prints_the_divergence_and_exits_1(populated: Any, tmp_path: Path) -> None:
    project, ids = populated
    changed = f"v2_{project.name}"
    (tmp_path / f"{changed}.py").write_text(APP.replace('"both"', '"both-renamed"'))
    try:
        before = snapshot(project.root)
        result = project.cli("replay", f"{changed}:greet", ids["greet"], "--db", str(project.db))
        assert result.exit_code == 1
        assert "recorded: parallel 'both'" in result.stdout
        assert "current:  parallel 'both-renamed'" in result.stdout
        as_json = project.cli(
            "replay", f"{changed}:engine", ids["greet"], "--db", str(project.db), "--json"
        )
        assert as_json.exit_code == 1
        report = json.loads(as_json.stdout)
        assert report["ok"] is False and "both-renamed" in report["error"]
        unchanged = project.cli("replay", f"{changed}:engine", ids["checkout"], "--db", "runs.db")
        assert unchanged.exit_code == 0, unchanged.stdout
        assert snapshot(project.root) == before
    finally:
        module = sys.modules.pop(changed, None)
        if module is not None:
            module.engine.close()


# --- cancel and resume ------------------------------------------------------------------------


def test_cancel_a_waiting_run(populated: Any) -> None:
    project, ids = populated
    result = project.cli("runs", "cancel", ids["approval"], "--db", str(project.db))
    assert result.exit_code == 0, result.stderr
    assert "cancel requested" in result.stdout
    project.drive()
    assert project.status(ids["approval"]) == "cancelled"


def test_resume_a_failed_run_reruns_the_failed_step(populated: Any) -> None:
    project, ids = populated
    result = project.cli("runs", "resume", ids["checkout"], "--db", str(project.db), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"run_id": ids["checkout"], "status": "running"}
    project.drive()
    assert project.status(ids["checkout"]) == "failed"  # the card is still declined
    shown = project.cli("runs", "show", ids["checkout"], "--db", str(project.db)).stdout
    assert "resumed" in shown
    charge = next(line for line in shown.splitlines() if line.startswith("charge"))
    assert charge.split()[1:4] == ["run", "failed", "2"]


def test_blocked_runs_show_why_and_can_be_resumed_or_cancelled(
    populated: Any, tmp_path: Path
) -> None:
    project, ids = populated
    other = project.started("approval", {"orderId": 8})
    project.drive()
    changed = f"v2_{project.name}"
    (tmp_path / f"{changed}.py").write_text(APP.replace('"COOL"', '"cool-off"'))
    clock = VirtualClock(_dt.datetime.now(_dt.UTC) + _dt.timedelta(hours=2))
    try:
        v2 = importlib.import_module(changed)
        engine = Engine(str(project.db), clock=clock)
        engine.register(v2.approval)
        engine.run_until_idle()  # the timers are due: replay with the changed code diverges
        engine.close()
    finally:
        module = sys.modules.pop(changed, None)
        if module is not None:
            module.engine.close()
    assert project.status(ids["approval"]) == project.status(other) == "blocked"
    shown = project.cli("runs", "show", ids["approval"], "--db", str(project.db)).stdout
    assert "status    blocked" in shown
    assert "NonDeterminismError" in shown

    resumed = project.cli("runs", "resume", ids["approval"], "--db", str(project.db))
    assert resumed.exit_code == 0, resumed.stderr
    assert project.status(ids["approval"]) == "running"
    project.drive(clock=clock)  # the original code again: the run goes on to its wait
    assert project.status(ids["approval"]) == "waiting"

    cancelled = project.cli("runs", "cancel", other, "--db", str(project.db))
    assert cancelled.exit_code == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"run {other} cancelled"
    assert project.status(other) == "cancelled"


# --- bad input: one line on stderr, exit 2, nothing written -----------------------------------


def test_malformed_json_writes_nothing(populated: Any) -> None:
    project, _ = populated
    before = snapshot(project.root)
    for args in (
        ["start", "greet", "{nope", "--app", project.spec(), "--db", str(project.db)],
        ["start", "greet", "NaN", "--app", project.spec(), "--db", str(project.db)],
        ["emit", "user.created", "[1,", "--app", project.spec(), "--db", str(project.db)],
        ["emit", "user.created", "{'a': 1}", "--db", str(project.db)],
        ["start", "greet", "{nope", "--app", project.spec("greet"), "--db", "fresh.db"],
        ["emit", "user.created", "[1,", "--app", project.spec("greet"), "--db", "fresh.db"],
    ):
        assert_bad_input(project.cli(*args), "malformed JSON")
    assert snapshot(project.root) == before
    assert not (project.root / "fresh.db").exists()


def test_unknown_function_writes_nothing(populated: Any) -> None:
    project, _ = populated
    before = snapshot(project.root)
    for app in (project.spec(), project.spec("greet")):
        for db in (str(project.db), "fresh.db"):
            result = project.cli("start", "nope", "--app", app, "--db", db)
            assert_bad_input(result, "unknown function 'nope'")
    assert snapshot(project.root) == before
    assert not (project.root / "fresh.db").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["runs", "show"],
        ["runs", "export"],
        ["runs", "cancel"],
        ["runs", "resume"],
        ["replay", "APP:engine"],
    ],
)
def test_unknown_run_id_writes_nothing(populated: Any, command: list[str]) -> None:
    project, _ = populated
    before = snapshot(project.root)
    args = [part.replace("APP", project.name) for part in command]
    result = project.cli(*args, "no-such-run", "--db", str(project.db))
    assert_bad_input(result, "no-such-run")
    assert snapshot(project.root) == before


# Commands that must not create a database: they only read, or change runs that must exist.
MAY_NOT_CREATE = [
    ["runs", "list"],
    ["runs", "show", "r1"],
    ["runs", "export", "r1"],
    ["runs", "cancel", "r1"],
    ["runs", "resume", "r1"],
    ["replay", "APP:engine", "r1"],
    ["emit", "user.created"],
]


@pytest.mark.parametrize("command", MAY_NOT_CREATE)
def test_missing_database_is_not_created(project: Project, command: list[str]) -> None:
    before = snapshot(project.root)
    args = [part.replace("APP", project.name) for part in command]
    assert_bad_input(project.cli(*args, "--db", "missing.db"), "does not exist")
    if command[0] == "replay":  # with an APP, the default is its engine's database (issue 10)
        assert_bad_input(project.cli(*args), "no run 'r1' in", "app.db")
    else:
        assert_bad_input(project.cli(*args), "does not exist")  # the default: ./ironflow.db
    assert snapshot(project.root) == before
    assert not (project.root / "missing.db").exists()
    assert not (project.root / "ironflow.db").exists()


def _other_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('not ironflow')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["sqlite", "text"])
@pytest.mark.parametrize(
    "command",
    [
        *MAY_NOT_CREATE,
        ["start", "greet", "--app", "APP:engine"],
        ["start", "greet", "--app", "APP:greet"],
        ["emit", "user.created", "--app", "APP:engine"],
        ["worker", "APP:engine"],
        ["worker", "APP:greet"],
    ],
)
def test_a_database_that_is_not_ironflow_is_left_alone(
    project: Project, command: list[str], kind: str
) -> None:
    foreign = project.root / "foreign.db"
    if kind == "sqlite":
        _other_sqlite(foreign)
    else:
        foreign.write_text("just some text, not a database\n" * 20)
    before = snapshot(project.root)
    args = [part.replace("APP", project.name) for part in command]
    result = project.cli(*args, "--db", str(foreign))
    assert_bad_input(result, "foreign.db", "not an ironflow database")
    assert snapshot(project.root) == before


@pytest.mark.parametrize("command", MAY_NOT_CREATE)
def test_an_empty_file_is_only_initialized_by_commands_that_may_create(
    project: Project, command: list[str]
) -> None:
    empty = project.root / "empty.db"
    empty.write_bytes(b"")
    before = snapshot(project.root)
    args = [part.replace("APP", project.name) for part in command]
    assert_bad_input(project.cli(*args, "--db", str(empty)), "empty.db")
    assert snapshot(project.root) == before
    started = project.cli("start", "greet", "--app", project.spec(), "--db", str(empty))
    assert started.exit_code == 0, started.stderr
    assert project.cli("runs", "list", "--db", str(empty)).exit_code == 0


def test_runs_that_cannot_be_cancelled_or_resumed(populated: Any) -> None:
    project, ids = populated
    before = snapshot(project.root)
    done = ids["greet"]
    assert_bad_input(project.cli("runs", "cancel", done, "--db", str(project.db)), "completed")
    assert_bad_input(project.cli("runs", "resume", done, "--db", str(project.db)), "completed")
    waiting = ids["approval"]
    assert_bad_input(project.cli("runs", "resume", waiting, "--db", str(project.db)), "waiting")
    assert snapshot(project.root) == before


def test_usage_errors_are_one_line_too(populated: Any, tmp_path: Path) -> None:
    project, ids = populated
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    before = snapshot(project.root)
    db = ["--db", str(project.db)]
    cases = [
        (["runs", "list", "--status", "sleepy", *db], "sleepy"),
        (["runs", "list", "--limit", "0", *db], "limit"),
        (["start", "greet", *db], "--app"),
        (["runs", "show", *db], "RUN_ID"),
        (["replay", project.spec(), str(broken)], "broken.json"),
        (["replay", project.spec(), "missing.json"], "missing.json"),
        (["replay", "no_colon", ids["greet"], *db], "module:engine"),
        (["replay", "no_such_module:engine", ids["greet"], *db], "no_such_module"),
        (["replay", f"{project.name}:nothing", ids["greet"], *db], "nothing"),
        (["replay", f"{project.name}:add", ids["greet"], *db], "not an ironflow Engine"),
        (["start", "greet", "--app", project.spec("bare"), *db], "plain generator function"),
        (["runs", "list", "--db", "postgresql://x/y"], "postgresql"),
        (["runs", "list", "--db", ":memory:"], ":memory:"),
        (["runs", "list", "--db", str(tmp_path)], "directory"),
        (["emit", " ", *db], "event name"),
    ]
    for args, fragment in cases:
        assert_bad_input(project.cli(*args), fragment)
    assert snapshot(project.root) == before


# --- worker -----------------------------------------------------------------------------------


def _wait_for(predicate: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds}s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_runs_workflows_and_stops_cleanly_on_a_signal(
    project: Project, sig: signal.Signals
) -> None:
    greet = project.started("greet", {"name": "eve"})
    sleeper = project.started("approval", {"orderId": 1})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("IRONFLOW_DB", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ironflow", "worker", project.spec(), "--db", str(project.db)],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(
            lambda: project.status(greet) == "completed" and project.status(sleeper) == "waiting"
        )
    except AssertionError:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker did not finish the run:\n{out}\n{err}") from None
    live = project.cli("runs", "list", "--db", str(project.db), "--json")  # beside a writer
    assert live.exit_code == 0, live.stderr
    assert {run["id"] for run in json.loads(live.stdout)} == {greet, sleeper}
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker ignored {sig.name}:\n{out}\n{err}") from None
    assert proc.returncode == 0, err
    assert "functions approval, checkout, greet" in out
    assert "steps executed" in out
    assert "next timer" in out
    # Runs are counted once each (the sleeper was taken twice: started, then woken).
    assert "worker stopped: 2 runs started, 1 ended, 3 steps executed" in out, out
    assert err == ""
    leases = connect_readonly(str(project.db))
    try:
        held = leases.execute("SELECT COUNT(*) FROM runs WHERE lease_owner IS NOT NULL")
        assert held.fetchone()[0] == 0
    finally:
        leases.close()
