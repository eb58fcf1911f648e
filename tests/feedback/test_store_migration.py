"""Opening a schema-version-1 store migrates it in place to version 2, in one transaction."""

import sqlite3

import pytest
import torch

from unialign.feedback.schema import SCHEMA_V1
from unialign.feedback.store import FeedbackStore, FeedbackStoreError
from unialign.feedback.types import SegmentBatch


def _segments(n, seed, horizon=4, obs_dim=3, act_dim=2):
    gen = torch.Generator().manual_seed(seed)
    return SegmentBatch(
        obs=torch.randn(n, horizon, obs_dim, generator=gen),
        actions=torch.rand(n, horizon, act_dim, generator=gen),
        true_rewards=torch.randn(n, horizon, generator=gen),
        indices=torch.arange(n) * 5 + seed,
    )


def _blob(t):
    return t.numpy().astype("<f4").tobytes()


def _write_v1(path, seg1, seg2):
    """A version-1 file as round-1 unialign wrote it (its DDL, its row layout)."""
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_V1)
    con.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("format", "unialign-feedback"), ("schema_version", "1"), ("created_at", "2026-01-01")],
    )
    for i in range(len(seg1)):
        con.execute(
            "INSERT INTO queries (created_at, step, segment_length, obs_dim, act_dim, selection,"
            " source, index_1, index_2, obs_1, actions_1, rewards_1, obs_2, actions_2, rewards_2)"
            " VALUES (" + ", ".join("?" * 15) + ")",
            ("2026-01-01T00:00:00.000+00:00", 100 * i, seg1.length, 3, 2, "uniform",
             '{"env": "Pendulum-v1"}' if i == 0 else None,
             int(seg1.indices[i]), int(seg2.indices[i]),
             _blob(seg1.obs[i]), _blob(seg1.actions[i]), _blob(seg1.true_rewards[i]),
             _blob(seg2.obs[i]), _blob(seg2.actions[i]), _blob(seg2.true_rewards[i])),
        )  # fmt: skip
    labels = [
        (1, 1.0, "teacher:oracle", None),
        (2, None, "teacher:oracle", "skipped"),
        (3, 0.5, "teacher:oracle", None),
        (1, 0.0, "alice", None),  # round 1 did not require a kind prefix
        (3, 1.0, "human:ada", None),
    ]
    con.executemany(
        "INSERT INTO labels (query_id, label, labeler, created_at, reason) "
        "VALUES (?, ?, ?, 't', ?)",
        [(q, y, who, why) for q, y, who, why in labels],
    )
    con.commit()
    con.close()


def test_v1_file_is_migrated_and_reads_back_equal(tmp_path):
    path = tmp_path / "v1.sqlite"
    seg1, seg2 = _segments(3, seed=1), _segments(3, seed=2)
    _write_v1(path, seg1, seg2)
    with FeedbackStore(path) as store:
        a, b = store.segments([1, 2, 3])
        for got, want in ((a, seg1), (b, seg2)):
            for name in ("obs", "actions", "true_rewards", "indices"):
                assert torch.equal(getattr(got, name), getattr(want, name)), name
            assert got.absorbed is None
        l1, l2, y = store.labelled_segment_pairs()
        assert y.tolist() == [1.0, 0.0, 0.5, 1.0]  # by query, then label id; the skip left out
        assert l1.indices.tolist() == [1, 1, 11, 11]
        assert store.labelled_segment_pairs(labeler="alice")[2].tolist() == [0.0]
        assert store.count_queries(kind="segment") == 3
        assert store.count_labels(include_skipped=True) == 5
        # ids continue where version 1 left off
        assert store.add_segment_queries(seg1.take([0]), seg2.take([0]), step=9, selection="x") == [
            4
        ]
        assert store.add_labels([4], [1.0], labeler="human:ada") == [6]
    con = sqlite3.connect(path)
    assert dict(con.execute("SELECT key, value FROM meta"))["schema_version"] == "2"
    rows = con.execute("SELECT id, query_id, label, labeler, labeler_kind, reason FROM labels")
    assert rows.fetchall()[:5] == [
        (1, 1, 1.0, "teacher:oracle", "teacher", None),
        (2, 2, None, "teacher:oracle", "teacher", "skipped"),
        (3, 3, 0.5, "teacher:oracle", "teacher", None),
        (4, 1, 0.0, "alice", "other", None),
        (5, 3, 1.0, "human:ada", "human", None),
    ]
    q = con.execute("SELECT id, kind, step, selection, source FROM queries ORDER BY id LIMIT 2")
    assert q.fetchall() == [
        (1, "segment", 0, "uniform", '{"env": "Pendulum-v1"}'),
        (2, "segment", 100, "uniform", None),
    ]
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not any(t.startswith("v1_") for t in tables)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with FeedbackStore(path) as store:  # reopening a migrated file is a plain open
        assert store.count_queries() == 4


def test_a_v1_file_that_cannot_be_migrated_is_left_unchanged(tmp_path):
    """A version-1 marker over tables without the expected columns: FeedbackStoreError, and
    the failed migration is rolled back (tables and version as they were)."""
    path = tmp_path / "odd.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE queries (id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER);"
        "CREATE TABLE labels (id INTEGER PRIMARY KEY AUTOINCREMENT, query_id INTEGER);"
        "INSERT INTO meta VALUES ('format', 'unialign-feedback'), ('schema_version', '1');"
        "INSERT INTO queries (step) VALUES (7);"
    )
    con.commit()
    before = con.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    con.close()
    with pytest.raises(FeedbackStoreError, match="cannot migrate .*odd.sqlite.*left unchanged"):
        FeedbackStore(path)
    con = sqlite3.connect(path)
    assert con.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before
    assert dict(con.execute("SELECT key, value FROM meta"))["schema_version"] == "1"
    assert con.execute("SELECT id, step FROM queries").fetchall() == [(1, 7)]
    con.close()
