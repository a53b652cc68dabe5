"""Run the ```python blocks of a markdown page, so that documented examples stay true."""

from __future__ import annotations

import re
import sys
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(path: str | Path) -> list[tuple[int, str]]:
    """The ```python blocks of a markdown file, each with the line its code starts on."""
    text = Path(path).read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def run_python_blocks(path: str | Path) -> int:
    """Execute every ```python block of ``path``, each in a fresh module; return how many.

    Relative paths are taken from the repository root. Tracebacks point at the markdown file's
    own line numbers. A block that raises fails with an ``AssertionError`` showing the block,
    where it starts and the traceback.
    """
    path = Path(path)
    if not path.is_absolute():
        path = ROOT / path
    blocks = python_blocks(path)
    for number, (line, code) in enumerate(blocks, 1):
        name = f"_docs_block_{number}"
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module  # so dataclasses, pickle and friends find the module
        try:
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), module.__dict__)
        except Exception as exc:
            raise AssertionError(
                f"python block {number} of {path} (line {line}) raised "
                f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}\n"
                f"--- block ---\n{code}--- end of block ---"
            ) from exc
        finally:
            del sys.modules[name]
    return len(blocks)
