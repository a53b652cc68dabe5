"""The ``ironflow`` command line: run a worker, start and inspect runs, check replays.

Bad input (malformed JSON, an unknown function or run, a missing or foreign database) prints
one line ``ironflow: error: ...`` on stderr, exits 2 and writes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

from ironflow.cli import render
from ironflow.cli.app import App, load_app
from ironflow.cli.db import check_writable, db_path, open_engine, reading
from ironflow.cli.errors import CLIError, one_line
from ironflow.cli.logjson import JsonLogFormatter
from ironflow.commands.names import check_event_name, check_idempotency_key
from ironflow.errors import NonDeterminismError
from ironflow.history import dumps, loads
from ironflow.interpreter import check_replayable
from ironflow.interpreter import replay as replay_history
from ironflow.runtime import STATUSES, Engine, StoreError
from ironflow.runtime.engine import check_run_id
from ironflow.runtime.store import is_postgres_url
from ironflow.runtime.store.rows import from_us

F = Callable[..., Any]


class _NeverRaised(click.UsageError):
    pass


# click >= 8.2 raises this usage error for a group given no command; its message is the help.
_NO_ARGS: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError", _NeverRaised)


class IronflowGroup(click.Group):
    """A group whose errors, usage errors included, are one line on stderr."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as exc:  # `ironflow` or `ironflow runs` alone: the help
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            code = 0
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"ironflow: error: {one_line(exc.format_message())}{hint}", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            click.echo(f"ironflow: error: {one_line(exc.format_message())}", err=True)
            code = exc.exit_code
        except StoreError as exc:  # a database it cannot use: damaged rows, read-only, ...
            click.echo(f"ironflow: error: {one_line(exc)}", err=True)
            code = CLIError.exit_code
        except click.Abort:
            click.echo("ironflow: aborted", err=True)
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def db_option(fn: F) -> F:
    return click.option(
        "--db",
        metavar="URL",
        envvar="IRONFLOW_DB",
        default=None,
        help=(
            "SQLite file or sqlite:///path (default: $IRONFLOW_DB, then the database of the "
            "APP's engine, then ./ironflow.db)."
        ),
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def app_option(required: bool) -> Callable[[F], F]:
    return click.option(
        "--app",
        "app_spec",
        metavar="APP",
        envvar="IRONFLOW_APP",
        required=required,
        help="module:engine or module:function, importable from here (default: $IRONFLOW_APP).",
    )


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def parse_data(text: str | None, what: str) -> Any:
    """A JSON argument (``-`` reads stdin); ``None`` when absent."""
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()

    def reject(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=reject)
    except ValueError as exc:
        raise CLIError(f"malformed JSON for {what}: {one_line(exc)}") from None


def checked_name(value: str, check: Callable[[str], str]) -> str:
    """``value`` if ``check`` accepts it, else a ``CLIError`` of the check's message."""
    try:
        check(value)
    except (TypeError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    return value


def app_database(db: str | None, app: App | None) -> str | None:
    """The database a command uses, the same rule everywhere: ``--db`` (or ``$IRONFLOW_DB``),
    else the database of the APP's engine, else None (``./ironflow.db``)."""
    if db is not None or app is None or app.engine is None:
        return db
    path: str = app.engine.store.path
    if path == ":memory:":
        raise CLIError(
            f"{app.spec} keeps its runs in memory (:memory:), which no other process sees; "
            f"give --db"
        )
    return path


def database_for(db: str | None, app_spec: str | None) -> str | None:
    """For commands that only need a database: import ``--app`` only when ``--db`` is not given."""
    if db is not None or app_spec is None:
        return db
    return app_database(None, load_app(app_spec))


def loaded_app(spec: str, db: str | None) -> App:
    """Import ``spec``; when ``--db`` is given, vet that database first (imports may write)."""
    if db is not None:
        check_writable(db_path(db), create=True)
    return load_app(spec)


@click.group(cls=IronflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ironflow", prog_name="ironflow")
def cli() -> None:
    """ironflow: durable workflows as plain Python generators, run on SQLite."""


# --- worker -----------------------------------------------------------------------------------


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


class Reporter:
    """``serve(on_idle=...)``: one line whenever the work done or the next timer changed."""

    COUNTS = ("runs_started", "runs_ended", "runs_failed", "runs_blocked", "steps_executed")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.last: tuple[Any, ...] | None = None

    def next_timer(self) -> _dt.datetime | None:
        due = self.engine.store.next_due()
        return from_us(due) if due is not None else None

    def summary(self) -> str:
        """Runs (each counted once, however often it was taken up again) and steps."""
        stats = self.engine.stats
        text = f"{counted(stats['runs_started'], 'run')} started, {stats['runs_ended']} ended"
        if stats["runs_failed"]:
            text += f" ({stats['runs_failed']} failed)"
        if stats["runs_blocked"]:
            text += f", {stats['runs_blocked']} blocked"
        return f"{text}, {counted(stats['steps_executed'], 'step')} executed"

    def __call__(self) -> None:
        due = self.next_timer()
        key = (*(self.engine.stats[name] for name in self.COUNTS), due)
        if key == self.last:
            return
        self.last = key
        if due is None:
            timer = "no timers"
        else:
            wait = (due - self.engine.clock.now()).total_seconds()
            timer = f"next timer {render.when(due)} UTC (in {render.duration(max(wait, 0))})"
        click.echo(f"[{render.when(self.engine.clock.now())}] idle: {self.summary()}; {timer}")


class LogFormatter(logging.Formatter):
    """``[time] LEVEL message``; ``ctx.log`` records say ``run=... step=...`` first, other
    loggers (not ironflow's) their name."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = render.when(_dt.datetime.fromtimestamp(record.created, _dt.UTC))
        if hasattr(record, "step_id"):  # ctx.log
            where = f"run={getattr(record, 'run_id', '-')} step={record.step_id or '-'} "
        elif not record.name.startswith("ironflow"):
            where = f"{record.name}: "
        else:
            where = ""
        text = f"[{stamp}] {record.levelname} {where}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextlib.contextmanager
def worker_logging(function_ids: Iterable[str] = (), json_lines: bool = False) -> Iterator[None]:
    """Show runs that fail or block and ``ctx.log`` INFO records on stderr, unless the app
    configured logging itself (its handlers then get them)."""
    root, ours = logging.getLogger(), logging.getLogger("ironflow")
    names = [
        "ironflow.runs",
        "ironflow.workflow",
        *(f"ironflow.workflow.{f}" for f in function_ids),
    ]
    if root.handlers or any(_handled(logging.getLogger(name)) for name in names):
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if json_lines else LogFormatter())
    root.addHandler(handler)
    level = ours.level
    if level == logging.NOTSET:
        ours.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def serve_metrics(port: int) -> None:
    """Serve Prometheus metrics on ``port``; a clear error if it cannot."""
    from ironflow.runtime import prometheus

    try:
        prometheus.serve(port)
    except RuntimeError as exc:  # the packages are missing: say which to install
        raise CLIError(f"--metrics-port: {exc}") from None
    except OSError as exc:
        raise CLIError(f"--metrics-port {port}: cannot listen there ({exc.strerror})") from None


def _handled(logger: logging.Logger) -> bool:
    """Whether a handler of the app gets ``logger``'s records: one on the logger or on an
    ancestor they propagate to. Ours would print each line a second time."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


@cli.command()
@click.argument("app")
@db_option
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (needs ironflow[prometheus]).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="How log records are written on stderr: readable text, or one JSON object per line.",
)
def worker(app: str, db: str | None, metrics_port: int | None, log_format: str) -> None:
    """Run APP's workflows until SIGTERM or Ctrl-C.

    APP is module:engine (an Engine) or module:function (a function declared with
    @ironflow.function), importable from the working directory. A module's engine keeps its
    own database unless --db (or $IRONFLOW_DB) names another. The database is created if
    missing.

    Prints a line when it goes idle, and one per run that fails or blocks (on stderr, with
    ctx.log records at INFO and up) unless the app configures logging itself.
    """
    loaded = loaded_app(app, db)
    engine = loaded.engine_on(db, create=True)
    if not engine.functions:
        raise CLIError(f"{app} registers no functions: engine.register(...) some first")
    names = ", ".join(sorted(engine.functions))
    click.echo(
        f"ironflow worker {engine.worker_id} on {engine.store.path}: functions {names} "
        f"(SIGTERM or Ctrl-C stops)"
    )
    reporter = Reporter(engine)
    try:
        if metrics_port is not None:
            serve_metrics(metrics_port)
        with worker_logging(engine.functions, json_lines=log_format == "json"):
            engine.serve(install_signals=True, on_idle=reporter)
    finally:
        loaded.close(engine)
    click.echo(f"worker stopped: {reporter.summary()}")


# --- start and emit ---------------------------------------------------------------------------


@cli.command()
@click.argument("function_id")
@click.argument("data", required=False)
@app_option(required=True)
@click.option("--run-id", default=None, help="Run id to use; starting it again starts nothing.")
@db_option
@json_option
def start(
    function_id: str,
    data: str | None,
    app_spec: str,
    run_id: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Start a run; prints its run id.

    DATA is the JSON the run's event carries ('-' reads it from stdin).
    """
    payload = parse_data(data, "DATA")
    if run_id is not None:
        try:
            check_run_id(run_id)  # before the app is imported or the database opened
        except ValueError as exc:
            raise CLIError(one_line(exc)) from None
    app = loaded_app(app_spec, db)
    app.function(function_id)
    engine = app.engine_on(db, create=True)
    try:
        started = engine.start(function_id, payload, run_id=run_id)
    except (TypeError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    finally:
        app.close(engine)
    if as_json:
        print_json({"run_id": started})
    else:
        click.echo(started)


NO_APP_NOTE = (
    "no function registered in the database is triggered by it (an engine that has a function "
    "registers it there: engine.register, as a worker starts); the event is stored and can "
    "satisfy the waits of runs already started, but a function registered later is not "
    "started by it"
)


@cli.command()
@click.argument("name")
@click.argument("data", required=False)
@click.option("--idempotency-key", default=None, help="The same key twice is one event.")
@app_option(required=False)
@db_option
@json_option
def emit(
    name: str,
    data: str | None,
    idempotency_key: str | None,
    app_spec: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Emit an event; prints the ids of the runs it started.

    DATA is the event's JSON ('-' reads it from stdin). It starts every function registered
    in the database whose trigger matches (registered by the engine of any process, a worker
    for one); a worker that has the function's code runs it. Without --app the database must
    exist.
    """
    checked_name(name, check_event_name)
    payload = parse_data(data, "DATA")
    if idempotency_key is not None:
        checked_name(idempotency_key, check_idempotency_key)
    app = App("") if app_spec is None else loaded_app(app_spec, db)
    if app_spec is None:
        engine = open_engine(db_path(db), create=False)
    else:
        engine = app.engine_on(db, create=True)
    try:
        started = engine.emit(name, payload, idempotency_key=idempotency_key)
    except (TypeError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    finally:
        app.close(engine)
    if as_json:
        print_json({"event": name, "run_ids": started})
    else:
        for rid in started:
            click.echo(rid)
    if app_spec is None and not started:  # said even with --json: it never starts one
        click.echo(f"ironflow: event {name!r} emitted; it started no runs: {NO_APP_NOTE}", err=True)
    elif not started and not as_json:
        click.echo(f"ironflow: event {name!r} emitted; it started no runs", err=True)


# --- runs -------------------------------------------------------------------------------------


@cli.group()
def runs() -> None:
    """Inspect and control runs."""


def get_run(engine: Engine, run_id: str) -> Any:
    try:
        return engine.get_run(run_id)
    except KeyError:
        raise CLIError(f"no run {run_id!r} in {engine.store.path}") from None


def runs_app_option(fn: F) -> F:
    return click.option(
        "--app",
        "app_spec",
        metavar="APP",
        envvar="IRONFLOW_APP",
        default=None,
        help="Use the database of APP's engine unless --db is given (default: $IRONFLOW_APP).",
    )(fn)


def count_runs(engine: Engine, status: str | None, function_id: str | None) -> int:
    """How many runs ``runs list`` would show without ``--limit``."""
    return engine.store.count_runs(status, function_id)


@runs.command("list")
@click.option(
    "--status", type=click.Choice(STATUSES), default=None, help="Only runs in this state."
)
@click.option("--function", "function_id", default=None, help="Only runs of this function id.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest N runs."
)
@runs_app_option
@db_option
@json_option
def list_runs(
    status: str | None,
    function_id: str | None,
    limit: int,
    app_spec: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first.

    When more runs match than --limit shows, says how many on stderr.
    """
    with reading(database_for(db, app_spec)) as engine:
        found = engine.list_runs(status=status, function=function_id, limit=limit)
        # Counted only when the page is full: a short page is all there is.
        total = count_runs(engine, status, function_id) if len(found) >= limit else len(found)
    if as_json:
        print_json([render.run_json(run) for run in found])
    elif not found:
        click.echo("no runs")
    else:
        for line in render.runs_table(found):
            click.echo(line)
    if total > len(found):
        click.echo(
            f"ironflow: showing the newest {len(found):,} of {total:,} runs; --limit N shows more",
            err=True,
        )


@runs.command("show")
@click.argument("run_id")
@runs_app_option
@db_option
@json_option
def show_run(run_id: str, app_spec: str | None, db: str | None, as_json: bool) -> None:
    """Show a run's timeline.

    Each step with its kind, status, attempts, duration, and what it returned, raised or
    waits for; parallel branches are indented under their parallel. Times are UTC.
    """
    with reading(database_for(db, app_spec)) as engine:
        run = get_run(engine, run_id)
        history = engine.history(run_id)
    line = render.timeline(history, run.status)
    if as_json:
        print_json(
            {
                "run": render.run_json(run),
                "steps": [view.to_json() for view in line.steps],
                "markers": [marker.to_json() for marker in line.markers],
            }
        )
        return
    for text in render.timeline_lines(run, line):
        click.echo(text)


@runs.command("export")
@click.argument("run_id")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write to this file."
)
@runs_app_option
@db_option
def export_run(run_id: str, output: str | None, app_spec: str | None, db: str | None) -> None:
    """Print a run's history as JSON.

    What `ironflow replay` and ironflow.testing.replay read back (-o writes it to a file).
    """
    with reading(database_for(db, app_spec)) as engine:
        get_run(engine, run_id)
        text = dumps(engine.history(run_id))
    if output is None:
        click.echo(text)
        return
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:
        raise CLIError(f"cannot write {output}: {exc.strerror or exc}") from None


def _control(db: str | None, run_id: str, allowed: tuple[str, ...], verb: str) -> Engine:
    """Vet the run read-only, then open the database for writing."""
    with reading(db) as engine:
        run = get_run(engine, run_id)
    if run.status not in allowed:
        raise CLIError(
            f"run {run_id!r} is {run.status}; only {' or '.join(allowed)} runs can be {verb}"
        )
    return open_engine(db_path(db), create=False)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--compensate", is_flag=True, help="Run the registered undos first.")
@click.option("--reason", default="", help="Recorded in the run's history.")
@runs_app_option
@db_option
@json_option
def cancel_run(
    run_id: str,
    compensate: bool,
    reason: str,
    app_spec: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Cancel a run and its child runs.

    A blocked run is cancelled at once; any other is cancelled by the next worker that drives
    it.
    """
    active = ("pending", "running", "waiting", "blocked")
    engine = _control(database_for(db, app_spec), run_id, active, "cancelled")
    try:
        engine.cancel(run_id, compensate=compensate, reason=reason)
        status = engine.get_run(run_id).status
    except (KeyError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    finally:
        engine.close()
    if as_json:
        print_json({"run_id": run_id, "status": status, "cancel_requested": True})
    elif status == "cancelled":
        click.echo(f"run {run_id} cancelled")
    else:
        click.echo(f"run {run_id}: cancel requested; a worker will cancel it (now {status})")


@runs.command("resume")
@click.argument("run_id")
@runs_app_option
@db_option
@json_option
def resume_run(run_id: str, app_spec: str | None, db: str | None, as_json: bool) -> None:
    """Resume a failed or blocked run.

    Completed steps are kept and the failed step runs again; a worker carries it on.
    """
    engine = _control(database_for(db, app_spec), run_id, ("failed", "blocked"), "resumed")
    try:
        engine.resume(run_id)
        status = engine.get_run(run_id).status
    except (KeyError, ValueError) as exc:
        raise CLIError(one_line(exc)) from None
    finally:
        engine.close()
    if as_json:
        print_json({"run_id": run_id, "status": status})
    else:
        click.echo(f"run {run_id} resumed; a worker will continue it")


# --- replay -----------------------------------------------------------------------------------


def _history_of(source: str, db: str | None, app: App) -> tuple[list[Any], str]:
    """The history in the JSON file ``source``, or of the run ``source`` in the database."""
    if os.path.isfile(source):
        try:
            with open(source, encoding="utf-8") as handle:
                return loads(handle.read()), source
        except (OSError, ValueError) as exc:
            raise CLIError(f"{source}: {one_line(exc)}") from None
    if source.endswith(".json"):
        raise CLIError(f"file {source} does not exist")
    db = app_database(db, app)
    path = db_path(db)
    if not is_postgres_url(path) and not os.path.exists(path):
        raise CLIError(f"{source} is not a file, and database {path} does not exist")
    with reading(db) as engine:
        get_run(engine, source)
        return engine.history(source), f"run {source}"


@cli.command("replay")
@click.argument("app")
@click.argument("file_or_run_id", metavar="FILE_OR_RUN_ID")
@db_option
@json_option
@click.pass_context
def replay_cmd(
    ctx: click.Context, app: str, file_or_run_id: str, db: str | None, as_json: bool
) -> None:
    """Check that APP's code replays a recorded history.

    Exit 0 if it does; else print where replay diverged and exit 1. FILE_OR_RUN_ID is a file
    written by `ironflow runs export` or the id of a run in --db (default: $IRONFLOW_DB, then
    the database of APP's engine, then ./ironflow.db).
    """
    loaded = load_app(app)
    history, origin = _history_of(file_or_run_id, db, loaded)
    try:
        check_replayable(None, history, origin)
    except ValueError as exc:
        raise CLIError(one_line(exc)) from None
    function_id = history[0].function_id
    if loaded.flow is None and function_id not in loaded.functions:
        # Replaying with another function would report a divergence that is no one's bug.
        known = ", ".join(repr(fid) for fid in sorted(loaded.functions)) or "none"
        raise CLIError(
            f"{origin} is a run of function {function_id!r}, but {app} declares {known}: the "
            f"functions differ; replay it with the app that declares {function_id!r}"
        )
    flow = loaded.flow_for(function_id)
    try:
        decision = replay_history(flow, history)
    except NonDeterminismError as exc:
        if as_json:
            print_json(
                {
                    "ok": False,
                    "function": function_id,
                    "events": len(history),
                    "position": exc.position,
                    "error": str(exc),
                }
            )
        else:
            click.echo(f"{origin} does not replay with {app}:")
            click.echo(str(exc))
        ctx.exit(1)
    except Exception as exc:
        message = f"{type(exc).__name__}: {one_line(exc)}"
        if as_json:
            print_json({"ok": False, "function": function_id, "error": message})
        else:
            click.echo(f"{origin}: replay with {app} raised {message}")
        ctx.exit(1)
    if as_json:
        print_json(
            {"ok": True, "function": function_id, "events": len(history), "status": decision.status}
        )
    else:
        click.echo(
            f"ok: {origin} ({len(history)} events, {function_id}, {decision.status}) replays "
            f"exactly with {app}"
        )


def _add_commands() -> None:
    # Modules of their own (this one is long enough); the server command imports the server
    # (Litestar, uvicorn) only when it runs.
    import ironflow.cli.lineage  # noqa: F401  (adds runs rerun, runs fork)
    from ironflow.cli.server import server

    cli.add_command(server)


_add_commands()


def main(args: Any = None) -> Any:
    """The ``ironflow`` console script."""
    return cli.main(args=args, prog_name="ironflow")


from ironflow.cli.events_cmd import events as _events  # noqa: E402  (a group of its own)

cli.add_command(_events)
