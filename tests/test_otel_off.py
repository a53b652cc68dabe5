"""With no OpenTelemetry SDK configured (the API imported or not installed at all), the
engine reports nothing and does no telemetry work per step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc

import ironflow
from ironflow import step
from ironflow.runtime import telemetry


def add(a: int, b: int) -> int:
    return a + b


@ironflow.function(id="many")
def many(ctx):
    total = 0
    for i in range(ctx.event.data["steps"]):
        total = yield step.run(f"s{i}", add, total, 1)
    return total


def test_no_sdk_path_calls_nothing_and_allocates_nothing_per_step(engine, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("telemetry ran with no SDK configured")

    monkeypatch.setattr(telemetry, "run_step", forbidden)
    monkeypatch.setattr(telemetry, "run_step_async", forbidden)
    monkeypatch.setattr(telemetry, "committed", forbidden)
    monkeypatch.setattr(telemetry, "child_trace", forbidden)
    engine.register(many)
    engine.wait(engine.start("many", {"steps": 3}))  # warm up: imports, caches
    tracemalloc.start()
    try:
        run_id = engine.start("many", {"steps": 50})
        engine.run_until_idle()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert engine.wait(run_id) == 50
    assert telemetry.ON is False
    # telemetry.py and its two halves (telemetry_traces, telemetry_metrics)
    pattern = os.path.join(os.path.dirname(telemetry.__file__), "telemetry*.py")
    ours = snapshot.filter_traces([tracemalloc.Filter(True, pattern)])
    assert sum(stat.size for stat in ours.statistics("filename")) == 0
    stored = engine.store.get_run(run_id)
    assert stored is not None


def test_runs_without_the_api_installed(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
        import ironflow
        from ironflow import Engine, step
        from ironflow.runtime import telemetry

        def add(a, b):
            return a + b

        @ironflow.function(id="one")
        def one(ctx):
            return (yield step.run("a", add, 1, 2))

        engine = Engine("x.db")
        engine.register(one)
        print(engine.wait(engine.start("one")), telemetry.ON, telemetry.refresh())
        """
    )
    env = {**os.environ, "OTEL_PYTHON_TRACER_PROVIDER": "sdk"}  # makes it try the import
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "False", "False"]
