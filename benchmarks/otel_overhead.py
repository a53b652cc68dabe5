"""Per-step cost of the OpenTelemetry hooks, for callgrind (instruction counts).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m benchmarks.otel_overhead \
        STEPS MODE

runs one workflow of STEPS steps on an in-memory SQLite engine. MODE: ``none`` (nothing of
OpenTelemetry imported), ``api`` (the API imported, no SDK), ``sdk`` (the SDK's providers
set, spans to an exporter that drops them, metrics with no reader). Per-step cost =
(instructions at N steps - instructions at 0 steps) / N; compare with the same run on main.
"""

from __future__ import annotations

import sys

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
    if mode == "none":
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
    assert engine.wait(engine.start("bench", {"steps": steps})) == steps
    engine.close()


if __name__ == "__main__":
    main()
