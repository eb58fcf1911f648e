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
        "SELECT q.kind, q.step, p.segment_length, p.obs_dim, p.act_dim, q.selection "
        "FROM queries q JOIN segment_pairs p ON p.query_id = q.id WHERE q.id = 1"
    )
    assert q.fetchone() == ("segment", 1200, 5, 3, 2, "disagreement")
    assert con.execute("SELECT labeler_kind FROM labels WHERE id = 1").fetchone() == ("teacher",)
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


# -- schema version 2: absorbed masks, completions, labeller kinds, metadata -----------------


def _with_absorbed(seg, rows_steps):
    mask = torch.zeros(len(seg), seg.length, dtype=torch.bool)
    for row, step in rows_steps:
        mask[row, step:] = True
    return SegmentBatch(seg.obs, seg.actions, seg.true_rewards, seg.indices, mask)


def test_absorbed_masks_round_trip_and_none_stays_none(tmp_path):
    """seg1 has a mask (one segment padded from step 3), seg2 none: each comes back as given;
    a batch mixing stored-with and stored-without rows reads the latter as all False."""
    seg1 = _with_absorbed(_segments(3, seed=1), [(1, 3)])
    seg2 = _segments(3, seed=2)
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_segment_queries(seg1, seg2, step=5, selection="uniform")
        a, b = store.segments(ids)
        assert a.absorbed.dtype == torch.bool and torch.equal(a.absorbed, seg1.absorbed)
        assert b.absorbed is None
        more = store.add_segment_queries(seg2, seg1, step=6, selection="uniform")
        a, b = store.segments([ids[1], more[0]])
        assert torch.equal(
            a.absorbed, torch.tensor([[False, False, False, True, True]] + [[False] * 5])
        )
        assert torch.equal(b.absorbed, torch.zeros(2, 5, dtype=torch.bool))
        store.add_labels(ids + more, [1.0] * 6, labeler="teacher:oracle")
        l1, l2, _ = store.labelled_segment_pairs()
        assert torch.equal(l1.absorbed[:3], seg1.absorbed) and not l1.absorbed[3:].any()
        assert torch.equal(l2.absorbed[3:], seg1.absorbed)


PROMPTS = ["What is 2+2?", [{"role": "user", "content": "Name a colour."}]]
FIRST = [" 4.", [{"role": "assistant", "content": "Red."}]]
SECOND = [" 5.", [{"role": "assistant", "content": "Loud."}]]


def test_completion_queries_round_trip(tmp_path):
    """Strings and conversations, token ids, hidden rewards (one unknown), versions, source."""
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_completion_queries(
            PROMPTS, FIRST, SECOND, step=3, policy_version="iter-3",
            token_ids_1=[[5, 6], None], token_ids_2=[[7], [8, 9, 10]],
            rewards_1=[1.5, None], rewards_2=torch.tensor([0.25, -2.0]),
            source={"task": "arith"},
        )  # fmt: skip
        assert ids == [1, 2]
        assert [store.query_kind(i) for i in ids] == ["completion"] * 2
        assert store.count_queries(kind="completion") == 2 and store.count_queries("segment") == 0
        got = store.completions([2, 1])
        assert got.prompts == PROMPTS[::-1] and got.completions_1 == FIRST[::-1]
        assert got.completions_2 == SECOND[::-1] and got.formats == ["conversational", "standard"]
        assert got.token_ids_1 == [None, [5, 6]] and got.token_ids_2 == [[8, 9, 10], [7]]
        assert got.rewards_1.dtype == torch.float64 and torch.isnan(got.rewards_1[0])
        assert got.rewards_1[1] == 1.5 and got.rewards_2.tolist() == [-2.0, 0.25]
        assert got.policy_versions == ["iter-3", "iter-3"] and got.query_ids.tolist() == [2, 1]
        with pytest.raises(ValueError, match="compares completions.*completions()"):
            store.segments([1])
        store.add_segment_queries(_segments(1), _segments(1, seed=5), step=0, selection="uniform")
        with pytest.raises(ValueError, match="compares segments"):
            store.completions([3])
        with pytest.raises(KeyError, match="42"):
            store.completions([42])
    con = sqlite3.connect(tmp_path / "fb.sqlite")
    rows = con.execute(
        "SELECT format, prompt, completion_1, token_ids_1, policy_version, reward_1 "
        "FROM completion_pairs ORDER BY query_id"
    ).fetchall()
    assert rows[0] == ("standard", "What is 2+2?", " 4.", "[5, 6]", "iter-3", 1.5)
    assert rows[1][:2] == ("conversational", '[{"role": "user", "content": "Name a colour."}]')
    assert rows[1][3:] == (None, "iter-3", None)
    assert con.execute("SELECT source FROM queries WHERE id = 1").fetchone() == (
        '{"task": "arith"}',
    )
    con.close()


