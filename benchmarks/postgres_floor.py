"""The PostgreSQL commit floor, and one round of the engine's shape, on a given server.

``python -m benchmarks.postgres_floor --db postgresql://user@host:5432/db`` measures, in a fresh
schema of that database that it drops afterwards, over the URL's connection (TCP for a host):

* ``floor``: one ``INSERT`` of a history-like row that commits (autocommit: one round trip,
  one commit). Every PostgreSQL number of the engine is read against it: a step commits once.
* ``floor_tx``: the same as ``BEGIN``; ``INSERT``; ``COMMIT`` sent one by one (three round trips),
  what a driver that does not pipeline pays.
* ``round``: the engine's round commit through the store's ``Transaction.commit_round``: one
  prepared call of the schema's round function, alone in autocommit (one round trip, one
  commit): the lease fence (locks the run, checks its owner), 3 history rows in one bulk insert
  and 1 run update.

Each with the server's ``synchronous_commit`` (``full``) and with it off (``normal``). Times are
per operation: the median and the mean of ``--n`` operations after a warm-up, best of
``--repeat``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg

from ironflow.runtime.store.base import Batch
from ironflow.runtime.store.postgres import PostgresStore, redact

MODES = ("full", "normal")
RUNS = 1000
HISTORY_ROW = '["s1",1,{"ok":true,"n":42}]'


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (appended last to ``options``: it wins)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join(value for key, value in query if key == "options")
    rest = [(key, value) for key, value in query if key != "options"]
    rest.append(("options", f"{options} -csearch_path={schema}".strip()))
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))


def timed(op: Callable[[], None], n: int, repeat: int) -> tuple[float, float]:
    """(median, mean) seconds per ``op`` over ``n`` calls, the best of ``repeat`` runs."""
    for _ in range(max(10, n // 20)):
        op()  # warm-up: plans prepared, pages cached
    best: tuple[float, float] | None = None
    for _ in range(repeat):
        times = []
        clock = time.perf_counter
        for _ in range(n):
            began = clock()
            op()
            times.append(clock() - began)
        result = (statistics.median(times), statistics.fmean(times))
        if best is None or result[0] < best[0]:
            best = result
    assert best is not None
    return best


def measure(url: str, mode: str, n: int, repeat: int) -> dict[str, tuple[float, float]]:
    store = PostgresStore(url, durability=mode)
    conn = store.conn
    seq = [0]
    results: dict[str, tuple[float, float]] = {}
    try:
        # Rounds rotate over many runs, as a worker's do: one row updated thousands of times
        # in a row would measure its version chain, not a round.
        conn.execute(
            "INSERT INTO runs (id, function_id, status, created_us, lease_owner, lease_until_us) "
            "SELECT 'run' || i, 'f', 'running', 0, 'w1', %s FROM generate_series(0, %s) AS i",
            (2**62, RUNS - 1),
        )
        turn = [0]

        def insert_row(run_id: str) -> tuple[str, int, str, int, str]:
            seq[0] += 1
            return (run_id, seq[0], "StepCompleted", seq[0], HISTORY_ROW)

        def floor() -> None:
            conn.execute("INSERT INTO history VALUES (%s, %s, %s, %s, %s)", insert_row("floor"))

        def floor_tx() -> None:
            with conn.transaction():
                conn.execute("INSERT INTO history VALUES (%s, %s, %s, %s, %s)", insert_row("tx"))

        def round_() -> None:
            turn[0] = (turn[0] + 1) % RUNS
            run_id = f"run{turn[0]}"
            rows = [insert_row(run_id), insert_row(run_id), insert_row(run_id)]
            with store.transaction() as tx:
                tx.commit_round(Batch(history=rows, running=[(1, run_id)]), "w1")

        results["floor"] = timed(floor, n, repeat)
        results["floor_tx"] = timed(floor_tx, n, repeat)
        results["round"] = timed(round_, n, repeat)
    finally:
        store.close()
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="postgresql://user@host:port/dbname")
    parser.add_argument("--n", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    schema = f"ironflow_floor_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(args.db, autocommit=True) as admin:
        version = admin.execute("SHOW server_version").fetchone()
        settings: Any = admin.execute(
            "SELECT current_setting('synchronous_commit'), current_setting('fsync'), "
            "inet_server_addr()"
        ).fetchone()
        for mode in MODES:
            admin.execute(f"CREATE SCHEMA {schema}_{mode}")
    print(
        f"PostgreSQL {version[0] if version else '?'} at {redact(args.db)} "
        f"(server address {settings[2] or 'unix socket'}; synchronous_commit={settings[0]}, "
        f"fsync={settings[1]}); {args.n} ops, best of {args.repeat}"
    )
    table: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        for mode in MODES:
            url = with_schema(args.db, f"{schema}_{mode}")
            table[mode] = measure(url, mode, args.n, args.repeat)
    finally:
        with psycopg.connect(args.db, autocommit=True) as admin:
            for mode in MODES:
                admin.execute(f"DROP SCHEMA IF EXISTS {schema}_{mode} CASCADE")
    print(f"{'measure':<10} {'mode':<7} {'median µs':>10} {'mean µs':>10} {'x floor':>8}")
    for mode, results in table.items():
        floor_median = results["floor"][0]
        for name, (median, mean) in results.items():
            print(
                f"{name:<10} {mode:<7} {median * 1e6:>10.1f} {mean * 1e6:>10.1f} "
                f"{median / floor_median:>8.2f}"
            )
    return table


if __name__ == "__main__":
    main()
