"""Simulated teachers that label pairs of candidates from their true returns (B-Pref).

Lee, Smith, Dragan & Abbeel 2021, "B-Pref: Benchmarking Preference-Based Reinforcement
Learning" (arXiv 2111.03026): the simulated teacher with five irrationalities layered on the
perfectly rational oracle (checked against the official code, rll-research/BPref
``reward_model.py:get_label``; see ``docs/preference-rl.md``). One labelling rule covers all
six named teachers; a named teacher is a parameter setting (:class:`TeacherConfig`), and the
irrationalities combine freely.

The rule needs only each candidate's true rewards, so it labels any kind of candidate: a
control segment (per-step rewards ``[H]``) or a language-model completion (one hidden reward,
H = 1). For a pair with true rewards r¹, r² of shape ``[H]``, ``R^i = Σ_t r^i_t``
(undiscounted) and ``R^i_γ = Σ_{t=1..H} γ^{H−t} r^i_t`` (myopic weighting: the last step has
weight 1; with H = 1 the weight is 1 and myopia has no effect). The label y is the
probability that the first candidate is preferred, computed in this order (B-Pref's order):

1. skip     — drop the query when ``max(R¹, R²) ≤ θ_skip`` (undiscounted returns);
2. prefer   — β = ∞: y = 1 if R¹_γ > R²_γ, 0 if R¹_γ < R²_γ, ½ on an exact tie;
              β < ∞: y ~ Bernoulli(σ(β (R¹_γ − R²_γ)))  (β = 0 is a coin flip);
3. mistake  — flip y ↦ 1 − y with probability ε (a tie stays ½);
4. equal    — y = ½ when ``|R¹ − R²| < θ_equal`` (undiscounted returns; overrides 2–3).

Thresholds ``θ_skip = ε_skip · R̄`` and ``θ_equal = ε_equal · R̄`` are computed once, from the
current mean candidate return ``R̄`` (for segments B-Pref's ``R̄_seg``) set by
:meth:`Teacher.update_mean_return`. B-Pref's released ``train_PEBBLE.py`` passes ``R̄_seg · ε``
to setters that multiply by ε again, so after the first feedback round its thresholds are
ε²·R̄_seg; this module applies ε exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from unialign.feedback.types import CompletionPairs, SegmentBatch

__all__ = [
    "TEACHER_KINDS",
    "TeacherConfig",
    "TeacherOutput",
    "Teacher",
    "mean_segment_return",
]

TEACHER_KINDS = ("oracle", "stochastic", "myopic", "mistake", "skip", "equal")


@dataclass(frozen=True)
class TeacherConfig:
    """A simulated B-Pref teacher: which irrationalities it has, and their parameters.

    ``kind`` names one teacher (``oracle``, ``stochastic``, ``myopic``, ``mistake``, ``skip``,
    ``equal``) or joins several with ``+`` (``stochastic+myopic``). A parameter takes effect
    only when its irrationality is named; the defaults are B-Pref's settings (its released run
    scripts: teacher_beta=1, teacher_gamma=0.9, eps=0.1 each).

    Attributes:
        kind: the teacher's name; ``oracle`` is the perfectly rational teacher.
        beta: ``stochastic`` — rationality β ≥ 0 of the Bradley–Terry label model
            (0: coin flip; ``math.inf``: deterministic, the oracle's rule).
        gamma: ``myopic`` — discount γ ∈ (0, 1]; step t of H is weighted γ^{H−t}.
        eps_mistake: ``mistake`` — probability ε ∈ [0, 1] of flipping the label.
        eps_skip: ``skip`` — ε_skip ≥ 0; drop the query when max(R¹, R²) ≤ ε_skip · R̄_seg.
        eps_equal: ``equal`` — ε_equal ≥ 0; label ½ when |R¹ − R²| < ε_equal · R̄_seg.
    """

    kind: str = "oracle"
    beta: float = 1.0
    gamma: float = 0.9
    eps_mistake: float = 0.1
    eps_skip: float = 0.1
    eps_equal: float = 0.1

    def __post_init__(self) -> None:
        for part in self.kind.split("+"):
            if part not in TEACHER_KINDS:
                raise ValueError(
                    f"unknown teacher kind {part!r} in {self.kind!r}; choose from {TEACHER_KINDS} "
                    "or join several with '+'"
                )
        if math.isnan(self.beta) or self.beta < 0:
            raise ValueError(f"beta must be >= 0 (math.inf is deterministic), got {self.beta!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma!r}")
        if not 0 <= self.eps_mistake <= 1:
            raise ValueError(f"eps_mistake must lie in [0, 1], got {self.eps_mistake!r}")
        for name in ("eps_skip", "eps_equal"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def effective(self) -> dict[str, float]:
        """The parameters in force: each un-named irrationality at its neutral value."""
        named = set(self.kind.split("+"))
        return {
            "beta": self.beta if "stochastic" in named else math.inf,
            "gamma": self.gamma if "myopic" in named else 1.0,
            "eps_mistake": self.eps_mistake if "mistake" in named else 0.0,
            "eps_skip": self.eps_skip if "skip" in named else 0.0,
            "eps_equal": self.eps_equal if "equal" in named else 0.0,
        }


class TeacherOutput(NamedTuple):
    """Labels for N queries.

    Attributes:
        labels: ``[N]`` float32, 1 = first candidate preferred, 0 = second, ½ = equal; NaN where
            the query was skipped (so a skipped label cannot be trained on by accident).
        keep: ``[N]`` bool, False where the teacher skipped the query.
    """

    labels: Tensor
    keep: Tensor


def mean_segment_return(
    episode_returns: Sequence[float], episode_length: int, segment_length: int
) -> float:
    """R̄_seg: the mean true return of recent episodes scaled to a segment, ``mean(G) · H / T``.

    B-Pref uses the last 10 training episodes and T = the environment's episode length
    (``max_episode_steps``); the caller picks the window.
    """
    if len(episode_returns) == 0:
        raise ValueError("episode_returns is empty: R̄_seg needs at least one finished episode")
    if episode_length <= 0 or segment_length <= 0:
        raise ValueError("episode_length and segment_length must be > 0")
    return (
        float(np.mean(np.asarray(episode_returns, dtype=np.float64)))
        * segment_length
        / episode_length
    )


@dataclass
class Teacher:
    """A simulated teacher; see the module docstring for the labelling rule.

    ``R̄`` (``segment_return_mean``) starts unset; a teacher whose skip or equal rule is active
    refuses to label until :meth:`update_mean_return` has been called.
    """

    config: TeacherConfig = field(default_factory=TeacherConfig)
    segment_return_mean: float | None = None

    @property
    def name(self) -> str:
        """The labeller name recorded in the feedback store, e.g. ``teacher:oracle``."""
        return f"teacher:{self.config.kind}"

    def update_mean_return(self, value: float) -> None:
        """Set R̄, the typical true return of one candidate, from which the skip and equal
        thresholds follow: for segments R̄_seg (:func:`mean_segment_return`), for completions
        e.g. the mean hidden reward of recent completions."""
        if not math.isfinite(value):
            raise ValueError(f"mean return must be finite, got {value!r}")
        self.segment_return_mean = float(value)

    update_mean_segment_return = update_mean_return  # the segment-specific name

    def thresholds(self) -> tuple[float, float]:
        """``(θ_skip, θ_equal) = (ε_skip · R̄, ε_equal · R̄)`` — ε applied once."""
        p = self.config.effective()
        if p["eps_skip"] == 0 and p["eps_equal"] == 0:
            return 0.0, 0.0
        if self.segment_return_mean is None:
            raise RuntimeError(
                f"{self.name} needs R̄ for its skip/equal thresholds: call "
                "update_mean_return() (update_mean_segment_return()) before labelling"
            )
        return p["eps_skip"] * self.segment_return_mean, p["eps_equal"] * self.segment_return_mean

    def label(
        self, seg1: SegmentBatch, seg2: SegmentBatch, rng: np.random.Generator
    ) -> TeacherOutput:
        """Label N segment pairs from their true per-step rewards."""
        return self.label_rewards(seg1.true_rewards, seg2.true_rewards, rng)

    def label_completions(self, pairs: CompletionPairs, rng: np.random.Generator) -> TeacherOutput:
        """Label N completion pairs from their hidden rewards (scalar returns, H = 1).

        Every pair needs both ``rewards_1`` and ``rewards_2`` (as stored with
        ``FeedbackStore.add_completion_queries(..., rewards_1=, rewards_2=)``).
        """
        if pairs.rewards_1 is None or pairs.rewards_2 is None:
            raise ValueError(
                "a simulated teacher needs the completions' hidden rewards: these pairs have no "
                "rewards_1/rewards_2"
            )
        unknown = torch.isnan(pairs.rewards_1) | torch.isnan(pairs.rewards_2)
        if unknown.any():
            rows = unknown.nonzero().flatten().tolist()
            raise ValueError(
                f"pairs {rows[:10]} have no hidden reward (NaN); a simulated teacher needs "
                "rewards_1 and rewards_2 for every pair"
            )
        return self.label_returns(pairs.rewards_1, pairs.rewards_2, rng)

    def label_rewards(
        self, rewards_1: Tensor, rewards_2: Tensor, rng: np.random.Generator
    ) -> TeacherOutput:
        """Label N pairs given their true per-step rewards, each ``[N, H]``."""
        if rewards_1.dim() != 2 or rewards_1.shape != rewards_2.shape:
            raise ValueError(
                "rewards_1 and rewards_2 must both be [N, H], got "
                f"{tuple(rewards_1.shape)} and {tuple(rewards_2.shape)}"
            )
        return self.label_returns(rewards_1, rewards_2, rng)

    def label_returns(
        self, returns_1: Tensor, returns_2: Tensor, rng: np.random.Generator
    ) -> TeacherOutput:
        """Label N pairs given scalar returns ``[N]`` or per-step rewards ``[N, H]``.

        Scalar returns are candidates with one step (H = 1): the myopic weight γ⁰ = 1 leaves
        them unchanged, so ``myopic`` labels them like the oracle.
        """
        if returns_1.shape != returns_2.shape or returns_1.dim() not in (1, 2):
            raise ValueError(
                "returns_1 and returns_2 must both be [N] (scalar returns) or [N, H] (per-step "
                f"rewards), got {tuple(returns_1.shape)} and {tuple(returns_2.shape)}"
            )
        p = self.config.effective()
        theta_skip, theta_equal = self.thresholds()
        r1 = returns_1.detach().to("cpu", torch.float64).reshape(returns_1.shape[0], -1).numpy()
        r2 = returns_2.detach().to("cpu", torch.float64).reshape(returns_2.shape[0], -1).numpy()
        n, horizon = r1.shape
        ret1, ret2 = r1.sum(axis=1), r2.sum(axis=1)

        # 1. skip, on undiscounted returns
        keep = np.maximum(ret1, ret2) > theta_skip if p["eps_skip"] > 0 else np.ones(n, dtype=bool)
        # 2. preference on myopic returns Σ_t γ^{H−t} r_t (t = 1..H: the last step has weight 1)
        weights = p["gamma"] ** np.arange(horizon - 1, -1, -1, dtype=np.float64)
        diff = (r1 - r2) @ weights
        if math.isinf(p["beta"]):
            labels = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        else:
            prob_first = 0.5 * (1.0 + np.tanh(0.5 * p["beta"] * diff))  # σ(β·diff), no overflow
            labels = (rng.random(n) < prob_first).astype(np.float64)
        # 3. mistake: flip (a ½ stays ½)
        if p["eps_mistake"] > 0:
            labels = np.where(rng.random(n) < p["eps_mistake"], 1.0 - labels, labels)
        # 4. equal, on undiscounted returns; overrides the preference and any mistake
        if p["eps_equal"] > 0:
            labels = np.where(np.abs(ret1 - ret2) < theta_equal, 0.5, labels)

        labels = np.where(keep, labels, np.nan)
        return TeacherOutput(torch.from_numpy(labels).float(), torch.from_numpy(keep))

    def state_dict(self) -> dict[str, float | None]:
        return {"segment_return_mean": self.segment_return_mean}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.segment_return_mean = state["segment_return_mean"]