def test_labelled_completion_pairs_by_labeller_with_kinds_and_metadata(tmp_path):
    path = tmp_path / "fb.sqlite"
    with FeedbackStore(path) as store:
        ids = store.add_completion_queries(PROMPTS, FIRST, SECOND, step=0, policy_version=7)
        store.add_labels(ids, [1.0, 0.5], labeler="judge:rm-small")
        store.add_labels(
            [ids[1]], [0.0], labeler="human:ada",
            metadata=[{"shown": "second-left", "latency_s": 3.2}],
        )  # fmt: skip
        store.add_labels(
            [ids[0]], [float("nan")], labeler="human:bo", keep_mask=[False],
            reason="cannot judge arithmetic", metadata={"shown": "first-left"},
        )  # fmt: skip
        pairs, labels, labelers = store.labelled_completion_pairs()
        assert labels.tolist() == [1.0, 0.5, 0.0]
        assert labelers == ["judge:rm-small", "judge:rm-small", "human:ada"]
        assert pairs.query_ids.tolist() == [1, 2, 2] and pairs.policy_versions == ["7"] * 3
        human = store.labelled_completion_pairs(labeler="human:ada")
        assert human.labels.tolist() == [0.0] and human.pairs.prompts == [PROMPTS[1]]
        assert store.count_labels(kind="completion") == 3
        assert store.count_labels(include_skipped=True, labeler="human:bo") == 1
        assert store.unlabelled_query_ids(labeler="human:ada", kind="completion") == [1]
        s1, s2, y = store.labelled_segment_pairs()  # completion labels are not segment labels
        assert len(s1) == len(s2) == len(y) == 0
    con = sqlite3.connect(path)
    rows = con.execute(
        "SELECT labeler, labeler_kind, label, reason, metadata FROM labels ORDER BY id"
    )
    assert rows.fetchall() == [
        ("judge:rm-small", "judge", 1.0, None, None),
        ("judge:rm-small", "judge", 0.5, None, None),
        ("human:ada", "human", 0.0, None, '{"shown": "second-left", "latency_s": 3.2}'),
        ("human:bo", "human", None, "cannot judge arithmetic", '{"shown": "first-left"}'),
    ]
    con.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"completions_1": ["a"]}, "completions_1 has 1 entries"),
        ({"completions_1": [" 4.", "Red."]}, r"pair 1: the prompt is conversational"),
        (
            {"completions_1": [" 4.", [{"role": "user", "content": "x"}]]},
            "must end with an 'assistant'",
        ),
        ({"prompts": ["a", []]}, r"prompts\[1\] is an empty message list"),
        ({"prompts": ["a", [{"role": "user"}]]}, r"prompts\[1\]\[0\] must have string 'content'"),
        ({"prompts": [3, "b"]}, r"prompts\[0\] must be a string or a list"),
        ({"rewards_1": [1.0]}, "rewards_1 must have one reward per pair"),
        ({"rewards_2": [1.0, float("inf")]}, "rewards_2 must be finite"),
        ({"token_ids_1": [[1, -2], None]}, r"token_ids_1\[0\] must be a list of non-negative ints"),
        ({"step": "3"}, "step must be an int"),
        ({"selection": ""}, "selection must name"),
        ({"source": {"x": object()}}, "source must be JSON-serializable"),
        ({"policy_version": ["a"]}, "policy_version has 1 entries for 2 pairs"),
        (
            {"prompts": ["a", [{"role": "user", "content": "x", "when": object()}]]},
            "the messages of pair 1 must be JSON-serializable",
        ),
    ],
)
def test_bad_completion_queries_name_the_parameter(tmp_path, kwargs, match):
    args = {"prompts": PROMPTS, "completions_1": FIRST, "completions_2": SECOND, "step": 0}
    args.update(kwargs)
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        with pytest.raises(ValueError, match=match):
            store.add_completion_queries(
                args.pop("prompts"), args.pop("completions_1"), args.pop("completions_2"), **args
            )
        assert store.count_queries() == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labeler": "alice"}, "labeler must be 'teacher:<kind>'"),
        ({"labeler": "human:"}, "labeler must be"),
        ({"labeler": "robot:x"}, "labeler must be"),
        ({"metadata": [{"a": 1}]}, "metadata has 1 entries for 2 labels"),
        ({"metadata": {"t": float("nan")}}, "metadata must be JSON-serializable"),
        ({"query_ids": [1, 1]}, "repeats a query"),
        ({"reason": ""}, "reason must be a non-empty string"),
    ],
)
def test_bad_labels_name_the_parameter(tmp_path, kwargs, match):
    args = {"query_ids": [1, 2], "labels": [1.0, 0.0], "labeler": "human:ada"}
    args.update(kwargs)
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        store.add_completion_queries(PROMPTS, FIRST, SECOND, step=0)
        with pytest.raises(ValueError, match=match):
            store.add_labels(args.pop("query_ids"), args.pop("labels"), **args)
        assert store.count_labels(include_skipped=True) == 0


