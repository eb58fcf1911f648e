"""Which segment pairs to ask about, and when (PEBBLE / B-Pref query selection).

From a candidate pool of M = n × ``pool_factor`` pairs drawn from the replay buffer, pick n:

- ``uniform``: n distinct pairs uniformly at random;
- ``disagreement``: the n pairs with the largest std over members of P_k(σ¹ ≻ σ²)
  (PEBBLE §4.2 "ensemble-based sampling"; population std, as ``np.std`` in PEBBLE's code);
- ``entropy``: the n pairs with the largest binary entropy of the ensemble-mean probability
  P̄ = mean_k P_k(σ¹ ≻ σ²). (PEBBLE's released code averages the members' entropies instead;
  the two agree when the members agree.)

:class:`QuerySchedule` says how many queries to ask at an environment step: ``per_round``
queries every ``interval`` steps from ``start`` on, never more than ``budget`` in total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from unialign.control.types import SegmentBatch

__all__ = ["QUERY_METHODS", "PreferenceModel", "select_queries", "PoolSelector", "QuerySchedule"]

QUERY_METHODS = ("uniform", "disagreement", "entropy")


class PreferenceModel(Protocol):
    """Anything that gives per-member preference probabilities ``[K, N]`` (a RewardEnsemble)."""

    def preference_probs(self, seg1: SegmentBatch, seg2: SegmentBatch) -> Tensor: ...


def _binary_entropy(p: Tensor) -> Tensor:
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def select_queries(
    seg1: SegmentBatch,
    seg2: SegmentBatch,
    ensemble: PreferenceModel,
    n: int,
    method: Literal["uniform", "disagreement", "entropy"],
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices ``[n]`` (int64, into the pool ``seg1``/``seg2``) of the pairs to query.

    Ranked methods return the top n in decreasing score, ties broken by pool order.
    """
    m = len(seg1)
    if len(seg2) != m:
        raise ValueError(f"seg1 has {m} segments but seg2 has {len(seg2)}")
    if not 0 < n <= m:
        raise ValueError(f"cannot select {n} queries from a pool of {m} pairs")
    if method == "uniform":
        return rng.choice(m, size=n, replace=False).astype(np.int64)
    if method not in QUERY_METHODS:
        raise ValueError(f"unknown query selection {method!r}; choose from {QUERY_METHODS}")
    with torch.no_grad():
        probs = ensemble.preference_probs(seg1, seg2).double()  # [K, M]
    score = (
        probs.std(dim=0, unbiased=False)
        if method == "disagreement"
        else _binary_entropy(probs.mean(dim=0))
    )
    order = torch.argsort(-score.cpu(), stable=True)
    return order[:n].numpy().astype(np.int64)


@dataclass(frozen=True)
class PoolSelector:
    """Choose n queries from a pool of ``pool_factor × n`` candidate pairs by ``method``.

    The first round is always ``uniform`` (B-Pref): an untrained ensemble's disagreement is
    noise. Stateless: whether a round is the first comes from the loop (the feedback store).
    """

    method: Literal["uniform", "disagreement", "entropy"] = "disagreement"
    pool_factor: int = 10

    def __post_init__(self) -> None:
        if self.method not in QUERY_METHODS:
            raise ValueError(
                f"unknown query selection {self.method!r}; choose from {QUERY_METHODS}"
            )
        if self.pool_factor < 1:
            raise ValueError(f"pool_factor must be >= 1, got {self.pool_factor}")

    def pool_size(self, n: int) -> int:
        return n * self.pool_factor

    def select(
        self,
        seg1: SegmentBatch,
        seg2: SegmentBatch,
        learner: PreferenceModel,
        n: int,
        rng: np.random.Generator,
        *,
        first_round: bool,
    ) -> tuple[np.ndarray, str]:
        method = "uniform" if first_round else self.method
        return select_queries(seg1, seg2, learner, n, method, rng), method


@dataclass
class QuerySchedule:
    """Feedback rounds of ``per_round`` queries every ``interval`` env steps from ``start``.

    Round r is due at step ``start + r·interval`` (or the first step the loop reaches after
    it). ``due(step)`` reads the state without changing it; after asking, the loop calls
    ``consume(n)``, which counts the queries and moves to the next round. Queries the teacher
    skips still count against ``budget`` (B-Pref counts queries asked, not labels kept).
    """

    budget: int
    per_round: int
    interval: int
    start: int = 0
    asked: int = 0
    rounds: int = 0

    def __post_init__(self) -> None:
        if self.budget < 0 or self.per_round < 1 or self.interval < 1 or self.start < 0:
            raise ValueError(
                "QuerySchedule needs budget >= 0, per_round >= 1, interval >= 1, start >= 0; got "
                f"budget={self.budget}, per_round={self.per_round}, interval={self.interval}, "
                f"start={self.start}"
            )

    @property
    def next_step(self) -> int:
        """The step at which the next round is due."""
        return self.start + self.rounds * self.interval

    def due(self, step: int) -> int:
        """How many queries to ask at ``step`` (0 when no round is due or the budget is spent)."""
        if step < self.next_step:
            return 0
        return min(self.per_round, self.budget - self.asked)

    def consume(self, n: int) -> None:
        """Record that a due round asked ``n`` queries."""
        if n < 0 or self.asked + n > self.budget:
            raise ValueError(
                f"asking {n} more queries would exceed the budget ({self.asked}/{self.budget} used)"
            )
        self.asked += n
        self.rounds += 1

    def state_dict(self) -> dict[str, int]:
        return {"asked": self.asked, "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.asked, self.rounds = int(state["asked"]), int(state["rounds"])
