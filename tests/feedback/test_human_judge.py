"""HumanJudge: pairs posted to the feedback store, labels written by annotators while it waits,
timeouts, and resuming without duplicate queries (also after kill -9)."""

import io
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from rich.console import Console

from unialign.feedback.human import HUMAN_SELECTION, HumanJudge
from unialign.feedback.judges import JudgeConfigError, PairJudge, checked_preferences
from unialign.feedback.store import FeedbackStore

PROMPTS = ["2+2?", "capital of France?", "say hi"]
A = ["4", "Paris", "hi"]
B = ["5", "Lyon", "hello"]
CONV_P = [{"role": "user", "content": "hello?"}]
CONV_A = [{"role": "assistant", "content": "hi there"}]
CONV_B = [{"role": "assistant", "content": "go away"}]


def _judge(path, **kwargs):
    kwargs.setdefault("timeout_s", 30.0)
    kwargs.setdefault("poll_s", 0.02)
    out = io.StringIO()
    judge = HumanJudge(path, console=Console(file=out, width=200), **kwargs)
    return judge, out


def _wait_for_queries(path, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with FeedbackStore(path) as store:
                ids = store.unlabelled_query_ids(kind="completion")
            if len(ids) >= n:
                return ids
        time.sleep(0.02)
    raise AssertionError(f"no {n} queries appeared in {path}")


def _annotate(path, labels, labeler="human:alice", skip=(), n=None):
    """A thread: waits for the judge's queries, then labels them (skips at positions ``skip``)."""

    def run():
        ids = _wait_for_queries(path, n or len(labels))[: len(labels)]
        with FeedbackStore(path) as store:
            keep = [i not in skip for i in range(len(ids))]
            store.add_labels(ids, labels, labeler=labeler, keep_mask=keep)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_compare_posts_waits_for_annotators_and_returns_their_labels(tmp_path):
    path = tmp_path / "fb.sqlite"
    judge, out = _judge(path, policy_version="iter-3", step_fn=lambda: 12)
    assert isinstance(judge, PairJudge) and judge.name == "human:*"
    thread = _annotate(path, [1.0, 0.0, 0.0], skip={2})
    got = checked_preferences(judge, PROMPTS, A, B)
    thread.join()
    assert got[:2] == [1.0, 0.0] and math.isnan(got[2])  # the third was skipped by alice
    wait = judge.last_wait
    assert (wait.posted, wait.reused, wait.labelled, wait.skipped, wait.missing) == (3, 0, 2, 1, 0)
    assert not wait.timed_out and wait.query_ids == [1, 2, 3]
    lines = out.getvalue().splitlines()
    assert lines[0] == "waiting for labels: 0/3" and lines[-1] == "waiting for labels: 3/3"
    with FeedbackStore(path) as store:
        pairs = store.completions([1, 2, 3])
        assert list(pairs.prompts) == PROMPTS and list(pairs.completions_1) == A
        assert list(pairs.policy_versions) == ["iter-3"] * 3
    rows = sqlite3.connect(path).execute("SELECT selection, step, source FROM queries").fetchall()
    assert rows == [(HUMAN_SELECTION, 12, '{"judge": "human:*"}')] * 3


def test_conversational_pairs_and_only_the_named_annotators_count(tmp_path):
    path = tmp_path / "fb.sqlite"
    judge, _ = _judge(path, annotators=["alice", "human:bob"], timeout_s=0.3)
    assert judge.name == "human:alice+bob"
    first = judge.compare([CONV_P], [CONV_A], [CONV_B])  # nobody yet: times out
    assert math.isnan(first[0]) and judge.last_wait.timed_out
    (qid,) = judge.last_wait.query_ids
    with FeedbackStore(path) as store:
        store.add_labels([qid], [0.0], labeler="human:carol")  # not an accepted annotator
        store.add_labels([qid], [0.0], labeler="teacher:oracle")  # not a human
    assert math.isnan(judge.compare([CONV_P], [CONV_A], [CONV_B])[0])
    with FeedbackStore(path) as store:
        store.add_labels([qid], [1.0], labeler="human:alice")
        store.add_labels([qid], [0.5], labeler="human:bob")
    # the same query (reused), the mean of the accepted labels: (1 + ½)/2
    assert judge.compare([CONV_P], [CONV_A], [CONV_B]) == [0.75]
    assert judge.last_wait.reused == 1 and judge.last_wait.posted == 0
    with FeedbackStore(path) as store:
        assert store.count_queries() == 1


def test_timeout_returns_nan_for_missing_labels_and_says_so(tmp_path):
    path = tmp_path / "fb.sqlite"
    judge, out = _judge(path, timeout_s=0.2)
    with FeedbackStore(path) as store:  # an earlier, partly labelled run of the same pairs
        ids = store.add_completion_queries(PROMPTS, A, B, step=0, selection=HUMAN_SELECTION)
        store.add_labels([ids[1]], [1.0], labeler="human:ada")
    start = time.monotonic()
    got = checked_preferences(judge, PROMPTS, A, B)  # a loop's check accepts the NaNs (skips)
    assert time.monotonic() - start < 5
    assert math.isnan(got[0]) and got[1] == 1.0 and math.isnan(got[2])
    wait = judge.last_wait
    assert wait.timed_out and (wait.missing, wait.labelled, wait.reused) == (2, 1, 3)
    text = out.getvalue()
    assert "waiting for labels: 1/3" in text
    assert "timed out after 0.2 s: 1/3 queries labelled" in text and "returned as NaN" in text


def test_stop_fn_ends_the_wait_early(tmp_path):
    calls = []
    judge, out = _judge(
        tmp_path / "fb.sqlite",
        timeout_s=math.inf,
        stop_fn=lambda: calls.append(1) or len(calls) > 2,
    )
    got = judge.compare(PROMPTS[:1], A[:1], B[:1])
    assert math.isnan(got[0]) and judge.last_wait.stopped and not judge.last_wait.timed_out
    assert "human judge stopped" in out.getvalue()


def test_a_terminal_shows_a_live_status_line(tmp_path):
    path = tmp_path / "fb.sqlite"
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    judge = HumanJudge(path, timeout_s=30, poll_s=0.02, console=console)
    thread = _annotate(path, [1.0])
    assert judge.compare(["p"], ["a"], ["b"]) == [1.0]
    thread.join()
    assert "waiting for labels" in out.getvalue()


def test_resume_reuses_the_queries_posted_before_instead_of_posting_duplicates(tmp_path):
    path = tmp_path / "fb.sqlite"
    first, _ = _judge(path, timeout_s=0.0, policy_version=7)
    assert all(math.isnan(v) for v in first.compare(PROMPTS, A, B))  # the run stops here
    assert first.last_wait.posted == 3
    with FeedbackStore(path) as store:  # an annotator labels one while the run is down
        store.add_labels([2], [0.0], labeler="human:ada")
    resumed, _ = _judge(path, policy_version=7)  # a new process: a fresh judge
    thread = threading.Thread(
        target=lambda: (
            _wait_for_queries(path, 2),
            FeedbackStore(path).add_labels([1, 3], [1.0, 0.5], labeler="human:bob"),
        ),
        daemon=True,
    )
    thread.start()
    assert resumed.compare(PROMPTS, A, B) == [1.0, 0.0, 0.5]
    thread.join()
    assert (resumed.last_wait.posted, resumed.last_wait.reused) == (0, 3)
    with FeedbackStore(path) as store:
        assert store.count_queries() == 3
    # another policy version asks again; so do swapped completions
    other, _ = _judge(path, timeout_s=0.0, policy_version=8)
    other.compare(PROMPTS, A, B)
    swapped, _ = _judge(path, timeout_s=0.0, policy_version=7)
    swapped.compare(PROMPTS[:1], B[:1], A[:1])
    assert (other.last_wait.posted, swapped.last_wait.posted) == (3, 1)


def test_identical_pairs_in_one_call_share_one_query(tmp_path):
    path = tmp_path / "fb.sqlite"
    judge, _ = _judge(path)
    thread = _annotate(path, [0.0, 1.0])
    got = judge.compare(["q", "r", "q"], ["x", "x", "x"], ["y", "y", "y"])
    thread.join()
    assert got == [0.0, 1.0, 0.0]
    assert judge.last_wait.query_ids == [1, 2, 1]
    with FeedbackStore(path) as store:
        assert store.count_queries() == 2


@pytest.mark.integration
def test_a_killed_waiting_process_resumes_without_duplicates(tmp_path):
    """kill -9 while ``compare`` waits: the queries it posted are reused by the next run."""
    path = tmp_path / "fb.sqlite"
    script = textwrap.dedent(
        f"""
        from unialign.feedback.human import HumanJudge
        judge = HumanJudge({str(path)!r}, timeout_s=600, poll_s=0.05, policy_version=1)
        judge.compare({PROMPTS!r}, {A!r}, {B!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        _wait_for_queries(path, 3, timeout=120)
        time.sleep(0.2)
        assert proc.poll() is None  # still waiting for labels
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with FeedbackStore(path) as store:
        store.add_labels([3], [1.0], labeler="human:ada")
    thread = threading.Thread(
        target=lambda: FeedbackStore(path).add_labels([1, 2], [0.0, 0.5], labeler="human:ada"),
        daemon=True,
    )
    judge, _ = _judge(path, policy_version=1)
    thread.start()
    assert judge.compare(PROMPTS, A, B) == [0.0, 0.5, 1.0]
    thread.join()
    assert judge.last_wait.posted == 0
    with FeedbackStore(path) as store:
        assert store.count_queries() == 3


def test_empty_compare_and_argument_errors(tmp_path):
    judge, _ = _judge(tmp_path / "fb.sqlite")
    assert judge.compare([], [], []) == []
    with pytest.raises(ValueError, match="one pair per prompt"):
        judge.compare(["p"], ["a"], [])
    with pytest.raises(ValueError, match="the prompt is standard but completions_b"):
        judge.compare(["p"], ["a"], [CONV_B])
    for kwargs, message in [
        ({"timeout_s": -1}, "timeout_s must be >= 0"),
        ({"timeout_s": 1, "poll_s": 0}, "poll_s must be > 0"),
        ({"timeout_s": 1, "annotators": []}, "annotators is empty"),
        ({"timeout_s": 1, "annotators": ["teacher:oracle"]}, "not a human labeller"),
        ({"timeout_s": 1, "annotators": ["human:"]}, "must be names such as 'ada'"),
    ]:
        with pytest.raises(JudgeConfigError, match=message):
            HumanJudge(tmp_path / "fb.sqlite", **kwargs)
    with pytest.raises(JudgeConfigError, match="is a directory"):
        HumanJudge(tmp_path, timeout_s=1)