def test_a_failed_label_batch_writes_nothing(tmp_path):
    """One already-labelled query in a batch rejects the whole batch (one transaction)."""
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_completion_queries(PROMPTS, FIRST, SECOND, step=0)
        store.add_labels([ids[1]], [1.0], labeler="human:ada")
        with pytest.raises(ValueError, match=r"already labelled query id\(s\) \[2\]"):
            store.add_labels(ids, [0.0, 0.0], labeler="human:ada")
        assert store.count_labels() == 1 and store.unlabelled_query_ids() == [1]


def test_missing_store_with_create_false_and_a_directory_are_errors(tmp_path):
    with pytest.raises(FeedbackStoreError, match="no feedback store at .*absent.sqlite"):
        FeedbackStore(tmp_path / "absent.sqlite", create=False)
    assert not (tmp_path / "absent.sqlite").exists()
    with pytest.raises(FeedbackStoreError, match="is a directory"):
        FeedbackStore(tmp_path)


def test_an_unknown_schema_version_is_a_clear_error(tmp_path):
    path = tmp_path / "fb.sqlite"
    with FeedbackStore(path):
        pass
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(FeedbackStoreError, match="fb.sqlite has feedback-store schema version 9"):
        FeedbackStore(path)


def test_completion_pairs_take_and_add_completion_pairs(tmp_path):
    """Read pairs, reorder them with take(), store them again: new ids, same contents."""
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        store.add_completion_queries(
            PROMPTS, FIRST, SECOND, step=0, rewards_1=[1.0, 2.0], policy_version=["a", None]
        )
        swapped = store.completions([1, 2]).take([1, 0])
        assert swapped.query_ids.tolist() == [2, 1] and swapped.rewards_1.tolist() == [2.0, 1.0]
        assert store.add_completion_pairs(swapped, step=1, selection="replay") == [3, 4]
        again = store.completions([3, 4])
        assert again.prompts == swapped.prompts and again.policy_versions == [None, "a"]
        assert again.rewards_1.tolist() == [2.0, 1.0] and torch.isnan(again.rewards_2).all()
