"""``ironflow worker --log-format json``: one JSON object per log record, on one line.

Each line has ``ts``, ``level``, ``logger`` and ``message``, the record's run attributes
(``run_id``, ``function_id``, ``step_id``: ``ctx.log`` and the engine's records carry them),
the ``trace_id`` and ``span_id`` (hex) of the span active when it was logged, if any, any other
``extra=`` fields, and ``exc_info`` as ``exception`` text.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import Any

from ironflow.runtime import telemetry

# The attributes every LogRecord has: anything else came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """A log record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if "trace_id" not in body:
            ids = telemetry.current_ids()
            if ids is not None:
                body["trace_id"], body["span_id"] = ids
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)
