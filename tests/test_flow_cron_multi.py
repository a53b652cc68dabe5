"""A cron tick makes exactly one run across two worker processes (issue 13), on both stores.

The workers share a clock through a file (``tests/flow_cron_worker.py``): the test moves it
past a tick, waits until both workers have looked at least twice since (each reports when it
is idle), and counts the runs of that tick. Waits are bounded and fail with what was seen.
"""

from __future__ import annotations

import collections
import datetime as _dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ironflow import Engine

WORKER = Path(__file__).with_name("flow_cron_worker.py")
DEADLINE = 60.0
T0 = _dt.datetime(2024, 1, 1, 0, 0, 30, tzinfo=_dt.UTC)


def us(at: _dt.datetime) -> int:
    return int(at.timestamp()) * 1_000_000


def wait_until(what: str, check: Callable[[], bool], describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {describe()}")
        time.sleep(0.01)


def set_clock(path: Path, at: _dt.datetime) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(us(at)))
    os.replace(tmp, path)  # atomic: a worker never reads half a number


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_cron_tick_makes_one_run_across_two_workers(
    tmp_path: Path, store_url: str, workers: list[subprocess.Popen[bytes]]
) -> None:
    clock = tmp_path / "clock"
    journal = tmp_path / "journal"
    idle = Path(str(journal) + ".idle")
    set_clock(clock, T0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONFLOW_CRASH")}
    for name in ("a", "b"):
        with open(tmp_path / f"{name}.err", "wb") as err:
            cmd = [sys.executable, str(WORKER), store_url, str(clock), str(journal)]
            workers.append(subprocess.Popen(cmd, stdout=err, stderr=err, env=env))
    pids = {proc.pid for proc in workers}

    def looks_since(at: _dt.datetime) -> collections.Counter[int]:
        seen: collections.Counter[int] = collections.Counter()
        if idle.exists():
            for line in idle.read_text().splitlines():
                pid, now = map(int, line.split())
                if now >= us(at):
                    seen[pid] += 1
        return seen

    def ran() -> list[tuple[str, str, int]]:
        if not journal.exists():
            return []
        return [
            (run_id, tick, int(pid))
            for run_id, tick, pid in (line.split() for line in journal.read_text().splitlines())
        ]

    def describe() -> str:
        errs = "".join((tmp_path / f"{n}.err").read_text(errors="replace") for n in "ab")
        return f"looks {dict(looks_since(T0))}, runs {ran()}, worker output:\n{errs}"

    def both_looked(at: _dt.datetime) -> Callable[[], bool]:
        return lambda: all(looks_since(at)[pid] >= 2 for pid in pids)

    wait_until("both workers idle at the start", both_looked(T0), describe)
    assert ran() == []  # 00:00 was before the schedule was registered
    for minute in (1, 2, 3):
        at = T0 + _dt.timedelta(minutes=minute)
        set_clock(clock, at)
        wait_until(f"minute {minute}'s run", lambda m=minute: len(ran()) >= m, describe)
        wait_until(f"both workers looked at minute {minute}", both_looked(at), describe)
    # Two workers skipped ahead together (missed ticks): still one run, of the latest tick.
    set_clock(clock, T0 + _dt.timedelta(minutes=10))
    wait_until("the catch-up run", lambda: len(ran()) >= 4, describe)
    wait_until("both looked after it", both_looked(T0 + _dt.timedelta(minutes=10)), describe)
    ticks = [tick for _, tick, _ in ran()]
    assert ticks == [
        "2024-01-01T00:01:00+00:00",
        "2024-01-01T00:02:00+00:00",
        "2024-01-01T00:03:00+00:00",
        "2024-01-01T00:10:00+00:00",
    ], describe()
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        assert proc.wait(timeout=DEADLINE) == 0, describe()
    reader = Engine(store_url)
    try:
        runs = reader.list_runs(function="every-minute")
        assert len(runs) == 4 and all(run.status == "completed" for run in runs)
    finally:
        reader.close()
