"""Game-theoretic objectives for general (not necessarily Bradley–Terry) preferences.

Each iteration t samples completions from the current iterate π_t, a judge labels them, and
π_{t+1} is fitted with one of these losses; the previous iterate π_t plays the role the
fixed reference plays in DPO. Notation: ℓ_θ, ℓ_t, ℓ_ref are per-sequence log-probs under the
policy being trained, the previous iterate and the initial reference; inputs are ``[B]``.
Formulas, papers and what was checked: ``docs/losses-game.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from unialign.losses._core import (
    LossOutput,
    LossSpec,
    PairedLogps,
    check_in_range,
    check_positive,
    check_tensors,
    compute_dtype,
    present_tensors,
)
from unialign.losses.direct import sigmoid


@dataclass(frozen=True)
class SelfPlayLogps:
    """Per-sample SPPO inputs, all ``[B]``; one row per sampled completion y ~ π_t(·|x).

    Attributes:
        policy: ℓ_θ(y|x), differentiable.
        previous: ℓ_t(y|x) under the iterate π_t that generated y (precomputed, no grad).
        win_rate: P̂(y ≻ π_t | x) ∈ [0, 1], the judge's estimated win rate of y against
            π_t's own samples for the same prompt.
    """

    policy: Tensor
    previous: Tensor
    win_rate: Tensor

    def tensors(self) -> dict[str, Tensor]:
        return present_tensors(self)


@dataclass(frozen=True)
class IterateLogps:
    """Preference pairs (y_w, y_l) sampled from π_t, all ``[B]``.

    Attributes:
        policy_chosen: ℓ_θ(y_w|x).
        policy_rejected: ℓ_θ(y_l|x).
        previous_chosen: ℓ_t(y_w|x), the previous iterate.
        previous_rejected: ℓ_t(y_l|x).
        ref_chosen: ℓ_ref(y_w|x), the initial reference; needed by INPO when τ > 0.
        ref_rejected: ℓ_ref(y_l|x).
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    previous_chosen: Tensor
    previous_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        return present_tensors(self)


def sppo(batch: SelfPlayLogps, *, eta: float = 1000.0) -> LossOutput:
    """SPPO: ``L = (ℓ_θ(y) − ℓ_t(y) − η(P̂(y ≻ π_t) − ½))²`` per sampled y.

    The multiplicative-weights step π_{t+1}(y) ∝ π_t(y)·exp(η P(y ≻ π_t)) fitted by squared
    regression, with the log-partition log Z approximated by η/2 (SPPO's Algorithm 1). Wu
    et al. 2024, "Self-Play Preference Optimization for Language Model Alignment"
    (arXiv 2405.00675). The official code writes η = 1/β and averages the terms of the
    chosen and the rejected sample of a pair; pass both samples as rows and average.

    Metrics: ``sppo/log_ratio`` (ℓ_θ − ℓ_t), ``sppo/target`` (η(P̂ − ½)),
    ``sppo/implied_win_rate`` (½ + (ℓ_θ − ℓ_t)/η, the win rate the policy currently encodes).
    """
    check_positive("eta", eta)
    check_tensors(batch.tensors(), required=("policy", "previous", "win_rate"))
    if bool(((batch.win_rate < 0) | (batch.win_rate > 1)).any()):
        raise ValueError("win_rate must lie in [0, 1] for every sample (it is P̂(y ≻ π_t | x))")
    dt = compute_dtype(batch.policy)
    log_ratio = batch.policy.to(dt) - batch.previous.to(dt)
    target = eta * (batch.win_rate.to(dt) - 0.5)
    losses = (log_ratio - target) ** 2
    lr = log_ratio.detach()
    return LossOutput(
        losses,
        {
            "sppo/log_ratio": lr,
            "sppo/target": target.detach(),
            "sppo/implied_win_rate": 0.5 + lr / eta,
        },
    )


