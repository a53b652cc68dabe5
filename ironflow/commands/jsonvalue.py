"""JSON values: the only values ironflow stores, checked and normalised at the boundary."""

from __future__ import annotations

import math
from typing import Any


class NotJSONError(TypeError):
    """A value cannot be stored as JSON; the message names the offending path."""


def to_json_value(value: Any, what: str = "value") -> Any:
    """Return ``value`` as plain JSON data (tuples become lists); fail naming the bad part.

    Strings, bools, ints, finite floats, None, and lists/tuples/dicts (string keys) of them.
    """
    return _convert(value, what)


def _convert(value: Any, path: str) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise NotJSONError(f"{path} is {value!r}, which JSON cannot hold (NaN and infinity)")
        return value
    if kind is list or kind is tuple:
        return [_convert(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str and isinstance(key, str):
                key = str.__str__(key)  # a str subclass such as a str-valued Enum member
            if type(key) is not str:
                raise NotJSONError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; "
                    f"JSON object keys must be strings"
                )
            out[key] = _convert(item, f"{path}[{key!r}]")
        return out
    if isinstance(value, str | int | float | list | tuple | dict):
        # Subclasses (enums, named tuples, ...) are stored as their plain base value.
        # Their own ``__str__``/``__int__`` may say something else (``str(E.A) == "E.A"``).
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, int):
            return int.__int__(value)
        if isinstance(value, float):
            return _convert(float.__float__(value), path)
        if isinstance(value, dict):
            return _convert(dict(value), path)
        items: Any = value
        return _convert(list(items), path)
    raise NotJSONError(
        f"{path} is a {kind.__module__}.{kind.__qualname__} ({_short(value)}), which is not "
        f"JSON-serializable; return dicts, lists, strings, numbers, bools or None "
        f"(attrs classes and dataclasses work when the step function's return annotation "
        f"names them)"
    )


def _short(value: Any) -> str:
    text = repr(value)
    if " at 0x" in text:
        # A default repr carries a memory address; replay must reproduce the message exactly.
        return f"a {type(value).__qualname__} object"
    return text if len(text) <= 80 else text[:77] + "..."


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data, so that a workflow mutating a result cannot change history."""
    kind = type(value)
    if kind is dict:
        return {k: copy_json(v) for k, v in value.items()}
    if kind is list:
        return [copy_json(v) for v in value]
    return value
