"""A worker process for ``tests/test_flow_cron_multi.py``: one cron function, a shared clock.

Usage::

    python tests/flow_cron_worker.py DB CLOCK JOURNAL

``CLOCK`` is a file holding the current time in microseconds since the epoch, which the test
moves: every worker reads the same time (a virtual clock shared by processes). Each run's
step appends ``<run-id> <tick> <pid>`` to ``JOURNAL``; each time the worker is idle it
appends ``<pid> <now_us>`` to ``JOURNAL.idle`` (so the test knows both workers looked after
it moved the clock). Serves until SIGTERM, then exits 0.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from typing import Any

import ironflow
from ironflow import Engine, step

CRON_ID = "every-minute"


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class FileClock:
    """The time the test wrote to a file (µs since the epoch)."""

    is_virtual = True

    def __init__(self, path: str) -> None:
        self.path = path

    def now_us(self) -> int:
        with open(self.path, encoding="ascii") as fh:
            return int(fh.read().strip())

    def now(self) -> _dt.datetime:
        return _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(microseconds=self.now_us())


def main() -> int:
    db, clock_path, journal = sys.argv[1:4]
    clock = FileClock(clock_path)

    @ironflow.function(id=CRON_ID, on=ironflow.Cron("* * * * *"))
    def every_minute(ctx: Any) -> Any:
        tick = ctx.event.data["tick"]
        line = f"{ctx.run_id} {tick} {os.getpid()}\n"
        yield step.run("journal", lambda: append(journal, line))
        return tick

    engine = Engine(db, clock=clock, poll="20ms", lease="5s")
    engine.register(every_minute)

    def on_idle() -> None:
        append(journal + ".idle", f"{os.getpid()} {clock.now_us()}\n")

    engine.serve(on_idle=on_idle)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
