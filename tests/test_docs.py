"""Every ```python block of the documentation runs on its own and its assertions hold.

One test per block, each in a fresh module with a temporary working directory. The page
docs/embedding.md has its own test (test_docs_embedding.py) and is skipped here.
"""

from __future__ import annotations

import subprocess
import sys
import traceback
import types
from pathlib import Path

import pytest
from docs_runner import ROOT, python_blocks

DOCS = ROOT / "docs"
# embedding.md and observability.md (it sets the process's global tracer provider) have
# tests of their own (test_docs_embedding.py, test_docs_observability.py).
SKIP = {DOCS / "embedding.md", DOCS / "observability.md"}


def _blocks() -> list[tuple[Path, int, int, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        if page in SKIP:
            continue
        for number, (line, code) in enumerate(python_blocks(page), 1):
            found.append((page, number, line, code))
    return found


BLOCKS = _blocks()


def _id(block: tuple[Path, int, int, str]) -> str:
    page, number, line, _ = block
    return f"{page.relative_to(ROOT).as_posix()}-block{number}-line{line}"


def test_docs_have_python_examples():
    pages = {page for page, *_ in BLOCKS}
    assert len(pages) >= 10, sorted(str(page) for page in pages)


@pytest.mark.parametrize("block", BLOCKS, ids=[_id(block) for block in BLOCKS])
def test_docs_block_runs(block, tmp_path, monkeypatch):
    page, number, line, code = block
    monkeypatch.chdir(tmp_path)
    name = f"_docs_block_{page.stem}_{number}"
    module = types.ModuleType(name)
    module.__file__ = str(page)
    sys.modules[name] = module  # so dataclasses, pickle and friends find the module
    try:
        # Leading newlines make tracebacks point at the markdown file's own line numbers.
        exec(compile("\n" * (line - 1) + code, str(page), "exec"), module.__dict__)
    except Exception as exc:
        raise AssertionError(
            f"python block {number} of {page.relative_to(ROOT)} (line {line}) raised "
            f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}\n"
            f"--- block ---\n{code}--- end of block ---"
        ) from exc
    finally:
        del sys.modules[name]


def test_testing_page_fixture_example_passes_under_pytest(tmp_path):
    """The pytest-fixture example of docs/testing.md, saved as a test file, passes in pytest."""
    [code] = [
        code
        for _, code in python_blocks(DOCS / "testing.md")
        if code.startswith("# tests/test_signup.py")
    ]
    test_file = code.split("# --- Not part of the test file")[0]
    (tmp_path / "test_signup.py").write_text(test_file, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_signup.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
