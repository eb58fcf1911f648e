"""Policy-gradient objectives: REINFORCE, PPO's clipped surrogate and its GRPO variants, GSPO,
the clipped value loss; and the helpers they consume (RLOO and GRPO advantages, GAE, KL
estimators, the KL-penalized reward).

This is the lower level of RLHF: π_θ maximizes a reward minus a KL penalty to π_ref by (nearly)
on-policy policy gradient. Inputs are per-token tensors of B sampled completions, ``[B, T]``,
with a bool mask of the completion tokens. Positions where the mask is False (padding, prompt,
tool output) never change a value or a gradient, but must hold finite numbers (fill with 0).

- **Objectives** (registry kinds ``policy_gradient`` and ``value``) return a
  :class:`LossOutput` whose per-example losses average (``.mean()``) to the objective: each
  variant's aggregation over tokens is folded into the per-example value, so gradient
  accumulation over micro-batches stays exact. Metrics are per-example and detached.
- **Helpers** (plain functions, not registered) return tensors. Call them on detached inputs or
  under ``torch.no_grad()``; the objectives detach advantages and rewards in any case.

Formulas, papers and what the tests check: ``docs/losses-policy-gradient.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unialign.losses._core import (
    LossOutput,
    LossSpec,
    check_dtype,
    check_in_range,
    check_positive,
    compute_dtype,
    present_tensors,
)

# |log π_θ/π_old| and the log-ratio of k3 are clamped here before exp() so that one extreme token
# cannot overflow the loss (as verl does); e^20 ≈ 4.9e8, far outside any clip range.
MAX_LOG_RATIO = 20.0
KL_ESTIMATORS = ("k1", "k2", "k3")
SCALE_REWARDS = ("group", "batch", "none")
_INF = math.inf


# ---------------------------------------------------------------------------------------------
# Batch containers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutBatch:
    """Per-token inputs of a clipped-surrogate step over B completions padded to T tokens.

    Attributes:
        logps: ``[B, T]`` log π_θ(y_t | x, y_<t) of the sampled tokens under the policy being
            trained (differentiable).
        mask: ``[B, T]`` bool, True on the completion tokens the loss counts.
        advantages: ``[B]`` (one per completion: GRPO, RLOO) or ``[B, T]`` (per token: GAE);
            constants of the surrogate (detached).
        old_logps: ``[B, T]`` log π_old(y_t | ·) under the policy that sampled the batch; ``None``
            means on-policy (π_old = π_θ: ratio 1, only its gradient counts).
        ref_logps: ``[B, T]`` log π_ref(y_t | ·); required when ``kl_coef > 0``, and logged as
            ``pg/kl`` whenever given.
    """

    logps: Tensor
    mask: Tensor
    advantages: Tensor
    old_logps: Tensor | None = None
    ref_logps: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        return present_tensors(self)


@dataclass(frozen=True)
class ReinforceBatch:
    """Inputs of sequence-level REINFORCE.

    Attributes:
        logps: ``[B, T]`` per-token log-probs under π_θ (differentiable).
        mask: ``[B, T]`` bool completion mask.
        rewards: ``[B]`` one scalar reward per completion (already KL-penalized if wanted:
            :func:`kl_penalized_rewards` summed over tokens).
        baseline: ``[B]`` b_i, e.g. :func:`rloo_baseline`; ``None`` uses the batch mean reward.
    """

    logps: Tensor
    mask: Tensor
    rewards: Tensor
    baseline: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        return present_tensors(self)


@dataclass(frozen=True)
class ValueBatch:
    """Inputs of the clipped value loss, all ``[B, T]`` (a control rollout of N steps is
    ``[N, 1]`` with an all-True mask).

    Attributes:
        values: V_φ(s_t), the critic being trained (differentiable).
        old_values: V_φold(s_t) at rollout time.
        returns: the regression targets R_t (e.g. the returns of :func:`gae`).
        mask: bool, True on the steps the loss counts.
    """

    values: Tensor
    old_values: Tensor
    returns: Tensor
    mask: Tensor

    def tensors(self) -> dict[str, Tensor]:
        return present_tensors(self)


# ---------------------------------------------------------------------------------------------
# Validation and masked reductions
# ---------------------------------------------------------------------------------------------


def _check_batch(
    tensors: dict[str, Tensor | None],
    *,
    required: tuple[str, ...],
    sequence: tuple[str, ...] = (),
    either: tuple[str, ...] = (),
) -> tuple[int, int]:
    """Check a batch against its ``mask [B, T]`` and return (B, T); messages name the argument.

    Every present tensor is a real (non-bool, non-complex) finite tensor of shape ``[B, T]``,
    or ``[B]`` if named in ``sequence``, or either if named in ``either``; ``mask`` is bool.
    """
    for name in required:
        if tensors.get(name) is None:
            raise ValueError(f"{name} is required by this objective but was not given")
    present = {k: v for k, v in tensors.items() if v is not None}
    for name, t in present.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_dtype(name, t, boolean=name == "mask")
    mask = present["mask"]
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [B, T], got shape {tuple(mask.shape)}")
    b, t_len = mask.shape
    for name, t in present.items():
        if name == "mask":
            continue
        if name in sequence:
            shapes = [(b,)]
        elif name in either:
            shapes = [(b,), (b, t_len)]
        else:
            shapes = [(b, t_len)]
        if tuple(t.shape) not in shapes:
            want = " or ".join(str(s) for s in shapes)
            raise ValueError(
                f"{name} must have shape {want} to match mask {tuple(mask.shape)}, "
                f"got {tuple(t.shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{name} contains NaN or inf (padding positions must be finite too: fill with 0)"
            )
    return b, t_len


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_clip(epsilon_low: float, epsilon_high: float) -> None:
    check_in_range("epsilon_low", epsilon_low, 0.0, 1.0)
    check_in_range("epsilon_high", epsilon_high, 0.0, _INF)


def _masked_sum(x: Tensor, m: Tensor) -> Tensor:
    """Σ_t over the mask, ``[B, T] → [B]``; masked positions contribute exactly 0 (and no
    gradient), whatever they hold."""
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)


def _seq_mean(x: Tensor, m: Tensor, n: Tensor) -> Tensor:
    """Token mean over each sequence's mask (0 for a sequence without tokens)."""
    return _masked_sum(x, m) / n.clamp_min(1)


