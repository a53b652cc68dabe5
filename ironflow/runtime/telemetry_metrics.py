"""The metrics ironflow records (Prometheus names ``ironflow_*``, all labelled by
``function``): runs started and ended, steps executed, step duration, queue lag, runs by status.

Imported by ``telemetry._load`` only (once the application has imported the OpenTelemetry
API); ``telemetry`` makes one ``Meters`` per meter provider and calls it when metrics are on.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Observation

if TYPE_CHECKING:
    from ironflow.runtime.executor import Job, Outcome
    from ironflow.runtime.live import Live
    from ironflow.runtime.store import Batch

# Histogram buckets in seconds (the SDK's default ones are milliseconds); an API too old for
# the advisory argument keeps its defaults.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Meters:
    """The instruments of one meter, and what each moment of the engine records in them."""

    def __init__(self, meter: Any, runs: Callable[[], list[tuple[str, str, int]]]) -> None:
        seconds: dict[str, Any] = {}
        if "explicit_bucket_boundaries_advisory" in (
            inspect.signature(meter.create_histogram).parameters
        ):
            seconds["explicit_bucket_boundaries_advisory"] = list(BUCKETS)
        self.runs_started = meter.create_counter(
            "ironflow_runs_started", description="Runs started, by function"
        )
        self.runs_ended = meter.create_counter(
            "ironflow_runs_ended", description="Runs ended, by function and status"
        )
        self.steps = meter.create_counter(
            "ironflow_steps_executed",
            description="Step executions (each attempt), by function, kind and outcome",
        )
        self.step_duration = meter.create_histogram(
            "ironflow_step_duration",
            unit="s",
            description="Duration of a step execution, by function and kind",
            **seconds,
        )
        self.queue_lag = meter.create_histogram(
            "ironflow_queue_lag",
            unit="s",
            description="From when a run was due (created) to when a worker started it",
            **seconds,
        )
        self._runs = runs

        def observe(_options: Any) -> Iterator[Observation]:
            for function_id, status, count in self._runs():
                yield Observation(count, {"function": function_id, "status": status})

        meter.create_observable_gauge(
            "ironflow_runs", callbacks=[observe], description="Runs by status"
        )

    def step(self, job: Job, outcome: Outcome, seconds: float) -> None:
        """One step execution (attempt) that took ``seconds``."""
        labels = {"function": job.function_id, "kind": job.kind}
        self.step_duration.record(seconds, labels)
        self.steps.add(1, {**labels, "outcome": "completed" if outcome.ok else "failed"})

    def committed(self, live_runs: Mapping[str, Live], batch: Batch, now_us: int) -> None:
        """The runs a round committed started (with their queue lag) and ended."""
        for row in batch.history:
            if row[2] != "RunStarted":
                continue
            live = live_runs.get(row[0])
            if live is None:
                continue
            labels = {"function": live.function.id}
            self.runs_started.add(1, labels)
            lag = queue_lag(row[4], now_us)
            if lag is not None:
                self.queue_lag.record(lag, labels)
        for ended in batch.ended:
            status, run_id = ended[0], ended[-1]
            live = live_runs.get(run_id)
            if live is not None:
                self.runs_ended.add(1, {"function": live.function.id, "status": status})


def queue_lag(body: str, now_us: int) -> float | None:
    """Seconds from the run's creation (its triggering event's time) to its start."""
    try:
        ts = json.loads(body)["event"]["ts"]
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, (now_us - int(ts)) / 1_000_000) if isinstance(ts, int) else None
