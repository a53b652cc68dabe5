"""Golden histories: replay an exported history against the current code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ironflow.history.codec import loads
from ironflow.history.events import HistoryEvent
from ironflow.interpreter import Decision, check_replayable
from ironflow.interpreter import replay as _replay


def replay(flow: Any, history: Any) -> Decision:
    """Replay ``history`` (a list of events, JSON text, or a path to a file written by
    ``ironflow runs export``) with ``flow``; raises ``NonDeterminismError`` on divergence,
    and ``ValueError`` for an empty history or one of another function than ``flow``."""
    events = load_history(history)
    check_replayable(flow, events, _origin(history))
    return _replay(flow, events)


def _origin(history: Any) -> str:
    """How a message names ``history``: its file, or "the history"."""
    if isinstance(history, Path) or (
        isinstance(history, str) and not history.lstrip().startswith(("[", "{"))
    ):
        return str(history)
    return "the history"


def load_path(path: str | Path) -> list[HistoryEvent]:
    """A history read from a JSON file written by ``ironflow runs export``."""
    return loads(Path(path).read_text(encoding="utf-8"))


def load_history(history: Any) -> list[HistoryEvent]:
    """A history from a list of events, JSON text, or a path to an exported JSON file."""
    if isinstance(history, Path):
        return load_path(history)
    if isinstance(history, str):
        if history.lstrip().startswith(("[", "{")):
            return loads(history)
        return load_path(history)
    return list(history)