# ---------------------------------------------------------------------------------------------
# KL estimators and the KL-penalized reward (helpers)
# ---------------------------------------------------------------------------------------------


def kl_estimate(
    logps: Tensor, ref_logps: Tensor, *, estimator: Literal["k1", "k2", "k3"] = "k3"
) -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from tokens sampled from π_θ (same shape as inputs).

    With u = log r = ℓ_ref − ℓ_θ at each token (r = π_ref/π_θ):

    - ``k1 = −u``: unbiased, high variance, can be negative;
    - ``k2 = u²/2``: low variance, biased (E_θ[k2] is an f-divergence equal to KL to second
      order in log r);
    - ``k3 = (r − 1) − u = e^u − u − 1``: unbiased (E_θ[r] = 1) and ≥ 0.

    Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html). GRPO's
    per-token KL term is k3 (Shao et al. 2024, arXiv 2402.03300). For u > 20 the
    exponential in k3 is evaluated at 20 (``MAX_LOG_RATIO``).
    """
    _check_choice("estimator", estimator, KL_ESTIMATORS)
    for name, t in (("logps", logps), ("ref_logps", ref_logps)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_dtype(name, t)
    if logps.shape != ref_logps.shape:
        raise ValueError(
            f"ref_logps has shape {tuple(ref_logps.shape)} but logps has {tuple(logps.shape)}"
        )
    dt = compute_dtype(logps)
    u = ref_logps.to(dt) - logps.to(dt)
    if estimator == "k1":
        return -u
    if estimator == "k2":
        return 0.5 * u**2
    return torch.exp(u.clamp(max=MAX_LOG_RATIO)) - u - 1


def kl_penalized_rewards(
    scores: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    kl_coef: float,
    estimator: Literal["k1", "k2", "k3"] = "k1",
) -> Tensor:
    """Per-token rewards ``[B, T]``: r_t = −β·k(t) on every completion token, plus the sequence
    score at the last completion token; 0 elsewhere.

    The KL-shaped reward of RLHF with PPO (Ziegler et al. 2019, arXiv 1909.08593; Ouyang et al.
    2022, arXiv 2203.02155): R(x, y) = score(x, y) − β·Σ_t k(t), with k a per-token estimator
    of :func:`kl_estimate` (default k1 = ℓ_θ − ℓ_ref, as in those papers). Feed the result to
    :func:`gae`, or sum it over tokens (``.sum(-1)``) for a sequence-level reward (RLOO,
    REINFORCE). ``logps`` are the sampling policy's log-probs (no grad); β = ``kl_coef`` ≥ 0.
    """
    check_in_range("kl_coef", kl_coef, 0.0, _INF)
    _check_choice("estimator", estimator, KL_ESTIMATORS)
    _check_batch(
        {"scores": scores, "logps": logps, "ref_logps": ref_logps, "mask": mask},
        required=("scores", "logps", "ref_logps", "mask"),
        sequence=("scores",),
    )
    n = mask.sum(-1)
    if bool((n == 0).any()):
        raise ValueError("mask has a completion without tokens: its score has nowhere to go")
    dt = compute_dtype(logps)
    rewards = -kl_coef * kl_estimate(logps, ref_logps, estimator=estimator)
    # the last completion token of each row: the largest index where the mask is True
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(-1).values
    rewards = rewards.scatter_add(1, last[:, None], scores.to(dt)[:, None])
    return torch.where(mask, rewards, torch.zeros((), dtype=dt, device=rewards.device))


# ---------------------------------------------------------------------------------------------
# Advantage estimators (helpers)
# ---------------------------------------------------------------------------------------------


def _groups(rewards: Tensor, group_size: int | None, group_ids: Tensor | None):
    """(group index ``[B]`` in 0..G−1, group counts ``[G]``, G) from exactly one of
    ``group_size`` (consecutive blocks of K, i.e. a ``[G, K]`` reshape) or ``group_ids``."""
    if not isinstance(rewards, Tensor):
        raise ValueError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    check_dtype("rewards", rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if rewards.is_floating_point() and not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contains NaN or inf")
    b = rewards.shape[0]
    if (group_size is None) == (group_ids is None):
        raise ValueError("give exactly one of group_size (consecutive groups) or group_ids")
    if group_size is not None:
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"group_size must be an integer ≥ 1, got {group_size!r}")
        if b % group_size:
            raise ValueError(f"rewards has {b} entries, not a multiple of group_size={group_size}")
        index = torch.arange(b, device=rewards.device) // group_size
    else:
        if not isinstance(group_ids, Tensor) or group_ids.is_floating_point():
            raise ValueError("group_ids must be an integer tensor [B]")
        check_dtype("group_ids", group_ids)
        if group_ids.shape != rewards.shape:
            raise ValueError(
                f"group_ids has shape {tuple(group_ids.shape)} but rewards has {tuple(rewards.shape)}"
            )
        index = torch.unique(group_ids, return_inverse=True)[1]
    g = int(index.max()) + 1 if b else 0
    return index, torch.bincount(index, minlength=g), g


def _group_sum(x: Tensor, index: Tensor, g: int) -> Tensor:
    return x.new_zeros(g).index_add(0, index, x)


def rloo_baseline(
    rewards: Tensor, *, group_size: int | None = None, group_ids: Tensor | None = None
) -> Tensor:
    """Leave-one-out baseline ``b_i = mean_{j≠i} r_j`` over the other samples of i's group, ``[B]``.

    Groups are consecutive blocks of ``group_size`` K (the ``[G, K]`` layout of K samples per
    prompt) or the equal values of ``group_ids [B]``; every group needs ≥ 2 samples. Kool et al.
    2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!" (ICLR workshop); Ahmadian et al.
    2024, "Back to Basics" (arXiv 2402.14740).
    """
    index, counts, g = _groups(rewards, group_size, group_ids)
    if bool((counts < 2).any()):
        raise ValueError("every group needs at least 2 samples for a leave-one-out baseline")
    r = rewards.to(compute_dtype(rewards))
    sums = _group_sum(r, index, g)
    return (sums[index] - r) / (counts[index].to(r.dtype) - 1)


def rloo_advantages(
    rewards: Tensor, *, group_size: int | None = None, group_ids: Tensor | None = None
) -> Tensor:
    """RLOO advantages ``A_i = r_i − mean_{j≠i} r_j = K/(K−1)·(r_i − mean_j r_j)``, ``[B]``.

    See :func:`rloo_baseline` for the groups and papers. Use them with :func:`reinforce` (or
    pass ``baseline=rloo_baseline(...)``), or with a clipped surrogate when updating off-policy.
    """
    r = rewards.to(compute_dtype(rewards)) if isinstance(rewards, Tensor) else rewards
    return r - rloo_baseline(rewards, group_size=group_size, group_ids=group_ids)


def grpo_advantages(
    rewards: Tensor,
    *,
    group_size: int | None = None,
    group_ids: Tensor | None = None,
    scale_rewards: Literal["group", "batch", "none"] = "group",
    eps: float = 1e-4,
) -> Tensor:
    """GRPO's group-relative advantages ``A_i = (r_i − mean_g r) / (std + eps)``, ``[B]``.

    ``scale_rewards``: ``group`` divides by the std of i's group (DeepSeekMath's outcome
    supervision: Shao et al. 2024, arXiv 2402.03300); ``batch`` by the std of all B
    rewards (the mean stays per group); ``none`` does not divide (Dr. GRPO: Liu et al. 2025,
    arXiv 2503.20783, which shows the std scaling biases toward too easy or too hard prompts).
    The std is the sample std (divisor n − 1; 0 for a group of one, whose advantage is 0) and
    eps = 1e-4, as in TRL. Groups as in :func:`rloo_baseline` (a group of 1 is allowed here).
    """
    _check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    check_in_range("eps", eps, 0.0, _INF)
    index, counts, g = _groups(rewards, group_size, group_ids)
    r = rewards.to(compute_dtype(rewards))
    c = counts.to(r.dtype)
    centered = r - (_group_sum(r, index, g) / c)[index]
    if scale_rewards == "none":
        return centered
    if scale_rewards == "group":
        var = _group_sum(centered**2, index, g) / (c - 1).clamp_min(1)
        std = var.sqrt()[index]
    else:
        std = r.std() if r.numel() > 1 else r.new_zeros(())
    return centered / (std + eps)


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    bootstrap_values: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over ``[B, T]`` rewards and values: (advantages, returns).

    ``δ_t = r_t + γ V_{t+1} − V_t``, ``A_t = Σ_l (γλ)^l δ_{t+l} = δ_t + γλ A_{t+1}``,
    ``R_t = A_t + V_t`` (the value targets). Schulman et al. 2015, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation" (arXiv 1506.02438), Eq. 16.

    Masked-out positions are skipped: t + 1 is the row's next masked-in position, so padding or
    tool tokens inside a completion change nothing; they get A = R = 0. After a row's last
    position V = ``bootstrap_values [B]`` (the value of the state after a truncated segment),
    or 0 when ``None`` (the episode ended: an LM completion). λ = 1 gives A_t = G_t − V_t with
    G_t the discounted return; λ = 0 gives the one-step TD error δ_t. γ, λ ∈ [0, 1].
    """
    check_in_range("gamma", gamma, 0.0, 1.0)
    check_in_range("lam", lam, 0.0, 1.0)
    tensors = {"rewards": rewards, "values": values, "mask": mask}
    b, t_len = _check_batch(
        {**tensors, "bootstrap_values": bootstrap_values},
        required=tuple(tensors),
        sequence=("bootstrap_values",),
    )
    dt = compute_dtype(values)
    r, v = rewards.to(dt), values.to(dt)
    next_value = r.new_zeros(b) if bootstrap_values is None else bootstrap_values.to(dt)
    next_adv = r.new_zeros(b)
    zero = r.new_zeros(b)
    advantages = []
    for t in reversed(range(t_len)):
        m = mask[:, t]
        a = r[:, t] + gamma * next_value - v[:, t] + gamma * lam * next_adv
        advantages.append(torch.where(m, a, zero))
        next_adv = torch.where(m, a, next_adv)
        next_value = torch.where(m, v[:, t], next_value)
    adv = torch.stack(advantages[::-1], dim=1) if t_len else r.new_zeros(b, 0)
    return adv, torch.where(mask, adv + v, torch.zeros((), dtype=dt, device=v.device))


