"""People as the control loop's labeller (``teacher: human``).

At each feedback round :class:`HumanLabeller` posts the selected segment pairs to the run's
feedback store and waits until each has a label from a person (any ``human:<annotator>``
labeller, written by the labelling app, ``unialign label RUN_DIR``), showing how many have
arrived. It returns when every pair is labelled, when ``timeout_s`` passes, or when the run is
asked to stop (Ctrl-C); pairs without a label by then are left out of this round's fit, and
their labels, when they arrive later, are used by the next fit (the reward learner trains on
every label in the store). Several annotators may label one pair: the mean of their labels is
the pair's label (so disagreement gives ½).

Resuming: people's labels are never rolled back. A resumed run that replays a round posts
nothing twice: pairs asked at the same step with the same replay indices are found in the store
(:meth:`FeedbackStore.find_segment_queries`) and waited on again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from rich.console import Console

from unialign.control.components import LabelRound
from unialign.control.types import SegmentBatch
from unialign.feedback.store import FeedbackStore

__all__ = ["HumanLabeller"]


class HumanLabeller:
    """Wait for people's labels on each round's queries.

    Args:
        timeout_s: how long a round waits for labels (> 0).
        poll_s: seconds between looks at the store.
        console: where the waiting count is shown (default: stderr).
        source: JSON context stored with each query (the labelling app reads ``env`` from it to
            draw the segments).
    """

    replayable = False
    name = "human"

    def __init__(
        self,
        *,
        timeout_s: float,
        poll_s: float = 2.0,
        console: Console | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        if not (timeout_s > 0 and poll_s > 0):
            raise ValueError(f"timeout_s and poll_s must be > 0, got {timeout_s}, {poll_s}")
        self.timeout_s, self.poll_s = float(timeout_s), float(poll_s)
        self.console = console or Console(stderr=True)
        self.source = source
        self.last_wait: dict[str, float] = {}

    def label(
        self,
        seg1: SegmentBatch,
        seg2: SegmentBatch,
        *,
        store: FeedbackStore,
        step: int,
        selection: str,
        mean_segment_return: float,
        rng: np.random.Generator,
        should_stop: Callable[[], bool],
    ) -> LabelRound:
        ids = self._post(seg1, seg2, store=store, step=step, selection=selection)
        labels = self._wait(ids, store, should_stop)
        values = [math.nan if not ls else float(np.mean(ls)) for ls in labels]
        out = torch.tensor(values, dtype=torch.float32)
        return LabelRound(ids, out, ~torch.isnan(out))

    def _post(
        self, seg1: SegmentBatch, seg2: SegmentBatch, *, store: FeedbackStore, step: int,
        selection: str,
    ) -> list[int]:  # fmt: skip
        i1, i2 = seg1.indices.tolist(), seg2.indices.tolist()
        ids = store.find_segment_queries(step, i1, i2)
        missing = [k for k, q in enumerate(ids) if q is None]
        if missing:
            new = store.add_segment_queries(
                seg1.take(missing), seg2.take(missing), step=step, selection=selection,
                source=self.source,
            )  # fmt: skip
            for k, q in zip(missing, new):
                ids[k] = q
        return [int(q) for q in ids]

    def _wait(
        self, ids: list[int], store: FeedbackStore, should_stop: Callable[[], bool]
    ) -> list[list[float]]:
        """Per query, the non-skip labels by people, once all have one, at the timeout, or on
        a stop request."""
        start = time.monotonic()
        stopped = False
        with self.console.status("") as status:
            while True:
                found = store.query_labels(ids, labeler_kind="human")
                answered = sum(1 for ls in found.values() if ls)
                left = self.timeout_s - (time.monotonic() - start)
                status.update(
                    f"waiting for human labels: {answered}/{len(ids)} "
                    f"(label them with `unialign label {store.path}`; {max(left, 0):.0f} s left)"
                )
                if answered == len(ids) or left <= 0:
                    break
                if should_stop():
                    stopped = True
                    break
                time.sleep(min(self.poll_s, max(left, 0.0)))
        labelled = [[v for v in found[q] if v is not None] for q in ids]
        self.last_wait = {
            "human/answered": float(answered),
            "human/labelled": float(sum(1 for ls in labelled if ls)),
            "human/timed_out": float(answered < len(ids) and not stopped),
            "human/wait_s": time.monotonic() - start,
        }
        if answered < len(ids):
            why = "stop requested" if stopped else f"timeout after {self.timeout_s:.0f} s"
            self.console.print(
                f"[yellow]human labels: {answered}/{len(ids)} answered ({why}); the rest are "
                "used by later fits when they arrive[/yellow]"
            )
        return labelled

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None
