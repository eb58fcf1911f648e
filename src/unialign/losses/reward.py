"""Reward-model objectives, ensemble aggregation and reward transforms.

The Bradley–Terry family models P(a ≻ b) = σ(R(a) − R(b)). The same objective trains a
language-model reward head on (chosen, rejected) completions and a control reward model on
pairs of trajectory segments (R = segment return Σ_t r̂(s_t, a_t)). The general preference
model drops the scalar reward for an antisymmetric score that can represent cycles.

Aggregations (ensembles, transforms) are not losses: they map reward tensors to a ``[B]``
reward that an RL step or best-of-n selection then optimizes. Formulas, papers and the checks
behind them: ``docs/losses-reward.md``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from unialign.losses._core import (
    LossOutput,
    LossSpec,
    check_dtype,
    check_in_range,
    check_positive,
    check_tensors,
    compute_dtype,
)


def preference_cross_entropy(returns_1: Tensor, returns_2: Tensor, labels: Tensor) -> LossOutput:
    """Bradley–Terry cross-entropy with soft labels, for segment (or response) pairs.

    ``P = σ(R¹ − R²)``; ``L = −[y log P + (1 − y) log(1 − P)]`` with ``y ∈ [0, 1]`` the
    probability that the first item is preferred (1: first wins, 0: second wins, ½: equal).
    Christiano et al. 2017, "Deep RL from Human Preferences" (arXiv 1706.03741), Eq. 1;
    Lee et al. 2021 (PEBBLE, arXiv 2106.05091), Eq. 4.

    Inputs ``[B]``; metrics: ``preference/accuracy`` (1 where the predicted winner matches a
    non-tied label, ½ on ties) and ``preference/prob_first``.
    """
    check_tensors({"returns_1": returns_1, "returns_2": returns_2, "labels": labels})
    if bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("labels must lie in [0, 1] (1: first preferred, 0: second, 0.5: equal)")
    dt = compute_dtype(returns_1)
    z = returns_1.to(dt) - returns_2.to(dt)
    y = labels.to(dt)
    losses = -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z))
    pred = (z > 0).to(dt)
    acc = torch.where(y == 0.5, torch.full_like(y, 0.5), (pred == (y > 0.5).to(dt)).to(dt))
    return LossOutput(
        losses,
        {"preference/accuracy": acc.detach(), "preference/prob_first": torch.sigmoid(z).detach()},
    )


def ensemble_preference_cross_entropy(
    returns_1: Tensor,
    returns_2: Tensor,
    labels: Tensor,
    *,
    member_mask: Tensor | None = None,
) -> LossOutput:
    """The Bradley–Terry loss of an ensemble of K reward models: each member fits its own.

    ``L = Σ_k mean_{n ∈ S_k} CE(R_k(σ¹_n) − R_k(σ²_n), y_n)`` with CE the soft-label
    cross-entropy of :func:`preference_cross_entropy` and ``S_k`` member k's pairs (all N, or
    those selected by ``member_mask``, e.g. bootstrap resamples); a member with no selected pair
    contributes 0. PEBBLE (Lee et al. 2021, arXiv 2106.05091) trains its reward ensemble this
    way; the one copy of this loss in unialign.

    Args:
        returns_1, returns_2: ``[K, N]`` per-member returns of the two items of each pair.
        labels: ``[N]`` (shared by the members) or ``[K, N]`` (per member, when members see
            different minibatches), y ∈ [0, 1] the probability that the first item is preferred.
        member_mask: optional ``[K, N]`` bool or 0/1 selection.

    Returns:
        ``losses`` ``[K]``: member k's mean loss over its pairs, so ``losses.sum()`` is L;
        metrics (detached, ``[K, N]``): ``preference/pair_loss`` (the unmasked CE of every pair
        under every member) and ``preference/accuracy`` (1 where the member's predicted winner
        matches a non-tied label, ½ on ties).
    """
    if returns_1.dim() != 2 or returns_1.shape != returns_2.shape:
        raise ValueError(
            "returns_1 and returns_2 must both be [K, N], got "
            f"{tuple(returns_1.shape)} and {tuple(returns_2.shape)}"
        )
    if labels.shape not in (returns_1.shape[1:], returns_1.shape):
        raise ValueError(
            f"labels must be [N] or [K, N] = {tuple(returns_1.shape)}, got {tuple(labels.shape)}"
        )
    if member_mask is not None and member_mask.shape != returns_1.shape:
        raise ValueError(
            f"member_mask must be [K, N] = {tuple(returns_1.shape)}, got {tuple(member_mask.shape)}"
        )
    y = labels.to(returns_1.device).expand(returns_1.shape)
    out = preference_cross_entropy(returns_1.reshape(-1), returns_2.reshape(-1), y.reshape(-1))
    ce = out.losses.reshape(returns_1.shape)
    acc = out.metrics["preference/accuracy"].reshape(returns_1.shape)
    if member_mask is None:
        losses = ce.mean(dim=1)
    else:
        m = member_mask.to(ce.dtype)
        losses = (ce * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return LossOutput(losses, {"preference/pair_loss": ce.detach(), "preference/accuracy": acc})


def bradley_terry(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: float | Tensor = 0.0,
    centering: float = 0.0,
) -> LossOutput:
    """Bradley–Terry reward-model loss with an optional margin and centering term.

    ``L = −log σ(R_w − R_l − m) + c·(R_w + R_l)²``.

    - m = 0, c = 0: the pairwise ranking loss of Ouyang et al. 2022 (InstructGPT,
      arXiv 2203.02155), Eq. 1, for one pair.
    - margin m ≥ 0 (a float, or a ``[B]`` tensor of per-pair margins from the preference
      rating): Touvron et al. 2023 (Llama 2, arXiv 2307.09288), Eq. 2.
    - centering c ≥ 0: the auxiliary loss (R_w + R_l)² that pulls rewards to mean zero,
      Eisenstein et al. 2023, "Helping or Herding?" (arXiv 2312.09244); 0.01 is the usual value.

    Inputs ``[B]`` rewards. Metrics: ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margins`` (R_w − R_l, without m), ``rewards/accuracies`` (R_w > R_l).
    """
    check_in_range("centering", centering, 0.0, math.inf)
    tensors = {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
    if isinstance(margin, Tensor):
        check_tensors({**tensors, "margin": margin})
        if bool((margin < 0).any()):
            raise ValueError("margin must be ≥ 0 for every pair")
    else:
        check_in_range("margin", margin, 0.0, math.inf)
        check_tensors(tensors)
    dt = compute_dtype(chosen_rewards)
    r_w, r_l = chosen_rewards.to(dt), rejected_rewards.to(dt)
    m = margin.to(dt) if isinstance(margin, Tensor) else margin
    losses = -F.logsigmoid(r_w - r_l - m)
    if centering > 0:
        losses = losses + centering * (r_w + r_l) ** 2
    chosen, rejected = r_w.detach(), r_l.detach()
    return LossOutput(
        losses,
        {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": (chosen > rejected).to(dt),
        },
    )


def _check_stacked(name: str, t: Tensor, *, exact_2d: bool = False) -> None:
    """``t`` is a finite tensor ``[K, ...]`` with K ≥ 1 and at least 2 dims (exactly 2 if asked);
    the 1-D checks of ``check_tensors`` do not apply to stacked inputs."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_dtype(name, t)
    if t.dim() < 2 or (exact_2d and t.dim() != 2) or t.shape[0] == 0:
        want = "2-D" if exact_2d else "at least 2-D ([K, B, ...])"
        raise ValueError(
            f"{name} must be {want} with a non-empty first dimension, got shape {tuple(t.shape)}"
        )
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


