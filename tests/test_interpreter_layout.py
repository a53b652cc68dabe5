"""The interpreter's layout: one handler per history event, one scheduler per command.

Cheap transition coverage: every command a workflow can yield is scheduled by exactly one
primitive module, and every history event is folded by exactly one module, so no event or
command falls through to "not a history event" / "not a command", and none is handled twice.
What a command's ``CommandScheduled`` records (fingerprint, detail) is said by the module that
schedules it, and no kind is spelled as a bare string: they are ``ironflow.commands.kinds``.
"""

from __future__ import annotations

import ast
import json
import re
import types
from pathlib import Path
from typing import Any

import pendulum
import pytest

import ironflow
from ironflow import step
from ironflow.commands import Event, kinds
from ironflow.commands.classes import COMMAND_TYPES
from ironflow.history.codec import event_to_dict
from ironflow.history.events import EVENT_TYPES, RunStarted, StepCompleted
from ironflow.interpreter import Interpreter, core

INTERPRETER = Path(core.__file__).parent
PRIMITIVES = INTERPRETER / "primitives"
DOCS = INTERPRETER.parent.parent / "docs" / "primitives"


def owners(table: str, key: type) -> list[str]:
    return [part.__name__ for part in core.PARTS if key in getattr(part, table, {})]


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES.values(), key=lambda c: c.__name__))
def test_every_history_event_has_exactly_one_handler(event_type: type) -> None:
    assert len(owners("HANDLERS", event_type)) == 1, owners("HANDLERS", event_type)
    assert core.HANDLERS[event_type].__module__ == owners("HANDLERS", event_type)[0]


@pytest.mark.parametrize("command_type", COMMAND_TYPES, ids=lambda c: c.__name__)
def test_every_command_has_exactly_one_scheduler(command_type: type) -> None:
    assert len(owners("SCHEDULERS", command_type)) == 1, owners("SCHEDULERS", command_type)
    assert core.SCHEDULERS[command_type].__module__ == owners("SCHEDULERS", command_type)[0]


@pytest.mark.parametrize("command_type", COMMAND_TYPES, ids=lambda c: c.__name__)
def test_every_command_has_exactly_one_fingerprint_and_detail_from_its_scheduler(
    command_type: type,
) -> None:
    scheduler = owners("SCHEDULERS", command_type)
    assert owners("FINGERPRINTS", command_type) == scheduler
    assert owners("DETAILS", command_type) == scheduler
    assert core.FINGERPRINTS[command_type].__module__ in (*scheduler, core.determinism.__name__)
    assert core.DETAILS[command_type].__module__ in (*scheduler, core.determinism.__name__)


def test_the_tables_hold_nothing_else() -> None:
    assert set(core.HANDLERS) == set(EVENT_TYPES.values())
    assert set(core.SCHEDULERS) == set(COMMAND_TYPES)
    assert set(core.FINGERPRINTS) == set(COMMAND_TYPES)
    assert set(core.DETAILS) == set(COMMAND_TYPES)
    # determinism reads them through the interpreter; they are the merged tables themselves.
    assert Interpreter.fingerprints is core.FINGERPRINTS
    assert Interpreter.details is core.DETAILS


T0 = pendulum.datetime(2026, 1, 1, tz="UTC")


def charge(amount: int) -> int:
    return amount


def refund(amount: int) -> None:
    return None


def square(x: int) -> int:
    return x * x


def every_command(ctx: Any) -> Any:
    yield step.compensate("charge", refund, 5)
    branches = [
        lambda s: s.run(
            "charge", charge, 5, retry=ironflow.RetryPolicy(max_attempts=4), timeout="30s"
        ),
        lambda s: s.sleep("nap", "1h"),
        lambda s: s.sleep_until("until", T0.add(days=2)),
        lambda s: s.wait_for_event("approval", "order.approved", match="data.id", timeout="2d"),
        lambda s: s.invoke("child", "ship", {"n": 1}, timeout="90m"),
        lambda s: s.invoke_async("bg", "audit", [1, 2]),
        lambda s: s.publish("tell", "order.done", {"ok": True}),
        lambda s: s.map(
            "each",
            [1, 2],
            lambda item, s, i: s.run("sq", square, item),
            concurrency=1,
            on_error="all_settled",
        ),
    ]
    return (yield step.parallel("all", branches, concurrency=8))


# What the history stores for each command type (key order included: histories are not
# re-sorted), as recorded before the fingerprint and detail moved into the primitive modules.
RECORDED = """\
["compensate", "compensate:charge", "refund", {}]
["parallel", "all", "8 branches", {"concurrency": 8, "on_error": "fail_fast"}]
["run", "all/0/charge", "charge", {"max_attempts": 4, "timeout": 30.0}]
["sleep", "all/1/nap", "", {"due": "2026-01-01T01:00:00+00:00"}]
["sleep_until", "all/2/until", "", {"due": "2026-01-03T00:00:00+00:00"}]
["wait_event", "all/3/approval", "order.approved", {"due": "2026-01-03T00:00:00+00:00", \
"event": "order.approved", "match": "data.id", "match_value": 7}]
["invoke", "all/4/child", "ship", {"due": "2026-01-01T01:30:00+00:00", "function": "ship", \
"data": {"n": 1}, "child_run_id": "r-1/all/4/child"}]
["invoke_async", "all/5/bg", "audit", {"function": "audit", "data": [1, 2], \
"child_run_id": "r-1/all/5/bg"}]
["publish", "all/6/tell", "order.done", {"event": "order.done", "data": {"ok": true}, \
"event_id": "r-1/all/6/tell"}]
["map", "all/7/each", "2 items", {"concurrency": 1, "on_error": "all_settled"}]
["run", "all/7/each/0/sq", "square", {"max_attempts": 3}]
"""


