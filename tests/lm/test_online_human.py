"""The online loop learning from people: a ``human`` judge posts each iteration's comparisons
to a feedback store, the loop waits for labels, and the labels become its verdicts. A thread
plays the annotator, labelling through the store exactly as the labelling app does
(``add_labels`` with a ``human:`` labeller): the completion with more vowels is better."""

import threading
import time

import torch

from unialign.feedback.store import FeedbackStore
from unialign.lm.online import train_lm_online

from .test_online import cfg, tiny  # noqa: F401  (the module's tiny model and prompts)


def _vowels(text) -> int:
    text = text if isinstance(text, str) else text[-1]["content"]
    return sum(ch in "aeiou" for ch in text)


def _annotate(path, stop: threading.Event) -> int:
    while not path.exists() and not stop.is_set():
        time.sleep(0.01)
    labelled = 0
    with FeedbackStore(path) as store:
        while not stop.is_set():
            pending = store.unlabelled_query_ids(labeler="human:alice", kind="completion")
            if pending:
                pairs = store.completions(pending)
                a = torch.tensor([_vowels(c) for c in pairs.completions_1], dtype=torch.float32)
                b = torch.tensor([_vowels(c) for c in pairs.completions_2], dtype=torch.float32)
                labels = torch.where(a > b, 1.0, torch.where(a < b, 0.0, 0.5))
                store.add_labels(pending, labels, labeler="human:alice")
                labelled += len(pending)
            time.sleep(0.02)
    return labelled


def test_online_dpo_waits_for_and_uses_human_labels(tmp_path, tiny):  # noqa: F811
    human_store = tmp_path / "people.sqlite"
    judge = {"kind": "human", "store": str(human_store), "timeout_s": 120, "poll_s": 0.02}
    config = cfg(tiny, tmp_path / "run", judge=judge, method="online_dpo")
    stop = threading.Event()
    person = threading.Thread(target=_annotate, args=(human_store, stop))
    person.start()
    try:
        summary = train_lm_online(config)
    finally:
        stop.set()
        person.join()
    assert summary["iterations"] == config.iterations
    with FeedbackStore(human_store) as store:
        asked = store.count_queries(kind="completion")
        assert asked > 0 and store.count_labels(labeler="human:alice") == asked
    # the run's own store records the loop's view of those verdicts
    with FeedbackStore(tmp_path / "run" / "feedback.sqlite") as run_store:
        assert run_store.count_labels() > 0