def general_preference(
    chosen_embeddings: Tensor, rejected_embeddings: Tensor, *, tau: float = 0.1
) -> LossOutput:
    """General preference model (GPM): ``L = −log σ(s(y_w, y_l)/τ)``.

    ``s(y, y′) = ⟨R v_y, v_y′⟩`` with ``v ∈ ℝ^{2k}`` a preference embedding and ``R`` the
    block-diagonal skew-symmetric operator with k blocks ``[[0, −1], [1, 0]]``, so
    ``s = Σ_l (v_{y,2l} v_{y′,2l+1} − v_{y,2l+1} v_{y′,2l})``. ``s(y, y′) = −s(y′, y)`` and
    ``s(y, y) = 0``; unlike a scalar reward, s can encode cyclic preferences.
    Zhang et al. 2024, "Beyond Bradley-Terry Models: A General Preference Model for Language
    Model Alignment" (arXiv 2410.02197). Prompt-dependent eigenvalues λ_l(x) ≥ 0 fold into
    the embeddings (scale block l of both by √λ_l).

    Inputs ``[B, 2k]``. Metrics: ``preference/score`` (s), ``preference/prob_chosen``
    (σ(s/τ)), ``preference/accuracy`` (s > 0).
    """
    check_positive("tau", tau)
    _check_stacked("chosen_embeddings", chosen_embeddings, exact_2d=True)
    _check_stacked("rejected_embeddings", rejected_embeddings, exact_2d=True)
    if chosen_embeddings.shape != rejected_embeddings.shape:
        raise ValueError(
            f"rejected_embeddings has shape {tuple(rejected_embeddings.shape)} but "
            f"chosen_embeddings has shape {tuple(chosen_embeddings.shape)}"
        )
    if chosen_embeddings.shape[1] % 2:
        raise ValueError(
            f"chosen_embeddings must have an even width 2k, got {chosen_embeddings.shape[1]}"
        )
    dt = compute_dtype(chosen_embeddings)
    v_w = chosen_embeddings.to(dt).unflatten(1, (-1, 2))  # [B, k, 2]
    v_l = rejected_embeddings.to(dt).unflatten(1, (-1, 2))
    score = (v_w[..., 0] * v_l[..., 1] - v_w[..., 1] * v_l[..., 0]).sum(-1)
    losses = -F.logsigmoid(score / tau)
    s = score.detach()
    return LossOutput(
        losses,
        {
            "preference/score": s,
            "preference/prob_chosen": torch.sigmoid(s / tau),
            "preference/accuracy": (s > 0).to(dt),
        },
    )


