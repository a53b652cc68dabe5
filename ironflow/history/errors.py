"""The error codec: exceptions to ``ErrorInfo`` and back, as their own class where loaded."""

from __future__ import annotations

import builtins
import sys
import traceback as _traceback
from typing import Any

from ironflow.history.events import ErrorInfo


def type_name(cls: type) -> str:
    """``"ValueError"`` for builtins, ``"package.module.Class"`` otherwise."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def encode_error(exc: BaseException, *, with_traceback: bool = False) -> ErrorInfo:
    """Store ``exc`` as its class name and message (and, if asked, its traceback)."""
    if isinstance(exc, RemoteError):
        return ErrorInfo(exc.type_name, str(exc.args[0]))
    text = None
    if with_traceback and exc.__traceback__ is not None:
        text = "".join(_traceback.format_exception(exc)).rstrip()
    cls = getattr(type(exc), "_ironflow_original", type(exc))
    return ErrorInfo(type_name(cls), _message(exc), text)


def _message(exc: BaseException) -> str:
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def find_class(name: str) -> type[BaseException] | None:
    """The exception class called ``name`` if its module is already loaded (never imports)."""
    if "." not in name:
        found = getattr(builtins, name, None)
        return found if isinstance(found, type) and issubclass(found, BaseException) else None
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj
        return None
    return None


def make_instance(cls: type[BaseException], message: str) -> BaseException:
    """An instance of ``cls`` carrying ``message``, without trusting its ``__init__``."""
    try:
        exc = cls(message)
        if _message(exc) == message:
            return exc
    except Exception:
        pass
    exc = cls.__new__(cls)
    exc.args = (message,)
    try:
        str(exc)
    except Exception:
        # Its ``__str__`` reads attributes only its ``__init__`` sets: say the stored message.
        exc = _plain_str_class(cls).__new__(_plain_str_class(cls))
        exc.args = (message,)
    return exc


_plain_str_classes: dict[type, type[BaseException]] = {}


def _plain_str_class(cls: type[BaseException]) -> type[BaseException]:
    """A subclass of ``cls`` that prints its stored message and encodes as ``cls``."""
    made = _plain_str_classes.get(cls)
    if made is None:
        made = type(
            cls.__name__,
            (cls,),
            {
                "_ironflow_original": cls,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__str__": lambda self: str(self.args[0]),
            },
        )
        _plain_str_classes[cls] = made
    return made


def decode_error(info: ErrorInfo) -> BaseException:
    """Rebuild the stored exception: its own class if loaded, else ``RemoteError``."""
    cls = find_class(info.type)
    if cls is None:
        return RemoteError(info.type, info.message)
    return make_instance(cls, info.message)


class RemoteError(Exception):
    """An exception whose class is not loaded here; ``type_name`` says what it was."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name

    def __str__(self) -> str:
        return f"{self.type_name}: {self.args[0]}"
