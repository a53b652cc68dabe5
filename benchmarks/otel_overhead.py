"""Per-step cost of the OpenTelemetry hooks: callgrind instruction counts and wall clock.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python benchmarks/otel_overhead.py STEPS MODE
    python benchmarks/otel_overhead.py STEPS MODE --time

runs one workflow of STEPS steps on an in-memory SQLite engine. MODE: ``missing`` (the
``opentelemetry`` package cannot be imported, as without the ``otel`` extra, and
``OTEL_PYTHON_TRACER_PROVIDER`` is set so that ironflow tries), ``none`` (nothing of
OpenTelemetry imported), ``api`` (the API imported, no SDK), ``sdk`` (the SDK's providers
set, spans to an exporter that drops them, metrics with no reader). Per-step cost =
(instructions at N steps - instructions at 0 steps) / N; compare with the same run on main
(``PYTHONPATH=<old tree>``: the script imports whichever ironflow is first on the path).
``--time`` prints the seconds the STEPS-step run took (wall clock, noisy on a busy machine).
"""

from __future__ import annotations

import os
import sys
import time

if __name__ == "__main__" and sys.argv[2:3] == ["missing"]:
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # as if not installed
    os.environ["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk"  # ironflow tries to import it

import ironflow
from ironflow import Engine, step


def add(a: int, b: int) -> int:
    return a + b


@ironflow.function(id="bench")
def bench(ctx):
    total = 0
    for i in range(ctx.event.data["steps"]):
        total = yield step.run(f"s{i}", add, total, 1)
    return total


def setup(mode: str) -> None:
    if mode in ("none", "missing"):
        return
    import opentelemetry.metrics
    import opentelemetry.trace

    if mode == "api":
        return
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    opentelemetry.trace.set_tracer_provider(provider)
    opentelemetry.metrics.set_meter_provider(MeterProvider())


def main() -> None:
    steps, mode = int(sys.argv[1]), sys.argv[2]
    setup(mode)
    engine = Engine(":memory:", durability="normal")
    engine.register(bench)
    engine.wait(engine.start("bench", {"steps": 3}))  # warm: imports, caches
    started = time.perf_counter()
    assert engine.wait(engine.start("bench", {"steps": steps})) == steps
    took = time.perf_counter() - started
    engine.close()
    if "--time" in sys.argv:
        print(f"{took:.6f}")


if __name__ == "__main__":
    main()
