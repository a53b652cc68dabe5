"""The replay benchmark runs end to end in quick mode (no timing assertions)."""

import importlib
import sys

from docs_runner import ROOT


def _bench():
    if str(ROOT) not in sys.path:  # benchmarks/ lives beside the package, not inside it
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("benchmarks.replay")


def test_quick_benchmark_prints_every_row(capsys):
    bench = _bench()
    rows = bench.main(["--quick", "--repeat", "1"])
    out = capsys.readouterr().out
    sizes, branches = bench.QUICK_SIZES, bench.QUICK_BRANCHES
    labels = [f"sequential {bench.short(n)}" for n in sizes] + [f"map {branches} branches"]
    assert [row["workload"] for row in rows] == labels
    lines = out.splitlines()
    for label in labels:
        assert any(line.startswith(label) for line in lines), out
    assert "events/s" in out and "floor" in out
    assert "scaling: time(sequential 1k) / time(sequential 100)" in out
    for n, row in zip(sizes, rows, strict=False):
        assert row["events"] == 2 * n + 2  # RunStarted, n x (scheduled, completed), RunCompleted
    assert rows[-1]["events"] == 2 * branches + 3  # plus the map's own CommandScheduled


def test_quick_server_benchmark_prints_every_request(capsys):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import pytest

    pytest.importorskip("litestar")
    bench = importlib.import_module("benchmarks.server")
    rows = bench.main(["--quick"])
    out = capsys.readouterr().out
    assert len(rows) == 6 and all(row["p50_ms"] > 0 for row in rows)
    for row in rows:
        assert row["request"] in out
    assert "GET /api/runs/{id} (50 steps)" in out and "2,000 runs" in out