def test_every_command_records_the_fingerprint_and_detail_it_always_did() -> None:
    started = RunStarted(0, T0, "r-1", "every", Event("e-1", "order", {"id": 7}, T0))
    decision = Interpreter(every_command).feed([started])
    lines = []
    for event in decision.events:
        stored = event_to_dict(event)
        lines.append(
            json.dumps([stored["kind"], stored["id"], stored["fingerprint"], stored["detail"]])
        )
    assert "\n".join(lines) + "\n" == RECORDED
    # The flow yields every command type, so every fingerprint and detail function ran.
    assert {json.loads(line)[0] for line in lines} == {cls.kind for cls in COMMAND_TYPES}


# --- one vocabulary: no kind spelled as a bare string in the interpreter -----------------------

KIND_VALUES = {
    value for name, value in vars(kinds).items() if name.isupper() and isinstance(value, str)
}


def bare_kinds(source: str, module: str = "") -> list[tuple[int, str]]:
    """Where ``source`` spells a kind as a string literal: (line, value).

    Allowed: docstrings (the primitives' tables name their kinds), attribute names
    (``getattr(flow, "retry")``, ``__slots__``), and the private ``*_KEY`` names of
    ``determinism`` (keys of tentative decisions, never stored).
    """
    tree = ast.parse(source)
    allowed: set[int] = set()
    for node in ast.walk(tree):
        documented = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        if isinstance(node, documented) and node.body and isinstance(node.body[0], ast.Expr):
            allowed.add(id(node.body[0].value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr"):
            allowed.update(id(arg) for arg in node.args[1:2])
        targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
        names = [getattr(target, "id", "") for target in targets]
        if isinstance(node, ast.Assign | ast.AnnAssign) and (
            "__slots__" in names
            or (module == "determinism" and node in tree.body and names[0].endswith("_KEY"))
        ):
            allowed.update(id(sub) for sub in ast.walk(node))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in KIND_VALUES
        and id(node) not in allowed
    ]


def test_no_interpreter_module_spells_a_kind_as_a_bare_string() -> None:
    found = {
        str(path.relative_to(INTERPRETER)): bare_kinds(path.read_text(encoding="utf-8"), path.stem)
        for path in sorted(INTERPRETER.rglob("*.py"))
    }
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_the_kind_scan_finds_a_bare_kind_and_passes_what_is_allowed() -> None:
    source = """\
\"\"\"A docstring may say "run" and "undo".\"\"\"
class Task:
    __slots__ = ("parallel",)
RETRY_KEY = "retry"
def schedule(slot, flow):
    \"\"\"Schedule a "sleep".\"\"\"
    getattr(flow, "retry", None)
    if slot.kind == "run" or slot.kind in ("parallel", "map"):
        return take(slot, ("invoke_async",), "not a kind")
    if slot:
        "publish"  # not a docstring
"""
    assert sorted(bare_kinds(source)) == [
        (4, "retry"),
        (8, "map"),
        (8, "parallel"),
        (8, "run"),
        (9, "invoke_async"),
        (11, "publish"),
    ]
    # In determinism, a module-level *_KEY constant is the private name of a tentative key.
    assert sorted(bare_kinds(source, "determinism")) == [
        (8, "map"),
        (8, "parallel"),
        (8, "run"),
        (9, "invoke_async"),
        (11, "publish"),
    ]


def test_a_second_registration_is_refused_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    def on_step_completed_again(interp: object, event: object) -> None: ...

    again = types.SimpleNamespace(HANDLERS={StepCompleted: on_step_completed_again})
    monkeypatch.setattr(core, "PARTS", (*core.PARTS, again))
    with pytest.raises(RuntimeError, match="StepCompleted has two HANDLERS"):
        core._merge("HANDLERS")


def test_every_primitive_module_is_a_docs_page_and_opens_with_its_table() -> None:
    modules = sorted(p.stem for p in PRIMITIVES.glob("*.py") if p.stem != "__init__")
    assert modules == [
        "compensate",
        "invoke",
        "parallel",
        "publish",
        "run",
        "sleep",
        "wait_for_event",
    ]
    for name in modules:
        text = (PRIMITIVES / f"{name}.py").read_text(encoding="utf-8")
        docstring = text.split('"""')[1]
        assert f"docs/primitives/{name}.md" in docstring, name
        assert (DOCS / f"{name}.md").is_file(), name
        for row in ("yields", "records", "runtime answers", "workflow receives"):
            assert re.search(rf"^\| {row} *\|", docstring, re.M), f"{name}: no {row!r} row"
        assert re.search(r"^(SCHEDULERS|HANDLERS)\b", text, re.M), name
    # map has a page of its own and lives with parallel.
    assert "docs/primitives/map.md" in (PRIMITIVES / "parallel.py").read_text(encoding="utf-8")


def test_no_interpreter_module_is_over_400_lines() -> None:
    sizes = {
        str(path.relative_to(INTERPRETER)): len(path.read_text(encoding="utf-8").splitlines())
        for path in INTERPRETER.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > 400} == {}
