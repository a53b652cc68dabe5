"""Hypothesis strategies behind ``check_workflow``, for properties of your own.

A schedule is a *tape* of small integers; each question the simulation asks (which pending
command completes next, does this attempt fail, does the event arrive, crash here?) takes the
next number modulo its number of options. Hypothesis shrinks tapes toward zeros, and option 0
is always the plain path: no crash, the first pending command, the step succeeds, the event
arrives, no time passes. So a shrunk failure is a short, readable schedule.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# How each question's options are weighted: repeated entries make an answer more likely.
OPTIONS: dict[str, list[Any]] = {
    "crash": [False, False, False, True],
    "outcome": ["call", "call", "call", "fail", "fail-for-good"],
    "event": [True, True, False],
    "child": [True, True, False],
    "wait": [0, 1, 60, 86400],
}


class Tape:
    """A script for ``Simulation`` reading answers off a list of integers."""

    def __init__(self, numbers: list[int]) -> None:
        self.numbers = numbers
        self.position = 0

    def __call__(self, question: str, options: list[Any]) -> Any:
        choices = OPTIONS.get(question, options)
        number = self.numbers[self.position] if self.position < len(self.numbers) else 0
        self.position += 1
        return choices[number % len(choices)]


class Replaying:
    """A script that answers as ``tape`` did but never crashes: the crash-free twin."""

    def __init__(self, answers: list[tuple[str, Any]]) -> None:
        self.answers = [answer for answer in answers if answer[0] != "crash"]
        self.position = 0

    def __call__(self, question: str, options: list[Any]) -> Any:
        if question == "crash":
            return False
        _, answer = self.answers[self.position]
        self.position += 1
        return answer


class Recording:
    """Wraps a script and remembers every answer it gave."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.answers: list[tuple[str, Any]] = []

    def __call__(self, question: str, options: list[Any]) -> Any:
        answer = self.script(question, options)
        self.answers.append((question, answer))
        return answer


def tapes(max_size: int = 400) -> st.SearchStrategy[list[int]]:
    """Schedules as tapes of small integers (see the module docstring)."""
    return st.lists(st.integers(min_value=0, max_value=59), max_size=max_size)


def schedules(max_size: int = 400) -> st.SearchStrategy[Tape]:
    """Ready-made scripts for ``Simulation``."""
    return tapes(max_size).map(Tape)
