"""``ironflow worker --metrics-port --log-format json`` in a real worker process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from ironflow.cli.errors import CLIError
from ironflow.cli.main import serve_metrics

pytest.importorskip("opentelemetry.exporter.prometheus")

APP = """
import ironflow
from ironflow import Engine, step


def add(a, b):
    return a + b


@ironflow.function(id="hello")
def hello(ctx):
    total = yield step.run("add", add, 1, 2)
    ctx.log.info("added %s", total)
    return total


engine = Engine("app.db")
engine.register(hello)
"""


WORKER_FLAGS = ("--log-format", "json", "--metrics-port")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def test_worker_serves_prometheus_metrics_and_logs_json(tmp_path: Path) -> None:
    (tmp_path / "otelapp.py").write_text(textwrap.dedent(APP))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    env.pop("IRONFLOW_DB", None)
    started = subprocess.run(
        [sys.executable, "-m", "ironflow", "start", "hello", "--app", "otelapp:engine"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip().split()[-1]
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ironflow", "worker", "otelapp:engine", *WORKER_FLAGS, str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    text = ""
    try:
        deadline = time.monotonic() + 60
        while 'ironflow_runs_ended_total{function="hello"' not in text:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"no ended run in the metrics:\n{text}")
            time.sleep(0.1)
            text = _scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert 'ironflow_steps_executed_total{function="hello",kind="run"' in text
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (added,) = [record for record in records if record["message"] == "added 3"]
    assert added["run_id"] == run_id
    assert (added["function_id"], added["step_id"], added["level"]) == ("hello", "add", "INFO")


def test_metrics_port_without_the_packages_is_a_clear_error(monkeypatch) -> None:
    from ironflow.runtime import prometheus

    def missing(port: int, host: str = "") -> None:
        raise RuntimeError(prometheus.INSTALL_HINT)

    monkeypatch.setattr(prometheus, "serve", missing)
    with pytest.raises(CLIError, match=r"ironflow\[prometheus\]"):
        serve_metrics(9464)
