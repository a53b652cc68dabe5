"""A known workload for the metrics tests: ``orders`` prices and ships an order (two steps);
a negative ``n`` is refused by a third step that fails without retry."""

from __future__ import annotations

import ironflow
from ironflow import step
from ironflow.errors import NonRetryableError


def add(a: int, b: int) -> int:
    return a + b


def refuse(n: int) -> int:
    raise NonRetryableError(f"order {n} refused")


@ironflow.function(id="orders")
def orders(ctx):
    n = ctx.event.data["n"]
    total = yield step.run("price", add, n, 1)
    if n < 0:
        yield step.run("refuse", refuse, n)
    return (yield step.run("ship", add, total, 1))
