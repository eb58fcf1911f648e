"""SQLite feedback store: exact round trip, resume, skipped labels, bad files."""

import sqlite3

import pytest
import torch

from unialign.control.types import SegmentBatch
from unialign.feedback.store import FeedbackStore, FeedbackStoreError


def _segments(n, horizon=5, obs_dim=3, act_dim=2, seed=0, offset=0):
    gen = torch.Generator().manual_seed(seed)
    return SegmentBatch(
        obs=torch.randn(n, horizon, obs_dim, generator=gen),
        actions=torch.rand(n, horizon, act_dim, generator=gen) * 2 - 1,
        true_rewards=torch.randn(n, horizon, generator=gen),
        indices=torch.arange(n) * 7 + offset,
    )


def _take(seg, rows):
    i = torch.tensor(rows)
    return SegmentBatch(seg.obs[i], seg.actions[i], seg.true_rewards[i], seg.indices[i])


def _assert_equal(a, b):
    for name in ("obs", "actions", "true_rewards", "indices"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def test_round_trip_is_bitwise_and_skipped_labels_are_excluded(tmp_path):
    seg1, seg2 = _segments(4, seed=1), _segments(4, seed=2, offset=3)
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_queries(seg1, seg2, step=1200, selection="disagreement")
        assert ids == [1, 2, 3, 4]
        labels = torch.tensor([1.0, 0.0, 0.5, float("nan")])
        store.add_labels(
            ids, labels, labeler="teacher:skip", keep_mask=torch.tensor([1, 1, 1, 0]).bool()
        )
        got1, got2, got_labels = store.labelled_pairs()
        _assert_equal(got1, _take(seg1, [0, 1, 2]))
        _assert_equal(got2, _take(seg2, [0, 1, 2]))
        assert got_labels.dtype == torch.float32 and got_labels.tolist() == [1.0, 0.0, 0.5]
        assert store.count_queries() == 4
        assert store.count_labels() == 3
        assert store.count_labels(include_skipped=True) == 4
    con = sqlite3.connect(tmp_path / "fb.sqlite")
    row = con.execute("SELECT label, reason, labeler FROM labels WHERE query_id = 4").fetchone()
    assert row == (None, "skipped", "teacher:skip")
    q = con.execute(
        "SELECT step, segment_length, obs_dim, act_dim, selection FROM queries WHERE id = 1"
    )
    assert q.fetchone() == (1200, 5, 3, 2, "disagreement")
    con.close()


def test_reopening_resumes_the_store(tmp_path):
    path = tmp_path / "fb.sqlite"
    seg1, seg2 = _segments(3, seed=1), _segments(3, seed=2)
    with FeedbackStore(path) as store:
        ids = store.add_queries(seg1, seg2, step=10, selection="uniform")
        store.add_labels(ids, [1.0, 1.0, 0.0], labeler="teacher:oracle")
    with FeedbackStore(path) as store:
        assert (store.count_queries(), store.count_labels()) == (3, 3)
        more1, more2 = _segments(2, seed=3), _segments(2, seed=4)
        new_ids = store.add_queries(more1, more2, step=20, selection="entropy")
        assert new_ids == [4, 5]
        store.add_labels(new_ids, [0.5, 0.0], labeler="teacher:oracle")
        got1, _, labels = store.labelled_pairs()
    assert labels.tolist() == [1.0, 1.0, 0.0, 0.5, 0.0]
    assert torch.equal(got1.obs[:3], seg1.obs) and torch.equal(got1.obs[3:], more1.obs)


def test_wal_mode_and_schema_marker(tmp_path):
    with FeedbackStore(tmp_path / "fb.sqlite"):
        pass
    con = sqlite3.connect(tmp_path / "fb.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(con.execute("SELECT key, value FROM meta"))["format"] == "unialign-feedback"
    con.close()


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not the rows you are looking for\n" * 20)
    with pytest.raises(FeedbackStoreError, match="notes.txt"):
        FeedbackStore(text)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE stuff (x INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(FeedbackStoreError, match="other.sqlite.*not a unialign feedback store"):
        FeedbackStore(other)


def test_human_and_teacher_labels_side_by_side(tmp_path):
    """A human labels what the teacher labelled and one query it has not; filters by labeller."""
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_queries(
            *(_segments(3, seed=s) for s in (1, 2)), step=0, selection="uniform"
        )
        store.add_labels(ids[:2], [1.0, 0.0], labeler="teacher:oracle")
        assert store.unlabelled_query_ids() == [3]
        assert store.unlabelled_query_ids(labeler="human:ada") == [1, 2, 3]
        store.add_labels([3, 1], [0.5, 0.0], labeler="human:ada")
        _, _, all_labels = store.labelled_pairs()
        assert all_labels.tolist() == [1.0, 0.0, 0.0, 0.5]  # by query, then by label
        s1, _, human = store.labelled_pairs(labeler="human:ada")
        assert human.tolist() == [0.0, 0.5] and s1.indices.tolist() == [0, 14]
        with pytest.raises(ValueError, match="already labelled"):
            store.add_labels([1], [1.0], labeler="human:ada")


def test_segments_by_query_id_render_from_the_store_alone(tmp_path):
    seg1, seg2 = _segments(3, seed=1), _segments(3, seed=2)
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        store.add_queries(seg1, seg2, step=0, selection="uniform", source={"env": "Pendulum-v1"})
        a, b = store.segments([3, 1])
        _assert_equal(a, _take(seg1, [2, 0]))
        _assert_equal(b, _take(seg2, [2, 0]))
        with pytest.raises(KeyError, match="99"):
            store.segments([99])


@pytest.mark.parametrize(
    "labels, keep, match",
    [
        ([0.3], None, "0, 0.5 or 1"),
        ([float("nan")], None, "0, 0.5 or 1"),
        ([1.0, 0.0], None, "same length"),
    ],
)
def test_bad_labels_are_rejected(tmp_path, labels, keep, match):
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_queries(
            *(_segments(1, seed=s) for s in (1, 2)), step=0, selection="uniform"
        )
        with pytest.raises(ValueError, match=match):
            store.add_labels(ids, labels, labeler="human:ada", keep_mask=keep)
        with pytest.raises(ValueError, match="unknown query id"):
            store.add_labels([42], [1.0], labeler="human:ada")
        assert store.count_labels(include_skipped=True) == 0


def test_float64_segments_are_stored_as_float32(tmp_path):
    seg = _segments(2)
    seg64 = SegmentBatch(
        seg.obs.double(), seg.actions.double(), seg.true_rewards.double(), seg.indices
    )
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_queries(seg64, seg64, step=0, selection="uniform")
        store.add_labels(ids, [1.0, 0.0], labeler="teacher:oracle")
        got, _, _ = store.labelled_pairs()
    assert got.obs.dtype == torch.float32 and torch.equal(got.obs, seg.obs)


def test_mismatched_pairs_and_mixed_lengths(tmp_path):
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        with pytest.raises(ValueError, match="seg2"):
            store.add_queries(_segments(2), _segments(3), step=0, selection="uniform")
        s1, s2, labels = store.labelled_pairs()
        assert len(s1) == len(s2) == len(labels) == 0
        store.add_queries(
            _segments(1, horizon=5), _segments(1, horizon=5), step=0, selection="uniform"
        )
        store.add_queries(
            _segments(1, horizon=4), _segments(1, horizon=4), step=0, selection="uniform"
        )
        store.add_labels([1, 2], [1.0, 1.0], labeler="teacher:oracle")
        with pytest.raises(ValueError, match="mixes segment shapes"):
            store.labelled_pairs()
