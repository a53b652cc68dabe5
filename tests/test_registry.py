"""Issue 11, item 5: the function registry in the database, on both stores.

``register()`` records a function's id, triggers, settings and code version; an emit or a start
from any process (a bare ``Engine``, the CLI without ``--app``, another process) starts the
registered functions; a run is driven only by a worker that has its code; a pending run of a
function no live worker has says why; each run shows the code version that drove it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import ironflow
from ironflow import Engine, step
from ironflow.cli import cli
from ironflow.runtime import registry
from ironflow.runtime.store import SCHEMA_VERSION, open_store
from ironflow.testing import VirtualClock

ROOT = Path(__file__).resolve().parent.parent


def _hello(name: str) -> str:
    return f"hello {name}"


@ironflow.function(id="greet", on="user.*")
def greet(ctx: Any) -> Any:
    return (yield step.run("hello", _hello, (ctx.event.data or {}).get("name", "you")))


@ironflow.function(id="greet", on="user.*")
def greet_v2(ctx: Any) -> Any:
    text = yield step.run("hello", _hello, (ctx.event.data or {}).get("name", "you"))
    return text.upper()


@ironflow.function(id="greet", on="person.joined")
def greet_elsewhere(ctx: Any) -> Any:
    return (yield step.run("hello", _hello, "elsewhere"))


@ironflow.function(id="parent")
def parent(ctx: Any) -> Any:
    return (yield step.invoke("child", "greet", {"name": "kid"}))


@pytest.fixture
def engines(store_url: str, clock: VirtualClock) -> Any:
    """A factory of engines on the test's database and clock, all closed at the end."""
    made: list[Engine] = []

    def make(*functions: Any) -> Engine:
        engine = Engine(store_url, clock=clock)
        made.append(engine)
        for function in functions:
            engine.register(function)
        return engine

    yield make
    for engine in made:
        engine.close()


def test_emit_from_an_engine_with_nothing_registered_starts_the_registered_function(
    engines: Any,
) -> None:
    worker = engines(greet)
    bare = engines()
    assert bare.functions == {}
    started = bare.emit("user.created", {"name": "ann"})
    assert len(started) == 1
    run = bare.get_run(started[0])
    assert (run.function, run.status) == ("greet", "pending")
    bare.run_until_idle()  # the bare engine has not the code: it drives nothing
    assert bare.get_run(started[0]).status == "pending"
    worker.run_until_idle()
    assert worker.get_run(started[0]).output == "hello ann"
    assert bare.emit("order.created") == []  # no registered trigger matches


def test_start_by_id_from_a_bare_engine_and_unknown_ids_name_the_registered_ones(
    engines: Any,
) -> None:
    worker = engines(greet)
    bare = engines()
    rid = bare.start("greet", {"name": "bo"}, run_id="by-id")
    assert bare.start("greet", run_id="by-id") == "by-id"  # idempotent, as ever
    worker.run_until_idle()
    assert bare.get_run(rid).output == "hello bo"
    with pytest.raises(ValueError) as caught:
        bare.start("nope")
    assert str(caught.value) == "unknown function 'nope'; registered functions: greet"
    assert [run.id for run in bare.list_runs()] == ["by-id"]  # nothing written


def test_invoke_starts_a_child_registered_by_another_engine(engines: Any) -> None:
    parents = engines(parent)
    children = engines(greet)
    rid = parents.start("parent")
    parents.run_until_idle()
    assert parents.get_run(f"{rid}/child").status == "pending"
    children.run_until_idle()
    parents.run_until_idle()
    assert parents.get_run(rid).output == "hello kid"


def test_the_latest_registration_of_an_id_sets_its_triggers(engines: Any) -> None:
    engines(greet)
    engines(greet_elsewhere)  # another process registers the id later, other triggers
    bare = engines()
    assert bare.emit("user.created") == []
    assert len(bare.emit("person.joined")) == 1
    engines(greet)  # and back: the latest wins again
    assert bare.emit("person.joined") == []
    assert len(bare.emit("user.created")) == 1


