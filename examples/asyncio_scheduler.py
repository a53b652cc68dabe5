"""ironflow's interpreter driven by asyncio: each step an asyncio task, the history in SQLite.

The interpreter decides; this file is the whole runtime (see docs/embedding.md). One event loop
owns the run. A step's body runs in an asyncio task (in a thread, ``asyncio.to_thread``); a
durable sleep, a retry's delay and a wait's timeout are ``loop.call_later`` timers. Each outcome
is appended to the history with the events it decided, in one SQLite transaction. Kill the
process at any point and start it again: the run is rebuilt from its stored history and goes
on, and a step whose completion was committed never runs again.

    python examples/asyncio_scheduler.py runs.db            # run the order (or resume it)
    python examples/asyncio_scheduler.py runs.db --crash 3  # SIGKILL itself after 3 commits

Step bodies append their name to ``runs.db.journal``, to show how often each ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pendulum

import ironflow
from ironflow import RetryPolicy, step
from ironflow.commands import kinds
from ironflow.history import (
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
    encode_error,
    event_from_dict,
    event_to_dict,
    parse_timestamp,
)
from ironflow.interpreter import Decision, Interpreter, Work

JOURNAL = Path("journal.txt")  # set by main, beside the database


def note(what: str) -> int:
    """Journal that ``what``'s body ran; how often it has, this time included."""
    with JOURNAL.open("a", encoding="utf-8") as journal:
        journal.write(what + "\n")
    return JOURNAL.read_text(encoding="utf-8").split().count(what)


def charge(total: int) -> dict[str, int]:
    if note("charge") == 1:  # its first try ever fails: the interpreter decides a retry
        raise ConnectionError("card network down")
    return {"charged": total}


def send(what: str) -> str:
    note("email")
    return what.upper()


def reserve(skus: list[str]) -> int:
    note("stock")
    return len(skus)


@ironflow.function(id="order")
def order(ctx: Any) -> Any:
    retry = RetryPolicy(3, initial_delay="0.1s")
    paid = yield step.run("charge", charge, ctx.event.data["total"], retry=retry)
    yield step.sleep("cool-off", "0.2s")
    ok = yield step.wait_for_event("approval", "order.approved", match="data.id", timeout="1d")
    mail, n = yield step.parallel(
        "fan-out",
        [lambda s: s.run("email", send, "sent"), lambda s: s.run("stock", reserve, ["a", "b"])],
    )
    return {"paid": paid["charged"], "by": ok.data["by"], "mail": mail, "n": n}


SCHEMA = """
CREATE TABLE IF NOT EXISTS history (run_id TEXT, seq INTEGER, body TEXT, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, body TEXT, consumed INTEGER DEFAULT 0);
"""


