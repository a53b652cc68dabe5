"""Every name a user gives is checked like a step name, where it is given (issue 10, loose ends).

Event names (``engine.emit``, ``step.publish``, ``step.wait_for_event(event=...)``, ``on=``
triggers), function ids, run ids and idempotency keys refuse lone surrogates (not text: they
cannot be stored) and control characters (they break ``runs show``/``runs list``), naming the
kind of name and the value. Names of any script still work end to end.

And a step the user names ``compensate:<name>`` collides with the undo that
``step.compensate(<name>, ...)`` registers: the collision says so, instead of "used twice".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from engine_kit import idle
from harness import Sim

import ironflow
from ironflow import Context, DuplicateStepError, Engine, step
from ironflow.cli import cli
from ironflow.commands import Function
from ironflow.history import RunFailed
from ironflow.interpreter import replay
from ironflow.testing import VirtualClock


def echo(value: Any = None) -> Any:
    return value


def nap(ctx: Any) -> Generator[Any, Any, None]:
    yield step.sleep("nap", "1s")


# (name, where the refusal points): C0 and C1 controls, DEL, the Unicode line separator.
CONTROL = [
    ("line\nbreak", "'\\n' at index 4"),
    ("red\x1b[31m", "'\\x1b' at index 3"),
    ("tab\there", "'\\t' at index 3"),
    ("nul\x00", "'\\x00' at index 3"),
    ("del\x7f", "'\\x7f' at index 3"),
    ("c1\x85", "'\\x85' at index 2"),
    ("ünï\u2028code", "'\\u2028' at index 3"),
]
SURROGATE = "caf\udce9"  # what os.fsdecode makes of b"caf\xe9"
SURROGATE_MESSAGE = (
    "{what} 'caf\\udce9' cannot be stored: it holds the lone surrogate '\\udce9' at index 3, "
    "which is not Unicode text (text decoded with errors='surrogateescape' carries them); use "
    "valid text only"
)
EVENT_SHOWN = "event names are shown one per line (`ironflow runs show`)"
# Valid names of several scripts: accents, CJK, emoji, an emoji ZWJ sequence (U+200D is not
# "printable" to Python, yet breaks no line), a non-breaking space, and '/' where allowed.
ANY_SCRIPT = ["commande-été", "注文", "📦", "👩\u200d💻.livré", "x\u00a0y", "orders/created"]


def control_message(what: str, name: str, where: str, shown: str) -> str:
    return (
        f"{what} {name!r} holds the control character {where}; {shown}: use printable "
        f"characters only"
    )


def stored_events(db: str) -> int:
    with sqlite3.connect(db) as conn:
        count: int = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return count


# =============================================================================================
# Event names: engine.emit, step.publish, step.wait_for_event, on= triggers
# =============================================================================================

EVENT_SITES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "publish": ("event name", lambda n: step.publish("tell", n)),
    "wait_for_event": ("event name", lambda n: step.wait_for_event("wait", n)),
    "wait_for_event(event=)": ("event name", lambda n: step.wait_for_event("wait", event=n)),
    "on= one": ("trigger event name", lambda n: ironflow.function(id="f", on=n)),
    "on= list": ("trigger event name", lambda n: ironflow.function(id="f", on=["ok", n])),
}


@pytest.mark.parametrize("site", EVENT_SITES)
@pytest.mark.parametrize(("name", "where"), CONTROL, ids=[repr(n) for n, _ in CONTROL])
def test_control_characters_in_event_names_are_refused_where_given(
    site: str, name: str, where: str
) -> None:
    what, build = EVENT_SITES[site]
    with pytest.raises(ValueError) as info:
        build(name)
    assert str(info.value) == control_message(what, name, where, EVENT_SHOWN)


@pytest.mark.parametrize("site", EVENT_SITES)
def test_a_lone_surrogate_in_an_event_name_is_refused_where_given(site: str) -> None:
    what, build = EVENT_SITES[site]
    with pytest.raises(ValueError) as info:
        build(SURROGATE)
    assert str(info.value) == SURROGATE_MESSAGE.format(what=what)


@pytest.mark.parametrize("site", EVENT_SITES)
@pytest.mark.parametrize("name", ANY_SCRIPT)
def test_event_names_of_any_script_and_with_a_slash_are_accepted(site: str, name: str) -> None:
    EVENT_SITES[site][1](name)


@pytest.mark.parametrize(("name", "where"), [*CONTROL[:2], (SURROGATE, "")])
def test_emit_refuses_an_event_name_it_cannot_store_or_show_and_stores_nothing(
    engine: Engine, name: str, where: str
) -> None:
    engine.register(ironflow.function(id="any", on="*")(nap))
    with pytest.raises(ValueError) as info:
        engine.emit(name)
    if name == SURROGATE:
        assert str(info.value) == SURROGATE_MESSAGE.format(what="event name")
    else:
        assert str(info.value) == control_message("event name", name, where, EVENT_SHOWN)
    assert engine.store.query("SELECT COUNT(*) FROM events") == [(0,)]
    assert engine.list_runs() == []  # the catch-all function started nothing


def test_refused_event_names_are_refused_every_time() -> None:
    for _ in range(3):
        assert step.publish("tell", "told-once").event == "told-once"
        for bad in ("again\n", "again\udc80"):
            with pytest.raises(ValueError, match="event name"):
                step.publish("tell", bad)
            with pytest.raises(ValueError, match="event name"):
                step.wait_for_event("wait", bad)


# =============================================================================================
# Function ids
# =============================================================================================

FUNCTION_SHOWN = "function ids are shown one per line (`ironflow runs list`, `runs show`)"


@pytest.mark.parametrize(("name", "where"), CONTROL, ids=[repr(n) for n, _ in CONTROL])
def test_control_characters_in_a_function_id_are_refused_at_the_declaration(
    name: str, where: str
) -> None:
    with pytest.raises(ValueError) as info:
        ironflow.function(id=name)
    assert str(info.value) == control_message("function id", name, where, FUNCTION_SHOWN)


def test_a_lone_surrogate_in_a_function_id_is_refused_at_the_declaration() -> None:
    with pytest.raises(ValueError) as info:
        ironflow.function(id=SURROGATE)
    assert str(info.value) == SURROGATE_MESSAGE.format(what="function id")


def test_register_refuses_a_function_made_by_hand_with_a_bad_id(engine: Engine) -> None:
    with pytest.raises(ValueError) as info:
        engine.register(Function("nap\n", nap))
    assert str(info.value) == control_message(
        "function id", "nap\n", "'\\n' at index 3", FUNCTION_SHOWN
    )
    assert engine.functions == {}


@pytest.mark.parametrize("name", ANY_SCRIPT)
def test_function_ids_of_any_script_and_with_a_slash_are_accepted(name: str) -> None:
    assert ironflow.function(id=name)(nap).id == name


# =============================================================================================
# Run ids and idempotency keys
# =============================================================================================

RUN_SHOWN = "run ids are shown one per line (`ironflow runs list`, `runs show`)"
KEY_SHOWN = "idempotency keys are stored and compared as one line of text"


@pytest.mark.parametrize(("name", "where"), CONTROL, ids=[repr(n) for n, _ in CONTROL])
def test_start_refuses_a_run_id_with_a_control_character_and_stores_nothing(
    engine: Engine, name: str, where: str
) -> None:
    engine.register(ironflow.function(id="nap")(nap))
    with pytest.raises(ValueError) as info:
        engine.start("nap", run_id=name)
    assert str(info.value) == control_message("run id", name, where, RUN_SHOWN)
    assert engine.list_runs() == []


def test_start_refuses_a_run_id_with_a_lone_surrogate_instead_of_crashing_in_sqlite(
    engine: Engine,
) -> None:
    engine.register(ironflow.function(id="nap")(nap))
    with pytest.raises(ValueError) as info:  # was: UnicodeEncodeError from sqlite3
        engine.start("nap", run_id=SURROGATE)
    assert str(info.value) == SURROGATE_MESSAGE.format(what="run id")
    assert engine.list_runs() == []


@pytest.mark.parametrize(("key", "where"), [*CONTROL[:2], (SURROGATE, "")])
def test_emit_refuses_an_idempotency_key_it_cannot_store_and_stores_nothing(
    engine: Engine, key: str, where: str
) -> None:
    engine.register(ironflow.function(id="nap", on="go")(nap))
    with pytest.raises(ValueError) as info:
        engine.emit("go", idempotency_key=key)
    if key == SURROGATE:  # was: UnicodeEncodeError from sqlite3
        assert str(info.value) == SURROGATE_MESSAGE.format(what="idempotency key")
    else:
        assert str(info.value) == control_message("idempotency key", key, where, KEY_SHOWN)
    assert engine.store.query("SELECT COUNT(*) FROM events") == [(0,)]
    assert engine.list_runs() == []


# =============================================================================================
# The CLI: one line, exit 2, nothing stored
# =============================================================================================


def assert_bad_input(result: Result, message: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"ironflow: error: {message}"]


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IRONFLOW_DB", raising=False)
    monkeypatch.delenv("IRONFLOW_APP", raising=False)
    path = str(tmp_path / "cli.db")
    Engine(path).close()
    return path


def test_cli_emit_refuses_bad_event_names_and_keys_in_one_line(cli_db: str) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["emit", "go\x1b[2J", "--db", cli_db])
    assert_bad_input(
        result, control_message("event name", "go\x1b[2J", "'\\x1b' at index 2", EVENT_SHOWN)
    )
    result = runner.invoke(cli, ["emit", "go", "--idempotency-key", SURROGATE, "--db", cli_db])
    assert_bad_input(result, SURROGATE_MESSAGE.format(what="idempotency key"))
    assert stored_events(cli_db) == 0


def test_cli_start_refuses_a_bad_run_id_before_loading_the_app(cli_db: str) -> None:
    # The app does not exist: the run id is refused before it is looked for.
    result = CliRunner().invoke(
        cli, ["start", "nap", "--app", "no_such_app:engine", "--run-id", "r\n1", "--db", cli_db]
    )
    assert_bad_input(result, control_message("run id", "r\n1", "'\\n' at index 1", RUN_SHOWN))


# =============================================================================================
# Names of any script, end to end: engine, worker, history, `runs list` and `runs show`
# =============================================================================================


@ironflow.function(id="注文", on="commande-été")
def order(ctx: Context) -> Generator[Any, Any, Any]:
    confirmed = yield step.run("確認-été", echo, ctx.event.data)
    yield step.publish("通知", "📦.expédié", {"id": confirmed["id"]})
    delivered = yield step.wait_for_event("配達-🚚", "👩\u200d💻.livré", match="data.id")
    return {"id": confirmed["id"], "by": delivered.data["by"]}


@ironflow.function(id="🚚 livraison", on="📦.*")
def delivery(ctx: Context) -> Generator[Any, Any, Any]:
    return (yield step.run("受領", echo, ctx.event.data["id"]))


def test_names_of_any_script_work_end_to_end(engine: Engine, store_url: str) -> None:
    engine.register(order)
    engine.register(delivery)
    (emitted,) = engine.emit("commande-été", {"id": "A-1"}, idempotency_key="🔑-été")
    assert engine.emit("commande-été", {"id": "A-1"}, idempotency_key="🔑-été") == [emitted]
    assert engine.start("注文", {"id": "B-2"}, run_id="run-été-🚀") == "run-été-🚀"
    idle(engine)
    assert engine.get_run(emitted).status == "waiting"
    engine.emit("👩\u200d💻.livré", {"id": "A-1", "by": "Zoë"})
    engine.emit("👩\u200d💻.livré", {"id": "B-2", "by": "Łukasz"})
    idle(engine)
    assert engine.get_run(emitted).output == {"id": "A-1", "by": "Zoë"}
    assert engine.get_run("run-été-🚀").output == {"id": "B-2", "by": "Łukasz"}
    deliveries = engine.list_runs(function="🚚 livraison")
    assert sorted(run.output for run in deliveries) == ["A-1", "B-2"]
    # The history replays, and the CLI shows every name on its line.
    for run_id in (emitted, "run-été-🚀"):
        assert replay(order, engine.history(run_id)).status == "completed"
    runner = CliRunner()
    listed = runner.invoke(cli, ["runs", "list", "--db", store_url])
    assert listed.exit_code == 0, listed.stderr
    assert "run-été-🚀" in listed.stdout and "注文" in listed.stdout
    assert "🚚 livraison" in listed.stdout
    shown = runner.invoke(cli, ["runs", "show", "run-été-🚀", "--db", store_url])
    assert shown.exit_code == 0, shown.stderr
    for name in ("確認-été", "通知", "配達-🚚"):
        assert any(line.lstrip().startswith(name) for line in shown.stdout.splitlines()), (
            name,
            shown.stdout,
        )


# =============================================================================================
# B. A step named 'compensate:<name>' and the undo of step.compensate(<name>, ...)
# =============================================================================================


def undo() -> None:
    return None


def boom() -> None:
    raise RuntimeError("boom")


def failure_of(flow: Callable[[Any], Generator[Any, Any, Any]]) -> str:
    sim = Sim(flow)
    sim.run_all()
    (failed,) = sim.events(RunFailed)
    assert failed.error.type == "ironflow.errors.DuplicateStepError"
    sim.verify()  # the failure replays
    return str(failed.error.message)


def test_a_step_named_like_an_undo_after_the_compensate_says_whose_id_it_is() -> None:
    def flow(ctx: Any) -> Generator[Any, Any, Any]:
        yield step.run("charge", echo, 1)
        yield step.compensate("charge", undo)
        yield step.run("compensate:charge", echo, 2)  # was: "used twice"

    assert failure_of(flow) == (
        "step name 'compensate:charge' is the id of the undo that step.compensate('charge', "
        "...) registered in 'the workflow'; rename the step: names starting with "
        "'compensate:' are the ids of undos"
    )


def test_a_compensate_after_a_step_named_like_its_undo_says_whose_id_it_is() -> None:
    def flow(ctx: Any) -> Generator[Any, Any, Any]:
        yield step.sleep("compensate:charge", "1s")
        yield step.run("charge", echo, 1)
        yield step.compensate("charge", undo)

    assert failure_of(flow) == (
        "step.compensate('charge', ...) runs its undo as the step 'compensate:charge', but "
        "'the workflow' already has a step named 'compensate:charge'; rename that step: names "
        "starting with 'compensate:' are the ids of undos"
    )


def test_the_collision_in_a_branch_names_the_branch_scope() -> None:
    def branch(s: Any) -> Generator[Any, Any, Any]:
        yield s.compensate("charge", undo)
        yield s.run("compensate:charge", echo)

    def flow(ctx: Any) -> Generator[Any, Any, Any]:
        yield step.parallel("p", [branch])

    message = failure_of(flow)
    assert message.startswith("step name 'compensate:charge' is the id of the undo that ")
    assert "registered in 'p/0'" in message


def test_a_second_compensate_for_one_step_says_a_step_has_one_undo() -> None:
    def flow(ctx: Any) -> Generator[Any, Any, Any]:
        yield step.compensate("charge", undo)
        yield step.compensate("charge", undo)

    assert failure_of(flow) == (
        "step.compensate('charge', ...) is called twice in 'the workflow' (its undo runs as "
        "the step 'compensate:charge'): a step has one undo; register it once"
    )


def test_two_steps_named_like_an_undo_without_a_compensate_are_just_used_twice() -> None:
    def flow(ctx: Any) -> Generator[Any, Any, Any]:
        yield step.run("compensate:x", echo)
        yield step.run("compensate:x", echo)

    assert "step name 'compensate:x' is used twice in 'the workflow'" in failure_of(flow)


def test_the_collision_is_a_duplicate_step_error_the_workflow_can_catch() -> None:
    def flow(ctx: Any) -> Generator[Any, Any, Any]:
        yield step.compensate("charge", undo)
        try:
            yield step.run("compensate:charge", echo)
        except DuplicateStepError as exc:
            return str(exc)

    sim = Sim(flow)
    sim.run_all()
    assert sim.decision.status == "completed"
    assert "is the id of the undo" in sim.decision.output
    sim.verify()


def test_a_step_named_like_an_undo_without_a_collision_still_runs_and_replays(
    engine: Engine, clock: VirtualClock
) -> None:
    """Not refused at the builder: a run parked after such a step must still replay."""

    @ironflow.function(id="named-like-an-undo")
    def flow(ctx: Context) -> Generator[Any, Any, Any]:
        yield step.compensate("charge", undo)  # its undo would be 'compensate:charge'
        first = yield step.run("compensate:refund", echo, 1)
        yield step.sleep("nap", "1h")
        return first

    engine.register(flow)
    run_id = engine.start(flow)
    idle(engine)
    assert engine.get_run(run_id).status == "waiting"
    parked = replay(flow, engine.history(run_id))
    assert parked.status == "running" and parked.events == ()  # nothing new to decide
    clock.advance("1h")
    idle(engine)
    assert engine.get_run(run_id).output == 1
    assert replay(flow, engine.history(run_id)).status == "completed"


def test_undos_still_run_under_their_compensate_ids_and_replay() -> None:
    def flow(ctx: Any) -> Generator[Any, Any, Any]:
        yield step.run("charge", echo)
        yield step.compensate("charge", undo)
        yield step.run("boom", boom, retry=ironflow.RetryPolicy(max_attempts=1))

    sim = Sim(flow)
    sim.run_all()
    assert "compensate:charge" in sim.scheduled_ids()
    assert sim.decision.status == "failed"
    sim.verify()