def inpo(batch: IterateLogps, *, eta: float = 5.0, tau: float = 0.1) -> LossOutput:
    """INPO: ``L = (h − η/2)²`` on a labelled pair (y_w ≻ y_l) sampled from π_t, where

    ``h = [ℓ_θ(y_w) − ℓ_θ(y_l)] − ητ[ℓ_ref(y_w) − ℓ_ref(y_l)] − (1 − ητ)[ℓ_t(y_w) − ℓ_t(y_l)]``.

    An IPO-like regression whose baseline is the geometric mixture π_t^{1−ητ}·π_ref^{ητ}: its
    minimizer is the online-mirror-descent step π_{t+1} ∝ π_t^{1−ητ} π_ref^{ητ} exp(η P(y ≻ π_t))
    of the KL(τ)-regularized preference game, without estimating win rates. η > 0 is the
    mirror-descent step size, τ ≥ 0 the KL coefficient, ητ ≤ 1. ητ = 1 gives IPO against
    π_ref with β = τ; τ = 0 gives IPO against π_t with β = 1/η.
    Zhang et al. 2024, "Iterative Nash Policy Optimization: Aligning LLMs with General
    Preferences via No-Regret Learning" (arXiv 2407.00617); see the docs for what was checked.

    Metrics: ``rewards/chosen`` = (ℓ_θ(y_w) − b(y_w))/η with b = ητ ℓ_ref + (1 − ητ) ℓ_t (the
    policy's implied win-rate score up to a per-prompt constant), ``rewards/rejected``,
    ``rewards/margins`` = h/η (target ½), ``rewards/accuracies`` (h > 0).
    """
    check_positive("eta", eta)
    check_in_range("tau", tau, 0.0, math.inf)
    if eta * tau > 1:
        raise ValueError(
            f"tau·eta must be ≤ 1 (the baseline π_t^(1−ητ)·π_ref^(ητ) is a geometric mixture), "
            f"got tau={tau!r}, eta={eta!r}"
        )
    required = ("policy_chosen", "policy_rejected", "previous_chosen", "previous_rejected")
    if tau > 0:
        required += ("ref_chosen", "ref_rejected")
    check_tensors(batch.tensors(), required=required)
    dt = compute_dtype(batch.policy_chosen)
    w = eta * tau

    def offset(policy: Tensor, previous: Tensor, ref: Tensor | None) -> Tensor:
        # ℓ_θ − b written as (ℓ_θ − ℓ_t) − ητ(ℓ_ref − ℓ_t), so τ = 0 never touches ℓ_ref
        d = policy.to(dt) - previous.to(dt)
        return d if w == 0 else d - w * (ref.to(dt) - previous.to(dt))

    o_w = offset(batch.policy_chosen, batch.previous_chosen, batch.ref_chosen)
    o_l = offset(batch.policy_rejected, batch.previous_rejected, batch.ref_rejected)
    h = o_w - o_l
    losses = (h - eta / 2) ** 2
    chosen, rejected = (o_w / eta).detach(), (o_l / eta).detach()
    return LossOutput(
        losses,
        {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": (h.detach() > 0).to(dt),
        },
    )


def dno(batch: IterateLogps, *, beta: float = 0.1) -> LossOutput:
    """DNO (practical form): ``L = −log σ(β[(ℓ_θ(y_w) − ℓ_t(y_w)) − (ℓ_θ(y_l) − ℓ_t(y_l))])``.

    The DPO loss with the previous iterate π_t as the reference, on pairs sampled from π_t
    and labelled by a judge (kept only when the judge's margin is large, see
    :func:`dno_filter_pairs`). Rosset et al. 2024, "Direct Nash Optimization: Teaching
    Language Models to Self-Improve with General Preferences" (arXiv 2404.03715), the
    practical algorithm (DNO-Prct). The math is :func:`unialign.losses.direct.sigmoid`'s.

    Metrics: those of ``sigmoid`` with π_t as reference: ``rewards/chosen`` = β(ℓ_θ − ℓ_t)(y_w),
    ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``.
    """
    check_tensors(
        batch.tensors(),
        required=("policy_chosen", "policy_rejected", "previous_chosen", "previous_rejected"),
    )
    return sigmoid(
        PairedLogps(
            batch.policy_chosen,
            batch.policy_rejected,
            ref_chosen=batch.previous_chosen,
            ref_rejected=batch.previous_rejected,
        ),
        beta=beta,
    )


def dno_filter_pairs(win_margins: Tensor, threshold: float) -> Tensor:
    """DNO's large-margin filter: a bool ``[B]`` mask, True where ``win_margins > threshold``.

    ``win_margins`` is the judge's preference margin of each candidate pair (e.g. the score of
    y_w minus that of y_l, or P̂(y_w ≻ y_l) − ½); pairs at or below ``threshold`` ≥ 0 carry
    too little signal and are dropped before :func:`dno` (threshold 0 drops only ties).
    """
    check_in_range("threshold", threshold, 0.0, math.inf)
    check_tensors({"win_margins": win_margins})
    return win_margins > threshold


SPECS: list[LossSpec] = [
    LossSpec(
        name="sppo",
        fn=sppo,
        family="game",
        kind="game",
        description="(ℓ_θ(y) − ℓ_t(y) − η(P̂(y ≻ π_t) − ½))² per sample y ~ π_t",
        paper="Wu et al. 2024, arXiv 2405.00675",
        hparams={"eta": 1000.0},
    ),
    LossSpec(
        name="inpo",
        fn=inpo,
        family="game",
        kind="game",
        description="(h − η/2)², h = pair log-ratio against π_t^(1−ητ)·π_ref^(ητ)",
        paper="Zhang et al. 2024, arXiv 2407.00617",
        hparams={"eta": 5.0, "tau": 0.1},
    ),
    LossSpec(
        name="dno",
        fn=dno,
        family="game",
        kind="game",
        description="DPO loss with the previous iterate π_t as reference (DNO-Prct)",
        paper="Rosset et al. 2024, arXiv 2404.03715",
        hparams={"beta": 0.1},
    ),
]

__all__ = [
    "SelfPlayLogps",
    "IterateLogps",
    "sppo",
    "inpo",
    "dno",
    "dno_filter_pairs",
    "SPECS",
]
