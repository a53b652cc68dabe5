"""``ironflow server``: the HTTP API and web view (and, with APP, a worker) in one process."""

from __future__ import annotations

import importlib.util

import click

from ironflow.cli.db import db_path, open_engine
from ironflow.cli.errors import CLIError

DEFAULT_PORT = 9123


@click.command("server")
@click.argument("app", required=False)
@click.option(
    "--db",
    metavar="URL",
    envvar="IRONFLOW_DB",
    default=None,
    help="SQLite file, sqlite:///path or postgresql://... (default: $IRONFLOW_DB, then the "
    "database of APP's engine, then ./ironflow.db).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--token",
    envvar="IRONFLOW_TOKEN",
    default=None,
    help="Every request but /healthz must send 'Authorization: Bearer TOKEN' (default: "
    "$IRONFLOW_TOKEN). Required to listen beyond loopback.",
)
def server(app: str | None, db: str | None, host: str, port: int, token: str | None) -> None:
    """Serve the JSON API and the web view; with APP, also run APP's workflows.

    Listens on 127.0.0.1:9123 by default. Listening on any other address needs a token.
    SIGTERM or Ctrl-C stops it gracefully.
    """
    if importlib.util.find_spec("litestar") is None or importlib.util.find_spec("uvicorn") is None:
        raise CLIError('the server needs the server extra: pip install "ironflow[server]"')
    from ironflow.server.serve import ServeError, install_metrics, is_loopback, serve

    if token is not None and not token.strip():
        raise CLIError("--token is empty; give a token, or leave it out on loopback")
    if not is_loopback(host) and token is None:
        raise CLIError(
            f"refusing to listen on {host} without a token: anyone who can reach it could "
            f"start and cancel runs; give --token (or $IRONFLOW_TOKEN), or listen on 127.0.0.1"
        )
    from ironflow.cli.main import Reporter, loaded_app, worker_logging

    if app is not None:
        loaded = loaded_app(app, db)
        engine = loaded.engine_on(db, create=True)
        if not engine.functions:
            raise CLIError(f"{app} registers no functions: engine.register(...) some first")
        # After the app's import (a provider it sets stays its own), before the first round.
        missing = install_metrics()
        if missing is not None:
            click.echo(
                f"ironflow server: /metrics has no run or step counters: {missing}", err=True
            )
    else:
        loaded = None
        engine = open_engine(db_path(db), create=True)
    where = f"http://{host}:{port}/"
    role = f" and worker of {', '.join(sorted(engine.functions))}" if app else ""
    click.echo(f"ironflow server on {where} (database {engine.store.path}){role}")
    try:
        with worker_logging(engine.functions):
            serve(engine, host=host, port=port, token=token, worker=app is not None)
    except ServeError as exc:
        raise CLIError(str(exc)) from None
    finally:
        if loaded is not None:
            loaded.close(engine)
        else:
            engine.close()
    if app is not None:
        click.echo(f"server stopped: {Reporter(engine).summary()}")
    else:
        click.echo("server stopped")
