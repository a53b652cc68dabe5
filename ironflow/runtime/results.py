"""What a step's return value is stored as: JSON, with attrs classes and dataclasses taken
apart by a strict copy of the history's cattrs converter (``serialize_result``), and the
error that says what a step may return when it returned something else.
"""

from __future__ import annotations

import datetime as _dt
import enum
import typing
from collections import abc
from collections.abc import Callable
from typing import Any

from ironflow.commands.jsonvalue import JSON_TYPES, NotJSONError, to_json_value
from ironflow.history.codec import converter

STEP_ADVICE = (
    f"a step's result must be JSON ({JSON_TYPES}), or an attrs class or dataclass instance "
    f"(cattrs converts it; name the class in the step function's return annotation to get "
    f"that class back)"
)

# Step results' attrs/dataclass instances are unstructured with a copy of the history
# converter made strict: a field typed ``Any`` (or ``dict[str, Any]``...) holds plain JSON
# only, since nothing would convert a datetime or an enum member back; a naive datetime is
# refused, since the converter would read it in the worker's local time zone. A field typed
# ``dict``, ``list``, ``tuple`` (or ``object``) without item types gets the same rule: cattrs
# would unstructure its items by their runtime type (an enum member to its plain value), and
# nothing would structure them back.
_values = converter.copy()

# Field types that say nothing about the items they hold (bare ``typing`` aliases too).
_BARE_CONTAINERS: tuple[Any, ...] = (
    dict,
    list,
    tuple,
    object,
    typing.Dict,  # noqa: UP006 - a field may be annotated with the bare alias
    typing.List,  # noqa: UP006
    typing.Tuple,  # noqa: UP006
    typing.Mapping,
    typing.MutableMapping,
    typing.Sequence,
    typing.MutableSequence,
    typing.Iterable,
    typing.Collection,
    abc.Mapping,
    abc.MutableMapping,
    abc.Sequence,
    abc.MutableSequence,
    abc.Iterable,
    abc.Collection,
)


def _aware_datetime(value: _dt.datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise NotJSONError(
            f"the field value {value!r} is a naive datetime, which would be read in each "
            f"worker's local time zone; give it a time zone (datetime.now(timezone.utc), "
            f".replace(tzinfo=...)); it comes back in UTC"
        )
    return value.astimezone(_dt.UTC).isoformat()


_ANY_FIELD = "a field typed {name} must hold plain JSON, since nothing converts it back"


def _plain_json_hook(what: str) -> Callable[[Any], Any]:
    def plain_json(value: Any) -> Any:
        return to_json_value(value, what, root="its value", advice="", unstructure=_record)

    return plain_json


def _is_bare_container(kind: Any) -> bool:
    return any(kind is bare for bare in _BARE_CONTAINERS)


def _bare_container_hook(kind: Any) -> Callable[[Any], Any]:
    if kind is object:
        return _plain_json_hook(_ANY_FIELD.format(name="object"))
    name = kind.__qualname__ if isinstance(kind, type) else repr(kind)
    return _plain_json_hook(
        f"a field typed {name} without item types must hold plain JSON, since nothing "
        f"converts its items back; name the item types (dict[str, Color], list[datetime]...) "
        f"to get them back"
    )


def _record(value: Any) -> Any:
    return _values.unstructure(value)


_values.register_unstructure_hook(_dt.datetime, _aware_datetime)
_values.register_unstructure_hook(Any, _plain_json_hook(_ANY_FIELD.format(name="Any")))
_values.register_unstructure_hook_factory(_is_bare_container, _bare_container_hook)
# A field typed with a str enum (StrEnum, ``class C(str, Enum)``): cattrs dispatches on the
# class's MRO, takes it for a str and would pass the member through. It is stored as its value,
# and the converter structures the value back into the member by the field's type.
_values.register_unstructure_hook(
    str, lambda text: text.value if isinstance(text, enum.Enum) else text
)


def serialize_result(value: Any, step_id: str) -> Any:
    """A step's return value as JSON (attrs/dataclass via cattrs); ``NotJSONError`` if not."""
    return to_json_value(
        value,
        f"step {step_id!r} returned a value ironflow cannot store",
        root="result",
        advice=STEP_ADVICE,
        unstructure=_record,
    )
