"""``ironflow events list``: the events that started no run, and why (see
``ironflow.runtime.flow_events``). Reads only: the database is opened read-only."""

from __future__ import annotations

import click

from ironflow.cli.db import reading
from ironflow.cli.errors import CLIError, one_line


@click.group()
def events() -> None:
    """Inspect events."""


@events.command("list")
@click.option("--name", default=None, help="Only events of this name.")
@click.option("--function", "function_id", default=None, help="Only skips of this function id.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest N."
)
@click.option(
    "--db",
    metavar="URL",
    envvar="IRONFLOW_DB",
    default=None,
    help="SQLite file, sqlite:///path or postgresql://... (default: $IRONFLOW_DB, then "
    "./ironflow.db).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_events(
    name: str | None, function_id: str | None, limit: int, db: str | None, as_json: bool
) -> None:
    """List events that started no run of a function they trigger, newest first.

    Each with the function and the reason: idempotency (a duplicate within 24 hours),
    rate_limit (over the function's rate limit), singleton (a run of it is not ended) or
    key_error (a key function failed on the worker that judged an event for an emitter
    without the code).
    """
    from ironflow.cli.main import print_json  # main imports this module

    with reading(db) as engine:
        try:
            found = engine.list_events(name, function=function_id, limit=limit)
        except ValueError as exc:
            raise CLIError(one_line(exc)) from None
    if as_json:
        print_json([item.to_json() for item in found])
        return
    if not found:
        click.echo("no events that started no run")
        return
    for item in found:
        when = item.ts.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{when}  {item.id}  {item.name}  {item.function}  {item.reason}: {item.detail}")
