"""What a name may hold: the checks every name a user gives goes through, where it is given.

Step names, event names, function ids, run ids and idempotency keys are stored as text and
shown one per line by ``ironflow runs show``/``runs list``. So each must be non-blank text
that can be encoded (no lone surrogates) and holds no character that breaks a line (C0/C1
controls, the Unicode line and paragraph separators). Any script is fine: 'commande-été',
'注文', emoji. Step names and run ids also may not hold ``/``, which joins ids.

The builders call these for every command on every replay, so their checks start with one
expression that passes every ordinary name (``str.isprintable`` is a single C loop); only a
name it does not pass is looked at character by character. Nothing is remembered between
calls: no shared state, and no cost that grows with the names a worker has seen.
"""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = [
    "check_event_name",
    "check_function_id",
    "check_idempotency_key",
    "check_name",
    "check_shown_name",
    "check_step_name",
]

# Characters that would break a name's one line in `ironflow runs show`: C0/C1 controls
# (newline, tab, ESC, DEL, ...) and the Unicode line and paragraph separators.
_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})

STEP_NAMES_SHOWN = "step names are shown one per line (`ironflow runs show`)"
EVENT_NAMES_SHOWN = "event names are shown one per line (`ironflow runs show`)"
FUNCTION_IDS_SHOWN = "function ids are shown one per line (`ironflow runs list`, `runs show`)"
RUN_IDS_SHOWN = "run ids are shown one per line (`ironflow runs list`, `runs show`)"
KEYS_SHOWN = "idempotency keys are stored and compared as one line of text"


def check_name(name: Any, what: str = "step name") -> str:
    """Return ``name`` if it is a non-blank string, else fail naming it."""
    if type(name) is not str or not name or name.isspace():
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    return name


def check_shown_name(name: Any, what: str, shown: str) -> str:
    """Return ``name`` if it is non-blank text that can be stored and shown on one line.

    ``what`` names the kind of name ("event name"); ``shown`` says where it is shown, in the
    message that refuses a control character.
    """
    text = check_name(name, what)
    if not text.isprintable():  # printable text has none of the characters refused below
        _refuse_unshowable(text, what, shown)
    return text


def _refuse_unshowable(text: str, what: str, shown: str) -> None:
    """Raise ``ValueError`` at ``text``'s first lone surrogate or line-breaking character."""
    for index, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            raise ValueError(
                f"{what} {text!r} cannot be stored: it holds the lone surrogate {char!r} at "
                f"index {index}, which is not Unicode text (text decoded with "
                f"errors='surrogateescape' carries them); use valid text only"
            )
        if unicodedata.category(char) in _LINE_BREAKING:
            raise ValueError(
                f"{what} {text!r} holds the control character {char!r} at index {index}; "
                f"{shown}: use printable characters only"
            )
    # Other non-printable characters (format characters such as the zero-width joiner of
    # emoji sequences, non-ASCII spaces, unassigned code points) are kept: they break no line.


def check_step_name(name: Any, what: str = "step name") -> str:
    """Return ``name`` if it can be a step name: stored, shown on one line, no ``/``."""
    if type(name) is str and name.isprintable() and "/" not in name and name.strip():
        return name
    return check_step_name_slowly(name, what)


def check_step_name_slowly(name: Any, what: str) -> str:
    """``check_step_name`` without its fast path (``step.run`` inlines that)."""
    text: str = check_name(name, what)
    if "/" in text:
        raise ValueError(
            f"{what} {text!r} contains '/', which is reserved for scope paths (step 'charge' in "
            f"branch 0 of parallel 'p' has the id 'p/0/charge'); use another separator, "
            f"such as '-' or '.'"
        )
    if not text.isprintable():
        _refuse_unshowable(text, what, STEP_NAMES_SHOWN)
    return text


def check_event_name(name: Any, what: str = "event name") -> str:
    """Return ``name`` if it can be an event name (``/`` allowed), else fail naming it."""
    if type(name) is str and name.isprintable() and name.strip():  # every replay: keep it cheap
        return name
    return check_shown_name(name, what, EVENT_NAMES_SHOWN)


def check_function_id(function_id: Any) -> str:
    """Return ``function_id`` if a function may be declared with it, else fail naming it."""
    return check_shown_name(function_id, "function id", FUNCTION_IDS_SHOWN)


def check_idempotency_key(key: Any) -> str:
    """Return ``key`` if it can be an event's idempotency key, else fail naming it."""
    return check_shown_name(key, "idempotency key", KEYS_SHOWN)
