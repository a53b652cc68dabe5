"""Listing runs a page at a time: cursors, time bounds, and the page the store reads.

A cursor is the ``(created_us, id)`` of the last run of a page, base64url-encoded JSON: the
next page starts right after it in the listing's order (newest first), however many runs were
created meanwhile, and the store seeks to it on an index (``Store.page_runs``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
from typing import Any

from ironflow.commands.names import check_function_id
from ironflow.runtime.models import STATUSES
from ironflow.runtime.store import Store, rows

MAX_LIMIT = 1000


def encode_cursor(created_us: int, run_id: str) -> str:
    raw = json.dumps([created_us, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: Any) -> tuple[int, str]:
    """The ``(created_us, id)`` a cursor holds; ``ValueError`` if it is not one we gave."""
    bad = ValueError(
        f"cursor {cursor!r} is not a cursor this listing gave (pass next_cursor back as it "
        f"is, or leave it out for the first page)"
    )
    if type(cursor) is not str or len(cursor) > 1000:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or type(value[0]) is not int
        or type(value[1]) is not str
        or not value[1].isprintable()  # no run id we gave holds a control character
    ):
        raise bad
    return value[0], value[1]


def time_bound(value: Any, what: str) -> int | None:
    """An aware datetime or ISO 8601 text with an offset as µs since the epoch."""
    if value is None:
        return None
    when = value
    if isinstance(value, str):
        try:
            # fromisoformat stops at a NUL (C string parsing): text after one is refused here.
            if not value.isprintable():
                raise ValueError(value)
            when = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{what} {value!r} is not an ISO 8601 time; give one with an offset, like "
                f"2024-05-01T12:00:00+00:00"
            ) from None
    if not isinstance(when, _dt.datetime):
        raise TypeError(f"{what} must be an aware datetime or ISO 8601 text, got {value!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} {value!r} has no UTC offset; add one (like +00:00 or Z)")
    try:
        return rows.to_us(when)
    except OverflowError:
        raise ValueError(f"{what} {value!r} is out of range") from None


def check_function_filter(function_id: Any) -> str | None:
    """A listing's function filter: ``None`` or a function id; ``TypeError`` or
    ``ValueError`` naming it if it is not text, or holds a character no function id has (a
    control character such as NUL, which PostgreSQL cannot even compare)."""
    if function_id is not None and type(function_id) is not str:
        raise TypeError(
            f"function must be a function id or a declared function, got {function_id!r}"
        )
    if function_id and not function_id.isprintable():
        check_function_id(function_id)
    return None if function_id is None else str(function_id)


def check_limit(limit: Any) -> int:
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def page(
    store: Store,
    status: str | None,
    function_id: str | None,
    limit: int,
    cursor: str | None,
    created_after: Any,
    created_before: Any,
) -> tuple[list[tuple[Any, ...]], str | None]:
    """The rows of one page and the cursor of the next (``None`` on the last page);
    ``ValueError``/``TypeError`` naming a bad argument."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; a run is one of: {', '.join(STATUSES)}")
    check_function_filter(function_id)
    check_limit(limit)
    after = None if cursor is None else decode_cursor(cursor)
    since = time_bound(created_after, "created_after")
    until = time_bound(created_before, "created_before")
    # One more than asked: whether it comes back says if there is a next page.
    found = store.page_runs(status, function_id, since, until, after, limit + 1)
    if len(found) <= limit:
        return found, None
    found = found[:limit]
    last = found[-1]
    return found, encode_cursor(last[5], last[0])
