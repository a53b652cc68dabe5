"""The commands and the interpreter stay pure: no clocks, threads, sockets, storage or runtime."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ironflow

PACKAGE = Path(ironflow.__file__).parent
PURE_LAYERS = ("commands", "interpreter")

FORBIDDEN_MODULES = (
    "time",
    "threading",
    "_thread",
    "asyncio",
    "sqlite3",
    "sqlite_utils",
    "socket",
    "subprocess",
    "os",
    "io",
    "random",
    "secrets",
    "concurrent",
    "multiprocessing",
    "select",
    "selectors",
    "signal",
    "ironflow.runtime",
    "ironflow.cli",
    "ironflow.testing",
)
# Calls that read a clock, whatever they are called on (``datetime.now()``, ``pendulum.now()``,
# ``time.monotonic()``, ``self.clock.now()``) or imported bare (``from time import time``).
CLOCK_CALLS = frozenset(
    {
        "now",
        "utcnow",
        "today",
        "time",
        "time_ns",
        "monotonic",
        "monotonic_ns",
        "perf_counter",
        "perf_counter_ns",
        "process_time",
        "sleep",
        "uuid1",
        "uuid4",
        "urandom",
    }
)
DYNAMIC_IMPORTS = frozenset({"__import__", "import_module"})


def _forbidden_module(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_MODULES)


def _pure_module(name: str) -> bool:
    """A module of the pure layers, which this test checks file by file."""
    return any(
        name == f"ironflow.{layer}" or name.startswith(f"ironflow.{layer}.")
        for layer in PURE_LAYERS
    )


def _resolve(module: str | None, level: int, path: Path) -> str:
    """The absolute name of ``from <dots><module> import ...`` in the file at ``path``."""
    if level == 0:
        return module or ""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    base = parts[:-level]
    return ".".join([*base, module] if module else base)


def impurities(source: str, path: Path) -> list[str]:
    """Everything in ``source`` that a pure layer must not do, one line each."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if _forbidden_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node.module, node.level, path)
            if _forbidden_module(module):
                found.append(f"{where}: from {module} import ...")
            for alias in node.names:
                # A pure module may be named like a clock call (``primitives.sleep``).
                clock = alias.name in CLOCK_CALLS and not _pure_module(f"{module}.{alias.name}")
                if _forbidden_module(f"{module}.{alias.name}") or clock:
                    found.append(f"{where}: from {module} import {alias.name}")
        elif isinstance(node, ast.Call):
            func = node.func
            called = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else None
            )
            if called in CLOCK_CALLS:
                found.append(f"{where}: calls {ast.unparse(func)}()")
            elif called in DYNAMIC_IMPORTS:
                found.append(f"{where}: imports dynamically with {ast.unparse(func)}()")
    return found


def pure_modules() -> list[Path]:
    return sorted(path for layer in PURE_LAYERS for path in (PACKAGE / layer).rglob("*.py"))


def test_the_pure_layers_are_found() -> None:
    names = {f"{path.parent.name}/{path.name}" for path in pure_modules()}
    assert {"commands/builders.py", "interpreter/core.py", "primitives/run.py"} <= names


@pytest.mark.parametrize("path", pure_modules(), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_pure_module_has_no_io_clock_or_runtime(path: Path) -> None:
    assert impurities(path.read_text(encoding="utf-8"), path) == []


# The checker itself must catch what it claims to catch.
IMPURE_SNIPPETS = [
    "import time",
    "import os.path",
    "import threading as t",
    "import asyncio",
    "import sqlite3",
    "import sqlite_utils",
    "import socket",
    "import subprocess",
    "import io",
    "import random",
    "import concurrent.futures",
    "import multiprocessing",
    "import select",
    "import selectors",
    "from os import environ",
    "from concurrent.futures import ThreadPoolExecutor",
    "from ironflow.runtime import Engine",
    "from ironflow import runtime",
    "from ironflow.cli import main",
    "from ironflow.testing import VirtualClock",
    "from .. import runtime",
    "from ..runtime.store import Store",
    "from time import monotonic",
    "from asyncio import sleep",
    "from pendulum import now",
    "from ironflow.history import now",
    "from datetime import datetime\nx = datetime.now()",
    "import datetime\nx = datetime.datetime.utcnow()",
    "import datetime\nx = datetime.date.today()",
    "import pendulum\nx = pendulum.now('UTC')",
    "x = clock.time()",
    "x = self.clock.monotonic()",
    "x = perf_counter()",
    "x = importlib.import_module('time')",
    "x = __import__('os')",
]


@pytest.mark.parametrize("source", IMPURE_SNIPPETS)
def test_the_checker_catches(source: str) -> None:
    fake = PACKAGE / "interpreter" / "fake.py"
    assert impurities(source, fake), f"checker missed: {source!r}"


@pytest.mark.parametrize(
    "source",
    [
        "import datetime\nimport hashlib\nimport uuid\nimport logging",
        "from ironflow.commands import Event",
        "from . import context",
        "def now(self):\n    return self._now",
        "x = ctx_now",
        "import timeit_helper",
        "from ironflow.runtime_free import x",
        "from ironflow.interpreter.primitives import sleep",
        "from .primitives import sleep",
    ],
)
def test_the_checker_lets_pure_code_pass(source: str) -> None:
    fake = PACKAGE / "interpreter" / "fake.py"
    assert impurities(source, fake) == []


def _loaded_after_import(module: str) -> list[str]:
    heavy = ["sqlite3", "sqlite_utils", "asyncio", "socket", "ironflow.runtime", "ironflow.cli"]
    code = (
        f"import {module}, sys, json; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
        timeout=60,
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "module", ["ironflow.interpreter", "ironflow.commands", "ironflow.history", "ironflow.step"]
)
def test_importing_the_core_loads_no_storage_network_or_runtime(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert loaded == [], (
        f"`import {module}` also loaded {loaded}: the pure core must not pull in storage or the "
        f"runtime (if ironflow/__init__.py re-exports Engine, import it lazily via __getattr__)"
    )
