"""``ironflow runs rerun`` and ``runs fork``: new runs made from a recorded one."""

from __future__ import annotations

import click

from ironflow.cli.db import db_path, open_engine, reading
from ironflow.cli.errors import CLIError, one_line
from ironflow.cli.main import (
    database_for,
    db_option,
    get_run,
    json_option,
    print_json,
    runs,
    runs_app_option,
)
from ironflow.runtime import Engine


def _writer(db: str | None, app_spec: str | None, run_id: str) -> Engine:
    url = database_for(db, app_spec)
    with reading(url) as engine:
        get_run(engine, run_id)  # an unknown run is refused before anything is opened to write
    return open_engine(db_path(url), create=False)


@runs.command("rerun")
@click.argument("run_id")
@runs_app_option
@db_option
@json_option
def rerun_run(run_id: str, app_spec: str | None, db: str | None, as_json: bool) -> None:
    """Start a new run of RUN_ID's function with the same triggering event.

    The new run links back to RUN_ID (`runs show` prints it as its source); a worker runs it.
    """
    engine = _writer(db, app_spec, run_id)
    try:
        new = engine.rerun(run_id)
    except (KeyError, ValueError) as exc:
        raise CLIError(one_line(exc.args[0] if exc.args else exc)) from None
    finally:
        engine.close()
    if as_json:
        print_json({"run_id": new, "source_run_id": run_id})
    else:
        click.echo(f"run {new} started: a rerun of {run_id}; a worker will run it")


@runs.command("fork")
@click.argument("run_id")
@click.option(
    "--from-step",
    "from_step",
    required=True,
    metavar="STEP_ID",
    help="Step id as `runs show` prints it: the steps recorded before it are kept.",
)
@runs_app_option
@db_option
@json_option
def fork_run(
    run_id: str, from_step: str, app_spec: str | None, db: str | None, as_json: bool
) -> None:
    """Start a new run keeping RUN_ID's steps recorded before STEP_ID.

    Those steps are memoized (their bodies do not run again); the new run goes on from
    STEP_ID with the current code of a worker, and links back to RUN_ID.
    """
    engine = _writer(db, app_spec, run_id)
    try:
        new = engine.fork(run_id, from_step)
    except (KeyError, ValueError) as exc:
        raise CLIError(one_line(exc.args[0] if exc.args else exc)) from None
    finally:
        engine.close()
    if as_json:
        print_json({"run_id": new, "source_run_id": run_id, "from_step": from_step})
    else:
        click.echo(f"run {new} started: a fork of {run_id} from step {from_step!r}")
