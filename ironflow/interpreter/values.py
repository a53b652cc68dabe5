"""What a ``yield`` hands back: fresh copies, typed results, and the errors of failed steps.

A step's recorded result reaches the workflow as a copy (so the code cannot change history),
structured by cattrs into the step function's annotated return type when that names an attrs
class or dataclass. A step that failed for good raises a ``StepError`` that is also an
instance of the original exception's class, so either ``except`` catches it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import attrs

from ironflow.commands.jsonvalue import copy_json
from ironflow.errors import StepError
from ironflow.history.codec import converter
from ironflow.history.errors import RemoteError, decode_error
from ironflow.history.events import ErrorInfo

_combined: dict[type, Any] = {}


def _step_error_class(cls: type[BaseException]) -> Any:
    """A class that is both ``StepError`` and ``cls``, so either ``except`` catches it."""
    if cls in _combined:
        return _combined[cls]
    made: Any
    if issubclass(cls, StepError | RemoteError) or not issubclass(cls, Exception):
        made = None  # a RemoteError stands for a class not loaded here: plain StepError
    else:
        try:
            made = type(
                cls.__name__,
                (StepError, cls),
                {
                    "_ironflow_original": cls,
                    "__module__": cls.__module__,
                    "__qualname__": cls.__qualname__,
                    "__init__": StepError.__init__,
                    "__str__": cls.__str__,
                },
            )
        except TypeError:  # incompatible layouts (e.g. OSError subclasses)
            made = None
    _combined[cls] = made
    return made


def step_error(info: ErrorInfo, step_id: str, attempts: int) -> BaseException:
    """The exception a workflow receives for a step that failed for good."""
    original = decode_error(info)
    made = _step_error_class(type(original))
    error: BaseException
    if made is None:
        error = StepError(
            f"step {step_id!r} failed after {attempts} attempt(s): {info.type}: {info.message}",
            step_id=step_id,
            attempts=attempts,
        )
    else:
        combined: Any = made.__new__(made)
        combined.args = original.args
        combined.step_id = step_id
        combined.attempts = attempts
        error = combined
    error.__cause__ = original
    return error


# A step function's result type (None: deliver the JSON as is), looked up once per function.
# The fold's StepCompleted fast path reads it directly: a missing key sends the result here.
RESULT_TYPES: dict[Any, Any] = {}


def _result_type(fn: Callable[..., Any]) -> Any:
    """The attrs/dataclass type a step's results are structured into, or None."""
    try:
        return RESULT_TYPES[fn]
    except (KeyError, TypeError):
        pass
    found: Any = None
    try:
        hint = inspect.signature(fn, eval_str=True).return_annotation
    except Exception:
        hint = inspect.Signature.empty
    if hint is not inspect.Signature.empty and _mentions_class(hint):
        found = hint
    with contextlib.suppress(TypeError):
        RESULT_TYPES[fn] = found
    return found


def _mentions_class(hint: Any) -> bool:
    import dataclasses

    if isinstance(hint, type) and (attrs.has(hint) or dataclasses.is_dataclass(hint)):
        return True
    return any(_mentions_class(arg) for arg in getattr(hint, "__args__", ()) or ())


def deliverable(fn: Callable[..., Any], value: Any) -> Any:
    """A step's stored result as the workflow receives it: a fresh copy, typed if annotated."""
    try:
        target = RESULT_TYPES.get(fn, RESULT_TYPES)
    except TypeError:
        target = RESULT_TYPES
    if target is RESULT_TYPES:
        target = _result_type(fn)
    if type(value) is dict or type(value) is list:
        value = copy_json(value)
    if target is None:
        return value
    return converter.structure(value, target)
