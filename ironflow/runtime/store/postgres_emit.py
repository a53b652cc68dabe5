"""The PostgreSQL store's emit: an event recorded, its waits found and handed the event, in as
few exchanges as the commit-order rule allows (see ``postgres``: an emit holds its name's stripe
exclusive, every other shared, until it commits).

An emit that is its transaction's first write (``Engine.emit``) sends its stripes with
``BEGIN``, then its row with the reads that follow it in one statement (its snapshot, taken
after the stripes were granted, sees every wait indexed before), then the keyed waits, then one
statement per wait handed the event, then ``NOTIFY`` with ``COMMIT``: five exchanges for an emit
that wakes a wait (eleven before).
"""

from __future__ import annotations

from ironflow.commands import kinds
from ironflow.runtime.store.postgres_locks import ALL_STRIPES, Stripes
from ironflow.runtime.store.postgres_schema import stripe

SEND_MAIL = "INSERT INTO inbox (run_id, type, ts_us, body) VALUES (%s, %s, %s, %s)"
# An emit's next reads after its row, in one exchange: the paths its waits match on, and the
# registry's version (``registry_version``, read next by the same emit, answered from this).
PATHS_AND_REGISTRY = (
    "SELECT ARRAY(SELECT DISTINCT match_path FROM waits WHERE event_name = %s), "
    "(SELECT value FROM ironflow_meta WHERE key = 'registry_version')"
)
# A wait handed an event in one statement: claimed (deleted; skipped if another transaction
# holds it), its timeout dropped, the event consumed and the mail sent, the last three only if
# the claim got it.
DELIVER = (
    "WITH w AS (DELETE FROM waits WHERE (run_id, step_id) IN (SELECT run_id, step_id FROM waits "
    "WHERE run_id = %(run)s AND step_id = %(step)s FOR UPDATE SKIP LOCKED) RETURNING run_id), "
    "t AS (DELETE FROM timers WHERE run_id = %(run)s AND step_id = %(step)s "
    "AND EXISTS (SELECT FROM w)), "
    "c AS (INSERT INTO consumed SELECT run_id, %(event)s FROM w ON CONFLICT DO NOTHING), "
    "m AS (INSERT INTO inbox (run_id, type, ts_us, body) "
    "SELECT run_id, %(type)s, %(ts)s, %(body)s FROM w) "
    "SELECT count(*) FROM w"
)
# An emit's row, its stripes taken by an earlier statement (with BEGIN, by its round's reserve,
# or alone): then, from a snapshot taken after they were granted, what ``PATHS_AND_REGISTRY``
# reads. Its pos is drawn after the stripes are granted too.
RECORD_AND_READ = (
    "WITH e AS (INSERT INTO events (id, name, data, ts_us, idempotency_key, traceparent) "
    "VALUES (%s, %s, %s, %s, %s, %s) RETURNING pos) "
    "SELECT (SELECT pos FROM e), "
    "ARRAY(SELECT DISTINCT match_path FROM waits WHERE event_name = %s), "
    "(SELECT value FROM ironflow_meta WHERE key = 'registry_version')"
)


class PostgresEmit(Stripes):
    """The emit verbs of ``PostgresTransaction``, which holds what an emit read with its row
    for its next reads (``seen_paths``: the event's name and its waits' paths;
    ``seen_version``: the registry's version, in a box)."""

    __slots__ = ()

    wakes: bool
    targets: list[str]
    seen_paths: tuple[str, list[str | None]] | None
    seen_version: tuple[str | None] | None

    def wait_paths(self, event_name: str) -> list[str | None]:
        seen, self.seen_paths = self.seen_paths, None
        if seen is not None and seen[0] == event_name:
            return seen[1]  # read with the event's row, after its stripes
        found = self.conn.execute(PATHS_AND_REGISTRY, (event_name,)).fetchone()
        assert found is not None  # one row, always
        self.seen_version = (None if found[1] is None else str(found[1]),)
        return list(found[0])

    def registry_version(self) -> str | None:
        seen, self.seen_version = self.seen_version, None
        return super().registry_version() if seen is None else seen[0]

    def deliver(self, run_id: str, step_id: str, event_id: str, ts_us: int, body: str) -> None:
        params = {
            "run": run_id,
            "step": step_id,
            "event": event_id,
            "type": kinds.MAIL_WAIT_MATCHED,
            "ts": ts_us,
            "body": body,
        }
        found = self.conn.execute(DELIVER, params).fetchone()
        if found is not None and found[0]:
            self.wakes = True
            self.targets.append(run_id)

    def send_mail(self, run_id: str, kind: str, ts_us: int, body: str) -> None:
        self.wakes = True
        self.targets.append(run_id)
        self.conn.execute(SEND_MAIL, (run_id, kind, ts_us, body))

    def record_event(
        self,
        event_id: str,
        name: str,
        data: str,
        ts_us: int,
        idempotency_key: str | None,
        traceparent: str | None = None,
    ) -> int:
        # Every stripe shared with its own exclusive, at once: an emit may start runs next.
        self.lock((stripe(name),), ALL_STRIPES)  # with BEGIN if first, else a statement alone
        # Announced as the transaction ends, naming the runs it starts or wakes (``targets``).
        self.wakes = True
        row = (event_id, name, data, ts_us, idempotency_key, traceparent)
        found = self.conn.execute(RECORD_AND_READ, (*row, name)).fetchone()
        assert found is not None  # one row, always
        self.seen_paths = (name, list(found[1]))
        self.seen_version = (None if found[2] is None else str(found[2]),)
        return int(found[0])
