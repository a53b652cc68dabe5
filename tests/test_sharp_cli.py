"""Issue 10, items 16-20: the CLI and the worker, for the person at the terminal."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import ironflow
from ironflow import Engine, step
from ironflow.cli import cli
from ironflow.runtime.clock import SystemClock
from ironflow.testing import VirtualClock

ROOT = Path(__file__).resolve().parent.parent

APP = """
import os

import ironflow
from ironflow import Engine, step


def hello(name):
    return f"hello {name}"


@ironflow.function(id="greet", on="user.created")
def greet(ctx):
    return (yield step.run("hello", hello, ctx.event.data.get("name", "you")))


@ironflow.function(id="approve")
def approve(ctx):
    event = yield step.wait_for_event("ok", event="order.approved", match="data.orderId")
    return event.data


engine = Engine(os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.db"))
engine.register(greet)
engine.register(approve)
"""


class Project:
    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.module: Any = importlib.import_module(name)
        self.app_db = root / "app.db"

    @property
    def spec(self) -> str:
        return f"{self.name}:engine"

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self.cli(*args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    name = f"sharpapp_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("IRONFLOW_DB", raising=False)
    monkeypatch.delenv("IRONFLOW_APP", raising=False)
    proj = Project(tmp_path, name)
    yield proj
    proj.module.engine.close()
    sys.modules.pop(name, None)


# --- 16: one rule for which database ------------------------------------------------------


def test_every_command_uses_the_app_engines_database_unless_db_is_given(project: Project) -> None:
    app = ["--app", project.spec]
    done = project.ok("start", "greet", '{"name": "ann"}', *app, "--run-id", "r-ann").stdout
    waiting = project.ok("start", "approve", '{"orderId": 1}', *app).stdout.strip()
    assert done.strip() == "r-ann"
    project.module.engine.run_until_idle()
    assert not (project.root / "ironflow.db").exists()

    listed = json.loads(project.ok("runs", "list", *app, "--json").stdout)
    assert {run["id"]: run["status"] for run in listed} == {
        "r-ann": "completed",
        waiting: "waiting",
    }
    shown = project.ok("runs", "show", "r-ann", *app).stdout
    assert "status    completed" in shown and '"hello ann"' in shown
    exported = project.ok("runs", "export", "r-ann", *app).stdout
    assert json.loads(exported)[0]["run_id"] == "r-ann"
    replayed = project.ok("replay", project.spec, "r-ann")  # APP's database, no --db
    assert replayed.stdout.startswith("ok: run r-ann (")
    cancelled = project.ok("runs", "cancel", waiting, *app, "--json")
    assert json.loads(cancelled.stdout)["cancel_requested"] is True
    project.module.engine.run_until_idle()
    assert project.module.engine.get_run(waiting).status == "cancelled"
    # Without --app and --db: ./ironflow.db, which does not exist (and is not made).
    missing = project.cli("runs", "list")
    assert missing.exit_code == 2
    assert "ironflow.db does not exist" in missing.stderr
    assert not (project.root / "ironflow.db").exists()


def test_db_and_the_environment_come_before_the_app_database(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = project.root / "other.db"
    project.ok("start", "greet", "--app", project.spec, "--run-id", "in-app")
    project.ok("start", "greet", "--app", project.spec, "--run-id", "in-other", "--db", str(other))

    def ids(*args: str) -> list[str]:
        return [run["id"] for run in json.loads(project.ok("runs", "list", *args).stdout)]

    assert ids("--app", project.spec, "--json") == ["in-app"]
    assert ids("--app", project.spec, "--db", str(other), "--json") == ["in-other"]
    monkeypatch.setenv("IRONFLOW_APP", project.spec)
    assert ids("--json") == ["in-app"]
    monkeypatch.setenv("IRONFLOW_DB", str(other))
    assert ids("--json") == ["in-other"]
    shown = project.ok("runs", "show", "in-other").stdout
    assert "run       in-other" in shown
    assert project.cli("runs", "show", "in-app").exit_code == 2  # not in other.db


def test_runs_commands_name_an_app_without_a_database_file(
    project: Project, tmp_path: Path
) -> None:
    (tmp_path / f"mem_{project.name}.py").write_text(
        "from ironflow import Engine\nengine = Engine(':memory:')\n"
    )
    result = project.cli("runs", "list", "--app", f"mem_{project.name}:engine")
    assert result.exit_code == 2
    assert result.stderr == (
        f"ironflow: error: mem_{project.name}:engine keeps its runs in memory (:memory:), "
        "which no other process sees; give --db\n"
    )
    sys.modules.pop(f"mem_{project.name}", None)


# --- 17: runs show prints a multi-line error whole -----------------------------------------


def _blocked_run(db: Path) -> str:
    """A run whose code changed under it: blocked with a NonDeterminismError."""

    def v1(ctx: Any) -> Any:
        yield step.run("a", str, 1)
        yield step.wait_for_event("go", event="go")

    def v2(ctx: Any) -> Any:
        yield step.run("b", str, 1)
        yield step.wait_for_event("go", event="go")

    engine = Engine(str(db))
    engine.register(ironflow.function(id="flow")(v1))
    run_id = engine.start("flow", run_id="changed")
    engine.run_until_idle()
    engine.close()
    engine = Engine(str(db))
    engine.register(ironflow.function(id="flow")(v2))
    engine.emit("go")
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "blocked"
    engine.close()
    return run_id


def test_runs_show_prints_a_multi_line_error_whole_and_indented(tmp_path: Path) -> None:
    db = tmp_path / "blocked.db"
    run_id = _blocked_run(db)
    shown = CliRunner().invoke(cli, ["runs", "show", run_id, "--db", str(db)]).stdout.splitlines()
    start = next(i for i, line in enumerate(shown) if line.startswith("error     "))
    assert shown[start : start + 4] == [
        "error     ironflow.errors.NonDeterminismError: replay diverged from history at seq 1:",
        "            recorded: run 'a' in scope '(root)' (fingerprint 'str')",
        "            current:  run 'b' in scope '(root)' (fingerprint 'str')",
        "          changed workflow code must keep old runs' commands in order; guard new code "
        "with ctx.patched()",
    ]
    assert shown[start + 4] == ""  # then the steps table


# --- 18: the worker says what goes wrong; ctx.log says where --------------------------------


def _failing(ctx: Any) -> Any:
    yield step.run("ok", str, 1)
    raise ValueError("no stock for order 7\nsecond line")


def test_the_engine_logs_one_warning_per_run_that_fails_or_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "runs.db"
    caplog.set_level(logging.DEBUG, logger="ironflow.runs")
    blocked = _blocked_run(db)
    engine = Engine(str(db))
    engine.register(ironflow.function(id="sells")(_failing))
    engine.register(ironflow.function(id="fine")(lambda ctx: (yield step.run("x", str, 2))))
    failed = engine.start("sells")
    engine.start("fine")
    engine.run_until_idle()
    engine.close()
    records = [r for r in caplog.records if r.name == "ironflow.runs"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        (
            "WARNING",
            f"run {blocked} (flow) blocked: ironflow.errors.NonDeterminismError: replay diverged "
            "from history at seq 1:",
        ),
        ("WARNING", f"run {failed} (sells) failed: ValueError: no stock for order 7"),
    ]
    assert [(r.run_id, r.function_id) for r in records] == [  # type: ignore[attr-defined]
        (blocked, "flow"),
        (failed, "sells"),
    ]
    assert engine.stats["runs_failed"] == 1
    assert engine.stats["runs_ended"] == 2


def test_stats_count_each_run_once_however_often_it_is_taken() -> None:
    def napper(ctx: Any) -> Any:
        for i in range(3):
            yield step.sleep(f"nap-{i}", "1h")
        return "rested"

    clock = VirtualClock()
    engine = Engine(":memory:", clock=clock)
    engine.register(ironflow.function(id="napper")(napper))
    engine.start("napper")
    engine.run_until_idle()
    for _ in range(3):
        clock.advance("1h")
        engine.run_until_idle()
    assert engine.stats["runs_taken"] == 4  # each wake-up takes the run again
    assert (engine.stats["runs_started"], engine.stats["runs_ended"]) == (1, 1)
    engine.close()


def test_ctx_log_records_carry_the_run_id_and_the_step_id(caplog: pytest.LogCaptureFixture) -> None:
    def flow(ctx: Any) -> Any:
        ctx.log.info("starting")
        yield step.run("fetch", str, 1)
        ctx.log.info("fetched", extra={"order": 7})
        yield step.parallel("both", [lambda s: s.run("left", str, 2)])
        ctx.log.warning("after both")
        yield step.sleep("nap", "1s")
        ctx.log.info("rested")

    caplog.set_level(logging.INFO, logger="ironflow.workflow")
    clock = VirtualClock()
    engine = Engine(":memory:", clock=clock)
    engine.register(ironflow.function(id="logs")(flow))
    run_id = engine.start("logs", run_id="log-run")
    engine.run_until_idle()
    clock.advance("1s")
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "completed"
    engine.close()
    got = [
        (r.name, r.getMessage(), r.run_id, r.step_id)  # type: ignore[attr-defined]
        for r in caplog.records
    ]
    assert got == [
        ("ironflow.workflow.logs", "starting", "log-run", None),
        ("ironflow.workflow.logs", "fetched", "log-run", "fetch"),
        ("ironflow.workflow.logs", "after both", "log-run", "both/0/left"),
        ("ironflow.workflow.logs", "rested", "log-run", "nap"),
    ]
    assert caplog.records[1].order == 7  # type: ignore[attr-defined]
    assert {r.filename for r in caplog.records} == {"test_sharp_cli.py"}  # the workflow's line


def test_the_worker_log_format_shows_run_and_step_and_copes_without_them() -> None:
    from ironflow.cli.main import LogFormatter  # here: the other tests run without it

    formatter = LogFormatter()

    def record(name: str, msg: str, **extra: Any) -> logging.LogRecord:
        made = logging.LogRecord(name, logging.INFO, __file__, 1, msg, (), None)
        made.__dict__.update(extra)
        return made

    stamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "
    logged = formatter.format(record("ironflow.workflow.f", "hi", run_id="r1", step_id="a/0/b"))
    assert re.fullmatch(stamp + "INFO run=r1 step=a/0/b hi", logged), logged
    first = formatter.format(record("ironflow.workflow.f", "hi", run_id="r1", step_id=None))
    assert re.fullmatch(stamp + "INFO run=r1 step=- hi", first), first
    mine = formatter.format(record("myapp.billing", "charged"))
    assert re.fullmatch(stamp + "INFO myapp.billing: charged", mine), mine
    ours = formatter.format(record("ironflow.runs", "run r (f) failed: E: x", run_id="r"))
    assert re.fullmatch(stamp + "INFO run r \\(f\\) failed: E: x", ours), ours


def _logging_flow(ctx: Any) -> Any:
    ctx.log.info("about to fail")
    yield step.run("ok", str, 1)
    raise ValueError("no stock for order 7")


@contextlib.contextmanager
def _app_logging(name: str | None) -> Iterator[list[str]]:
    """No logging configured but what an app puts on logger ``name`` (a handler collecting
    what reaches it); pytest's own handlers on the root are put back afterwards."""
    root, saved = logging.getLogger(), logging.getLogger().handlers[:]
    got: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(f"{record.name}: {record.getMessage()}")

    logger, handler = logging.getLogger(name), Collect()
    level = logger.level
    root.handlers.clear()
    if name is not None:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield got
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        root.handlers[:] = saved


def _serve_failing_run(capsys: pytest.CaptureFixture[str], configured: str | None) -> Any:
    from ironflow.cli.main import worker_logging  # here: the other tests run without it

    engine = Engine(":memory:")
    engine.register(ironflow.function(id="sells")(_logging_flow))
    capsys.readouterr()
    with _app_logging(configured) as got, worker_logging(engine.functions):
        run_id = engine.start("sells", run_id="r-sells")
        engine.run_until_idle()
    assert engine.get_run(run_id).status == "failed"
    engine.close()
    return got, capsys.readouterr().err


WORKFLOW_LINE = "ironflow.workflow.sells: about to fail"
RUNS_LINE = "ironflow.runs: run r-sells (sells) failed: ValueError: no stock for order 7"


@pytest.mark.parametrize(
    ("configured", "lines"),
    [
        ("ironflow", [WORKFLOW_LINE, RUNS_LINE]),
        ("ironflow.runs", [RUNS_LINE]),
        ("ironflow.workflow", [WORKFLOW_LINE]),
        ("ironflow.workflow.sells", [WORKFLOW_LINE]),
    ],
)
def test_the_worker_adds_no_log_handler_when_the_app_configured_an_ironflow_logger(
    capsys: pytest.CaptureFixture[str], configured: str, lines: list[str]
) -> None:
    # With the worker's handler on the root as well, each line would appear twice.
    got, err = _serve_failing_run(capsys, configured)
    assert got == lines
    assert err == ""
    assert logging.getLogger().handlers  # pytest's handlers are back


def test_the_worker_logs_each_line_once_when_nothing_is_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    got, err = _serve_failing_run(capsys, None)
    assert got == []
    shown = [re.sub(r"^\[[^]]*\] ", "", line) for line in err.splitlines()]
    assert shown == [
        "INFO run=r-sells step=- about to fail",
        "WARNING run r-sells (sells) failed: ValueError: no stock for order 7",
    ]


class _TickClock(SystemClock):
    """The system clock, counting the rounds that read it (one read per round)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.changed = threading.Condition()

    def now(self) -> Any:
        with self.changed:
            self.reads += 1
            self.changed.notify_all()
        return super().now()

    def wait_reads(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.reads >= count, timeout=30)


def test_serve_is_not_idle_while_a_step_runs() -> None:
    running, release = threading.Event(), threading.Event()

    def slow() -> str:
        running.set()
        assert release.wait(timeout=30)
        return "done"

    clock = _TickClock()
    engine = Engine(":memory:", clock=clock, poll="5ms")
    engine.register(ironflow.function(id="slow")(lambda ctx: (yield step.run("slow", slow))))
    idle_while_running: list[bool] = []
    idle = threading.Event()

    def on_idle() -> None:
        idle_while_running.append(running.is_set() and not release.is_set())
        idle.set()

    worker = threading.Thread(
        target=engine.serve, kwargs={"install_signals": False, "on_idle": on_idle}
    )
    run_id = engine.start("slow")
    worker.start()
    try:
        assert running.wait(timeout=30)
        clock.wait_reads(clock.reads + 10)  # rounds went by while the step runs
        release.set()
        assert engine.wait(run_id, timeout=30) == "done"
        idle.clear()
        assert idle.wait(timeout=30)  # idle once it is done
    finally:
        release.set()
        engine.stop()
        worker.join(timeout=30)
        engine.close()
    assert True not in idle_while_running


# --- 19: runs list says what it leaves out; the Engine signature in the docs ----------------


def test_runs_list_says_how_many_runs_it_leaves_out(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    engine = Engine(str(db))
    engine.register(ironflow.function(id="f")(lambda ctx: (yield step.run("x", str, 1))))
    engine.register(ironflow.function(id="g")(lambda ctx: (yield step.run("x", str, 1))))
    for i in range(55):
        engine.start("f", run_id=f"f-{i:02d}")
    for i in range(3):
        engine.start("g", run_id=f"g-{i}")
    engine.close()
    runner = CliRunner()
    shown = runner.invoke(cli, ["runs", "list", "--db", str(db)])
    assert shown.exit_code == 0
    assert len(shown.stdout.splitlines()) == 51  # the header and the newest 50
    assert shown.stderr == "ironflow: showing the newest 50 of 58 runs; --limit N shows more\n"
    as_json = runner.invoke(cli, ["runs", "list", "--db", str(db), "--json", "--function", "f"])
    assert len(json.loads(as_json.stdout)) == 50  # stdout stays a plain JSON list
    assert as_json.stderr == "ironflow: showing the newest 50 of 55 runs; --limit N shows more\n"
    whole = runner.invoke(cli, ["runs", "list", "--db", str(db), "--function", "g"])
    assert (len(whole.stdout.splitlines()), whole.stderr) == (4, "")
    exact = runner.invoke(cli, ["runs", "list", "--db", str(db), "--limit", "58"])
    assert (len(exact.stdout.splitlines()), exact.stderr) == (59, "")


def test_docs_index_lists_every_engine_argument() -> None:
    text = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    [shown] = re.findall(r"`Engine\((.*?)\)`", text, re.DOTALL)
    documented = [part.split("=")[0].strip() for part in shown.split(",")]
    documented = [name for name in documented if name != "*"]
    actual = [name for name in inspect.signature(Engine.__init__).parameters if name != "self"]
    assert documented == actual


# --- 20: emit without --app says what it cannot do ----------------------------------------


def test_emit_without_app_starts_registered_functions_and_says_when_none_is_triggered(
    project: Project,
) -> None:
    # The app's engine registered greet (on "user.created") in app.db as it was imported: an
    # emit without --app starts it from the database, and a worker that has it runs it.
    emitted = project.ok("emit", "user.created", '{"name": "zed"}', "--db", str(project.app_db))
    run_id = emitted.stdout.strip()
    assert len(run_id) == 32 and emitted.stderr == ""
    engine = project.module.engine
    assert engine.get_run(run_id).status == "pending"
    engine.run_until_idle()
    assert engine.get_run(run_id).output == "hello zed"
    # An event no registered function is triggered by: said on stderr, even with --json.
    project.ok("start", "greet", "--app", project.spec, "--run-id", "first")
    nothing = project.ok("emit", "order.shipped", '{"id": 1}', "--db", str(project.app_db))
    assert nothing.stdout == ""
    assert nothing.stderr == (
        "ironflow: event 'order.shipped' emitted; it started no runs: no function registered "
        "in the database is triggered by it (an engine that has a function registers it there: "
        "engine.register, as a worker starts); the event is stored and can satisfy the waits of "
        "runs already started, but a function registered later is not started by it\n"
    )
    as_json = project.ok("emit", "order.shipped", "--db", str(project.app_db), "--json")
    assert json.loads(as_json.stdout)["run_ids"] == []
    assert "no function registered in the database is triggered by it" in as_json.stderr
    engine.run_until_idle()
    assert sorted(run.id for run in engine.list_runs()) == sorted(["first", run_id])
    with_app = project.ok("emit", "user.created", "--app", project.spec)
    assert len(with_app.stdout.split()) == 1
    assert with_app.stderr == ""
