"""``teacher: human``: the control loop posts its queries, waits for people's labels in the
feedback store, and trains on them. A thread plays the annotator, labelling through the store
exactly as the labelling app does (``add_labels`` with a ``human:`` labeller)."""

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unialign.control.demo import demo_config
from unialign.control.human import HumanLabeller
from unialign.control.train import train_control
from unialign.feedback.store import FeedbackStore
from unialign.feedback.types import SegmentBatch

pytestmark = pytest.mark.integration


def _annotate(path, stop: threading.Event, name: str = "human:alice") -> None:
    """Label every pending query by its segments' true returns (what a careful person would
    say on Pendulum), until ``stop`` is set."""
    while not path.exists() and not stop.is_set():
        time.sleep(0.01)
    with FeedbackStore(path) as store:
        while not stop.is_set():
            pending = store.unlabelled_query_ids(labeler=name)
            if pending:
                seg1, seg2 = store.segments(pending)
                r1, r2 = seg1.true_rewards.sum(1), seg2.true_rewards.sum(1)
                labels = torch.where(r1 > r2, 1.0, torch.where(r1 < r2, 0.0, 0.5))
                store.add_labels(pending, labels, labeler=name)
            time.sleep(0.02)


def test_a_run_waits_for_and_learns_from_human_labels(tmp_path):
    cfg = demo_config(tmp_path / "h", quick=True).model_copy(
        update={"teacher": "human", "human_timeout_s": 120, "human_poll_s": 0.02, "progress": False}
    )
    stop = threading.Event()
    person = threading.Thread(target=_annotate, args=(tmp_path / "h" / "feedback.sqlite", stop))
    person.start()
    try:
        summary = train_control(cfg)
    finally:
        stop.set()
        person.join()
    assert summary["queries_used"] == 20 and summary["labels_used"] == 20
    with FeedbackStore(tmp_path / "h" / "feedback.sqlite") as store:
        labelled = store.labelled_segment_pairs(labeler="human:alice")
        assert len(labelled[2]) == 20
        assert store.count_labels(labeler="teacher:oracle") == 0


def test_nobody_labelling_times_out_and_the_run_goes_on(tmp_path):
    cfg = demo_config(tmp_path / "t", quick=True).model_copy(
        update={"teacher": "human", "human_timeout_s": 0.1, "human_poll_s": 0.02, "progress": False}
    )
    summary = train_control(cfg)
    assert summary["queries_used"] == 20 and summary["labels_used"] == 0
    assert summary["eval/true_return"] is not None


def test_a_replayed_round_finds_its_queries_instead_of_posting_them_again(tmp_path):
    g = torch.Generator().manual_seed(0)

    def seg(idx):
        return SegmentBatch(
            torch.randn(3, 4, 2, generator=g), torch.rand(3, 4, 1, generator=g) * 2 - 1,
            torch.randn(3, 4, generator=g), torch.tensor(idx),
        )  # fmt: skip

    s1, s2 = seg([5, 9, 12]), seg([7, 1, 30])
    labeller = HumanLabeller(timeout_s=0.05, poll_s=0.01)
    kw = dict(step=300, selection="uniform", mean_segment_return=0.0, should_stop=lambda: False)
    with FeedbackStore(tmp_path / "f.sqlite") as store:
        first = labeller.label(s1, s2, store=store, rng=np.random.default_rng(0), **kw)
        assert not first.keep.any()  # nobody answered: the pairs are left out, not guessed
        store.add_labels(first.query_ids[:2], [1.0, 0.5], labeler="human:bob")
        again = labeller.label(s1, s2, store=store, rng=np.random.default_rng(0), **kw)
        assert again.query_ids == first.query_ids and store.count_queries() == 3
        assert again.keep.tolist() == [True, True, False]
        assert again.labels[:2].tolist() == [1.0, 0.5]
        # two annotators who disagree give ½
        store.add_labels(first.query_ids[:1], [0.0], labeler="human:carol")
        third = labeller.label(s1, s2, store=store, rng=np.random.default_rng(0), **kw)
        assert third.labels[0].item() == 0.5


def test_a_stop_request_ends_the_wait():
    labeller = HumanLabeller(timeout_s=600, poll_s=0.01)
    seg = SegmentBatch(
        torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.zeros(1, 2), torch.tensor([0])
    )
    with tempfile.TemporaryDirectory() as d, FeedbackStore(Path(d) / "f.sqlite") as store:
        t0 = time.monotonic()
        out = labeller.label(
            seg, seg, store=store, step=1, selection="uniform", mean_segment_return=0.0,
            rng=np.random.default_rng(0), should_stop=lambda: time.monotonic() - t0 > 0.05,
        )  # fmt: skip
    assert not out.keep.any() and labeller.last_wait["human/timed_out"] == 0.0
