"""The row codec's read path: events built slot by slot are the events the classes build,
rows group by run, and the cyclic GC stays paused while a history is decoded."""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from ironflow.history import CommandScheduled, HistoryEvent, RunStarted, StepCompleted, TimerFired
from ironflow.runtime.store import rows
from ironflow.runtime.store.rows import CorruptRow, decode_histories, encode

T0 = dt.datetime(2026, 3, 4, 10, 15, 30, 123456, tzinfo=dt.UTC)


def history(run_id: str, steps: int) -> list[HistoryEvent]:
    """A run's history: started, then ``steps`` scheduled-and-completed steps."""
    events: list[HistoryEvent] = [
        RunStarted(0, T0, run_id, "flow", rows.event_from_body(_event_body()), None)
    ]
    for i in range(steps):
        ts = T0 + dt.timedelta(milliseconds=i)
        detail = {"args": [i], "retry": {"attempts": 3}}
        events.append(
            CommandScheduled(len(events), ts, f"s{i}", "run", f"s{i}", "", "work", detail)
        )
        result: Any = {"n": i, "tags": ["a", None]} if i % 2 else i
        events.append(StepCompleted(len(events), ts, f"s{i}", 1, result))
    return events


def _event_body() -> dict[str, Any]:
    return {"id": "ev-1", "name": "go", "data": {"k": [1, 2.5]}, "ts": rows.to_us(T0)}


def stored(run_id: str, events: list[HistoryEvent]) -> list[tuple[Any, ...]]:
    return [(run_id, *encode(event)) for event in events]


def test_the_step_events_decode_to_the_same_frozen_values_the_classes_build() -> None:
    original = history("r", 3)
    decoded = decode_histories(stored("r", original))["r"]
    assert decoded == original
    for got, want in zip(decoded, original, strict=True):
        assert type(got) is type(want)
        assert hash(got) == hash(want) if not _unhashable(want) else True
        assert repr(got) == repr(want)
        assert attrs.asdict(got) == attrs.asdict(want)
    step = decoded[2]
    assert isinstance(step, StepCompleted)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        step.result = 5  # type: ignore[misc]
    assert attrs.evolve(step, attempt=2) == StepCompleted(2, step.ts, "s0", 2, 0)


def _unhashable(event: HistoryEvent) -> bool:
    try:
        hash(event)
    except TypeError:
        return True
    return False


def test_a_step_event_of_another_shape_takes_the_checked_decoder() -> None:
    # An array body of the wrong length is corrupt, named by its row (not silently truncated).
    row = ("r", 1, "StepCompleted", rows.to_us(T0), '["s0",1,5,"extra"]')
    with pytest.raises(CorruptRow) as raised:
        decode_histories([("r", *encode(history("r", 0)[0])), row])
    assert "history row seq 1 (StepCompleted) cannot be decoded: TypeError" in str(raised.value)
    # The object form (older rows) still decodes.
    as_object = ("r", 1, "StepCompleted", rows.to_us(T0), '{"id":"s0","attempt":1,"result":5}')
    decoded = decode_histories([("r", *encode(history("r", 0)[0])), as_object])["r"]
    assert decoded[1] == StepCompleted(1, T0, "s0", 1, 5)


def test_the_fast_path_refuses_a_class_whose_fields_changed() -> None:
    with pytest.raises(RuntimeError, match=r"TimerFired fields are \('seq', 'ts', 'id'\)"):
        rows._slot_setters(TimerFired, ("seq", "ts", "id", "extra"))


def test_rows_of_many_runs_decode_to_each_runs_history() -> None:
    runs = {"a": history("a", 2), "b": history("b", 0), "c": history("c", 3)}
    found = [row for run_id in sorted(runs) for row in stored(run_id, runs[run_id])]
    assert decode_histories(found) == runs
    # Rows of one run apart from each other still make its one history, in seq order.
    apart = stored("a", runs["a"][:2]) + stored("b", runs["b"]) + stored("a", runs["a"][2:])
    assert decode_histories(apart) == {"a": runs["a"], "b": runs["b"]}


def test_a_corrupt_run_among_many_is_set_aside_and_the_others_decode() -> None:
    good, bad = history("a", 2), history("b", 2)
    found = stored("a", good) + stored("b", bad)
    found[-1] = ("b", 4, "StepCompleted", found[-1][3], "not json")
    corrupt: dict[str, Any] = {}
    assert decode_histories(found, corrupt) == {"a": good}
    assert list(corrupt) == ["b"]
    assert "run 'b': history row seq 4 (StepCompleted) cannot be decoded" in str(corrupt["b"])


@pytest.fixture
def collections_seen() -> Iterator[list[int]]:
    seen: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(count)
    try:
        yield seen
    finally:
        gc.callbacks.remove(count)


def test_the_gc_is_paused_while_a_history_decodes_and_on_after(
    collections_seen: list[int],
) -> None:
    found = stored("r", history("r", 5_000))  # 10,001 events: many collections if not paused
    assert gc.isenabled()
    collections_seen.clear()
    decoded = decode_histories(found)["r"]
    ran = len(collections_seen)
    assert len(decoded) == 10_001
    # At most the one catch-up as the GC comes back on (dozens of collections unpaused).
    assert ran <= 1, collections_seen
    assert gc.isenabled()


def test_a_caller_that_paused_the_gc_keeps_it_paused(collections_seen: list[int]) -> None:
    found = stored("r", history("r", 10))
    gc.disable()
    try:
        decode_histories(found)
        with pytest.raises(CorruptRow):
            decode_histories([*found, ("r", 21, "NoSuchEvent", 0, "{}")])
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(CorruptRow):
        decode_histories([*found, ("r", 21, "NoSuchEvent", 0, "{}")])
    assert gc.isenabled()  # and a failed decode turns it back on
