"""Crash rollback: mark() in a checkpoint, rollback(mark) on resume → the ids an uninterrupted
run would have assigned."""

import json
import sqlite3

import pytest
import torch

from unialign.feedback.store import FeedbackStore, StoreMark
from unialign.feedback.types import SegmentBatch


def _segments(n, seed):
    gen = torch.Generator().manual_seed(seed)
    absorbed = torch.zeros(n, 3, dtype=torch.bool)
    absorbed[0, 2] = True
    return SegmentBatch(
        torch.randn(n, 3, 2, generator=gen),
        torch.randn(n, 3, 1, generator=gen),
        torch.randn(n, 3, generator=gen),
        torch.arange(n) + seed,
        absorbed,
    )


def _add_a(store):
    ids = store.add_segment_queries(_segments(3, 1), _segments(3, 2), step=10, selection="uniform")
    store.add_labels(ids, [1.0, 0.0, 0.0], labeler="teacher:skip", keep_mask=[True, True, False])
    cids = store.add_completion_queries(["p", "q"], [" a", " b"], [" c", " d"], step=1)
    store.add_labels(cids, [0.5, 1.0], labeler="judge:rm", metadata={"model": "rm-1"})


def _add_b(store):
    """B adds queries of both kinds, their labels, and a late human label on a query of A."""
    ids = store.add_segment_queries(_segments(2, 3), _segments(2, 4), step=20, selection="entropy")
    store.add_labels(ids, [0.0, 1.0], labeler="teacher:skip")
    store.add_labels([1], [0.0], labeler="human:ada", metadata={"shown": "left-right"})
    cids = store.add_completion_queries(["r"], [" e"], [" f"], step=2, rewards_1=[0.5])
    store.add_labels(cids, [0.0], labeler="judge:rm")


def _dump(path):
    """Every row of every table, ids included, without the created_at timestamps."""
    con = sqlite3.connect(path)
    out = {}
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})") if r[1] != "created_at"]
        rows = con.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
        out[table] = sorted(rows, key=repr)
    con.close()
    out["meta"] = [r for r in out["meta"] if r[0] != "created_at"]
    return out


def test_rollback_then_redo_equals_an_uninterrupted_store(tmp_path):
    straight = tmp_path / "straight.sqlite"
    with FeedbackStore(straight) as store:
        _add_a(store)
        _add_b(store)

    resumed = tmp_path / "resumed.sqlite"
    with FeedbackStore(resumed) as store:
        _add_a(store)
        mark = store.mark()
        assert mark == StoreMark(query_id=5, label_id=5)
    saved = json.dumps(mark.as_dict())  # what a checkpoint holds
    with FeedbackStore(resumed) as store:  # the run goes on, then is killed
        _add_b(store)
    with FeedbackStore(resumed) as store:  # resume: roll back, redo
        assert store.rollback(StoreMark.from_dict(json.loads(saved))) == (3, 4)
        assert store.mark() == mark
        assert store.count_queries() == 5 and store.count_labels(include_skipped=True) == 5
        _add_b(store)

    assert _dump(resumed) == _dump(straight)
    assert _dump(resumed)["sqlite_sequence"] == [("labels", 9), ("queries", 8)]


def test_rollback_to_an_empty_store_and_to_now(tmp_path):
    path = tmp_path / "fb.sqlite"
    with FeedbackStore(path) as store:
        empty = store.mark()
        assert empty == StoreMark(0, 0)
        _add_a(store)
        assert store.rollback(store.mark()) == (0, 0)
        assert store.rollback(empty) == (5, 5)
        assert store.count_queries() == 0 and store.mark() == empty
        _add_a(store)
    fresh = tmp_path / "fresh.sqlite"
    with FeedbackStore(fresh) as store:
        _add_a(store)
    assert _dump(path) == _dump(fresh)


def test_a_mark_ahead_of_the_store_is_refused(tmp_path):
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        _add_a(store)
        with pytest.raises(ValueError, match="has only reached .*another store file"):
            store.rollback(StoreMark(query_id=9, label_id=0))
        with pytest.raises(ValueError, match="must be a StoreMark"):
            store.rollback({"query_id": 1, "label_id": 1})
        assert store.count_queries() == 5


def test_store_mark_serialization():
    mark = StoreMark(3, 7)
    assert StoreMark.from_dict(mark.as_dict()) == mark
    with pytest.raises(ValueError, match="integer 'query_id' and 'label_id'"):
        StoreMark.from_dict({"query_id": 3})
    with pytest.raises(ValueError, match=">= 0"):
        StoreMark.from_dict({"query_id": -1, "label_id": 0})
