"""The parts a control run is built from, as small ``Protocol``s.

The loop in :mod:`unialign.control.train` calls only these interfaces. An algorithm is a choice
of parts (:mod:`unialign.control.algorithms`): ``oracle``, ``pebble`` and ``aparl`` share the
agent, labeller, query selector and schedule, and differ by the reward learner they are given
(none / a Bradley–Terry ensemble / Bradley–Terry + the A-PARL correction).

- ``Agent`` — acts and updates on transition batches (``sac.SAC``);
- ``RewardLearner`` — the reward SAC trains on, preference probabilities for query selection,
  and a fit on every label so far (``learners.BradleyTerryLearner``, ``aparl.APARLLearner``);
- ``Labeller`` — records segment pairs in the feedback store and labels them, or skips them
  (``learners.TeacherLabeller``, ``human.HumanLabeller``);
- ``QuerySelector`` — which pairs of a candidate pool to ask about (``query.PoolSelector``);
- ``FeedbackSchedule`` — how many queries are due at a step (``query.QuerySchedule``).

Every part with state (weights, optimiser moments, RNG-dependent counters) has
``state_dict``/``load_state_dict``, which the loop's checkpoint collects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from unialign.control.buffer import ReplayBuffer, RewardFn
from unialign.control.types import SegmentBatch, TransitionBatch
from unialign.feedback.store import FeedbackStore

__all__ = [
    "Agent",
    "FitContext",
    "RewardLearner",
    "LabelRound",
    "Labeller",
    "QuerySelector",
    "FeedbackSchedule",
]


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Agent(Stateful, Protocol):
    """The policy learner (SAC): acts, and learns from replayed transitions."""

    actor: nn.Module

    @property
    def alpha(self) -> float: ...

    def act(self, obs: np.ndarray, *, deterministic: bool = False) -> np.ndarray: ...

    def update(self, batch: TransitionBatch) -> Mapping[str, float]: ...


@dataclass
class FitContext:
    """What a reward learner may use besides the labelled pairs.

    Attributes:
        agent: the current policy learner (A-PARL differentiates through its actor).
        buffer: the replay buffer (A-PARL samples its lower-level states from it).
        rng: the run's NumPy generator (minibatch order; part of the checkpoint).
        device: where the learner's tensors live.
    """

    agent: Agent
    buffer: ReplayBuffer
    rng: np.random.Generator
    device: torch.device


class RewardLearner(Stateful, Protocol):
    """The upper level: a reward model fitted to labels, and the reward SAC trains on."""

    def reward_fn(self) -> RewardFn:
        """``(obs [B, ·], act [B, ·]) -> rewards [B]`` on NumPy arrays, for relabelling."""
        ...

    def preference_probs(self, seg1: SegmentBatch, seg2: SegmentBatch) -> Tensor:
        """``[K, N]`` per-member P(σ¹ ≻ σ²) (K = 1 for a single model), for query selection."""
        ...

    def fit(
        self, seg1: SegmentBatch, seg2: SegmentBatch, labels: Tensor, ctx: FitContext
    ) -> dict[str, float]:
        """Train on every labelled pair so far (``labels [N]`` ∈ {0, ½, 1}); returns metrics."""
        ...


class LabelRound(NamedTuple):
    """What a labeller returns for N segment pairs.

    Attributes:
        query_ids: the N pairs' ids in the feedback store.
        labels: ``[N]`` float32, 1 = first preferred, 0 = second, ½ = equal; NaN where skipped.
        keep: ``[N]`` bool, False where the pair got no usable label (skipped, timed out).
    """

    query_ids: list[int]
    labels: Tensor
    keep: Tensor


class Labeller(Stateful, Protocol):
    """Where labels come from: a simulated teacher, or people labelling in the store.

    A labeller records its pairs and labels in the feedback store itself (a simulated teacher
    writes both at once; people write labels through the labelling app while it waits).
    """

    @property
    def name(self) -> str:
        """The labeller name recorded in the feedback store (``teacher:oracle``, ...)."""
        ...

    @property
    def replayable(self) -> bool:
        """True when replaying a step reproduces its labels exactly (a seeded simulated
        teacher): a resumed run then rolls the store back to its checkpoint. False for
        people, whose labels are never deleted."""
        ...

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
        """Record the N pairs as queries in ``store``, get their labels, return them.

        ``mean_segment_return`` is B-Pref's R̄_seg (for the skip/equal thresholds of simulated
        teachers); ``should_stop()`` turns True when the run was asked to stop (a labeller
        that waits returns what it has).
        """
        ...


class QuerySelector(Protocol):
    """Which candidate pairs to ask about."""

    def pool_size(self, n: int) -> int:
        """How many candidate pairs to draw for ``n`` queries."""
        ...

    def select(
        self,
        seg1: SegmentBatch,
        seg2: SegmentBatch,
        learner: RewardLearner,
        n: int,
        rng: np.random.Generator,
        *,
        first_round: bool,
    ) -> tuple[np.ndarray, str]:
        """Indices ``[n]`` into the pool, and the name of the rule that chose them."""
        ...


class FeedbackSchedule(Stateful, Protocol):
    """When to ask, and how much."""

    def due(self, step: int) -> int:
        """Queries to ask at environment step ``step`` (0: none due)."""
        ...

    def consume(self, n: int) -> None:
        """Record that a due round asked ``n`` queries."""
        ...
