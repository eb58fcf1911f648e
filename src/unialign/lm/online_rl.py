"""Policy-gradient (RLHF) methods of the online loop: REINFORCE, RLOO, GRPO (and its loss
variants) and PPO with a value head.

They are rows of :data:`~unialign.lm.online_methods.METHODS` with a
:class:`~unialign.lm.online_methods.RolloutRule`; phases 1–4 of the loop are shared (the judge
must score: its score is the reward), and phases 5–6 are this module's:

5. **rollout** (:func:`collect_rollout`) — once, before any update, without grad and in eval
   mode, on the same micro-batches (the same packing) as the update's first pass: per-token
   log-probs of the sampling policy (ℓ_old), of the reference (ℓ_ref, when a KL term or
   penalty needs it) and, for PPO, the value head's V_old; then the training targets
   (:func:`rollout_targets`): the reward (the score, minus β·Σ_t k_t with ``kl_penalty``), the
   baseline or advantages, and PPO's GAE returns. The ℓ_old pass is **deferred** when nothing
   before the update needs ℓ_old (no KL penalty, no value head), the first optimizer step holds
   every example (one step per epoch) and the policy has no dropout: the first step's forward
   then runs at exactly the sampling weights, so its detached log-probs *are* ℓ_old (the ratio
   is exactly 1 there, as TRL's GRPO assumes with ``num_iterations = 1``), and one forward per
   iteration is saved (:func:`defers_old_logps`).
6. **update** (:func:`update_rollout`) — ``update_epochs × updates_per_epoch`` AdamW steps over
   the N samples; each micro-batch computes per-token ℓ_θ (and V_φ) in one forward, builds the
   objective's typed batch (:class:`~unialign.losses.policy_gradient.ReinforceBatch`,
   :class:`~unialign.losses.policy_gradient.RolloutBatch`,
   :class:`~unialign.losses.policy_gradient.ValueBatch`) and backpropagates
   Σ_i loss_i / G (G = the step's samples): exact accumulation, as in the rest of the loop.
   Objectives that average tokens over "the batch" (``ppo_clip``, ``ppo_value``, ``dapo``) are
   given the *step's* mean completion length, so micro-batching never changes a step; ``bnpo``
   is by definition the token mean of the micro-batch at hand (TRL's meaning) and so depends
   on ``micro_batch_size``.

Every target is a function of the iteration's whole rollout (group baselines, whitening) and is
computed once, so no micro-batch sees a statistic of its own. Formulas, papers and metrics:
``docs/lm-online.md``; the objectives: ``docs/losses-policy-gradient.md``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unialign.config import ConfigError
from unialign.lm.generation import Generations
from unialign.lm.online_methods import Examples, OnlineMethod, RolloutRule
from unialign.lm.online_rewards import is_score_judge
from unialign.lm.online_update import UpdateResult, _frozen
from unialign.lm.packing import unwrap_model
from unialign.lm.value_head import (
    attach_value_head,
    detach_value_head,
    save_value_head,
    token_outputs,
    value_head_of,
)
from unialign.losses import LossSpec
from unialign.losses.policy_gradient import (
    ReinforceBatch,
    RolloutBatch,
    ValueBatch,
    clipped_value_loss,
    gae,
    grpo_advantages,
    kl_estimate,
    kl_penalized_rewards,
    rloo_baseline,
)

__all__ = [
    "RolloutSettings",
    "Targets",
    "Rollout",
    "RolloutUpdateResult",
    "check_judge",
    "rollout_targets",
    "defers_old_logps",
    "collect_rollout",
    "update_rollout",
    "prepare_policy",
    "finish_policy",
]

#: Objectives whose per-example loss divides a token sum by the batch's mean length: the update
#: rescales them to the optimizer step's mean length (exact accumulation).
_BATCH_TOKEN_MEAN = ("ppo_clip",)


# ---------------------------------------------------------------------------------------------
# settings (plain arguments, computed from the config in one place)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutSettings:
    """What phases 5–6 need, as plain values.

    Attributes:
        rule: the method's :class:`RolloutRule`.
        objective: the policy objective; ``params`` its keyword hyperparameters.
        group_size: K, samples per prompt (the groups of RLOO and GRPO).
        scale_rewards: GRPO's std scaling (``group``, ``batch``, ``none``).
        kl_penalty: ``none`` or the estimator (k1, k2, k3) of the per-token KL subtracted from
            the reward; ``kl_penalty_coef`` its β.
        use_reference: ℓ_ref is computed (a KL loss term or penalty needs it).
        gamma, lam: GAE's discount and λ (PPO).
        value_coef, value_clip: weight of the value loss and its clip range ε_v (PPO).
        whiten_advantages: PPO's advantages normalized over all completion tokens.
    """

    rule: RolloutRule
    objective: LossSpec
    params: dict[str, Any]
    group_size: int
    scale_rewards: str = "group"
    kl_penalty: str = "none"
    kl_penalty_coef: float = 0.0
    use_reference: bool = False
    gamma: float = 1.0
    lam: float = 0.95
    value_coef: float = 0.1
    value_clip: float = 0.2
    whiten_advantages: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> RolloutSettings:
        """From a validated :class:`~unialign.lm.online_config.LMOnlineConfig`."""
        method: OnlineMethod = cfg.online_method
        if method.rollout is None:
            raise ValueError(f"method {cfg.method!r} is not a policy-gradient method")
        params = dict(cfg.resolved_params())
        if cfg.objective.name == "dr_grpo" and "max_completion_length" not in cfg.loss_params:
            params["max_completion_length"] = cfg.max_new_tokens  # L_max = the budget
        return cls(
            rule=method.rollout, objective=cfg.objective, params=params,
            group_size=cfg.num_samples, scale_rewards=cfg.scale_rewards,
            kl_penalty=cfg.kl_penalty, kl_penalty_coef=cfg.kl_penalty_coef,
            use_reference=cfg.needs_reference, gamma=cfg.gamma, lam=cfg.lam,
            value_coef=cfg.value_coef, value_clip=cfg.value_clip,
            whiten_advantages=cfg.whiten_advantages,
        )  # fmt: skip


def check_judge(method: str, judge: Any) -> None:
    """A policy-gradient method needs a ScoreJudge: a :class:`ConfigError` naming ``judge``."""
    if not is_score_judge(judge):
        raise ConfigError(
            f"judge: method {method} needs a ScoreJudge (one reward per sample), but "
            f"{getattr(judge, 'name', type(judge).__name__)!r} is a PairJudge (it only compares "
            "pairs); use a reward function or reward model, or judges: [...]"
        )


# ---------------------------------------------------------------------------------------------
# training targets (pure; hand-worked tests in tests/lm/test_online_rl.py)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Targets:
    """What the update regresses on, for N samples padded to T tokens.

    Attributes:
        rewards: ``[N]`` the sequence reward R_i (the score minus β·Σ_t k_t with a KL penalty).
        baseline: ``[N]`` b_i (REINFORCE, RLOO), else ``None``.
        advantages: ``[N]`` (REINFORCE/RLOO: R − b; GRPO) or ``[N, T]`` (PPO, whitened if set).
        returns: ``[N, T]`` PPO's value targets (GAE advantages + V_old, before whitening).
        token_rewards: ``[N, T]`` PPO's per-token rewards (−β·k_t, plus the score at the last).
    """

    rewards: Tensor
    advantages: Tensor
    baseline: Tensor | None = None
    returns: Tensor | None = None
    token_rewards: Tensor | None = None


def _masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean)/(std + eps) over the masked entries (population std); 0 elsewhere."""
    v = x[mask]
    if v.numel() < 2:
        return torch.where(mask, x - (v.mean() if v.numel() else 0.0), 0.0)
    mean, std = v.mean(), v.std(unbiased=False)
    return torch.where(mask, (x - mean) / (std + eps), torch.zeros((), dtype=x.dtype))