def test_emit_reads_the_registry_only_when_a_registration_moved_it(
    engines: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engines(greet)
    bare = engines()
    reads: list[int] = []
    tx_class = type(bare.store.transaction())
    original = tx_class.registered
    monkeypatch.setattr(tx_class, "registered", lambda tx: reads.append(1) or original(tx))
    for _ in range(5):
        bare.emit("user.created")
    assert len(reads) == 1
    engines(greet_elsewhere)
    bare.emit("person.joined")
    assert len(reads) == 2


def test_registration_records_triggers_settings_and_code_version(engines: Any) -> None:
    engine = engines(greet)
    store: Any = engine.store
    triggers, settings, version = store.registration("greet")
    assert json.loads(triggers) == ["user.*"]
    assert json.loads(settings)["retry"] is None
    assert version == registry.code_version(greet) and len(version) == 12
    assert registry.code_version(greet) != registry.code_version(greet_v2)
    assert registry.code_version(greet) != registry.code_version(greet_elsewhere)


def test_in_process_a_different_function_under_a_registered_id_is_still_refused(
    engines: Any,
) -> None:
    engine = engines(greet)
    with pytest.raises(ValueError, match="already registered with this engine"):
        engine.register(greet_v2)


def test_a_pending_run_of_a_function_no_live_worker_has_says_why(
    engines: Any, clock: VirtualClock
) -> None:
    worker = engines(greet)
    bare = engines()
    worker.run_until_idle()  # its heartbeat: live for a lease (30 s)
    rid = bare.start("greet")
    assert bare.get_run(rid).waiting_for is None  # a live worker has it
    clock.advance("31s")  # the worker went quiet for longer than a lease
    run = bare.get_run(rid)
    assert (run.status, run.waiting_for) == ("pending", "no live worker has function 'greet'")
    assert [r.waiting_for for r in bare.list_runs()] == ["no live worker has function 'greet'"]
    worker.run_until_idle()  # back: it beats again and drives the run
    run = bare.get_run(rid)
    assert (run.status, run.waiting_for) == ("completed", None)


def test_a_worker_that_stops_cleanly_removes_its_heartbeat(engines: Any) -> None:
    worker = engines(greet)
    bare = engines()
    idle = threading.Event()
    thread = threading.Thread(
        target=worker.serve, kwargs={"install_signals": False, "on_idle": idle.set}
    )
    thread.start()
    assert idle.wait(10)
    now_us = bare._driver.now_us()
    assert registry.live_functions(bare.store, now_us) == {"greet"}
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert registry.live_functions(bare.store, now_us) == set()
    rid = bare.start("greet")
    assert bare.get_run(rid).waiting_for == "no live worker has function 'greet'"
    closing = engines(greet)
    closing.run_until_idle()  # drives the run, and beats
    assert registry.live_functions(bare.store, now_us) == {"greet"}
    closing.close()  # a clean stop too
    assert registry.live_functions(bare.store, now_us) == set()


def test_each_run_shows_the_code_version_that_drove_it(engines: Any) -> None:
    old = engines(greet)
    new = engines(greet_v2)  # a rolling deploy: another body under the same id
    bare = engines()
    first = bare.start("greet", {"name": "a"})
    assert bare.get_run(first).code_version is None  # not driven yet
    old.run_until_idle()
    second = bare.start("greet", {"name": "b"})
    new.run_until_idle()
    runs = {run.id: run for run in bare.list_runs()}
    assert runs[first].code_version == registry.code_version(greet)
    assert runs[second].code_version == registry.code_version(greet_v2)
    assert runs[second].output == "HELLO B"
    assert bare.get_run(first).code_version != bare.get_run(second).code_version


def test_code_version_is_the_same_in_another_process_for_the_same_source(tmp_path: Path) -> None:
    source = textwrap.dedent(
        """
        import ironflow
        from ironflow import step
        from ironflow.runtime import registry

        @ironflow.function(id="f", on="x")
        def f(ctx):
            if ctx.event.name in {"a", "b", "c", "d"}:
                yield step.sleep("nap", "1s")
            return [n for n in range(3)]

        print(registry.code_version(f))
        """
    )
    (tmp_path / "codever.py").write_text(source)
    seen = {
        subprocess.run(
            [sys.executable, "codever.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(seen) == 1 and len(next(iter(seen))) == 12
    (tmp_path / "codever.py").write_text(source.replace("range(3)", "range(4)"))
    changed = subprocess.run(
        [sys.executable, "codever.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT)},
    ).stdout.strip()
    assert changed not in seen


def test_emit_from_a_separate_process_with_no_functions_starts_the_run(
    engines: Any, store_url: str
) -> None:
    worker = engines(greet)
    script = (
        "import sys, json\n"
        "from ironflow import Engine\n"
        "engine = Engine(sys.argv[1])\n"
        "print(json.dumps(engine.emit('user.created', {'name': 'far'})))\n"
        "engine.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, store_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    (rid,) = json.loads(done.stdout)
    worker.run_until_idle()
    assert worker.get_run(rid).output == "hello far"


def test_runs_show_and_list_tell_the_code_version_and_why_a_run_is_pending(
    tmp_path: Path, clock: VirtualClock
) -> None:
    path = str(tmp_path / "app.db")
    worker = Engine(path, clock=clock)
    worker.register(greet)
    done = worker.start("greet", {"name": "cli"})
    worker.run_until_idle()
    worker.close()  # a clean stop: no live worker has greet any more
    bare = Engine(path, clock=clock)
    stuck = bare.start("greet")
    bare.close()
    shown = CliRunner().invoke(cli, ["runs", "show", stuck, "--db", path])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[2:4] == ["status    pending", "pending   no live worker has function 'greet'"]
    shown = CliRunner().invoke(cli, ["runs", "show", done, "--db", path])
    assert f"code      {registry.code_version(greet)}" in shown.stdout.splitlines()
    listed = CliRunner().invoke(cli, ["runs", "list", "--db", path, "--json"])
    by_id = {run["id"]: run for run in json.loads(listed.stdout)}
    assert by_id[done]["code_version"] == registry.code_version(greet)
    assert by_id[done]["waiting_for"] is None
    assert by_id[stuck]["waiting_for"] == "no live worker has function 'greet'"
    assert by_id[stuck]["code_version"] is None


# --- migration from v2 ----------------------------------------------------------------------


def _back_to_v2(store: Any) -> None:
    """Turn a current database into what v2 had (no registry, no heartbeats, no code
    versions; none of v4's flow tables, v5's run links and listing indexes, nor v6's event
    trace contexts and consumers' index)."""
    v5 = [
        "DROP INDEX consumed_event",
        "ALTER TABLE events DROP COLUMN traceparent",
        "DROP INDEX runs_status_created",
        "DROP INDEX runs_function_created",
    ]
    if type(store).__name__.startswith("SQLite"):
        v5.append("DROP INDEX runs_created")  # PostgreSQL had it from its first version
    for statement in (
        *v5,
        "ALTER TABLE runs DROP COLUMN source_run_id",
        "DROP TABLE functions",
        "DROP TABLE workers",
        "DROP TABLE flow_state",  # and what v4 added
        "DROP TABLE flow_skips",
        "ALTER TABLE runs DROP COLUMN code_version",
        "DELETE FROM ironflow_meta WHERE key = 'registry_version'",
        "UPDATE ironflow_meta SET value = '2' WHERE key = 'schema_version'",
    ):
        store.query(statement)


def test_a_v2_database_is_migrated_to_the_current_version_with_its_runs(
    store_url: str, clock: VirtualClock
) -> None:
    engine = Engine(store_url, clock=clock)
    engine.register(greet)
    done = engine.start("greet", {"name": "old"})
    engine.run_until_idle()
    pending = engine.start("greet", {"name": "later"})
    engine.close()
    raw: Any = open_store(store_url)
    _back_to_v2(raw)
    raw.close()
    assert SCHEMA_VERSION == 6
    # Read-only (the CLI's runs commands) it reads as v2 was: no code versions, no reasons.
    reader = Engine(open_store(store_url, read_only=True))
    run = reader.get_run(pending)
    assert (run.status, run.code_version, run.waiting_for) == ("pending", None, None)
    reader.close()
    again = Engine(store_url, clock=clock)  # migrates
    assert again.store.schema_version() == SCHEMA_VERSION  # type: ignore[attr-defined]
    assert again.get_run(done).output == "hello old"
    assert again.emit("user.created") == []  # nothing registered in the database yet
    again.register(greet)
    assert len(again.emit("user.created")) == 1
    again.run_until_idle()
    assert again.get_run(pending).output == "hello later"
    assert again.get_run(pending).code_version == registry.code_version(greet)
    again.close()


@pytest.mark.sqlite_only
def test_a_newer_sqlite_database_is_still_refused(store_url: str) -> None:
    Engine(store_url).close()
    conn = sqlite3.connect(store_url)
    with conn:
        conn.execute("UPDATE ironflow_meta SET value = '7' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(ironflow.errors.StoreError, match="newer than this ironflow"):
        Engine(store_url)
