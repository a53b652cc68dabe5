"""``ironflow server`` (issue 14): refused beyond loopback without a token; serving a real
port with an APP as a worker too, and stopping gracefully on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("uvicorn")

from ironflow.cli import cli
from ironflow.runtime.store import open_store

APP = """
import ironflow
from ironflow import step

@ironflow.function(id="hello", on="say.hello")
def hello(ctx):
    text = yield step.run("greet", lambda name: "hi " + name, ctx.event.data["name"])
    return text
"""


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.org", "::"])
def test_listening_beyond_loopback_without_a_token_is_refused(tmp_path: Path, host: str) -> None:
    db = tmp_path / "x.db"
    result = CliRunner().invoke(cli, ["server", "--host", host, "--db", str(db)], env={})
    assert result.exit_code == 2
    assert result.stderr.startswith(f"ironflow: error: refusing to listen on {host} without a")
    assert len(result.stderr.splitlines()) == 1 and not db.exists()


def _call(url: str, token: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST" if data else "GET",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _metrics(base: str, token: str) -> str:
    request = urllib.request.Request(
        base + "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return str(response.read().decode())


def _bounded(predicate: Any, what: str, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def test_server_with_an_app_serves_works_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(textwrap.dedent(APP))
    db = tmp_path / "srv.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "IRONFLOW_TOKEN": "t0k"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env.pop("IRONFLOW_DB", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ironflow", "server", "flows:hello", "--db", str(db), "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines: list[str] = []

        def port() -> int | None:
            lines.append(proc.stderr.readline())  # type: ignore[union-attr]
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", lines[-1])
            return int(found.group(1)) if found else None

        base = f"http://127.0.0.1:{_bounded(port, 'uvicorn to listen')}"
        with urllib.request.urlopen(base + "/healthz", timeout=10) as health:
            assert json.loads(health.read()) == {"status": "ok"}
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(base + "/api/runs", timeout=10)
        assert denied.value.code == 401
        emitted = _call(base + "/api/events", "t0k", {"name": "say.hello", "data": {"name": "bo"}})
        [run_id] = emitted["run_ids"]
        run = _bounded(
            lambda: (r := _call(f"{base}/api/runs/{run_id}", "t0k"))["status"] == "completed" and r,
            "the server's worker to run it",
        )
        assert run["output"] == "hi bo"
        # The worker's OpenTelemetry metrics, counted just after the commit the API read.
        ended = 'ironflow_runs_ended_total{function="hello",otel_scope_name="ironflow"'
        metrics = _bounded(
            lambda: ended in (text := _metrics(base, "t0k")) and text, "the run in /metrics"
        )
        assert re.search(r'ironflow_steps_executed_total\{function="hello",kind="run",', metrics)
        assert 'ironflow_runs{function="hello",status="completed"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "and worker of hello" in out
    assert "server stopped: 1 run started, 1 ended, 1 step executed" in out, out
    store: Any = open_store(str(db), read_only=True)
    try:  # the worker let go of everything it held
        assert store.query("SELECT COUNT(*) FROM runs WHERE lease_owner IS NOT NULL") == [(0,)]
        assert store.query("SELECT COUNT(*) FROM workers") == [(0,)]
    finally:
        store.close()
