"""Flow-control options as the function registry records them: JSON other processes read.

Only the options that are set appear; periods are in seconds; a key is its path, or
``{"callable": "module.name"}`` (code cannot go into the database).
"""

from __future__ import annotations

from typing import Any

import pendulum

from ironflow.commands.flow import Flow, Key


def _key_setting(key: Key | None) -> Any:
    if key is None or isinstance(key, str):
        return key
    # Code cannot go into the database: other processes see which callable it is.
    name = getattr(key, "__qualname__", None) or type(key).__qualname__
    return {"callable": f"{getattr(key, '__module__', '?')}.{name}"}


def _seconds(period: pendulum.Duration | None) -> float | None:
    return None if period is None else period.total_seconds()


def flow_settings(flow: Flow) -> dict[str, Any]:
    """``flow`` as JSON for the function registry: only the options that are set; periods in
    seconds; a key as its path, or ``{"callable": "module.name"}``."""
    found: dict[str, Any] = {}
    if flow.concurrency is not None:
        c = flow.concurrency
        found["concurrency"] = {"limit": c.limit, "key": _key_setting(c.key)}
    for option, value in (("throttle", flow.throttle), ("rate_limit", flow.rate_limit)):
        if value is not None:
            found[option] = {
                "limit": value.limit,
                "period_s": _seconds(value.period),
                "key": _key_setting(value.key),
            }
    if flow.debounce is not None:
        d = flow.debounce
        found["debounce"] = {
            "period_s": _seconds(d.period),
            "key": _key_setting(d.key),
            "max_wait_s": _seconds(d.max_wait),
        }
    if flow.priority is not None:
        found["priority"] = {"run": _key_setting(flow.priority.run)}
    if flow.singleton is not None:
        s = flow.singleton
        found["singleton"] = {"key": _key_setting(s.key), "mode": s.mode}
    if flow.cancel_on:
        found["cancel_on"] = [{"event": c.event, "match": c.match} for c in flow.cancel_on]
    if flow.timeouts is not None:
        t = flow.timeouts
        found["timeouts"] = {"start_s": _seconds(t.start), "finish_s": _seconds(t.finish)}
    if flow.batch_events is not None:
        b = flow.batch_events
        found["batch_events"] = {
            "max_size": b.max_size,
            "timeout_s": _seconds(b.timeout),
            "key": _key_setting(b.key),
        }
    if flow.idempotency is not None:
        found["idempotency"] = {"key": _key_setting(flow.idempotency)}
    return found
