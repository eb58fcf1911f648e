"""PEBBLE's reward learner and the simulated-teacher labeller, as parts of the control loop.

:class:`BradleyTerryLearner` is PEBBLE's upper level (Lee, Smith & Abbeel 2021,
arXiv 2106.05091, §4.2): after each feedback round, ``epochs`` passes of the reward ensemble's
Bradley–Terry loss over every label so far; SAC then trains on the ensemble-mean reward.
:class:`TeacherLabeller` puts a B-Pref simulated teacher (:mod:`unialign.feedback.teachers`)
behind the loop's ``Labeller`` interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from torch import Tensor

from unialign.control.buffer import RewardFn
from unialign.control.components import FitContext, LabelRound
from unialign.control.reward_model import RewardEnsemble
from unialign.control.types import SegmentBatch
from unialign.feedback.store import FeedbackStore
from unialign.feedback.teachers import Teacher

__all__ = ["BradleyTerryLearner", "TeacherLabeller"]


class BradleyTerryLearner:
    """A reward ensemble refitted on all labels after each feedback round (PEBBLE).

    Args:
        model: the ensemble (its ``optimizer`` is part of this learner's state).
        epochs: passes over all labelled pairs per fit (PEBBLE: up to 50 … 200).
        batch_size: pairs per minibatch.
    """

    def __init__(self, model: RewardEnsemble, *, epochs: int, batch_size: int) -> None:
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
        self.model, self.epochs, self.batch_size = model, epochs, batch_size

    def reward_fn(self) -> RewardFn:
        return self.model.numpy_reward

    def preference_probs(self, seg1: SegmentBatch, seg2: SegmentBatch) -> Tensor:
        return self.model.preference_probs(seg1, seg2)

    def fit(
        self, seg1: SegmentBatch, seg2: SegmentBatch, labels: Tensor, ctx: FitContext
    ) -> dict[str, float]:
        return self.model.train_epochs(
            seg1, seg2, labels, epochs=self.epochs, batch_size=self.batch_size, rng=ctx.rng
        )

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.model.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.model.optimizer.load_state_dict(state["optimizer"])


class TeacherLabeller:
    """A simulated B-Pref teacher labelling segment pairs from their true rewards."""

    replayable = True

    def __init__(self, teacher: Teacher) -> None:
        self.teacher = teacher

    @property
    def name(self) -> str:
        return self.teacher.name

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
        self.teacher.update_mean_segment_return(mean_segment_return)
        out = self.teacher.label(seg1, seg2, rng)
        ids = store.add_segment_queries(seg1, seg2, step=step, selection=selection)
        store.add_labels(ids, out.labels, labeler=self.name, keep_mask=out.keep)
        return LabelRound(ids, out.labels, out.keep)

    def state_dict(self) -> dict[str, Any]:
        return self.teacher.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.teacher.load_state_dict(dict(state))
