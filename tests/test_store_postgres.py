"""The PostgreSQL store's foundation against a real server: opening, schema, leases, the fence,
and event order (issue 11). Each test gets a fresh schema (``pg_url``)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pgcluster
import psycopg
import pytest

from ironflow.errors import StoreError
from ironflow.runtime import store as sqlite_store
from ironflow.runtime.store import LeaseLost
from ironflow.runtime.store import postgres_round as pg_round
from ironflow.runtime.store import postgres_schema as pg
from ironflow.runtime.store.base import Batch
from ironflow.runtime.store.postgres import CLAIM_RUNS, READY_RUNS, PostgresStore
from ironflow.runtime.store.postgres_session import Begun
from ironflow.runtime.store.postgres_tx import PostgresTransaction

WAIT_S = 10  # bounded waits: a hang fails the test instead of the session


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url)
    yield opened
    opened.close()


def connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, connect_timeout=pgcluster.CONNECT_TIMEOUT_S)
    conn.execute(f"SET lock_timeout = '{WAIT_S}s'")
    return conn


def schema_of(url: str) -> str:
    with connect(url) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
        assert row is not None
        return str(row[0])


def tables(url: str) -> list[str]:
    with connect(url) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "ORDER BY tablename"
            ).fetchall()
        ]


def tx_on(conn: psycopg.Connection[Any], store: PostgresStore) -> PostgresTransaction:
    """The store's transaction verbs on the test's own connection (and its transactions)."""

    def begin(setup: str = "") -> tuple[psycopg.Connection[Any], Begun]:
        conn.execute("BEGIN" + setup)
        return conn, Begun(conn)

    shim = SimpleNamespace(
        conn=conn,
        lock=threading.RLock(),
        lock_class=store.lock_class,
        reraise=store.reraise,
        url=store.url,
        channel=store.channel,
        begin=begin,
        connection=lambda: conn,
        cursor=lambda on: on.cursor(),
    )
    return PostgresTransaction(shim)  # type: ignore[arg-type]


def add_runs(conn: psycopg.Connection[Any], store: PostgresStore, ids: list[str]) -> None:
    with conn.transaction():
        create_runs(conn, store, ids)


def create_runs(conn: psycopg.Connection[Any], store: PostgresStore, ids: list[str]) -> None:
    tx = tx_on(conn, store)
    for run_id in ids:
        tx.create_run(run_id, "f", "{}", 1, None, None, False)


def claim_runs(
    conn: psycopg.Connection[Any], store: PostgresStore, owner: str, now_us: int, limit: int
) -> list[tuple[Any, ...]]:
    """What a worker's look finds: runs with news (a read) and runs waiting for any worker
    (claimed: leased, skipping rows held elsewhere); then it takes them."""
    params = {"now": now_us, "fids": ["f"], "owner": owner, "limit": limit}
    params.update(most=limit, until=now_us + 1000, versions=[], gated=[])
    ids = [row[0] for row in conn.execute(READY_RUNS, params).fetchall()]
    ids += [row[0] for row in conn.execute(CLAIM_RUNS, params).fetchall() if row[0] not in ids]
    if not ids:
        return []
    return tx_on(conn, store).take_runs(ids, set(ids), owner, now_us + 1000, now_us, ("f",))


def take_runs(
    conn: psycopg.Connection[Any], store: PostgresStore, owner: str, ids: list[str], now_us: int
) -> list[tuple[Any, ...]]:
    return tx_on(conn, store).take_runs(ids, set(), owner, now_us + 1000, now_us, ("f",))


def commit_round(
    conn: psycopg.Connection[Any],
    store: PostgresStore,
    owner: str,
    batch: Batch,
    emits: frozenset[str] = frozenset(),
    waits: frozenset[str] = frozenset(),
) -> None:
    with tx_on(conn, store) as tx:
        if emits or waits:
            tx.reserve(emits, waits, False)
        tx.commit_round(batch, owner)


# --- opening ----------------------------------------------------------------------------------


def test_creates_the_schema_in_the_urls_search_path_with_the_sqlite_version(pg_url):
    schema = schema_of(pg_url)
    PostgresStore(pg_url).close()
    assert tables(pg_url) == sorted(pg.TABLES)
    with connect(pg_url) as conn:
        meta = conn.execute("SELECT key, value FROM ironflow_meta ORDER BY key").fetchall()
        assert meta == [("registry_version", "0"), ("schema_version", "6")]
        assert sqlite_store.SCHEMA_VERSION == 6
        located = conn.execute(
            "SELECT DISTINCT schemaname FROM pg_tables WHERE tablename = ANY(%s)",
            (list(pg.TABLES),),
        ).fetchall()
        assert located == [(schema,)]  # not in public
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            ).fetchall()
        }
        for name in ("runs_ready", "runs_active", "runs_leased", "timers_due", "waits_match"):
            assert name in indexes
    # Opening again (the tables exist) changes nothing; postgres:// is the same URL.
    again = PostgresStore(pg_url.replace("postgresql://", "postgres://", 1))
    assert again.schema_version() == sqlite_store.SCHEMA_VERSION
    again.close()


def test_history_is_append_only_in_the_database(store, pg_url):
    with connect(pg_url) as conn:
        conn.execute("INSERT INTO history VALUES ('r', 0, 'RunStarted', 1, '{}')")
        for statement in ("UPDATE history SET body = '[]'", "DELETE FROM history"):
            with pytest.raises(psycopg.errors.RaiseException, match="history is append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM history").fetchone() == (1,)


def test_durability_normal_turns_synchronous_commit_off_the_default_keeps_the_servers(pg_url):
    default = PostgresStore(pg_url)
    normal = PostgresStore(pg_url, durability="normal")
    try:
        assert default.conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert normal.conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    finally:
        default.close()
        normal.close()
    with pytest.raises(ValueError, match="durability must be 'full' or 'normal', got 'fast'"):
        PostgresStore(pg_url, durability="fast")


def test_unreachable_server_is_a_store_error_naming_the_url_without_its_password():
    port = pgcluster._free_port()  # nothing listens there
    url = f"postgresql://app:s3cret@127.0.0.1:{port}/db?password=s3cret&connect_timeout=2"
    with pytest.raises(StoreError) as caught:
        PostgresStore(url, connect_timeout=2)
    message = str(caught.value)
    assert message.startswith(
        f"cannot connect to the PostgreSQL database postgresql://app:***@127.0.0.1:{port}/db?"
    )
    assert "password=***" in message
    assert "s3cret" not in message


def test_an_unknown_role_is_a_store_error_naming_the_url(postgres_url):
    url = postgres_url.replace(f"{pgcluster.SUPERUSER}@", "nobody_here:pw@", 1)
    with pytest.raises(StoreError, match='role "nobody_here" does not exist') as caught:
        PostgresStore(url)
    assert "nobody_here:***@" in str(caught.value)
    assert ":pw@" not in str(caught.value)


def test_without_psycopg_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(StoreError) as caught:
        PostgresStore("postgresql://app:pw@db.example/app")
    assert str(caught.value) == (
        "cannot open postgresql://app:***@db.example/app: the PostgreSQL store needs "
        'psycopg 3; pip install "ironflow[postgres]"'
    )


def test_not_a_postgres_url_is_refused():
    with pytest.raises(ValueError, match="not a PostgreSQL URL: 'mysql://u:\\*\\*\\*@h/d'"):
        PostgresStore("mysql://u:pw@h/d")


def test_a_search_path_naming_no_schema_is_refused(postgres_url):
    url = pgcluster.with_search_path(postgres_url, "no_such_schema")
    with pytest.raises(StoreError, match=r"no schema of its search_path \(no_such_schema\) exists"):
        PostgresStore(url)


def test_many_workers_opening_a_fresh_schema_at_once_create_it_once(pg_url):
    n = 8
    barrier = threading.Barrier(n, timeout=WAIT_S)
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def open_one() -> None:
        try:
            barrier.wait()
            stores.append(PostgresStore(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 3)
    for opened in stores:
        opened.close()
    assert errors == []
    assert len(stores) == n
    with connect(pg_url) as conn:
        # Created once: one schema version and one registry counter.
        assert conn.execute("SELECT count(*) FROM ironflow_meta").fetchone() == (2,)


# --- refusing what is not ours ----------------------------------------------------------------


def snapshot(url: str) -> list[tuple[Any, ...]]:
    """Every table and column of the schema: 'refused untouched' compares two of these."""
    with connect(url) as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY 1, 2"
        ).fetchall()


def test_a_newer_schema_version_is_refused_untouched(store, pg_url):
    with connect(pg_url) as conn:
        conn.execute("UPDATE ironflow_meta SET value = '99' WHERE key = 'schema_version'")
    before = snapshot(pg_url)
    with pytest.raises(StoreError) as caught:
        PostgresStore(pg_url)
    schema = schema_of(pg_url)
    assert str(caught.value) == (
        f"schema {schema!r} has ironflow schema version 99, newer than this ironflow "
        f"understands ({sqlite_store.SCHEMA_VERSION}); upgrade ironflow"
    )
    assert snapshot(pg_url) == before
    with connect(pg_url) as conn:
        version = "SELECT value FROM ironflow_meta WHERE key = 'schema_version'"
        assert conn.execute(version).fetchone() == ("99",)


def test_tables_of_the_same_names_that_are_not_ironflows_are_refused_untouched(pg_url):
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE runs (order_id INT PRIMARY KEY, amount NUMERIC)")
        conn.execute("INSERT INTO runs VALUES (1, 9.5)")
        conn.execute("CREATE TABLE events (id INT)")
    before = snapshot(pg_url)
    with pytest.raises(StoreError) as caught:
        PostgresStore(pg_url)
    assert str(caught.value) == (
        f"schema {schema_of(pg_url)!r} holds tables named like ironflow's (events, runs) but "
        "no ironflow_meta: they are not ironflow's; point ironflow at another schema "
        "(?options=-csearch_path%3Dmyapp)"
    )
    assert snapshot(pg_url) == before
    with connect(pg_url) as conn:
        assert conn.execute("SELECT * FROM runs").fetchall() == [(1, pytest.approx(9.5))]


def test_a_foreign_ironflow_meta_is_refused(pg_url):
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE ironflow_meta (name TEXT)")
    with pytest.raises(StoreError, match="an ironflow_meta table that is not ironflow's"):
        PostgresStore(pg_url)
    assert tables(pg_url) == ["ironflow_meta"]


def test_other_tables_in_the_schema_are_left_alone(pg_url):
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE orders (id INT)")
    PostgresStore(pg_url).close()
    assert "orders" in tables(pg_url)


# --- claiming runs and leases -----------------------------------------------------------------


def test_a_claim_skips_runs_another_transaction_holds_instead_of_waiting(store, pg_url):
    with connect(pg_url) as a, connect(pg_url) as b:
        add_runs(a, store, ["r1", "r2", "r3", "r4"])
        b.execute("SET lock_timeout = '1s'")  # FOR UPDATE without SKIP LOCKED would fail here
        with a.transaction():
            got_a = claim_runs(a, store, "wa", now_us=100, limit=2)
            with b.transaction():
                got_b = claim_runs(b, store, "wb", now_us=100, limit=10)
        ids_a = {row[0] for row in got_a}
        ids_b = {row[0] for row in got_b}
        assert len(ids_a) == 2
        assert ids_a | ids_b == {"r1", "r2", "r3", "r4"}
        assert ids_a.isdisjoint(ids_b)
        owners = dict(a.execute("SELECT id, lease_owner FROM runs").fetchall())
        assert owners == {i: ("wa" if i in ids_a else "wb") for i in owners}
        statuses = {row[0] for row in a.execute("SELECT status FROM runs").fetchall()}
        assert statuses == {"running"}  # a pending run is running once taken


def test_concurrent_claimers_never_get_the_same_run(store, pg_url):
    n_runs, n_workers = 200, 4
    with connect(pg_url) as conn:
        add_runs(conn, store, [f"r{i:03}" for i in range(n_runs)])
    barrier = threading.Barrier(n_workers, timeout=WAIT_S)
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            with connect(pg_url) as conn:
                barrier.wait()
                mine = claimed.setdefault(name, [])
                while True:
                    with conn.transaction():
                        got = claim_runs(conn, store, name, 100, limit=7)
                    left = conn.execute("SELECT 1 FROM runs WHERE lease_owner IS NULL LIMIT 1")
                    if not got and left.fetchone() is None:
                        return
                    mine.extend(row[0] for row in got)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(n_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 3)
    assert errors == []
    everything = [run_id for ids in claimed.values() for run_id in ids]
    assert sorted(everything) == [f"r{i:03}" for i in range(n_runs)]  # each exactly once
    with connect(pg_url) as conn:
        owners = dict(conn.execute("SELECT id, lease_owner FROM runs").fetchall())
    for name, ids in claimed.items():
        assert {owners[run_id] for run_id in ids} <= {name}


def test_claims_take_mail_pending_and_orphaned_runs_only(store, pg_url):
    with connect(pg_url) as conn:
        add_runs(conn, store, ["pending", "held", "expired", "mail", "parked", "done", "other"])
        conn.execute(
            "UPDATE runs SET status = 'running', lease_owner = 'w9', lease_until_us = 500 "
            "WHERE id IN ('held', 'expired')"
        )
        conn.execute("UPDATE runs SET lease_until_us = 50 WHERE id = 'expired'")
        conn.execute("UPDATE runs SET status = 'waiting' WHERE id = 'mail'")
        conn.execute("INSERT INTO inbox (run_id, type, ts_us, body) VALUES ('mail', 'x', 1, '{}')")
        conn.execute("UPDATE runs SET status = 'waiting' WHERE id = 'parked'")
        conn.execute("UPDATE runs SET status = 'completed', ready = 1 WHERE id = 'done'")
        conn.execute("UPDATE runs SET function_id = 'g' WHERE id = 'other'")
        got = claim_runs(conn, store, "w1", now_us=100, limit=100)
        assert sorted(row[0] for row in got) == ["expired", "mail", "pending"]
        mail = conn.execute("SELECT status, ready, lease_until_us FROM runs WHERE id = 'mail'")
        assert mail.fetchone() == ("waiting", 0, 1100)  # the caller reads its inbox now
        # A run is ready while it has mail: the flag is for a resumed run.
        conn.execute("DELETE FROM inbox")  # as the round's take_mail does
        conn.execute("UPDATE runs SET ready = 1 WHERE id IN ('parked', 'done')")
        again = claim_runs(conn, store, "w2", now_us=2000, limit=100)  # leases of 1100 expired
        assert sorted(row[0] for row in again) == ["expired", "held", "parked", "pending"]


def test_leases_are_renewed_only_where_still_held_and_released_by_worker(store, pg_url):
    with connect(pg_url) as conn:
        add_runs(conn, store, ["a", "b", "c"])
        assert len(take_runs(conn, store, "w1", ["a", "b"], 100)) == 2
        assert [row[0] for row in take_runs(conn, store, "w2", ["b", "c"], 200)] == ["c"]
        # w1's lease on b expires; w2 takes it over.
        assert [row[0] for row in take_runs(conn, store, "w2", ["b"], 1200)] == ["b"]
        store.renew_leases(["a", "b"], "w1", 5000)
        store.release_all("w2")
        leases = conn.execute("SELECT id, lease_owner, lease_until_us FROM runs ORDER BY id")
        assert leases.fetchall() == [("a", "w1", 5000), ("b", None, None), ("c", None, None)]


# --- the lease fence ----------------------------------------------------------------------------


def history_of(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT run_id, seq, type FROM history ORDER BY 1, 2").fetchall()


def test_a_round_commits_history_and_run_updates_in_bulk(store, pg_url):
    with connect(pg_url) as conn:
        add_runs(conn, store, ["a", "b", "c", "d"])
        take_runs(conn, store, "w1", ["a", "b", "c", "d"], 100)
        batch = Batch(
            history=[
                ("a", 0, "RunStarted", 1, "{}"),
                ("a", 1, "StepCompleted", 2, "[]"),
                ("b", 0, "RunStarted", 1, "{}"),
                ("c", 0, "RunStarted", 1, "{}"),
            ],
            running=[(7, "a")],
            waiting=[(8, "b")],
            ended=[("completed", "42", None, 9, 9, "c")],
            fenced=["d"],
        )
        commit_round(
            conn, store, "w1", batch, emits=frozenset(["paid"]), waits=frozenset(["shipped"])
        )
        assert history_of(conn) == [
            ("a", 0, "RunStarted"),
            ("a", 1, "StepCompleted"),
            ("b", 0, "RunStarted"),
            ("c", 0, "RunStarted"),
        ]
        found = conn.execute(
            "SELECT id, status, updated_us, ended_us, output, lease_owner FROM runs ORDER BY id"
        ).fetchall()
        assert found == [
            ("a", "running", 7, None, None, "w1"),
            ("b", "waiting", 8, None, None, None),
            ("c", "completed", 9, 9, "42", None),
            ("d", "running", 1, None, None, "w1"),
        ]


def test_a_round_whose_lease_moved_is_rejected_whole(store, pg_url):
    with connect(pg_url) as w1, connect(pg_url) as w2:
        add_runs(w1, store, ["a", "b"])
        take_runs(w1, store, "w1", ["a", "b"], 100)
        # w1 stalls past its lease on b; w2 takes b over.
        assert [row[0] for row in take_runs(w2, store, "w2", ["b"], 2000)] == ["b"]
        batch = Batch(
            history=[("a", 0, "RunStarted", 1, "{}"), ("b", 0, "RunStarted", 1, "{}")],
            running=[(5, "a")],
            ended=[("completed", "1", None, 5, 5, "b")],
        )
        with pytest.raises(LeaseLost) as caught:
            commit_round(w1, store, "w1", batch)
        assert str(caught.value) == "lease lost: 1 of 2 runs still held by w1"
        assert caught.value.run_ids == ("b",)
        # Nothing of the round was written, not even for run a, whose lease w1 still holds.
        assert history_of(w1) == []
        rows = w1.execute("SELECT id, status, updated_us, lease_owner FROM runs ORDER BY id")
        assert rows.fetchall() == [("a", "running", 1, "w1"), ("b", "running", 1, "w2")]
        assert w1.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # The connection is usable again: the next round with what w1 holds commits.
        commit_round(w1, store, "w1", Batch(running=[(6, "a")]))


def test_the_fence_holds_the_runs_until_commit_a_takeover_waits_for_it(store, pg_url):
    with connect(pg_url) as w1, connect(pg_url) as w2:
        add_runs(w1, store, ["a"])
        take_runs(w1, store, "w1", ["a"], 100)
        with w1.transaction():
            tx_on(w1, store).commit_round(Batch(fenced=["a"]), "w1")
            # The lease has expired by w2's clock, but w1's fenced round is in flight: a claim
            # skips the run rather than take it from under the commit.
            assert claim_runs(w2, store, "w2", 5000, limit=10) == []
            w1.execute(pg_round.INSERT_HISTORY, (["a"], [0], ["RunStarted"], [1], ["{}"]))
        got = claim_runs(w2, store, "w2", 5000, limit=10)
        assert [row[0] for row in got] == ["a"]


# --- event order is commit order ------------------------------------------------------------


def emit(conn: psycopg.Connection[Any], store: PostgresStore, event_id: str, name: str) -> int:
    return tx_on(conn, store).record_event(event_id, name, "{}", 1, None)


def cut_of(conn: psycopg.Connection[Any], run_id: str) -> int:
    row = conn.execute("SELECT event_pos FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return int(row[0])


def pos_of(conn: psycopg.Connection[Any], event_id: str) -> int:
    row = conn.execute("SELECT pos FROM events WHERE id = %s", (event_id,)).fetchone()
    assert row is not None
    return int(row[0])


def blocked_on_lock(pid: int, url: str) -> Callable[[], bool]:
    def check() -> bool:
        with connect(url) as probe:
            row = probe.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        return row is not None and row[0] == "Lock"

    return check


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` for up to WAIT_S (a condition on the server, not a sleep)."""
    deadline = time.monotonic() + WAIT_S
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        pause.wait(0.005)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_an_event_with_a_lower_pos_committing_after_a_run_is_after_it(store, pg_url):
    """The race a plain MAX(pos) cut loses: e1 takes pos 1, e2 takes pos 2 and commits, a run
    is created, e1 commits. The run must wait for e1, so that e1 is before it, in commit order
    and by pos; without the locks the run's cut would be 2 and e1, committed after it, lost."""
    with connect(pg_url) as e1, connect(pg_url) as e2, connect(pg_url) as r:
        assert e2 is not None  # emits take turns now (see the next tests): one in flight here
        with e1.transaction():
            pos1 = emit(e1, store, "e1", "paid")
            thread, result = in_thread(lambda: add_runs(r, store, ["run"]))
            until(blocked_on_lock(r.info.backend_pid, pg_url), "the run creation waits")
        thread.join(WAIT_S)
        assert result == [None]
        assert cut_of(r, "run") >= pos1  # e1 committed before the run: before it
        # An event emitted now, after the run's commit, is after it.
        pos3 = emit(r, store, "e3", "paid")
        assert pos3 > cut_of(r, "run")


