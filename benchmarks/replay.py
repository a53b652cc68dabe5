"""How fast does the pure interpreter replay a history?

``python -m benchmarks.replay`` records, in memory, the histories of sequential workflows of 1k,
10k and 100k steps and of a 1,000-branch ``step.map``, by driving each workflow through the
interpreter the way a runtime does (outcomes scripted: every step succeeds with its function's
result, map branches finish in a shuffled order). It then times ``replay(flow, history)``,
best of ``--repeat`` runs with the garbage collector off, and prints events per second.

The *floor* column is the same workflow driven with no interpreter at all: the generator is
resumed with the recorded results and the ``step.run`` builders still build their commands. The
gap between the two is what the interpreter itself costs. The *live* column times the single
run that recorded the history: the incremental interpreter fed one outcome at a time, its
decision events appended and fed back, as an embedding runtime drives it (gc off, no I/O).
``--quick`` uses tiny sizes, for CI.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import platform
import random
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import ironflow
from ironflow import step
from ironflow.commands import Map, RunStep
from ironflow.history import HistoryEvent, RunStarted, StepCompleted
from ironflow.interpreter import Decision, Interpreter, replay

T0 = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)  # stdlib: pendulum arithmetic would dominate
TICK = _dt.timedelta(milliseconds=1)
FULL_SIZES = (1_000, 10_000, 100_000)
FULL_BRANCHES = 1_000
QUICK_SIZES = (10, 100, 1_000)
QUICK_BRANCHES = 50


def work(i: int) -> int:
    """The body of every benchmarked step."""
    return i


def sequential(n: int) -> ironflow.Function:
    """A workflow of ``n`` steps, one after another."""

    def flow(ctx: Any) -> Any:
        total = 0
        for i in range(n):
            total += yield step.run(f"s{i}", work, i)
        return total

    return ironflow.function(id=f"sequential-{n}")(flow)


def fan_out(n: int) -> ironflow.Function:
    """A workflow of one ``step.map`` over ``n`` items, all branches in flight at once."""

    def flow(ctx: Any) -> Any:
        results = yield step.map("fan-out", range(n), lambda item, s, i: s.run("f", work, item))
        return sum(results)

    return ironflow.function(id=f"map-{n}")(flow)


def record(flow: ironflow.Function, seed: int = 0) -> list[HistoryEvent]:
    """The history of one run of ``flow``, made by the interpreter as a runtime would."""
    interp = Interpreter(flow)
    history: list[HistoryEvent] = []
    now = T0

    def append(event: HistoryEvent) -> Decision:
        history.append(event)
        decision = interp.feed([event])
        history.extend(decision.events)
        interp.feed(decision.events)
        return decision

    trigger = ironflow.Event("ev-1", flow.id, None, now)
    decision = append(RunStarted(seq=0, ts=now, run_id="bench", function_id=flow.id, event=trigger))
    rng = random.Random(seed)
    while not decision.done:
        pending = decision.pending
        todo = pending[rng.randrange(len(pending))] if len(pending) > 1 else pending[0]
        command: Any = todo.command
        now += TICK
        result = command.fn(*command.args)
        decision = append(
            StepCompleted(seq=len(history), ts=now, id=todo.id, attempt=todo.attempt, result=result)
        )
    if decision.status != "completed":
        raise RuntimeError(f"recording {flow.id} did not complete: {decision}")
    return history


def results_of(history: Sequence[HistoryEvent]) -> dict[str, Any]:
    return {event.id: event.result for event in history if isinstance(event, StepCompleted)}


def drive_without_interpreter(flow: ironflow.Function, results: dict[str, Any]) -> Any:
    """The floor: resume the generator with recorded results; no history, no interpreter."""
    gen = flow(types.SimpleNamespace(run_id="bench", event=None))
    value: Any = None
    try:
        while True:
            command = gen.send(value)
            if type(command) is RunStep:
                value = results[command.name]
            elif type(command) is Map:
                prefix = command.name + "/"
                value = []
                for index, item in enumerate(command.items):
                    branch = command.fn(item, step, index)
                    value.append(results[f"{prefix}{index}/{branch.name}"])
            else:
                raise TypeError(f"the floor driver does not handle {command!r}")
    except StopIteration as stop:
        return stop.value


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The best wall time of ``repeat`` calls of ``fn``, gc off while timing; and a result."""
    best = float("inf")
    result: Any = None
    was_enabled = gc.isenabled()
    for _ in range(repeat):
        result = None
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
        finally:
            if was_enabled:
                gc.enable()
        best = min(best, elapsed)
    return best, result


def short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def measure(label: str, flow: ironflow.Function, expected: Any, repeat: int) -> dict[str, Any]:
    live, history = best_of(lambda: record(flow), 1)
    results = results_of(history)
    seconds, decision = best_of(lambda: replay(flow, history), repeat)
    if not decision.done or decision.output != expected or decision.events:
        raise RuntimeError(f"replay of {label} gave {decision}")
    floor, output = best_of(lambda: drive_without_interpreter(flow, results), repeat)
    if output != expected:
        raise RuntimeError(f"the floor driver of {label} returned {output!r}")
    events = len(history)
    return {
        "workload": label,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "floor_seconds": floor,
        "floor_events_per_s": events / floor,
        "overhead": seconds / floor,
        "live_seconds": live,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'workload':<20} {'events':>9} {'replay s':>10} {'events/s':>11} "
        f"{'floor s':>10} {'floor ev/s':>12} {'replay/floor':>12} {'live s':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['workload']:<20} {row['events']:>9,} {row['seconds']:>10.4f} "
            f"{row['events_per_s']:>11,.0f} {row['floor_seconds']:>10.4f} "
            f"{row['floor_events_per_s']:>12,.0f} {row['overhead']:>11.1f}x "
            f"{row['live_seconds']:>9.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CI smoke run")
    parser.add_argument(
        "--repeat", type=int, default=None, help="best of N timings (default 5, quick 1)"
    )
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    branches = QUICK_BRANCHES if args.quick else FULL_BRANCHES

    print(
        f"ironflow replay benchmark: Python {platform.python_version()} "
        f"({platform.python_implementation()}), best of {repeat}, gc off while timing"
    )
    rows = []
    for n in sizes:
        rows.append(measure(f"sequential {short(n)}", sequential(n), n * (n - 1) // 2, repeat))
    rows.append(
        measure(
            f"map {short(branches)} branches",
            fan_out(branches),
            branches * (branches - 1) // 2,
            repeat,
        )
    )
    print(format_table(rows))
    big, mid = rows[len(sizes) - 1], rows[len(sizes) - 2]
    print(
        f"scaling: time({big['workload']}) / time({mid['workload']}) = "
        f"{big['seconds'] / mid['seconds']:.2f} (history {big['events'] / mid['events']:.1f}x "
        f"longer; equal numbers mean linear)"
    )
    print(
        "floor: the same generator resumed with the recorded results and no interpreter; "
        "replay/floor is the interpreter's share"
    )
    print(
        "live: the single run that recorded the history, fed to the incremental interpreter "
        "one outcome at a time"
    )
    sys.stdout.flush()
    return rows


if __name__ == "__main__":
    main()
