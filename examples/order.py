"""The order workflow of the demo: run, sleep, wait_for_event, parallel and a compensation.

Each step body appends a line to a journal file, so the demo can show how often it ran.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ironflow
from ironflow import Engine, step

JOURNAL = Path(os.environ.get("IRONFLOW_DEMO_JOURNAL", "demo-journal.txt"))


def note(what: str) -> None:
    """Record that a step body ran (appended and flushed, so a crash cannot lose it)."""
    with JOURNAL.open("a", encoding="utf-8") as journal:
        journal.write(what + "\n")
        journal.flush()
        os.fsync(journal.fileno())


def fetch_user(user_id: str) -> dict[str, str]:
    note("fetch-user")
    return {"id": user_id, "card": "tok_visa"}


def charge_card(card: str, total: float) -> dict[str, object]:
    note("charge-card")
    return {"id": f"ch_{card[-4:]}", "amount": total}


def reserve_stock(items: list[str]) -> dict[str, object]:
    note("reserve-stock")
    return {"reserved": items}


def refund(charge_id: str) -> str:
    note("refund")
    return f"refunded {charge_id}"


@ironflow.function(id="process-order", on="order.created")
def process_order(ctx):
    order = ctx.event.data
    user = yield step.run("fetch-user", fetch_user, order["userId"])
    yield step.sleep("cool-off", os.environ.get("IRONFLOW_DEMO_COOL_OFF", "2s"))
    approval = yield step.wait_for_event(
        "wait-approval", event="order.approved", match="data.orderId", timeout="7d"
    )
    charge, stock = yield step.parallel(
        "charge-and-reserve",
        [
            lambda s: s.run("charge-card", charge_card, user["card"], order["total"]),
            lambda s: s.run("reserve-stock", reserve_stock, order["items"]),
        ],
        concurrency=2,
    )
    yield step.compensate("charge-card", refund, charge["id"])
    return {"approvedBy": approval.data["approvedBy"], "charge": charge["id"], "stock": stock}


def make_engine(db: str) -> Engine:
    engine = Engine(db, lease="2s", poll="100ms")
    engine.register(process_order)
    return engine


if __name__ == "__main__":
    make_engine(sys.argv[1]).serve()
