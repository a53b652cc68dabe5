"""Workers looking at once do not race for the same runs (issue 11: 4 workers no slower than 2).

On PostgreSQL, runs waiting for any worker are claimed apart from discovery, in one statement
that skips rows another claim holds (``PostgresStore.claim``): workers that look at the same
moment get runs of their own. Before, each read the same first page and then raced for it, and
all but one lost most of their claims. The waste is counted (``Engine.stats``: ``claims`` asked
for, ``claims_won``, ``looks``, ``looks_empty``), never timed; every wait is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import held_kit
import psycopg
import pytest
from held_kit import bodies, gate, held

import ironflow
from ironflow import Engine, step
from ironflow.runtime import discovery, leases, registry
from ironflow.runtime.discovery import RUNS_PER_THREAD
from ironflow.runtime.live import create_run, trigger

WAIT = 10.0
SLOW_POLL = "60s"  # only what the test does makes a worker look
THREADS = 2
ROOM = THREADS * RUNS_PER_THREAD
WORKERS = 4


@ironflow.function(id="claims-one")
def one_step(ctx: Any) -> Any:
    return (yield step.run("held", held, ctx.run_id))


@pytest.fixture(autouse=True)
def _fresh_gate() -> Iterator[None]:
    yield from held_kit.fresh()


def _create(url: str, n: int) -> list[str]:
    """``n`` pending runs, created by an engine that serves nothing (another process's)."""
    return held_kit.create_pending(url, one_step.id, n)


def _worker(url: str) -> Engine:
    engine = Engine(url, poll=SLOW_POLL, max_workers=THREADS)
    engine.register(one_step)
    return engine


def _together(engines: list[Engine], call: str) -> None:
    """``call`` on every engine's worker at once, each from a thread of its own (bounded)."""
    failures: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            getattr(engine._worker, call)()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
        assert not thread.is_alive(), f"{call} did not return"
    assert not failures, failures


def _looking_together(engines: list[Engine]) -> None:
    """Every engine's look in the database returns only once all have looked: the moment a
    burst lands, when every idle worker looks before any has taken a run."""
    barrier = threading.Barrier(len(engines), timeout=WAIT)
    for engine in engines:
        discover = engine.store.discover

        def looked(*args: Any, discover: Any = discover) -> Any:
            found = discover(*args)
            barrier.wait()
            return found

        engine.store.discover = looked  # type: ignore[method-assign]


def _sum(engines: list[Engine], key: str) -> int:
    return sum(engine.stats[key] for engine in engines)


@pytest.mark.postgres
def test_workers_looking_at_once_each_claim_runs_of_their_own(pg_url):
    run_ids = _create(pg_url, WORKERS * ROOM)
    engines = [_worker(pg_url) for _ in range(WORKERS)]
    try:
        _looking_together(engines)
        _together(engines, "tick")  # one round each: look, take, fold, commit, dispatch
        held = [set(engine._driver.live) for engine in engines]
        # Each got a full room, none the same run. Before: all read one page and raced for
        # it, and the burst's first look took ROOM runs in all (claims lost: 3 of 4).
        assert [len(runs) for runs in held] == [ROOM] * WORKERS
        assert set().union(*held) == set(run_ids)
        claims, won = _sum(engines, "claims"), _sum(engines, "claims_won")
        assert won == WORKERS * ROOM
        assert claims - won <= claims // 20, f"{claims - won} of {claims} claims lost"
        gate.set()
        _together(engines, "run_until_idle")
        assert all(engines[0].get_run(run_id).status == "completed" for run_id in run_ids)
        assert _sum(engines, "runs_ended") == len(run_ids)
        # Looks stay a few per worker and room: a claim of its own each time, not a page
        # of others' runs (each worker drove ROOM runs, in one claim).
        assert _sum(engines, "looks") <= WORKERS * 4, _sum(engines, "looks")
        assert _sum(engines, "claims") - _sum(engines, "claims_won") <= claims // 20
    finally:
        for engine in engines:
            engine.close()
    assert sorted(bodies) == sorted(run_ids)  # each body once, each run once


@pytest.mark.postgres
def test_a_claimed_run_is_leased_to_its_claimer_and_taken_by_its_next_round(pg_url):
    """A claim commits by itself and is the take's write (running, leased, this code's
    version): a round that fails before taking what it claimed leaves it leased to this
    worker, whose next round takes it; no one else can claim it meanwhile (its lease holds),
    and a dead worker's claims pass on with the lease."""
    (run_id,) = _create(pg_url, 1)
    first, second = _worker(pg_url), _worker(pg_url)
    try:
        now = first._driver.now_us()
        until = now + first._driver.lease_us
        fids = (one_step.id,)
        # The look of a round that then fails before its take (nothing else of it runs).
        assert discovery.find(first._driver, now, {}, {}) == {run_id}
        assert first._driver.claimed == {run_id}
        assert second.store.claim(now, fids, second.worker_id, until, 10) == []  # leased
        assert first.get_run(run_id).status == "running"  # claimed: the take's write done
        assert discovery.room(first._driver) == ROOM - 1  # counted as held
        first._worker.tick()  # its next round takes it, from what it claimed
        assert set(first._driver.live) == {run_id}
        assert first._driver.claimed == set()
        assert first.stats["claims_won"] == 1
        gate.set()
        first.run_until_idle()
        assert first.get_run(run_id).status == "completed"
        # Past the lease, a claim that was never taken is anyone's.
        (other,) = _create_more(pg_url, "orphan")
        assert first.store.claim(now, fids, first.worker_id, now + 1, 10) == [other]
        later = now + 2
        found = second.store.claim(later, fids, second.worker_id, later + 10**9, 10)
        assert found == [other]
    finally:
        first.close()
        second.close()


_COUNT_UPDATES = (
    "CREATE TABLE run_updates (id TEXT, status TEXT, owner TEXT, version TEXT)",
    "CREATE FUNCTION count_run_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO run_updates VALUES (NEW.id, NEW.status, NEW.lease_owner, NEW.code_version); "
    "RETURN NEW; END $$",
    "CREATE TRIGGER count_run_update AFTER UPDATE ON runs "
    "FOR EACH ROW EXECUTE FUNCTION count_run_update()",
)


@pytest.mark.postgres
def test_a_claimed_and_taken_run_row_is_written_once(pg_url):
    """Every write of a ``runs`` row rewrites all of its indexes: a run claimed and then
    taken by the round is updated once, by the claim (before: the take updated it again)."""
    run_ids = _create(pg_url, ROOM)
    worker = _worker(pg_url)
    conn = psycopg.connect(pg_url, autocommit=True)
    try:
        for statement in _COUNT_UPDATES:
            conn.execute(statement)
        driver = worker._driver
        now = driver.now_us()
        assert discovery.find(driver, now, {}, {}) == set(run_ids)
        with worker.store.take_transaction() as tx:
            taken, _, unwritten = leases.take(driver, tx, run_ids, now, set(), {})
        assert sorted(row[0] for row in taken) == sorted(run_ids)
        assert {row[6] for row in taken} == {"running"}
        assert len(unwritten) == len(run_ids)  # each starts here: its RunStarted written once
        updates = conn.execute("SELECT id, status, owner, version FROM run_updates").fetchall()
        version = registry.version_of(driver, one_step.id)
        assert sorted(updates) == sorted(
            (run_id, "running", worker.worker_id, version) for run_id in run_ids
        )
    finally:
        conn.close()
        worker.close()


def _create_more(url: str, run_id: str) -> list[str]:
    starter = Engine(url, poll=SLOW_POLL)
    try:
        with starter.store.transaction() as tx:
            create_run(starter._driver, tx, run_id, one_step.id, trigger("x", None, 0), 0)
        return [run_id]
    finally:
        starter.close()


def test_a_store_that_does_not_claim_apart_lists_waiting_runs_in_discovery(store_url):
    """SQLite (one writer at a time) keeps them in discovery's page; PostgreSQL claims them."""
    run_ids = _create(store_url, 3)
    worker = _worker(store_url)
    try:
        now = worker._driver.now_us()
        _, ready, _ = worker.store.discover(now, (one_step.id,), worker.worker_id, 10)
        claimed = worker.store.claim(now, (one_step.id,), worker.worker_id, now + 10**9, 10)
        if worker.store.CLAIMS:
            assert (ready, sorted(claimed or [])) == ([], sorted(run_ids))
        else:
            assert (sorted(ready), claimed) == (sorted(run_ids), None)
    finally:
        worker.close()


# --- wake-ups that name runs: one worker chases each first ----------------------------------


@pytest.mark.postgres
def test_a_named_run_is_chased_first_by_one_worker_and_by_the_others_after_a_grace(
    pg_url, monkeypatch
):
    from ironflow.runtime import discovery, registry

    monkeypatch.setattr(discovery, "NAMED_GRACE", 60.0)  # no grace ends by itself here
    run_ids = _create(pg_url, 30)
    engines = [_worker(pg_url) for _ in range(3)]
    try:
        for engine in engines:  # each says it is live, then reads who else is
            engine._driver.next_heartbeat_us = 0
            registry.heartbeat(engine._driver, engine._driver.now_us())
        peers = tuple(sorted(engine.worker_id for engine in engines))
        assert engines[-1]._driver.peers == peers
        for engine in engines:
            engine._driver.peers = peers
            engine._driver.dirty = False  # nothing but the wake-up makes them look
            engine._driver.next_poll = float("inf")
            engine._driver.next_timer_us = discovery.NEVER
        mine = {
            engine.worker_id: {r for r in run_ids if discovery.chaser(peers, r) == engine.worker_id}
            for engine in engines
        }
        assert all(mine.values()), mine  # spread over the three
        alive, dead = engines[:2], engines[2]
        for engine in engines:  # every listener hears the one notification naming them all
            engine._worker.hint(frozenset(run_ids))
        for engine in alive:
            engine._worker.tick()
        # Each took its own, without a look, and lost no claim. Before: every worker chased
        # every run, and all but the first lost each claim.
        for engine in alive:
            assert set(engine._driver.live) == mine[engine.worker_id]
            assert engine.stats["looks"] == 0
        theirs = sum(len(mine[engine.worker_id]) for engine in alive)
        assert _sum(alive, "claims") == _sum(alive, "claims_won") == theirs
        # The third never drove its runs (dead, or slow): the others look once the grace
        # ends (a look within the poll interval) and find them still waiting.
        first = alive[0]
        assert first._driver.next_poll <= first._driver.next_chase
        assert first._driver.next_chase < float("inf")
        first._driver.next_poll = 0.0  # the grace ended
        first._worker.tick()
        assert set(first._driver.live) == mine[first.worker_id] | mine[dead.worker_id]
        assert first.stats["looks"] == 1
        assert _sum(alive, "claims") == _sum(alive, "claims_won") == 30
        gate.set()
        _together(alive, "run_until_idle")
        assert all(first.get_run(run_id).status == "completed" for run_id in run_ids)
    finally:
        for engine in engines:
            engine.close()
    assert sorted(bodies) == sorted(run_ids)