def rollout_targets(
    rule: RolloutRule,
    scores: Tensor,
    mask: Tensor,
    *,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    old_values: Tensor | None = None,
    group_size: int,
    scale_rewards: str = "group",
    kl_penalty: str = "none",
    kl_penalty_coef: float = 0.0,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten_advantages: bool = True,
) -> Targets:
    """The training targets of one iteration's N = P·K samples (``scores [N]``, sample k of
    prompt p at p·K + k; ``mask [N, T]``; per-token ``old_logps``, ``ref_logps``,
    ``old_values [N, T]``).

    - KL penalty (``kl_penalty`` k1/k2/k3, β = ``kl_penalty_coef`` > 0): per-token rewards
      r_t = −β·k_t(ℓ_old, ℓ_ref), the score added at the last token
      (:func:`~unialign.losses.policy_gradient.kl_penalized_rewards`); R_i = Σ_t r_t.
    - ``mean_baseline``: b_i = mean_j R_j over all N samples; advantage R_i − b_i.
    - ``rloo``: b_i = mean_{j≠i} R_j in i's group (:func:`~.rloo_baseline`).
    - ``group``: A_i = (R_i − mean_g R)/(std_g R + 1e-4) (``scale_rewards``,
      :func:`~.grpo_advantages`).
    - ``gae``: δ_t = r_t + γV_old,t+1 − V_old,t, A_t = Σ_l (γλ)^l δ_{t+l}, returns A_t + V_old,t
      (:func:`~.gae`); the advantages then whitened over all completion tokens.
    """
    dt = torch.float64 if scores.dtype == torch.float64 else torch.float32
    s = scores.to(dt)
    penalized = kl_penalty != "none" and kl_penalty_coef > 0
    if penalized and (old_logps is None or ref_logps is None):
        raise ValueError("a KL penalty needs old_logps and ref_logps")
    token_rewards = None
    if penalized or rule.advantage == "gae":
        lp = old_logps.to(dt) if old_logps is not None else torch.zeros(mask.shape, dtype=dt)
        token_rewards = kl_penalized_rewards(
            s, lp, ref_logps.to(dt) if penalized else lp, mask,
            kl_coef=kl_penalty_coef if penalized else 0.0,
            estimator=kl_penalty if penalized else "k1",
        )  # fmt: skip
        rewards = token_rewards.sum(-1)
    else:
        rewards = s
    if rule.advantage == "mean_baseline":
        baseline = rewards.mean().expand_as(rewards).clone()
        return Targets(rewards, rewards - baseline, baseline)
    if rule.advantage == "rloo":
        baseline = rloo_baseline(rewards, group_size=group_size)
        return Targets(rewards, rewards - baseline, baseline)
    if rule.advantage == "group":
        adv = grpo_advantages(rewards, group_size=group_size, scale_rewards=scale_rewards)
        return Targets(rewards, adv)
    if rule.advantage == "gae":
        if old_values is None:
            raise ValueError("gae needs old_values")
        adv, returns = gae(token_rewards, old_values.to(dt), mask, gamma=gamma, lam=lam)
        if whiten_advantages:
            adv = _masked_whiten(adv, mask)
        return Targets(rewards, adv, None, returns, token_rewards)
    raise ValueError(f"unknown advantage rule {rule.advantage!r}")


