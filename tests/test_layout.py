"""The runtime stays made of small modules with one job each (no module over ~400 lines)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "ironflow" / "runtime"
MAX_LINES = 420
MAX_METHOD_LINES = 10  # an Engine method's body past its docstring


def _lines(path: Path) -> int:
    with path.open(encoding="utf-8") as file:
        return sum(1 for _ in file)


def test_no_runtime_module_is_over_the_line_limit() -> None:
    sizes = {path.relative_to(RUNTIME).as_posix(): _lines(path) for path in RUNTIME.rglob("*.py")}
    assert "engine.py" in sizes and "store/base.py" in sizes, f"no runtime found at {RUNTIME}"
    over = {name: count for name, count in sorted(sizes.items()) if count > MAX_LINES}
    assert not over, (
        f"runtime modules over {MAX_LINES} lines: {over}; split each along a seam (one job per "
        f"module, imports pointing down only)"
    )


def test_the_engine_facade_is_a_list_of_short_delegations() -> None:
    """Each public ``Engine`` method says what it offers in a docstring and hands off in a few
    lines (checks of its arguments, a call, a wake-up): the work lives in the modules below."""
    from ironflow import Engine

    long = {}
    for name, member in vars(Engine).items():
        if name.startswith("_") or not callable(member):
            continue
        assert member.__doc__, f"Engine.{name} has no docstring"
        source = inspect.getsource(member)
        body = ast.parse(textwrap.dedent(source)).body[0].body[1:]
        lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
        if lines > MAX_METHOD_LINES:
            long[name] = lines
    assert not long, (
        f"Engine methods longer than {MAX_METHOD_LINES} lines past the docstring: {long}"
    )
