"""JSON values: the only values ironflow stores, checked and normalised at the boundary.

A value is JSON when it is a str, int, bool, finite float or None, or a list/tuple/dict (string
keys) of JSON values, nested at most ``MAX_DEPTH`` containers deep. Tuples become lists;
subclasses of str/int/float/list/tuple/dict are stored as their plain base value, except enum
members, which are refused: they would come back as their plain value, not as the member.
Everything else (datetime, date, Decimal, set, bytes, UUID, ...) is refused with a message that
names the path inside the value and says what to use instead.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import math
import uuid
from collections.abc import Callable
from typing import Any

import attrs

MAX_DEPTH = 100
"""How many containers (lists, dicts) deep a value may nest: the outermost one is level 1."""

JSON_TYPES = "dicts with string keys, lists, strings, numbers, bools or None"

DEFAULT_ADVICE = f"values must be JSON: {JSON_TYPES}"


class NotJSONError(TypeError):
    """A value cannot be stored as JSON; the message names the offending path."""


class TooDeepError(NotJSONError, ValueError):
    """A value nests more than ``MAX_DEPTH`` containers deep."""


def public_error(exc: NotJSONError) -> Exception:
    """The plain exception a caller sees: ``ValueError`` for too deep, else ``TypeError``."""
    return ValueError(str(exc)) if isinstance(exc, ValueError) else TypeError(str(exc))


def to_json_value(
    value: Any,
    what: str = "value",
    *,
    root: str | None = None,
    advice: str = DEFAULT_ADVICE,
    unstructure: Callable[[Any], Any] | None = None,
) -> Any:
    """Return ``value`` as plain JSON data (tuples become lists); fail naming the bad part.

    Paths in messages start at ``root`` (``result['when']``) and the message starts with
    ``what``; without ``root``, ``what`` is the path's root and starts the message. ``advice``
    ends the message (what this boundary accepts). ``unstructure`` turns attrs and dataclass
    instances into JSON-ready data (cattrs); without it they are refused.
    """
    path = what if root is None else root
    try:
        return _convert(value, path, 0, unstructure)
    except NotJSONError as exc:
        message = str(exc) if root is None else f"{what}: {exc}"
        if advice:
            message = f"{message}. {advice[0].upper()}{advice[1:]}"
        raise type(exc)(message) from None


def _convert(value: Any, path: str, depth: int, unstructure: Callable[[Any], Any] | None) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise NotJSONError(f"{path} is {value!r}, which JSON cannot hold (NaN and infinity)")
        return value
    if kind is list or kind is tuple or kind is dict:
        if depth >= MAX_DEPTH:
            raise TooDeepError(
                f"{_clip(path)} is nested more than {MAX_DEPTH} lists/dicts deep, the most "
                f"ironflow stores; flatten the value, or store the deep part as a JSON string"
            )
        if kind is dict:
            out = {}
            for key, item in value.items():
                if type(key) is not str:
                    key = _key(key, path)
                out[key] = _convert(item, f"{path}[{key!r}]", depth + 1, unstructure)
            return out
        return [
            _convert(item, f"{path}[{i}]", depth + 1, unstructure) for i, item in enumerate(value)
        ]
    if isinstance(value, enum.Enum):
        # Refused even when it is a str or int: the workflow would get back the plain value,
        # whose identity, name and type differ from the member's.
        raise NotJSONError(f"{path} is {_describe(value)}, which is not JSON; {_hint(value)}")
    if isinstance(value, str | int | float | list | tuple | dict):
        # Subclasses (named tuples, OrderedDict, ...) are stored as their plain base value.
        # Their own ``__str__``/``__int__`` may say something else.
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, int):
            return int.__int__(value)
        if isinstance(value, float):
            return _convert(float.__float__(value), path, depth, unstructure)
        if isinstance(value, dict):
            return _convert(dict(value), path, depth, unstructure)
        items: Any = value
        return _convert(list(items), path, depth, unstructure)
    if _is_record(value) and unstructure is not None:
        try:
            plain = unstructure(value)
        except NotJSONError as exc:
            message = f"{path} is {_describe(value)} whose fields cannot be stored: {exc}"
            raise type(exc)(message) from None
        except RecursionError:
            raise TooDeepError(
                f"{_clip(path)} is {_describe(value)} nested more than {MAX_DEPTH} levels deep, "
                f"the most ironflow stores; flatten the value"
            ) from None
        return _convert(plain, path, depth, unstructure)
    hint = _hint(value)
    raise NotJSONError(f"{path} is {_describe(value)}, which is not JSON" + (hint and f"; {hint}"))


def _key(key: Any, path: str) -> str:
    if isinstance(key, str) and not isinstance(key, enum.Enum):
        return str.__str__(key)
    raise NotJSONError(
        f"{path} has the key {_short(key)} of type {_qualname(type(key))}; "
        f"JSON object keys must be strings"
        + ("; use the member's .value as the key" if isinstance(key, enum.Enum) else "")
    )


def _clip(path: str) -> str:
    return path if len(path) <= 60 else f"{path[:50]}...{path[-6:]}"


def _is_record(value: Any) -> bool:
    kind = type(value)
    return attrs.has(kind) or (dataclasses.is_dataclass(value) and not isinstance(value, type))


def _hint(value: Any) -> str:
    """What to store instead of ``value``, by its type."""
    if isinstance(value, enum.Enum):
        return (
            "use its .value instead (a member would come back as the plain value, not the "
            "member), or a field of that enum type in an attrs class or dataclass"
        )
    if isinstance(value, _dt.datetime):
        return (
            "use an ISO 8601 string with a UTC offset instead, such as "
            "when.astimezone(timezone.utc).isoformat() (a naive datetime would be read in "
            "each worker's local time zone)"
        )
    if isinstance(value, _dt.date | _dt.time):
        return "use an ISO 8601 string instead (.isoformat())"
    if isinstance(value, _dt.timedelta):
        return "use a number of seconds instead (.total_seconds())"
    if isinstance(value, decimal.Decimal):
        return "use a str (exact) or a float instead"
    if isinstance(value, set | frozenset):
        return "use a sorted list instead"
    if isinstance(value, bytes | bytearray | memoryview):
        return "decode it to a str, or base64-encode it"
    if isinstance(value, uuid.UUID):
        return "use str(value) instead"
    if _is_record(value):
        return "convert it to a dict first (attrs.asdict or dataclasses.asdict)"
    return ""


def _describe(value: Any) -> str:
    return f"a {_qualname(type(value))} ({_short(value)})"


def _qualname(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return f"a {type(value).__qualname__} object"
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