# ---------------------------------------------------------------------------------------------
# phase 5: the rollout
# ---------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One iteration's rollout over its N samples (rows = sample index), padded to T tokens.

    Attributes:
        mask: ``[N, T]`` bool completion tokens.
        old_logps: ``[N, T]`` ℓ_old per token (the policy that sampled).
        ref_logps: ``[N, T]`` ℓ_ref per token, or ``None``.
        old_values: ``[N, T]`` V_old (PPO), or ``None``.
        targets: :class:`Targets`.
        previous, reference: ``[N]`` summed ℓ_old and ℓ_ref (NaN when not computed), what the
            loop's ``IterationRecord`` and metrics hold.
        metrics: the rollout's diagnostics (``rl/*``).
        deferred: ℓ_old was not computed here (:func:`defers_old_logps`): ``old_logps`` and
            ``previous`` hold NaN until :func:`update_rollout`'s first step writes them in
            place (the detached log-probs of its forward, at the sampling weights), and the
            ``rl/*`` metrics are computed then.
    """

    mask: Tensor
    old_logps: Tensor
    ref_logps: Tensor | None
    old_values: Tensor | None
    targets: Targets
    previous: Tensor
    reference: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    deferred: bool = False


def _has_dropout(model: torch.nn.Module) -> bool:
    """A dropout module with p > 0, or a ``*dropout*`` / ``*pdrop*`` rate > 0 in the model's
    config (attention dropout is applied functionally in transformers' models)."""
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0
           for m in model.modules()):  # fmt: skip
        return True
    config = getattr(unwrap_model(model), "config", None)
    values = config.to_dict() if hasattr(config, "to_dict") else {}
    return any(("dropout" in k or "pdrop" in k) and isinstance(v, int | float) and v > 0
               for k, v in values.items())  # fmt: skip


def defers_old_logps(
    policy: torch.nn.Module, settings: RolloutSettings, first_pass: list[list[list[int]]]
) -> bool:
    """Whether :func:`collect_rollout` may skip the ℓ_old pass: no KL penalty and no value head
    (the targets need nothing of the sampling policy), one optimizer step in the first pass
    (it holds every example, so all of ℓ_old is written before the weights first change) and
    no dropout (the update's train-mode forward equals the eval-mode one)."""
    penalized = settings.kl_penalty != "none" and settings.kl_penalty_coef > 0
    return (
        not penalized
        and not settings.rule.value_head
        and len(first_pass) == 1
        and not _has_dropout(policy)
    )


def collect_rollout(
    policy: torch.nn.Module,
    reference_model: torch.nn.Module | None,
    gens: Generations,
    examples: Examples,
    first_pass: list[list[list[int]]],
    settings: RolloutSettings,
    **logps_kw: Any,
) -> Rollout:
    """Phase 5 (module docstring): per-token ℓ_old (and V_old) under ``policy`` before any
    update, ℓ_ref under ``reference_model`` (or the LoRA policy with its adapter disabled),
    on the micro-batches of the update's first pass; then :func:`rollout_targets`. ℓ_old is
    left to the update when :func:`defers_old_logps` allows it (``Rollout.deferred``)."""
    device = next(policy.parameters()).device
    n = len(gens)
    width = max((len(c) for c in gens.completion_ids), default=0)
    deferred = defers_old_logps(policy, settings, first_pass)
    lengths = torch.tensor([len(c) for c in gens.completion_ids], device=device)
    mask = torch.zeros(n, width, dtype=torch.bool, device=device)
    old = torch.full((n, width), math.nan if deferred else 0.0, device=device)
    ref = torch.zeros(n, width, device=device) if settings.use_reference else None
    head = value_head_of(policy) if settings.rule.value_head else None
    values = torch.zeros(n, width, device=device) if head is not None else None
    for mb in (mb for step in first_pass for mb in step):
        ids = examples.take(mb).chosen.tolist()
        rows = torch.tensor(ids, device=device)
        if deferred:  # the completion tokens, as token_outputs would mark them
            mask[rows] = torch.arange(width, device=device)[None, :] < lengths[rows, None]
        else:
            with _frozen(policy):
                out = token_outputs(policy, gens, ids, width=width, value_head=head, **logps_kw)
            mask[rows], old[rows] = out.mask.to(device), out.logps.to(device)
            if values is not None:
                values[rows] = out.values.to(device)
        if ref is not None:
            model = reference_model if reference_model is not None else policy
            with _frozen(model, adapter_off=reference_model is None):
                ref[rows] = token_outputs(model, gens, ids, width=width, **logps_kw).logps.to(
                    device
                )
    scores = torch.full((n,), math.nan, dtype=torch.float64)
    scores[examples.chosen] = examples.target.to(torch.float64)
    targets = rollout_targets(
        settings.rule, scores.to(device), mask, old_logps=old, ref_logps=ref, old_values=values,
        group_size=settings.group_size, scale_rewards=settings.scale_rewards,
        kl_penalty=settings.kl_penalty, kl_penalty_coef=settings.kl_penalty_coef,
        gamma=settings.gamma, lam=settings.lam, whiten_advantages=settings.whiten_advantages,
    )  # fmt: skip
    zero = torch.zeros((), device=device)
    previous = (torch.full((n,), math.nan, device=device) if deferred
                else torch.where(mask, old, zero).sum(-1))  # fmt: skip
    reference = (torch.where(mask, ref, zero).sum(-1) if ref is not None
                 else torch.full((n,), math.nan, device=device))  # fmt: skip
    metrics = {} if deferred else _rollout_metrics(settings, targets, mask, old, ref, values)
    return Rollout(mask, old, ref, values, targets, previous, reference, metrics, deferred)


def _rollout_metrics(settings, t: Targets, mask, old, ref, values) -> dict[str, float]:
    m: dict[str, float] = {"rl/reward": float(t.rewards.mean())}
    adv = t.advantages[mask] if t.advantages.dim() == 2 else t.advantages
    m["rl/advantage_mean"] = float(adv.mean())
    m["rl/advantage_std"] = float(adv.std()) if adv.numel() > 1 else 0.0
    if ref is not None:  # the sampling policy's KL to the reference, k1 summed over tokens
        k = kl_estimate(old, ref, estimator="k1")
        m["rl/kl"] = float(torch.where(mask, k, 0.0).sum(-1).mean())
    if values is not None and t.returns is not None:
        ret, v = t.returns[mask], values[mask]
        m["rl/return"] = float(ret.mean())
        m["rl/value"] = float(v.mean())
        var = ret.var(unbiased=False)
        m["rl/explained_variance"] = float(1 - (ret - v).var(unbiased=False) / var) if float(
            var) > 0 else math.nan  # fmt: skip
    return m


# ---------------------------------------------------------------------------------------------
# phase 6: the update
# ---------------------------------------------------------------------------------------------
@dataclass
class RolloutUpdateResult(UpdateResult):
    """:class:`~unialign.lm.online_update.UpdateResult` plus each optimizer step's means
    (``steps[s]``: ``loss/total`` and, for PPO, ``loss/value``, ``value/error``)."""

    steps: list[dict[str, float]] = field(default_factory=list)


def _mean_length(mask: Tensor) -> Tensor:
    """n̄ = Σ_i n_i / B (≥ 1 token in all), as the objectives compute it."""
    return mask.sum(-1).sum().clamp_min(1).to(torch.float32) / max(1, mask.shape[0])


def _micro_batch_loss(
    settings: RolloutSettings,
    out: Any,
    rows: Tensor,
    rollout: Rollout,
    step_mean_length: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example losses ``[U]`` of one micro-batch and their detached metrics."""
    t, mask = rollout.targets, rollout.mask[rows]
    params = dict(settings.params)
    spec = settings.objective
    if settings.rule.advantage in ("mean_baseline", "rloo"):
        res = spec.fn(ReinforceBatch(out.logps, mask, t.rewards[rows], t.baseline[rows]), **params)
        return res.losses, {"loss/total": res.losses.detach(), **res.metrics}
    if spec.name == "dapo" and not params.get("mean_length"):
        params["mean_length"] = float(step_mean_length)  # DAPO: the optimizer batch's token mean
    ref = rollout.ref_logps[rows] if rollout.ref_logps is not None else None
    batch = RolloutBatch(out.logps, mask, t.advantages[rows], rollout.old_logps[rows], ref)
    res = spec.fn(batch, **params)
    losses, metrics = res.losses, dict(res.metrics)
    rescale = _mean_length(mask) / step_mean_length  # token mean over the step, not the micro
    if spec.name in _BATCH_TOKEN_MEAN:
        losses = losses * rescale
    if settings.rule.value_head:
        vb = ValueBatch(out.values, rollout.old_values[rows], t.returns[rows], mask)
        v = clipped_value_loss(vb, clip_range=settings.value_clip)
        value_losses = v.losses * rescale
        metrics.update(v.metrics)
        metrics["loss/policy"] = losses.detach()
        metrics["loss/value"] = value_losses.detach()
        losses = losses + settings.value_coef * value_losses
    metrics["loss/total"] = losses.detach()
    return losses, metrics


def update_rollout(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    gens: Generations,
    examples: Examples,
    plan: list[list[list[int]]],
    rollout: Rollout,
    settings: RolloutSettings,
    *,
    max_grad_norm: float | None,
    **logps_kw: Any,
) -> RolloutUpdateResult:
    """Phase 6 (module docstring): the steps of ``plan``, each with exact accumulation over its
    micro-batches; an empty step only moves the schedule. Metrics are per-example means over
    all passes, plus the rollout's ``rl/*``."""
    t0 = time.perf_counter()
    policy.train()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    head = value_head_of(policy) if settings.rule.value_head else None
    device = rollout.mask.device
    width = rollout.mask.shape[1]
    per_example: dict[str, list[Tensor]] = {}
    steps: list[dict[str, float]] = []
    tokens, grad_norm, lr = 0, None, scheduler.get_last_lr()[0]
    for s, micro_batches in enumerate(plan):
        size = sum(len(mb) for mb in micro_batches)
        lr = scheduler.get_last_lr()[0]
        all_rows = [examples.chosen[i] for mb in micro_batches for i in mb]
        step_mean = _mean_length(rollout.mask[torch.stack(all_rows).to(device)]) if size else None
        step_metrics: dict[str, list[Tensor]] = {}
        for mb in micro_batches:
            ids = examples.take(mb).chosen.tolist()
            rows = torch.tensor(ids, device=device)
            out = token_outputs(policy, gens, ids, width=width, value_head=head, **logps_kw)
            if rollout.deferred and s == 0:  # the sampling weights: these are ℓ_old
                rollout.old_logps[rows] = out.logps.detach().to(device)
            losses, metrics = _micro_batch_loss(settings, out, rows, rollout, step_mean)
            (losses.sum() / size).backward()
            tokens += out.tokens
            for k, v in metrics.items():
                v = v.detach().float().cpu()
                per_example.setdefault(k, []).append(v)
                step_metrics.setdefault(k, []).append(v)
        if rollout.deferred:  # step 0 wrote all of ℓ_old; the weights have not changed yet
            _complete_deferred(rollout, settings)
        if size > 0:
            if max_grad_norm:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps.append({k: float(torch.cat(v).mean()) for k, v in step_metrics.items()
                          if k.startswith(("loss/", "value/"))})  # fmt: skip
        with warnings.catch_warnings():  # torch warns of a schedule step before any AdamW step
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    means = {k: float(torch.cat(v).mean()) for k, v in per_example.items()}
    means.update(rollout.metrics)
    return RolloutUpdateResult(means, tokens, grad_norm, lr, time.perf_counter() - t0, steps)


def _complete_deferred(rollout: Rollout, settings: RolloutSettings) -> None:
    """After the first step's forwards wrote ℓ_old: the summed ``previous`` (in place, so the
    loop's reference to it sees the values) and the ``rl/*`` metrics."""
    zero = torch.zeros((), device=rollout.mask.device)
    rollout.previous.copy_(torch.where(rollout.mask, rollout.old_logps, zero).sum(-1))
    rollout.metrics.update(_rollout_metrics(settings, rollout.targets, rollout.mask,
                                            rollout.old_logps, rollout.ref_logps,
                                            rollout.old_values))  # fmt: skip
    rollout.deferred = False


# ---------------------------------------------------------------------------------------------
# the policy's extra parameters (PPO's value head)
# ---------------------------------------------------------------------------------------------
def prepare_policy(
    policy: torch.nn.Module, settings: RolloutSettings, *, lr: float, value_lr: float | None
) -> list[Any]:
    """Attach the value head (PPO) and return the AdamW parameter groups: the policy's
    trainable parameters, and the head's with its own learning rate ``value_lr`` (default
    ``lr``). Call before the optimizer is built and a checkpoint loaded."""
    if not settings.rule.value_head:
        return [p for p in policy.parameters() if p.requires_grad]
    head = attach_value_head(policy)
    own = {id(p) for p in head.parameters()}
    body = [p for p in policy.parameters() if p.requires_grad and id(p) not in own]
    return [{"params": body}, {"params": list(head.parameters()), "lr": value_lr or lr}]


def finish_policy(policy: torch.nn.Module, out_dir: str | Path) -> dict[str, str]:
    """Remove the value head from the policy before it is saved as an LM; write it to
    ``out_dir/value_head.safetensors``. Returns ``{"value_head": path}`` (empty without)."""
    head = detach_value_head(policy)
    if head is None:
        return {}
    return {"value_head": save_value_head(head, Path(out_dir) / "value_head.safetensors")}