class Run:
    """One run: its interpreter, the tasks and timers carrying out its work, and its end."""

    def __init__(self, db: sqlite3.Connection, run_id: str, crash_after: int | None) -> None:
        self.db, self.id, self.crash_after = db, run_id, crash_after
        self.interp = Interpreter(order)
        self.seq = self.commits = 0
        self.pending: dict[str, Work] = {}
        self.work: dict[tuple[str, int], asyncio.TimerHandle | asyncio.Task[None]] = {}
        self.ended: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()

    def rebuild(self) -> None:
        """At a (re)start: fold the stored history, then carry out what is pending."""
        rows = self.db.execute("SELECT body FROM history WHERE run_id = ? ORDER BY seq", (self.id,))
        history = [event_from_dict(json.loads(body)) for (body,) in rows]
        self.seq = len(history)
        self.commit([], self.interp.feed(history))  # (its events: had we died before storing)

    def append(self, cls: type, **fields: Any) -> None:
        """An outcome: fed, stored with what it decided, and the new work started."""
        work = self.pending.get(fields.get("id", ""))
        if work is None and cls is not RunStarted:
            return  # late: its work is no longer pending (a timeout after the match)
        if work is not None and fields.get("attempt", work.attempt) != work.attempt:
            return
        try:
            event = cls(seq=self.seq, ts=pendulum.now("UTC"), **fields)
            self.commit([event], self.interp.feed([event]))
        except Exception as exc:  # a bug, or NonDeterminismError: end main() with it
            if not self.ended.done():
                self.ended.set_exception(exc)

    def later(self, delay: float, cls: type, work_id: str) -> asyncio.TimerHandle:
        """Append ``cls(id=work_id)`` once ``delay`` seconds have passed."""
        return asyncio.get_running_loop().call_later(delay, lambda: self.append(cls, id=work_id))

    def commit(self, inputs: list[Any], decision: Decision) -> None:
        events = [*inputs, *decision.events]
        with self.db:  # one transaction: the outcome and what it decided, or neither
            rows = [(self.id, e.seq, json.dumps(event_to_dict(e))) for e in events]
            self.db.executemany("INSERT INTO history VALUES (?, ?, ?)", rows)
            for event in inputs:
                if isinstance(event, WaitMatched):  # consumed with the match, at most once
                    consume = "UPDATE events SET consumed = 1 WHERE id = ?"
                    self.db.execute(consume, (event.event.id,))
        self.seq += len(events)
        self.interp.feed(list(decision.events))  # tells it that its decisions are recorded
        self.commits += bool(events)
        if self.commits == self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a real crash: nothing after this line runs
        self.carry_out(decision)

    def carry_out(self, decision: Decision) -> None:
        if decision.done:
            self.ended.set_result(decision)
            return
        self.pending = {work.id: work for work in decision.pending}
        for key in [key for key in self.work if key[0] not in self.pending]:
            self.work.pop(key).cancel()  # e.g. the timeout of a wait that matched
        loop = asyncio.get_running_loop()
        now = pendulum.now("UTC")
        for work in decision.pending:
            key = (work.id, work.attempt)
            if key in self.work:
                continue
            delay = 0.0 if work.due is None else max(0.0, (work.due - now).total_seconds())
            if work.kind in kinds.STEPS:  # a retry's delay, then a task
                self.work[key] = loop.call_later(delay, self.start_step, work)
            elif work.kind in kinds.SLEEPS:
                self.work[key] = self.later(delay, TimerFired, work.id)
            elif work.kind == kinds.WAIT_EVENT:
                self.work[key] = self.later(delay, WaitTimedOut, work.id)
                loop.call_soon(self.match)  # an event emitted before the wait still matches
            else:
                raise NotImplementedError(f"this example does not carry out {work.kind!r} work")

    def start_step(self, work: Work) -> None:
        self.work[work.id, work.attempt] = asyncio.create_task(self.run_step(work))

    async def run_step(self, work: Work) -> None:
        command: Any = work.command
        try:  # at-least-once: a crash while the body runs runs it again after the restart
            result = await asyncio.to_thread(command.fn, *command.args)
            result = json.loads(json.dumps(result))
        except Exception as exc:
            retryable = not isinstance(exc, ironflow.NonRetryableError)
            fields = {"error": encode_error(exc), "retryable": retryable}
            self.append(StepFailed, id=work.id, attempt=work.attempt, **fields)
        else:
            self.append(StepCompleted, id=work.id, attempt=work.attempt, result=result)

    def match(self) -> None:
        """Hand each pending wait the oldest unconsumed event it matches, if there is one."""
        found = self.db.execute("SELECT body FROM events WHERE consumed = 0 ORDER BY rowid")
        events = [json.loads(body) for (body,) in found]
        for work in [w for w in self.pending.values() if w.kind == kinds.WAIT_EVENT]:
            d = work.detail
            for body in events:
                ts = parse_timestamp(body["ts"])
                event = ironflow.Event(body["id"], body["name"], body["data"], ts)
                if event.name == d["event"] and (
                    d["match"] is None or event.get(d["match"]) == d["match_value"]
                ):
                    self.append(WaitMatched, id=work.id, event=event)
                    self.match()  # that event is consumed now: look again
                    return


def emit(db: sqlite3.Connection, event: ironflow.Event) -> None:
    """Keep ``event`` until a wait consumes it (once: emitting it again changes nothing)."""
    body = {"id": event.id, "name": event.name, "data": event.data, "ts": event.ts.isoformat()}
    with db:
        db.execute(
            "INSERT OR IGNORE INTO events (id, body) VALUES (?, ?)", (event.id, json.dumps(body))
        )


async def main(path: str, crash_after: int | None = None) -> Decision:
    """Run the order ``order-7`` to its end, or on from where its stored history stops."""
    db = sqlite3.connect(path)  # ``with db:`` is then one transaction
    db.executescript(SCHEMA)
    now = pendulum.now("UTC")
    # The approval comes from elsewhere, before the run waits for it: it still matches.
    emit(db, ironflow.Event("approval-7", "order.approved", {"id": 7, "by": "ann"}, now))
    run = Run(db, "order-7", crash_after)
    run.rebuild()
    if run.seq == 0:  # a new run
        start = ironflow.Event("created-7", "order.created", {"id": 7, "total": 42}, now)
        run.append(RunStarted, run_id=run.id, function_id=order.id, event=start)
    return await run.ended


if __name__ == "__main__":
    path = sys.argv[1]
    JOURNAL = Path(path + ".journal")
    crash = int(sys.argv[3]) if sys.argv[2:3] == ["--crash"] else None
    decision = asyncio.run(main(path, crash))
    print(decision.status, json.dumps(decision.output, sort_keys=True))