# ---------------------------------------------------------------------------------------------
# REINFORCE
# ---------------------------------------------------------------------------------------------


def reinforce(batch: ReinforceBatch) -> LossOutput:
    """REINFORCE with a baseline: ``L_i = −(R_i − b_i)·ℓ_θ(y_i)``, ``ℓ_θ(y_i) = Σ_t log π_θ(y_t)``.

    Its gradient is the score-function estimate −(R − b)∇ℓ_θ(y) (Williams 1992). b_i is the given
    ``baseline`` or, when ``None``, the batch mean reward (which includes R_i itself and so shrinks
    the expected gradient by (B − 1)/B). RLOO is this loss with ``baseline =
    rloo_baseline(rewards, group_size=K)`` (Ahmadian et al. 2024, arXiv 2402.14740).
    Rewards and baseline are constants (detached).

    Metrics: ``pg/advantage_mean`` (R − b), ``pg/baseline`` (b), ``pg/logp`` (ℓ_θ(y)),
    ``pg/tokens`` (completion length).
    """
    _check_batch(
        batch.tensors(),
        required=("logps", "mask", "rewards"),
        sequence=("rewards", "baseline"),
    )
    dt = compute_dtype(batch.logps)
    seq_logp = _masked_sum(batch.logps.to(dt), batch.mask)
    r = batch.rewards.detach().to(dt)
    b = r.mean().expand_as(r) if batch.baseline is None else batch.baseline.detach().to(dt)
    adv = r - b
    return LossOutput(
        -adv * seq_logp,
        {
            "pg/advantage_mean": adv,
            "pg/baseline": b,
            "pg/logp": seq_logp.detach(),
            "pg/tokens": batch.mask.sum(-1).to(dt),
        },
    )