def aggregate_ensemble(
    rewards: Tensor, *, method: Literal["mean", "min", "uwo"] = "mean", coef: float = 0.1
) -> Tensor:
    """Combine K reward heads ``rewards [K, B]`` into one reward ``[B]`` (any trailing
    shape works: ``[K, ...] → [...]``, e.g. per-step rewards ``[K, B, H]``).

    - ``mean``: R̄ = (1/K) Σ_k R_k.
    - ``min`` (worst-case optimization, WCO): min_k R_k.
    - ``uwo`` (uncertainty-weighted optimization): R̄ − λ·(1/K) Σ_k (R_k − R̄)², the
      **population** variance (divide by K), λ = ``coef`` ≥ 0 (used by ``uwo`` only).

    Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"
    (arXiv 2310.02743). Their released code uses ``np.var`` (population) for best-of-n but
    ``torch.var`` (sample, K − 1) for PPO; to reproduce the PPO runs pass
    ``coef = λ·K/(K − 1)``. See ``docs/losses-reward.md``.
    """
    check_in_range("coef", coef, 0.0, math.inf)
    if method not in ("mean", "min", "uwo"):
        raise ValueError(f"method must be one of 'mean', 'min', 'uwo', got {method!r}")
    _check_stacked("rewards", rewards)
    r = rewards.to(compute_dtype(rewards))
    if method == "min":
        return r.min(dim=0).values
    mean = r.mean(dim=0)
    if method == "mean":
        return mean
    return mean - coef * ((r - mean) ** 2).mean(dim=0)


def ensemble_mean(rewards: Tensor) -> Tensor:
    """Mean of K reward heads, ``[K, B] → [B]`` (see :func:`aggregate_ensemble`)."""
    return aggregate_ensemble(rewards, method="mean")


def ensemble_min(rewards: Tensor) -> Tensor:
    """Worst case over K reward heads, ``[K, B] → [B]`` (see :func:`aggregate_ensemble`)."""
    return aggregate_ensemble(rewards, method="min")


def ensemble_uwo(rewards: Tensor, *, coef: float = 0.1) -> Tensor:
    """Mean − coef·population variance over K heads (see :func:`aggregate_ensemble`)."""
    return aggregate_ensemble(rewards, method="uwo", coef=coef)


