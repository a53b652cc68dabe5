"""Golden histories: replay an exported history against the current code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ironflow.history.codec import loads
from ironflow.history.events import HistoryEvent
from ironflow.interpreter import Decision
from ironflow.interpreter import replay as _replay


def replay(flow: Any, history: Any) -> Decision:
    """Replay ``history`` (a list of events, JSON text, or a path to a file written by
    ``ironflow runs export``) with ``flow``; raises ``NonDeterminismError`` on divergence."""
    return _replay(flow, load_history(history))


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
