"""docs/embedding.md: its example of a foreign scheduler runs and its assertions hold."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from docs_runner import ROOT, python_blocks, run_python_blocks

from examples import asyncio_scheduler
from ironflow.history import StepCompleted, event_from_dict
from ironflow.interpreter import replay

PAGE = ROOT / "docs" / "embedding.md"


def test_embedding_page_has_one_example_of_at_most_80_lines():
    blocks = python_blocks(PAGE)
    assert len(blocks) == 1
    assert len(blocks[0][1].splitlines()) <= 80


def test_embedding_examples_run(capsys):
    assert run_python_blocks(PAGE) == 1
    out = capsys.readouterr().out
    assert out.startswith("completed\n")
    assert "run charge #2" in out


# --- examples/asyncio_scheduler.py: the interpreter driven by asyncio tasks and timers -------

EXAMPLE = ROOT / "examples" / "asyncio_scheduler.py"
ORDER = {"by": "ann", "mail": "SENT", "n": 2, "paid": 42}
BOUND = 60  # seconds a run of the example may take before the test fails


def _run_example(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run(
            [sys.executable, str(EXAMPLE), str(db), *args],
            capture_output=True,
            text=True,
            timeout=BOUND,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the example did not end within {BOUND}s: {exc.stderr}") from None


def _journal(db: Path) -> list[str]:
    path = Path(f"{db}.journal")
    return path.read_text(encoding="utf-8").split() if path.exists() else []


def _history(db: Path) -> list[Any]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT body FROM history WHERE run_id = 'order-7' ORDER BY seq")
        return [event_from_dict(json.loads(body)) for (body,) in rows]


def test_embedding_page_points_at_the_asyncio_example() -> None:
    assert "examples/asyncio_scheduler.py" in PAGE.read_text(encoding="utf-8")


def test_asyncio_example_runs_the_order_to_its_end(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    done = _run_example(db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"completed {json.dumps(ORDER, sort_keys=True)}"]
    # The first charge failed and the interpreter's retry ran it again; the rest ran once.
    assert sorted(_journal(db)) == ["charge", "charge", "email", "stock"]
    history = _history(db)
    assert [event.seq for event in history] == list(range(len(history)))
    cold = replay(asyncio_scheduler.order, history)
    assert cold.done and cold.output == ORDER and not cold.events


@pytest.mark.parametrize("commits", range(1, 8))
def test_asyncio_example_killed_after_each_commit_resumes_from_its_history(
    tmp_path: Path, commits: int
) -> None:
    """SIGKILLed right after its ``commits``-th commit (7 in all), the example started again
    rebuilds the run from SQLite and ends it as an uninterrupted run does; no step whose
    completion was committed before the kill runs again."""
    db = tmp_path / "runs.db"
    crashed = _run_example(db, "--crash", str(commits))
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    before = _history(db)
    committed = {e.id for e in before if isinstance(e, StepCompleted)}
    ran_before = len(_journal(db))

    done = _run_example(db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"completed {json.dumps(ORDER, sort_keys=True)}"]
    after = _history(db)
    assert after[: len(before)] == before  # the stored history is only ever appended to
    ran_after = _journal(db)[ran_before:]
    ids = {"charge": "charge", "email": "fan-out/0/email", "stock": "fan-out/1/stock"}
    assert not committed & {ids[name] for name in ran_after}, (committed, ran_after)
    assert _journal(db).count("charge") == 2  # never in flight at a commit: exactly its tries
    assert replay(asyncio_scheduler.order, after).output == ORDER
