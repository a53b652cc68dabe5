"""The engine benchmark runs end to end in quick mode (no timing assertions)."""

import importlib
import sys

from docs_runner import ROOT


def _bench():
    if str(ROOT) not in sys.path:  # benchmarks/ lives beside the package, not inside it
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("benchmarks.engine")


def test_quick_benchmark_prints_every_row(capsys, tmp_path):
    bench = _bench()
    table = bench.main(["--quick", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert [r["name"] for r in table] == bench.ROW_NAMES
    lines = out.splitlines()
    for name in bench.ROW_NAMES:
        assert any(line.startswith(name) for line in lines), (name, out)
    for r in table:
        assert set(r) == {"name", "value", "unit", "target", "ok", "note"}
        assert r["unit"], r
        if r["target"]:
            assert r["ok"] in (True, False, None), r
        else:
            assert r["ok"] is None, r
    assert "rows," in lines[-1]


def test_only_runs_the_chosen_sections(capsys, tmp_path):
    bench = _bench()
    table = bench.main(["--quick", "--only", "floor,replay", "--dir", str(tmp_path)])
    capsys.readouterr()
    assert [r["name"] for r in table] == bench.ROWS["floor"] + bench.ROWS["replay"]


def test_db_adds_the_postgresql_rows(capsys, tmp_path, pg_url):
    bench = _bench()
    pg = importlib.import_module("benchmarks.engine_pg")
    sections = "floor,step,throughput,batch,replay,latency"
    table = bench.main(["--quick", "--only", sections, "--dir", str(tmp_path), "--db", pg_url])
    out = capsys.readouterr().out
    sqlite_names = [name for section in sections.split(",") for name in bench.ROWS[section]]
    assert [r["name"] for r in table] == sqlite_names + pg.ROW_NAMES
    for name in pg.ROW_NAMES:
        assert any(line.startswith(name) for line in out.splitlines()), (name, out)
    values = {r["name"]: r["value"] for r in table}
    assert values["PG commit floor (NORMAL)"] > 0
    assert values["PG emit -> resume, other process, median"] > 0
    assert "PostgreSQL rows on PostgreSQL" in out
