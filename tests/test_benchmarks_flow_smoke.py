"""The flow-control benchmark (``benchmarks/flow.py``) runs end to end in quick mode and
prints every row of issue 13 (no timing assertions)."""

import importlib
import json
import sys

from docs_runner import ROOT


def test_quick_flow_benchmark_prints_every_row(capsys, tmp_path):
    if str(ROOT) not in sys.path:  # benchmarks/ lives beside the package, not inside it
        sys.path.insert(0, str(ROOT))
    bench = importlib.import_module("benchmarks.flow")
    out_json = tmp_path / "rows.json"
    table = bench.main(["--quick", "--dir", str(tmp_path), "--json", str(out_json)])
    out = capsys.readouterr().out
    names = [row["name"] for row in table]
    assert names == [
        "per step, no options",
        "start, no options",
        "start+drive, no options",
        "start+drive, concurrency=10",
        "concurrency=10: added per run",
        "concurrency=10, 100 queued",
        "concurrency=10, 400 queued",
        "concurrency=10: growth per run, small -> large queue",
    ]
    for row in table:
        assert row["wall"] is not None and row["vm_steps"] is not None, row
        assert any(line.startswith(row["name"]) for line in out.splitlines()), (row, out)
    assert table[0]["vm_steps"] > 0 and table[1]["vm_steps"] > 0
    assert json.loads(out_json.read_text()) == table