def test_an_event_emitted_while_a_run_is_being_created_commits_after_it_and_is_after(store, pg_url):
    with connect(pg_url) as r, connect(pg_url) as e:
        with r.transaction():
            create_runs(r, store, ["run"])
            thread, result = in_thread(lambda: emit(e, store, "e1", "paid"))
            until(blocked_on_lock(e.info.backend_pid, pg_url), "the emit waits")
            assert result == []  # not committed before the run
        thread.join(WAIT_S)
        assert pos_of(r, "e1") > cut_of(r, "run")


def test_a_run_created_while_an_event_is_in_flight_sees_it_as_before(store, pg_url):
    with connect(pg_url) as r, connect(pg_url) as e:
        with e.transaction():
            pos = emit(e, store, "e1", "paid")
            thread, result = in_thread(lambda: add_runs(r, store, ["run"]))
            until(blocked_on_lock(r.info.backend_pid, pg_url), "the run creation waits")
        thread.join(WAIT_S)
        assert result == [None]
        assert cut_of(r, "run") >= pos


def test_runs_do_not_wait_for_runs_and_emits_take_turns(store, pg_url):
    """Run creations share every stripe. An emit may start runs right after its event, so it
    takes every stripe (its own exclusive) at once: emits take turns, even of other names."""
    with connect(pg_url) as a, connect(pg_url) as b:
        b.execute("SET lock_timeout = '1s'")
        with a.transaction():
            create_runs(a, store, ["r1"])
            with b.transaction():
                create_runs(b, store, ["r2"])
        with a.transaction():
            emit(a, store, "e1", "paid")
            thread, result = in_thread(
                lambda: _in_transaction(b, lambda: emit(b, store, "e2", "shipped"))
            )
            until(blocked_on_lock(b.info.backend_pid, pg_url), "the second emit waits")
        thread.join(WAIT_S)
        assert result == [pos_of(a, "e1") + 1]