# ---------------------------------------------------------------------------------------------
# Clipped surrogates: PPO, GRPO, Dr. GRPO, DAPO, BNPO (token ratios) and GSPO (sequence ratio)
# ---------------------------------------------------------------------------------------------


def _clip(ratio: Tensor, adv: Tensor, epsilon_low: float, epsilon_high: float):
    """``−min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)·A)`` and where the clip binds (gradient 0)."""
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - epsilon_low, 1 + epsilon_high) * adv)
    low = (ratio < 1 - epsilon_low) & (adv < 0)
    high = (ratio > 1 + epsilon_high) & (adv > 0)
    return loss, low, high


def _prepare(batch: RolloutBatch, kl_coef: float, kl_estimator: str, *, sequence_adv: bool):
    """Validate and return (dtype, logps, old logps, advantages, mask, token counts)."""
    check_in_range("kl_coef", kl_coef, 0.0, _INF)
    _check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    required = ("logps", "mask", "advantages") + (("ref_logps",) if kl_coef > 0 else ())
    _check_batch(
        batch.tensors(),
        required=required,
        sequence=("advantages",) if sequence_adv else (),
        either=() if sequence_adv else ("advantages",),
    )
    dt = compute_dtype(batch.logps)
    logps = batch.logps.to(dt)
    old = logps.detach() if batch.old_logps is None else batch.old_logps.detach().to(dt)
    adv = batch.advantages.detach().to(dt)
    n = batch.mask.sum(-1).to(dt)
    return dt, logps, old, adv, batch.mask, n


