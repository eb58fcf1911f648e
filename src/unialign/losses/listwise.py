"""Listwise and scored-pair direct objectives: MPO, LiPO and CoPG, with their batch types.

MPO and LiPO take :class:`ListwiseLogps` (K scored responses per prompt); CoPG takes
:class:`ScoredPairs` (two completions with scalar rewards). Notation as in
:mod:`unialign.losses.direct` (``docs/losses-direct.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unialign.losses._core import (
    LossOutput,
    LossSpec,
    PairedLogps,
    check_positive,
    check_tensors,
    compute_dtype,
)
from unialign.losses._shared import (
    _INF,
    _check_nonnegative,
    _direct,
    _log_ratios,
    _reward_metrics,
)

# ----------------------------------------------------------------------------------------
# Batch containers for inputs that are not preference pairs
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListwiseLogps:
    """K scored responses per prompt (MPO, LiPO). All tensors ``[B, K]``, K ≥ 2.

    Attributes:
        policy: ℓ_θ(y_k | x), summed over completion tokens.
        ref: ℓ_ref(y_k | x).
        scores: a score per response, higher is better: the reward S_k for MPO, the label
            ψ_k ∈ [0, 1] for LiPO (e.g. the average win rate against the other responses).
    """

    policy: Tensor
    ref: Tensor
    scores: Tensor


@dataclass(frozen=True)
class ScoredPairs:
    """Two independent completions with scalar rewards (CoPG). Tensors ``[B]``.

    CoPG needs no ranking: the ``chosen`` slot of ``logps`` simply holds the first completion
    y and the ``rejected`` slot the second, y′.

    Attributes:
        logps: ℓ_θ and ℓ_ref of y (``*_chosen``) and y′ (``*_rejected``).
        reward_chosen: R(x, y).
        reward_rejected: R(x, y′).
    """

    logps: PairedLogps
    reward_chosen: Tensor
    reward_rejected: Tensor


# ----------------------------------------------------------------------------------------


def _list_log_ratios(batch: ListwiseLogps):
    """(r, scores) ``[B, K]`` in the compute dtype, after validating the batch."""
    named = {"policy": batch.policy, "ref": batch.ref, "scores": batch.scores}
    for name, t in named.items():
        if not isinstance(t, Tensor) or t.dim() != 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must be a [B, K] tensor (K responses per prompt), got {shape}"
            )
        if t.shape != batch.policy.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but policy has {tuple(batch.policy.shape)}"
            )
    if batch.policy.shape[1] < 2:
        raise ValueError(
            f"policy needs K ≥ 2 responses per prompt, got K = {batch.policy.shape[1]}"
        )
    check_tensors({name: t.reshape(-1) for name, t in named.items()})  # finiteness
    dt = compute_dtype(batch.policy)
    return batch.policy.to(dt) - batch.ref.to(dt), batch.scores.to(dt)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def mpo(
    batch: ListwiseLogps, *, beta: float = 0.1, alpha: float = 1.0, deviation: str = "abs"
) -> LossOutput:
    """MPO: a weighted Bradley–Terry contrast of the chosen set against all K responses.

    s_k = β r_k; S̄ = mean_k S_k; Y⁺ = {k: S_k > S̄}, the rest are rejected;
    w_k = exp(α·|S_k − S̄|) (``deviation="abs"``, outliers on both sides weigh more) or
    exp(α(S_k − S̄)) (``"signed"``, the form Gupta et al. restate in REFA, Eq. 5);
    ``L = −log(Σ_{Y⁺} w_k e^{s_k} / Σ_k w_k e^{s_k})``. K = 2, α = 0 gives DPO.
    Gupta et al. 2025, "Multi-Preference Optimization: Generalizing DPO via Set-Level
    Contrasts" (arXiv 2412.04628; v1 titled SWEPO). Metrics: mean β·r over the chosen and
    rejected sets, their margin and whether it is positive.
    """
    check_positive("beta", beta)
    _check_nonnegative("alpha", alpha)
    if deviation not in ("abs", "signed"):
        raise ValueError(f"deviation must be 'abs' or 'signed', got {deviation!r}")
    r, scores = _list_log_ratios(batch)
    dev = scores - scores.mean(dim=1, keepdim=True)
    chosen = dev > 0
    if not bool(chosen.any(dim=1).all()):
        raise ValueError("scores: every list needs a response scored above the list's mean")
    logits = beta * r + alpha * (dev.abs() if deviation == "abs" else dev)
    losses = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~chosen, -_INF), 1)
    rewards = (beta * r).detach()
    pos, neg = chosen.to(r.dtype), (~chosen).to(r.dtype)
    c, rj = _masked_mean(rewards, pos), _masked_mean(rewards, neg)
    metrics = {
        "rewards/chosen": c,
        "rewards/rejected": rj,
        "rewards/margins": c - rj,
        "rewards/accuracies": (c > rj).to(r.dtype),
    }
    return LossOutput(losses, metrics)


def lipo(batch: ListwiseLogps, *, beta: float = 0.05) -> LossOutput:
    """LiPO-λ: Lambda-weighted pairwise logistic loss over K ranked responses.

    s_k = β r_k; ``L = Σ_{ψ_i > ψ_j} Δ_ij log(1 + e^{−(s_i − s_j)})`` with Lambda weight
    Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|, gain G = 2^ψ − 1, discount D(τ) = log₂(1 + τ),
    τ_k the 1-based rank of response k when sorted by s (detached; ties keep list order).
    Labels ψ ∈ [0, 1]. Liu et al. 2024, "LiPO: Listwise Preference Optimization through
    Learning-to-Rank" (arXiv 2402.01878), Eq. 8. Metrics: β·r of the best- and worst-labelled
    response, their margin, and ``rewards/accuracies`` = fraction of labelled pairs ordered
    correctly by s.
    """
    check_positive("beta", beta)
    r, psi = _list_log_ratios(batch)
    if bool(((psi < 0) | (psi > 1)).any()):
        raise ValueError("scores must be LiPO labels in [0, 1]")
    s = beta * r
    with torch.no_grad():
        order = torch.argsort(s, dim=1, descending=True, stable=True)
        positions = torch.arange(1, s.shape[1] + 1, dtype=s.dtype, device=s.device).expand_as(s)
        rank = torch.empty_like(s).scatter_(1, order, positions)
        gain, inv_disc = 2**psi - 1, 1 / torch.log2(1 + rank)
        lam = (gain[:, :, None] - gain[:, None, :]).abs() * (
            inv_disc[:, :, None] - inv_disc[:, None, :]
        ).abs()
        pairs = psi[:, :, None] > psi[:, None, :]
    diff = s[:, :, None] - s[:, None, :]  # diff[b, i, j] = s_i − s_j
    losses = (lam * F.softplus(-diff) * pairs).sum(dim=(1, 2))
    rewards = s.detach()
    best = rewards.gather(1, psi.argmax(1, keepdim=True)).squeeze(1)
    worst = rewards.gather(1, psi.argmin(1, keepdim=True)).squeeze(1)
    n_pairs = pairs.sum(dim=(1, 2)).clamp(min=1).to(s.dtype)
    metrics = {
        "rewards/chosen": best,
        "rewards/rejected": worst,
        "rewards/margins": best - worst,
        "rewards/accuracies": ((diff.detach() > 0) & pairs).sum(dim=(1, 2)).to(s.dtype) / n_pairs,
    }
    return LossOutput(losses, metrics)


def copg(batch: ScoredPairs, *, beta: float = 0.1) -> LossOutput:
    """CoPG: contrastive off-policy policy gradient on two scored completions.

    With R^π_{β/2}(y) = R(y) − (β/2)·r(y), the paper maximizes
    ℓ = (R^π_{β/2}(y) − R^π_{β/2}(y′))·r(y) + (R^π_{β/2}(y′) − R^π_{β/2}(y))·r(y′); we
    minimize ``L = −ℓ = (β/2)(r − r′)² − (R − R′)(r − r′)``, whose gradient is
    −(R^π_β(y) − R^π_β(y′))∇(log π(y) − log π(y′)). With R − R′ = ½ this is the IPO gradient
    scaled by β/2. Flet-Berliac et al. 2024, "Contrastive Policy Gradient" (arXiv
    2406.19185), Eqs. 7–9, 17–19. Metrics: β·r of both, their margin,
    ``rewards/target_margins`` (R − R′) and ``rewards/accuracies`` (the margin has the sign
    of R − R′).
    """
    check_positive("beta", beta)
    if not isinstance(batch, ScoredPairs):
        raise ValueError(f"copg takes a ScoredPairs batch, got {type(batch).__name__}")
    r, r_other = _log_ratios(batch.logps)
    check_tensors(
        {
            "policy_chosen": batch.logps.policy_chosen,
            "reward_chosen": batch.reward_chosen,
            "reward_rejected": batch.reward_rejected,
        }
    )
    target = batch.reward_chosen.to(r.dtype) - batch.reward_rejected.to(r.dtype)
    a = r - r_other
    losses = 0.5 * beta * a**2 - target * a
    metrics = _reward_metrics(beta, r, r_other)
    metrics["rewards/target_margins"] = target.detach()
    metrics["rewards/accuracies"] = (a.detach() * target.detach() > 0).to(r.dtype)
    return LossOutput(losses, metrics)


SPECS: list[LossSpec] = [
    _direct(
        name="mpo",
        fn=mpo,
        kind="listwise",
        description="MPO: weighted BT of the chosen set vs all K responses",
        paper="Gupta et al. 2025, arXiv 2412.04628",
        hparams={"beta": 0.1, "alpha": 1.0, "deviation": "abs"},
    ),
    _direct(
        name="lipo",
        fn=lipo,
        kind="listwise",
        description="LiPO-λ: Lambda-weighted pairwise logistic over K ranked",
        paper="Liu et al. 2024, arXiv 2402.01878",
        hparams={"beta": 0.05},
    ),
    _direct(
        name="copg",
        fn=copg,
        kind="scored_pairs",
        description="CoPG: off-policy contrastive PG on two scored samples",
        paper="Flet-Berliac et al. 2024, arXiv 2406.19185",
        hparams={"beta": 0.1},
    ),
]