def log_sigmoid_transform(rewards: Tensor, reference_rewards: Tensor) -> Tensor:
    """``u = log σ(r(x, y) − r_ref(x))``, inputs and output ``[B]``.

    r_ref(x) is the reward of a reference response to the same prompt. u is the log
    probability (under Bradley–Terry) that y beats the reference: it saturates at 0 for
    rewards far above r_ref, so improving an already-good output earns little.
    Wang et al. 2024, "Transforming and Combining Rewards for Aligning Large Language Models"
    (arXiv 2402.00742).
    """
    check_tensors({"rewards": rewards, "reference_rewards": reference_rewards})
    dt = compute_dtype(rewards)
    return F.logsigmoid(rewards.to(dt) - reference_rewards.to(dt))


def combine_transformed(rewards: Tensor, reference_rewards: Tensor) -> Tensor:
    """``Σ_p log σ(r_p(x, y) − r_ref,p(x))`` over P properties, ``[P, B] → [B]``.

    The sum of transformed rewards is the log probability that y beats the reference on
    every property at once (independent Bradley–Terry events, the "logical AND" of Wang et
    al. 2024, arXiv 2402.00742). Row p of both inputs belongs to property p; trailing shapes
    other than ``[B]`` work too (``[P, ...] → [...]``).
    """
    _check_stacked("rewards", rewards)
    _check_stacked("reference_rewards", reference_rewards)
    if rewards.shape != reference_rewards.shape:
        raise ValueError(
            f"reference_rewards has shape {tuple(reference_rewards.shape)} but rewards has "
            f"shape {tuple(rewards.shape)}; both are [P, B]"
        )
    dt = compute_dtype(rewards)
    return F.logsigmoid(rewards.to(dt) - reference_rewards.to(dt)).sum(dim=0)


_COSTE = "Coste et al. 2023, arXiv 2310.02743"
_WANG = "Wang et al. 2024, arXiv 2402.00742"

SPECS: list[LossSpec] = [
    LossSpec(
        name="bt_soft",
        fn=preference_cross_entropy,
        family="reward",
        kind="reward",
        description="Bradley–Terry cross-entropy with soft labels y ∈ [0,1] on return pairs",
        paper="Christiano et al. 2017, arXiv 1706.03741; Lee et al. 2021 (PEBBLE), arXiv 2106.05091",
    ),
    LossSpec(
        name="bradley_terry",
        fn=bradley_terry,
        family="reward",
        kind="reward",
        description="−log σ(R_w − R_l − m) + c·(R_w + R_l)² (margin m, centering c)",
        paper="Ouyang et al. 2022, arXiv 2203.02155; Touvron et al. 2023, arXiv 2307.09288; "
        "Eisenstein et al. 2023, arXiv 2312.09244",
        hparams={"margin": 0.0, "centering": 0.0},
    ),
    LossSpec(
        name="gpm",
        fn=general_preference,
        family="reward",
        kind="reward",
        description="general preference model: −log σ(⟨R v_w, v_l⟩/τ), R skew-symmetric",
        paper="Zhang et al. 2024, arXiv 2410.02197",
        hparams={"tau": 0.1},
    ),
    LossSpec(
        name="ensemble_mean",
        fn=ensemble_mean,
        family="reward",
        kind="aggregate",
        description="mean of K reward heads [K, B] → [B]",
        paper=_COSTE,
    ),
    LossSpec(
        name="ensemble_min",
        fn=ensemble_min,
        family="reward",
        kind="aggregate",
        description="worst case (min) of K reward heads [K, B] → [B]",
        paper=_COSTE,
    ),
    LossSpec(
        name="ensemble_uwo",
        fn=ensemble_uwo,
        family="reward",
        kind="aggregate",
        description="mean − coef·(population) variance of K reward heads [K, B] → [B]",
        paper=_COSTE,
        hparams={"coef": 0.1},
    ),
    LossSpec(
        name="log_sigmoid_transform",
        fn=log_sigmoid_transform,
        family="reward",
        kind="aggregate",
        description="u = log σ(r − r_ref) against a reference response's reward",
        paper=_WANG,
    ),
    LossSpec(
        name="combine_transformed",
        fn=combine_transformed,
        family="reward",
        kind="aggregate",
        description="Σ_p log σ(r_p − r_ref,p) over properties [P, B] → [B]",
        paper=_WANG,
    ),
]