def _kl_term(batch, logps, kl_coef, kl_estimator, metrics, mask, n):
    """β·k per token (0 when β = 0), logging ``pg/kl`` whenever π_ref is given."""
    if batch.ref_logps is None:
        return 0.0
    kl = kl_estimate(logps, batch.ref_logps.detach(), estimator=kl_estimator)
    metrics["pg/kl"] = _seq_mean(kl.detach(), mask, n)
    return kl_coef * kl if kl_coef > 0 else 0.0


def _token_surrogate(
    batch: RolloutBatch,
    *,
    epsilon_low: float,
    epsilon_high: float,
    kl_coef: float,
    kl_estimator: str,
    divisor,
) -> LossOutput:
    """``L_i = Σ_t m_it ℓ_it / d_i`` with the per-token clipped loss plus β·KL,
    ``ℓ_it = −min(ρ_it A_it, clip(ρ_it)A_it) + β k_it``, ρ_it = π_θ/π_old at token t, and
    ``d_i = divisor(n)`` from the token counts n ``[B]``: the variants differ only in d."""
    _check_clip(epsilon_low, epsilon_high)
    dt, logps, old, adv, mask, n = _prepare(batch, kl_coef, kl_estimator, sequence_adv=False)
    adv = adv[:, None] if adv.dim() == 1 else adv
    ratio = torch.exp((logps - old).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    per_token, low, high = _clip(ratio, adv, epsilon_low, epsilon_high)
    metrics: dict[str, Tensor] = {}
    per_token = per_token + _kl_term(batch, logps, kl_coef, kl_estimator, metrics, mask, n)
    losses = _masked_sum(per_token, mask) / divisor(n)
    mean = lambda x: _seq_mean(x.detach().to(dt), mask, n)  # noqa: E731
    metrics = {
        "pg/clip_fraction": mean(low | high),
        "pg/clip_low_fraction": mean(low),
        "pg/clip_high_fraction": mean(high),
        "pg/ratio_mean": mean(ratio),
        "pg/advantage_mean": mean(adv.expand_as(ratio)),
        "pg/tokens": n,
        **metrics,
    }
    return LossOutput(losses, metrics)


def _batch_mean_length(n: Tensor) -> Tensor:
    """n̄ = N/B with N = Σ_i n_i ≥ 1 (TRL clamps the token count the same way)."""
    return n.sum().clamp_min(1) / n.numel()


def ppo_clip(
    batch: RolloutBatch,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Literal["k1", "k2", "k3"] = "k3",
) -> LossOutput:
    """PPO's clipped surrogate, averaged over all completion tokens of the batch.

    ``ℓ_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t) + β k_t``, ρ_t = π_θ(y_t)/π_old(y_t);
    the objective is the token mean ``Σ_i Σ_t m ℓ / Σ_i n_i``, so ``L_i = Σ_t m_it ℓ_it / n̄`` with
    n̄ the batch's mean completion length. Schulman et al. 2017, "Proximal Policy Optimization
    Algorithms" (arXiv 1707.06347), Eq. 7 (symmetric ε = ε_low = ε_high); DAPO's clip-higher
    (Yu et al. 2025, arXiv 2503.14476) decouples ε_high > ε_low. The asymmetric range
    only ever binds on the side the advantage's sign selects: ρ > 1 + ε_high with A > 0, and
    ρ < 1 − ε_low with A < 0. Advantages ``[B, T]`` (GAE) or ``[B]``. β = ``kl_coef`` adds the
    KL estimator ``kl_estimator`` to π_ref per token (classic RLHF PPO puts it in the reward
    instead: :func:`kl_penalized_rewards`, β = 0 here).

    Metrics (per sequence, token means): ``pg/clip_fraction`` (clip binding, either side),
    ``pg/clip_low_fraction``, ``pg/clip_high_fraction``, ``pg/ratio_mean``,
    ``pg/advantage_mean``, ``pg/tokens`` (n_i), and ``pg/kl`` when ``ref_logps`` is given.
    """
    return _token_surrogate(
        batch,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        divisor=_batch_mean_length,
    )


def grpo(
    batch: RolloutBatch,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    kl_coef: float = 0.04,
    kl_estimator: Literal["k1", "k2", "k3"] = "k3",
) -> LossOutput:
    """GRPO: the clipped surrogate plus β·k3, averaged over each completion's tokens, then over
    the batch: ``L_i = (1/|y_i|) Σ_t m_it ℓ_it`` with ℓ as in :func:`ppo_clip`.

    Shao et al. 2024, "DeepSeekMath" (arXiv 2402.03300): the GRPO objective with its k3 KL
    term, β = 0.04 as in DeepSeekMath's RL run; advantages from :func:`grpo_advantages`. The 1/|y_i| weighting favours
    short correct and long wrong completions (the length bias Dr. GRPO removes). A completion
    without tokens contributes 0. Metrics as in :func:`ppo_clip`.
    """
    return _token_surrogate(
        batch,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        divisor=lambda n: n.clamp_min(1),
    )


def dr_grpo(
    batch: RolloutBatch,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Literal["k1", "k2", "k3"] = "k3",
    max_completion_length: int = 512,
) -> LossOutput:
    """Dr. GRPO: token sums divided by a constant, ``L_i = (1/L_max) Σ_t m_it ℓ_it``.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"
    (arXiv 2503.20783): dividing by the generation budget L_max =
    ``max_completion_length`` (a constant, not |y_i|) removes GRPO's length bias; pair it with
    ``grpo_advantages(..., scale_rewards="none")`` and β = 0. Every completion must have at most
    L_max tokens. Metrics as in :func:`ppo_clip`.
    """
    if (
        not isinstance(max_completion_length, int)
        or isinstance(max_completion_length, bool)
        or max_completion_length < 1
    ):
        raise ValueError(
            f"max_completion_length must be an integer ≥ 1, got {max_completion_length!r}"
        )
    mask = batch.mask
    if isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.dim() == 2:
        longest = int(mask.sum(-1).max()) if mask.numel() else 0
        if longest > max_completion_length:
            raise ValueError(
                f"mask has a completion of {longest} tokens, more than "
                f"max_completion_length={max_completion_length}"
            )
    return _token_surrogate(
        batch,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        divisor=lambda n: float(max_completion_length),
    )


def dapo(
    batch: RolloutBatch,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    kl_coef: float = 0.0,
    kl_estimator: Literal["k1", "k2", "k3"] = "k3",
    mean_length: float = 0.0,
) -> LossOutput:
    """DAPO: clip-higher and a token-level mean over the whole batch, ``L_i = Σ_t m_it ℓ_it / n̄``.

    Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"
    (arXiv 2503.14476), its token-level policy-gradient loss (every token weighs the same,
    whatever its completion's length) with ε_low = 0.2, ε_high = 0.28 (clip-higher) and no KL
    term. n̄ is the mean completion length Σ_i n_i / B of the **optimizer batch**: pass
    ``mean_length`` when the batch is split into micro-batches (gradient accumulation, several
    processes), so that the mean of the micro-batch means is the global token mean; the default
    0 uses this batch's own n̄ (which is TRL's ``bnpo``, see :func:`bnpo`). Metrics as in
    :func:`ppo_clip`.
    """
    check_in_range("mean_length", mean_length, 0.0, _INF)
    return _token_surrogate(
        batch,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        divisor=(lambda n: mean_length) if mean_length > 0 else _batch_mean_length,
    )


def bnpo(
    batch: RolloutBatch,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: Literal["k1", "k2", "k3"] = "k3",
) -> LossOutput:
    """BNPO as TRL defines it: the token mean over the batch at hand, ``L_i = Σ_t m_it ℓ_it / n̄``
    with n̄ this batch's mean completion length.

    The same per-example losses as :func:`ppo_clip` (and :func:`dapo` with its default
    ``mean_length = 0``); under gradient accumulation each micro-batch is normalized by its own
    token count, so micro-batches with fewer tokens weigh each token more. (TRL's ``loss_type=
    "bnpo"``; the name comes from Xiao et al. 2025, "BNPO: Beta Normalization Policy
    Optimization", arXiv 2506.02864, whose Beta-normalized *advantages* are not implemented
    here.) Metrics as in :func:`ppo_clip`.
    """
    return _token_surrogate(
        batch,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        divisor=_batch_mean_length,
    )


def gspo(
    batch: RolloutBatch,
    *,
    epsilon_low: float = 3e-4,
    epsilon_high: float = 4e-4,
    kl_coef: float = 0.0,
    kl_estimator: Literal["k1", "k2", "k3"] = "k3",
) -> LossOutput:
    """GSPO: the clipped surrogate on a sequence-level importance ratio.

    ``s_i = (π_θ(y_i)/π_old(y_i))^{1/|y_i|} = exp((1/|y_i|) Σ_t m_it (ℓ_θ − ℓ_old))``,
    ``L_i = −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i) + β·(1/|y_i|) Σ_t m_it k_it``.
    Zheng et al. 2025, "Group Sequence Policy Optimization" (arXiv 2507.18071), with
    their clip range ε_low = 3e-4, ε_high = 4e-4; the gradient flows through every token of s_i.
    Advantages must be one per sequence ``[B]``. A completion without tokens contributes 0.
    Metrics as in :func:`ppo_clip`, with ``pg/ratio_mean`` = s_i and the clip fractions 0 or 1.
    """
    _check_clip(epsilon_low, epsilon_high)
    dt, logps, old, adv, mask, n = _prepare(batch, kl_coef, kl_estimator, sequence_adv=True)
    log_s = _seq_mean(logps - old, mask, n).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    s = torch.exp(log_s)
    loss, low, high = _clip(s, adv, epsilon_low, epsilon_high)
    metrics: dict[str, Tensor] = {}
    kl = _kl_term(batch, logps, kl_coef, kl_estimator, metrics, mask, n)
    losses = torch.where(n > 0, loss, torch.zeros((), dtype=dt, device=loss.device))
    if isinstance(kl, Tensor):
        losses = losses + _seq_mean(kl, mask, n)
    metrics = {
        "pg/clip_fraction": (low | high).to(dt),
        "pg/clip_low_fraction": low.to(dt),
        "pg/clip_high_fraction": high.to(dt),
        "pg/ratio_mean": s.detach(),
        "pg/advantage_mean": adv,
        "pg/tokens": n,
        **metrics,
    }
    return LossOutput(losses, metrics)


# ---------------------------------------------------------------------------------------------
# Value loss
# ---------------------------------------------------------------------------------------------


def clipped_value_loss(batch: ValueBatch, *, clip_range: float = 0.2) -> LossOutput:
    """PPO's clipped value loss, averaged over all masked-in steps of the batch.

    ``ℓ_t = ½·max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε_v, ε_v) − R_t)²)``;
    ``L_i = Σ_t m_it ℓ_it / n̄`` (n̄ the batch's mean number of steps per row, so ``.mean()`` is
    the token mean). The clip keeps the critic near its rollout-time values, as the policy's
    ratio clip does (the PPO2 code of OpenAI baselines; CleanRL's ``clip_vloss``).
    ε_v = ``clip_range`` > 0.

    Metrics: ``value/clip_fraction`` (steps where the clipped term is the larger, so the
    gradient is 0), ``value/mean`` (token mean of V), ``value/error`` (token mean of (V − R)²).
    """
    check_positive("clip_range", clip_range)
    _check_batch(batch.tensors(), required=("values", "old_values", "returns", "mask"))
    dt = compute_dtype(batch.values)
    v, ret = batch.values.to(dt), batch.returns.detach().to(dt)
    old = batch.old_values.detach().to(dt)
    clipped = old + (v - old).clamp(-clip_range, clip_range)
    unclipped_sq, clipped_sq = (v - ret) ** 2, (clipped - ret) ** 2
    per_token = 0.5 * torch.maximum(unclipped_sq, clipped_sq)
    mask = batch.mask
    n = mask.sum(-1).to(dt)
    losses = _masked_sum(per_token, mask) / _batch_mean_length(n)
    return LossOutput(
        losses,
        {
            "value/clip_fraction": _seq_mean((clipped_sq > unclipped_sq).to(dt), mask, n),
            "value/mean": _seq_mean(v.detach(), mask, n),
            "value/error": _seq_mean(unclipped_sq.detach(), mask, n),
        },
    )


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_CLIP = {"epsilon_low": 0.2, "epsilon_high": 0.2, "kl_coef": 0.0, "kl_estimator": "k3"}
_FAMILY = "policy-gradient"

SPECS: list[LossSpec] = [
    LossSpec(
        name="reinforce",
        fn=reinforce,
        family=_FAMILY,
        kind="policy_gradient",
        description="−(R − b)·ℓ_θ(y), baseline given (e.g. RLOO's leave-one-out) or the batch mean",
        paper="Williams 1992; Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740",
    ),
    LossSpec(
        name="ppo_clip",
        fn=ppo_clip,
        family=_FAMILY,
        kind="policy_gradient",
        description="−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) per token, token mean over the batch",
        paper="Schulman et al. 2017, arXiv 1707.06347",
        hparams=dict(_CLIP),
    ),
    LossSpec(
        name="grpo",
        fn=grpo,
        family=_FAMILY,
        kind="policy_gradient",
        description="clipped surrogate + β·k3 KL, mean over each completion's tokens, then batch",
        paper="Shao et al. 2024 (DeepSeekMath), arXiv 2402.03300",
        hparams={**_CLIP, "kl_coef": 0.04},
    ),
    LossSpec(
        name="dr_grpo",
        fn=dr_grpo,
        family=_FAMILY,
        kind="policy_gradient",
        description="clipped surrogate, token sums divided by max_completion_length",
        paper="Liu et al. 2025, arXiv 2503.20783",
        hparams={**_CLIP, "max_completion_length": 512},
    ),
    LossSpec(
        name="dapo",
        fn=dapo,
        family=_FAMILY,
        kind="policy_gradient",
        description="clip-higher (ε_high = 0.28), token mean over the whole optimizer batch",
        paper="Yu et al. 2025, arXiv 2503.14476",
        hparams={**_CLIP, "epsilon_high": 0.28, "mean_length": 0.0},
    ),
    LossSpec(
        name="bnpo",
        fn=bnpo,
        family=_FAMILY,
        kind="policy_gradient",
        description="clipped surrogate, token mean over the batch at hand (TRL's bnpo)",
        paper="TRL GRPOTrainer loss_type='bnpo'; Xiao et al. 2025, arXiv 2506.02864",
        hparams=dict(_CLIP),
    ),
    LossSpec(
        name="gspo",
        fn=gspo,
        family=_FAMILY,
        kind="policy_gradient",
        description="clipped surrogate on the sequence ratio exp(mean_t log π_θ/π_old)",
        paper="Zheng et al. 2025, arXiv 2507.18071",
        hparams={**_CLIP, "epsilon_low": 3e-4, "epsilon_high": 4e-4},
    ),
    LossSpec(
        name="ppo_value",
        fn=clipped_value_loss,
        family=_FAMILY,
        kind="value",
        description="½·max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²), token mean",
        paper="Schulman et al. 2017, arXiv 1707.06347 (OpenAI baselines PPO2 value clipping)",
        hparams={"clip_range": 0.2},
    ),
]

__all__ = [
    "RolloutBatch",
    "ReinforceBatch",
    "ValueBatch",
    "MAX_LOG_RATIO",
    "KL_ESTIMATORS",
    "SCALE_REWARDS",
    "kl_estimate",
    "kl_penalized_rewards",
    "rloo_baseline",
    "rloo_advantages",
    "grpo_advantages",
    "gae",
    "reinforce",
    "ppo_clip",
    "grpo",
    "dr_grpo",
    "dapo",
    "bnpo",
    "gspo",
    "clipped_value_loss",
    "SPECS",
]
