"""Workflows with the classic determinism bugs, which check_workflow must catch."""

import random
from datetime import datetime

import ironflow
from ironflow import step


def echo(value):
    return value


@ironflow.function(id="branches-on-wall-clock")
def branches_on_wall_clock(ctx):
    if datetime.now().hour < 12:
        yield step.run("morning", echo, "am")
    else:
        yield step.run("afternoon", echo, "pm")
    yield step.sleep("nap", "1h")
    return "done"


@ironflow.function(id="branches-on-random")
def branches_on_random(ctx):
    rolls = 2 if random.random() < 0.5 else 3
    out = []
    for i in range(rolls):
        out.append((yield step.run(f"roll-{i}", echo, i)))
    return out


emails_sent = []


@ironflow.function(id="side-effect-outside-step")
def side_effect_outside_step(ctx):
    emails_sent.append("welcome")  # should have been a step: it runs again on every replay
    user = yield step.run("create-user", echo, {"id": 1})
    return {"user": user, "emails": len(emails_sent)}


@ironflow.function(id="deterministic")
def deterministic(ctx):
    token = str(ctx.uuid())
    first = yield step.run("first", echo, token)
    yield step.sleep("pause", "1d")
    both = yield step.parallel(
        "both", [lambda s: s.run("left", echo, 1), lambda s: s.run("right", echo, 2)]
    )
    return {"first": first, "both": both, "coin": ctx.random() < 2}


executions = {"count": 0}


@ironflow.function(id="counts-executions-in-a-global")
def counts_executions_in_a_global(ctx):
    # Meant as "is this the first execution, not a replay?": but every execution bumps it,
    # replays included, so a replay after the live run takes the other branch.
    executions["count"] += 1
    order = yield step.run("charge", echo, {"id": 7})
    if executions["count"] == 1:
        yield step.run("send-receipt", echo, order["id"])
    return "done"