def visible(xid: int, snapshot: str) -> bool:
    """Whether committed transaction ``xid`` had committed when ``snapshot`` was taken."""
    xmin, xmax, xip = snapshot.split(":")
    in_progress = {int(x) for x in xip.split(",") if x}
    return xid < int(xmin) or (xid < int(xmax) and xid not in in_progress)


def test_concurrent_emitters_and_run_creators_agree_with_commit_order(store, pg_url):
    """Threads emit and create runs at once. Each transaction notes its xid and, just before
    its COMMIT, a snapshot: if one transaction sees another as committed there, the other
    committed first. That is commit order as the server saw it, and the rule must follow it
    for every pair: an event committed before a run is at or below its cut, one committed
    after it above. With the locks every event/run pair is ordered so; a plain MAX(pos) cut
    gets pairs wrong here (and leaves some unordered)."""
    n_emitters, n_creators, per_thread = 4, 3, 25
    names = ["paid", "shipped", "refunded", "opened"]
    barrier = threading.Barrier(n_emitters + n_creators, timeout=WAIT_S)
    seen: dict[str, tuple[int, str]] = {}  # id -> (xid, snapshot before commit)
    errors: list[BaseException] = []
    last = "SELECT pg_current_xact_id()::text::bigint, pg_current_snapshot()::text"

    def emitter(k: int) -> None:
        with connect(pg_url) as conn:
            barrier.wait()
            for i in range(per_thread):
                with conn.transaction():
                    emit(conn, store, f"e{k}-{i}", names[(k + i) % len(names)])
                    seen[f"e{k}-{i}"] = conn.execute(last).fetchone()

    def creator(k: int) -> None:
        with connect(pg_url) as conn:
            barrier.wait()
            for i in range(per_thread):
                with conn.transaction():
                    create_runs(conn, store, [f"r{k}-{i}"])
                    seen[f"r{k}-{i}"] = conn.execute(last).fetchone()

    def guarded(fn: Callable[[int], None], k: int) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(k)
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(emitter, k)) for k in range(n_emitters)]
    threads += [threading.Thread(target=guarded(creator, k)) for k in range(n_creators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 6)
    assert errors == []
    with connect(pg_url) as conn:
        cuts = dict(conn.execute("SELECT id, event_pos FROM runs").fetchall())
        positions = dict(conn.execute("SELECT id, pos FROM events").fetchall())
    assert len(cuts) == n_creators * per_thread
    assert len(positions) == n_emitters * per_thread
    wrong = []
    for run_id, cut in cuts.items():
        run_xid, run_snapshot = seen[run_id]
        for event_id, pos in positions.items():
            event_xid, event_snapshot = seen[event_id]
            before = visible(event_xid, run_snapshot)  # the event committed first
            after = visible(run_xid, event_snapshot)  # the run committed first
            assert before != after, f"{event_id} and {run_id} overlapped"
            if (pos > cut) != after:
                wrong.append((event_id, pos, run_id, cut, "after" if after else "before"))
    assert wrong == []


def test_a_wait_registered_under_its_stripe_sees_every_event_committed_before_it(store, pg_url):
    with connect(pg_url) as r, connect(pg_url) as e:
        add_runs(r, store, ["run"])
        cut = cut_of(r, "run")
        with e.transaction():
            emit(e, store, "e1", "paid")
            # The wait registration waits for the emit in flight, then sees its event.
            thread, result = in_thread(
                lambda: _in_transaction(
                    r, lambda: tx_on(r, store).unconsumed_events("paid", cut, "run")
                )
            )
            until(blocked_on_lock(r.info.backend_pid, pg_url), "the wait registration waits")
        thread.join(WAIT_S)
        assert [found[0] for found in result[0]] == ["e1"]
        r.execute("INSERT INTO consumed VALUES ('run', 'e1')")
        with r.transaction():
            assert tx_on(r, store).unconsumed_events("paid", cut, "run") == []


def _in_transaction(conn: psycopg.Connection[Any], fn: Callable[[], Any]) -> Any:
    with conn.transaction():
        return fn()


def test_emit_and_run_creation_in_one_transaction_take_their_locks_in_order(store, pg_url):
    """An emit that starts runs takes its stripe exclusive and the others shared at once: two
    such emits on different stripes never deadlock, and the triggered run has its own event
    before its cut (as on SQLite)."""
    barrier = threading.Barrier(2, timeout=WAIT_S)

    def emit_and_start(name: str, run_id: str) -> None:
        with connect(pg_url) as conn, conn.transaction():
            barrier.wait()
            tx = tx_on(conn, store)
            tx.record_event(run_id, name, "{}", 1, None)
            tx.create_run(run_id, "f", "{}", 1, None, None, False)

    first = in_thread(lambda: emit_and_start("paid", "a"))
    second = in_thread(lambda: emit_and_start("shipped", "b"))
    for thread, result in (first, second):
        thread.join(WAIT_S)
        assert result == [None]
    with connect(pg_url) as conn:
        for run_id in ("a", "b"):
            assert pos_of(conn, run_id) <= cut_of(conn, run_id)


# --- a round in two transactions (take, commit) and the reads of its fold ---------------------


def test_mail_is_read_in_place_and_dropped_by_the_commit_mail_sent_between_stays(store, pg_url):
    with connect(pg_url) as conn:
        add_runs(conn, store, ["a", "b"])
        conn.execute("UPDATE runs SET status = 'waiting', ready = 1")  # as a resume leaves it
        send = "INSERT INTO inbox (run_id, type, ts_us, body) VALUES (%s, %s, 1, '{}')"
        for run_id, kind in (("b", "x1"), ("a", "x2"), ("b", "x3")):
            conn.execute(send, (run_id, kind))
        with store.transaction() as tx:  # the take
            read = tx.mail_of(["a", "b"])
        assert [(row[1], row[2]) for row in read] == [("b", "x1"), ("a", "x2"), ("b", "x3")]
        assert read == sorted(read)  # send order
        assert conn.execute("SELECT COUNT(*) FROM inbox").fetchone() == (3,)  # left in place
        conn.execute(send, ("a", "x4"))  # sent while the round folds
        with store.transaction() as tx:  # the commit
            tx.fence()
            assert tx.fenced
            tx.drop_mail([row[0] for row in read], ["a", "b"])
        assert conn.execute("SELECT run_id, type FROM inbox").fetchall() == [("a", "x4")]
        # The flag is cleared; the mail sent since is what discovery finds the run by.
        assert conn.execute("SELECT id, ready FROM runs ORDER BY id").fetchall() == [
            ("a", 0),
            ("b", 0),
        ]
        params = {"now": 1, "fids": ["f"], "owner": "w1", "limit": 10}
        assert conn.execute(READY_RUNS, params).fetchall() == [("a",)]


def test_a_folds_reads_leave_no_transaction_open_and_do_not_wait_for_an_emit(store, pg_url):
    """``find_run``/``unconsumed_events`` outside a transaction: one autocommit statement each
    on the store's connection, no advisory stripe (an emit in flight is not waited for: the
    round's commit looks again under the stripe)."""
    with connect(pg_url) as conn:
        add_runs(conn, store, ["run"])
        cut = cut_of(conn, "run")
        emit(conn, store, "e1", "paid")
        with conn.transaction():
            emit(conn, store, "e2", "paid")  # in flight: holds the stripe exclusive
            found = store.find_run("run")
            assert found is not None and found[0] == "pending" and found[3] == "f"
            assert store.find_run("nope") is None
            assert [row[0] for row in store.unconsumed_events("paid", cut, "run")] == ["e1"]
            idle = psycopg.pq.TransactionStatus.IDLE
            assert store.conn.info.transaction_status == idle
        assert [row[0] for row in store.unconsumed_events("paid", cut, "run")] == ["e1", "e2"]
        conn.execute("INSERT INTO consumed VALUES ('run', 'e1')")
        assert [row[0] for row in store.unconsumed_events("paid", cut, "run")] == ["e2"]
        assert store.conn.info.transaction_status == idle


def test_a_claim_leaves_runs_of_gated_functions_pending_for_the_take_to_admit(store, pg_url):
    # A start gate (concurrency, throttle, ...) admits or holds a run in its take's transaction:
    # were the claim to mark it running first, a run held back would be seen running meanwhile.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        add_runs(conn, store, ["r1", "r2"])
        claimed = store.claim(10, ("f",), "w1", 10**9, 5, ("v1",), gated=("f",))
        assert sorted(claimed or []) == ["r1", "r2"]
        rows = conn.execute("SELECT id, status, lease_owner FROM runs ORDER BY id").fetchall()
        assert rows == [("r1", "pending", "w1"), ("r2", "pending", "w1")]
        add_runs(conn, store, ["r3"])
        assert store.claim(10, ("f",), "w2", 10**9, 5, ("v1",)) == ["r3"]
        assert conn.execute("SELECT status FROM runs WHERE id = 'r3'").fetchone() == ("running",)
