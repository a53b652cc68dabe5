"""The interpreter's layout: one handler per history event, one scheduler per command.

Cheap transition coverage: every command a workflow can yield is scheduled by exactly one
primitive module, and every history event is folded by exactly one module, so no event or
command falls through to "not a history event" / "not a command", and none is handled twice.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from ironflow.commands.classes import COMMAND_TYPES
from ironflow.history.events import EVENT_TYPES, StepCompleted
from ironflow.interpreter import core

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


def test_the_tables_hold_nothing_else() -> None:
    assert set(core.HANDLERS) == set(EVENT_TYPES.values())
    assert set(core.SCHEDULERS) == set(COMMAND_TYPES)


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
