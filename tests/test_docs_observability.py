"""docs/observability.md: its console example runs in a fresh process (it sets the global
tracer provider) and prints the run's spans in the caller's trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from docs_runner import ROOT, python_blocks

PAGE = ROOT / "docs" / "observability.md"


def test_console_example_prints_the_spans_of_one_trace(tmp_path):
    pytest.importorskip("opentelemetry.sdk")
    ((line, code),) = python_blocks(PAGE)
    done = subprocess.run(
        [sys.executable, "-c", "\n" * (line - 1) + code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    spans = json.loads("[" + done.stdout.replace("}\n{", "},\n{") + "]")
    names = [span["name"] for span in spans]
    assert sorted(names) == sorted(
        [
            "POST /checkout",
            "start checkout",
            "run start checkout",
            "step checkout/charge",
            "run end checkout",
        ]
    )
    assert len({span["context"]["trace_id"] for span in spans}) == 1
