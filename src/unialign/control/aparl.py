"""A-PARL's reward-model gradient for SAC: PEBBLE's Bradley–Terry gradient plus the implicit term.

PARL (Chakraborty et al. 2023, arXiv 2308.02585) fits the reward r_ν on preferences over
segments drawn from the *current* policy, G(ν) = E_{σ¹,σ²∼ρ(θ*(ν))}[U_ν(σ¹, σ²)], so

    ∇G = E[∇_ν U_ν] + (dθ*/dν)ᵀ E[U_ν ∇_θ log ρ(σ; θ*)],   dθ*/dν = −[∇²_θθ V]⁻¹ ∇²_θν V.

PEBBLE keeps only the first term. Here everything is written for the *loss* the reward
optimiser minimises, F = −G = Σ_k mean_n BT cross-entropy (the ensemble loss PEBBLE trains), so
the returned gradients can be set as ``.grad`` and stepped. Derivation, approximations and
validation: ``docs/aparl.md``. In short:

- Lower loss (SAC's actor loss, minimised): L(θ, ν) = E_{s∼D, ε}[α log π_θ(a_θ|s) − Q(s, a_θ)]
  with a_θ = a_θ(s, ε) reparameterised. Q's dependence on ν is approximated by its one-step
  part, Q_ν ≈ Q_φ + (r_ν − r_ν₀), so the cross term ∇²_νθ L uses −E[r_ν(s, a_θ)] only.
- Score term: g_θ = ∇_θ F = mean_i (ℓ_i − ℓ̄) ∇_θ[log ρ(σ¹_i) + log ρ(σ²_i)], with
  log ρ(σ) = Σ_t log π_θ(a_t|s_t) over the segment's stored actions (dynamics drop out) and
  the batch-mean baseline ℓ̄. Segments come from the replay buffer, i.e. from older policies:
  an off-policy approximation without importance weights.
- Curvature: ``curvature="fisher"`` (default) replaces ∇²_θθ L by α·F, F the policy's Fisher
  matrix, which equals the Hessian at the lower optimum (L = α KL(π_θ ‖ exp(Q/α)/Z) + const)
  and is positive semi-definite everywhere; ``"hessian"`` uses the actor loss's own Hessian
  (critic from ``critic_fn``, else Q ≈ r_ν), which is indefinite away from the optimum, where
  CG stops on negative curvature (measured in ``docs/aparl.md``).
- Inverse: damped conjugate gradient, (H + λI)⁻¹ g_θ, on curvature-vector products.
- Variants (measured against an exact hypergradient in ``docs/aparl.md``, "Diagnosis"):
  ``pair_weights`` weights the score term's pairs (importance ratios of replay segments,
  :func:`importance_weights`); ``q_nu_fn`` replaces the one-step cross term by a full Q_ν;
  :func:`implicit_correction` is the solve and cross term alone, for a given g_θ. There, the
  score term's off-policy bias and variance dominate the estimate at the loop's batch sizes.

Cost per call: reward-model forward/backward on the 2·N·H segment steps (the BT gradient, as
PEBBLE); an actor forward on those steps and one backward (g_θ); an actor sample on the B
``obs_for_lower`` states and two ``create_graph`` backwards (cross term, curvature);
``cg_iters`` curvature-vector products (Fisher: double backward through the actor only;
Hessian: through actor, reward model and critic) on B states; one cross backward to ν. About
``cg_iters + 1`` double-backward passes on B states on top of PEBBLE's update; no extra
environment interaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from unialign.bilevel.hypergrad import (
    SolveResult,
    cross_vjp,
    grad_or_zeros,
    inverse_hvp,
    list_dot,
    list_norm,
)
from unialign.control.buffer import RewardFn
from unialign.control.components import FitContext
from unialign.control.learners import BradleyTerryLearner
from unialign.control.types import SegmentBatch
from unialign.losses.reward import ensemble_preference_cross_entropy

__all__ = [
    "APARLLearner",
    "aparl_reward_gradient",
    "gaussian_kl_to_frozen",
    "implicit_correction",
    "importance_weights",
    "segment_log_prob",
]


def segment_log_prob(actor: nn.Module, seg: SegmentBatch) -> Tensor:
    """log ρ(σ; θ) up to θ-free dynamics terms: Σ_t log π_θ(a_t|s_t), ``[N]``.

    ``actor.log_prob(obs, actions)`` is the actor's log-density of stored actions
    (:meth:`unialign.control.sac.SquashedGaussianActor.log_prob`). Steps padded with the
    absorbing state after a termination (``seg.absorbed``, see `unialign.control.buffer`) were
    not chosen by the policy and are left out.
    """
    n, h = seg.obs.shape[:2]
    logp = actor.log_prob(seg.obs.reshape(n * h, -1), seg.actions.reshape(n * h, -1))
    chosen = ~seg.absorbed_mask.to(logp.device)  # [N, H]
    return (logp.reshape(n, h) * chosen).sum(1)


def gaussian_kl_to_frozen(actor: nn.Module, obs: Tensor) -> Tensor:
    """mean_s KL(π_θ₀(·|s) ‖ π_θ(·|s)) with θ₀ the current parameters, held fixed.

    tanh is a bijection, so the KL of the squashed policies is the KL of the pre-squash
    Gaussians: Σ_j [log σ_j − log σ₀_j + (σ₀_j² + (μ_j − μ₀_j)²) / (2σ_j²) − ½]. Its value and
    gradient vanish at θ = θ₀ and its Hessian there is the Fisher information matrix
    F = E_s[Jᵀ diag(1/σ², 2) J] (J = ∂(μ, log σ)/∂θ), positive semi-definite by construction:
    the Fisher-vector product of TRPO, by double backward.
    """
    mean, log_std = actor(obs)
    m0, ls0 = mean.detach(), log_std.detach()
    var_ratio = torch.exp(2 * (ls0 - log_std))
    kl = (log_std - ls0) + 0.5 * (var_ratio + (mean - m0).pow(2) * torch.exp(-2 * log_std)) - 0.5
    return kl.sum(-1).mean()


def importance_weights(
    actor: nn.Module,
    seg1: SegmentBatch,
    seg2: SegmentBatch,
    behaviour_log_prob1: Tensor,
    behaviour_log_prob2: Tensor,
    *,
    self_normalise: bool = True,
    clip: float | None = None,
) -> Tensor:
    """Per-pair likelihood ratios w_n = ρ_θ(σ¹_n)ρ_θ(σ²_n) / (ρ_b(σ¹_n)ρ_b(σ²_n)), ``[N]``.

    ``behaviour_log_prob*``: ``[N]`` Σ_t log π_b(a_t|s_t) of each segment under the policy that
    generated it (dynamics cancel). ``clip`` truncates w at ``clip`` × its mean (truncated
    importance sampling, Ionides 2008), then ``self_normalise`` divides by the mean (the
    self-normalised estimator: biased O(1/N), far lower variance). Detached.
    """
    with torch.no_grad():
        log_w = segment_log_prob(actor, seg1) + segment_log_prob(actor, seg2)
        log_w = log_w - behaviour_log_prob1.to(log_w) - behaviour_log_prob2.to(log_w)
        w = torch.exp(log_w - log_w.max())  # the scale cancels below or is restored
        if clip is not None:
            w = torch.minimum(w, clip * w.mean())
        return w / w.mean() if self_normalise else w * torch.exp(log_w.max())


def _flat_cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    na, nb = list_norm(a), list_norm(b)
    return float(list_dot(a, b)) / (na * nb) if na > 0 and nb > 0 else 1.0


def implicit_correction(
    reward_model: nn.Module,
    actor: nn.Module,
    g_theta: Sequence[Tensor],
    *,
    obs_for_lower: Tensor,
    alpha: float,
    critic_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    cg_iters: int = 10,
    damping: float = 1e-2,
    cg_tol: float = 1e-6,
    curvature: Literal["fisher", "hessian"] = "fisher",
    q_nu_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[list[Tensor], SolveResult]:
    """The implicit term −(∇²_νθ L)(H + λI)⁻¹ g_θ for a given score gradient g_θ.

    The second half of :func:`aparl_reward_gradient` (same arguments; ``g_theta`` aligned with
    the actor's trainable parameters), public so that the solve and the cross term can be
    checked against an exact g_θ (``unialign.control.aparl_diagnosis``). Returns the term, one
    detached tensor per reward-model parameter, and the conjugate-gradient result.
    """
    nu = [p for p in reward_model.parameters() if p.requires_grad]
    theta = [p for p in actor.parameters() if p.requires_grad]
    # Lower loss on replay states: one reparameterised draw a_θ(s, ε) per state.
    action, logp = actor.sample(obs_for_lower)
    r_lower = reward_model.reward(obs_for_lower, action).reshape(-1)
    if not r_lower.requires_grad:
        raise RuntimeError(
            "reward_model.reward(obs, act) returned a tensor without grad; A-PARL needs "
            "∂r_ν/∂ν and ∂r_ν/∂a (is reward() wrapped in torch.no_grad()?)"
        )
    # Cross term ∇²_νθ L: only −E[Q_ν(s, a_θ)] depends on ν; by default its one-step part
    # (Q_ν ≈ Q_φ + r_ν − r_ν₀), with q_nu_fn the full Q_ν.
    q_nu = r_lower if q_nu_fn is None else q_nu_fn(obs_for_lower, action).reshape(-1)
    grads_r = grad_or_zeros(-q_nu.mean(), theta, create_graph=True, retain_graph=True)
    if curvature == "fisher":  # α·F: the Hessian of L at its optimum, PSD everywhere
        curv = alpha * gaussian_kl_to_frozen(actor, obs_for_lower)
    else:  # the actor loss itself, at the same draw
        q = r_lower if critic_fn is None else critic_fn(obs_for_lower, action).reshape(-1)
        curv = (alpha * logp.reshape(-1) - q).mean()
    grads_h = grad_or_zeros(curv, theta, create_graph=True, retain_graph=True)
    sol = inverse_hvp(grads_h, theta, list(g_theta), iters=cg_iters, damping=damping, tol=cg_tol)
    return [-c for c in cross_vjp(grads_r, nu, sol.x)], sol


def aparl_reward_gradient(
    reward_model: nn.Module,
    actor: nn.Module,
    seg1: SegmentBatch,
    seg2: SegmentBatch,
    labels: Tensor,
    *,
    obs_for_lower: Tensor,
    critic_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    alpha: float,
    cg_iters: int = 10,
    damping: float = 1e-2,
    cg_tol: float = 1e-6,
    correction_weight: float = 1.0,
    curvature: Literal["fisher", "hessian"] = "fisher",
    pair_weights: Tensor | None = None,
    q_nu_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[list[Tensor], dict[str, float]]:
    """Gradient of the reward model's BT loss with A-PARL's implicit correction.

    Args:
        reward_model: exposes ``segment_returns(seg) -> [K, N]`` (per ensemble member) and
            ``reward(obs, act) -> [B]`` (ensemble mean, differentiable in ν and in ``act``).
        actor: SAC's tanh-Gaussian actor: ``actor.sample(obs) -> (action, log_prob)``
            reparameterised, ``actor.log_prob(obs, actions)`` of stored actions, and
            ``actor(obs) -> (mean, log_std)`` before the tanh (used by the Fisher curvature).
        seg1, seg2: the queried segment pairs, ``N`` each, from the replay buffer.
        labels: ``[N]`` y ∈ [0, 1], probability that ``seg1`` is preferred.
        obs_for_lower: ``[B, obs_dim]`` replay states on which the lower (actor) loss and
            its Hessian are evaluated.
        critic_fn: ``(obs, act) -> Q [B]`` (e.g. the min of SAC's twin critics), used by
            ``curvature="hessian"`` only; ``None`` there means Q ≈ r_ν (one-step lower level).
        alpha: SAC's entropy temperature in the lower loss.
        cg_iters, damping, cg_tol: conjugate gradient on (H + damping·I), stopped after
            ``cg_iters`` products or at relative residual ``cg_tol``.
        correction_weight: scales the implicit term; 0 skips it and returns PEBBLE's gradient.
        curvature: H = α·Fisher (``"fisher"``, default) or the actor loss's Hessian
            (``"hessian"``).
        pair_weights: ``[N]`` non-negative weights of the pairs in the score term, e.g.
            importance ratios ρ_θ(σ¹)ρ_θ(σ²)/(ρ_b(σ¹)ρ_b(σ²)) of replay segments against the
            policies that generated them (:func:`importance_weights`); the term becomes
            g_θ = Σ_n w_n (ℓ_n − ℓ̄_w) ∇_θ log ρ_n / N with ℓ̄_w = Σ w ℓ / Σ w. ``None``: all 1
            (the default, unweighted). PEBBLE's BT term is never weighted.
        q_nu_fn: ``(obs, act) -> Q_ν(s, a) [B]`` differentiable in the reward model's
            parameters: the cross term then uses the full ν-dependence of the soft Q
            (∇²_νθ L = −∇_ν∇_θ E[Q_ν(s, a_θ)]) instead of the one-step part r_ν. SAC's critic
            is not a function of ν, so the control loop cannot supply it; the LQ diagnosis
            (:mod:`unialign.control.aparl_diagnosis`) passes the closed-form Q_ν.

    Returns:
        ``(grads, metrics)``: ``grads`` aligned with
        ``[p for p in reward_model.parameters() if p.requires_grad]``, detached: the gradient
        of the ensemble's BT loss Σ_k mean_n ``preference_cross_entropy`` (the loss of
        ``RewardEnsemble.loss`` and of PEBBLE's reward epochs) plus the correction.
        Use: ``for p, g in zip(params, grads): p.grad = g``, then ``opt.step()``.
        ``metrics``: ``aparl/bt_loss``, ``aparl/bt_grad_norm``, ``aparl/correction_norm``,
        ``aparl/cosine`` (between the BT and the corrected gradient), ``aparl/cg_residual``
        (‖b − (H + λI)x‖/‖b‖), ``aparl/cg_iters``, ``aparl/negative_curvature`` (1.0 when CG
        stopped on non-positive curvature: increase ``damping``), ``aparl/score_grad_norm``.
    """
    if curvature not in ("fisher", "hessian"):
        raise ValueError(f"curvature must be 'fisher' or 'hessian', got {curvature!r}")
    if pair_weights is not None and (
        pair_weights.shape != labels.shape or not bool((pair_weights >= 0).all())
    ):
        raise ValueError(
            f"pair_weights must be non-negative with the labels' shape {tuple(labels.shape)}, "
            f"got shape {tuple(pair_weights.shape)}"
        )
    nu = [p for p in reward_model.parameters() if p.requires_grad]
    theta = [p for p in actor.parameters() if p.requires_grad]

    # Upper loss F = Σ_k mean_n BT-CE_k (RewardEnsemble.loss: each member fits its own BT
    # loss); its ν-gradient is PEBBLE's update. Per query, ℓ_n = Σ_k CE_{k,n}, F = mean_n ℓ_n.
    r1, r2 = reward_model.segment_returns(seg1), reward_model.segment_returns(seg2)
    out = ensemble_preference_cross_entropy(r1, r2, labels.to(r1.device, r1.dtype))
    bt_loss = out.losses.sum()
    ell = out.metrics["preference/pair_loss"].sum(0)  # [N], detached: weights of the score term
    bt = [g.detach() for g in grad_or_zeros(bt_loss, nu)]
    metrics = {
        "aparl/bt_loss": float(bt_loss.detach()) / r1.shape[0],  # per member, as reward_model/loss
        "aparl/bt_grad_norm": list_norm(bt),
    }
    if correction_weight == 0.0:
        skipped = ("correction_norm", "cg_residual", "cg_iters", "negative_curvature")
        metrics.update({f"aparl/{k}": 0.0 for k in (*skipped, "score_grad_norm")})
        metrics["aparl/cosine"] = 1.0
        return bt, metrics

    # Score-function term g_θ = ∇_θ F = mean_n (ℓ_n − ℓ̄) ∇_θ[log ρ(σ¹_n) + log ρ(σ²_n)],
    # each pair weighted by w_n when importance weights are given (baseline: weighted mean).
    log_rho = segment_log_prob(actor, seg1) + segment_log_prob(actor, seg2)
    if pair_weights is None:
        adv = ell - ell.mean()
    else:
        w = pair_weights.detach().to(ell.device, ell.dtype)
        adv = w * (ell - (w * ell).sum() / w.sum().clamp_min(1e-30))
    g_theta = grad_or_zeros((adv * log_rho).mean(), theta)

    implicit, sol = implicit_correction(
        reward_model,
        actor,
        g_theta,
        obs_for_lower=obs_for_lower,
        critic_fn=critic_fn,
        alpha=alpha,
        cg_iters=cg_iters,
        damping=damping,
        cg_tol=cg_tol,
        curvature=curvature,
        q_nu_fn=q_nu_fn,
    )
    correction = [correction_weight * c for c in implicit]
    total = [a + c for a, c in zip(bt, correction, strict=True)]

    metrics["aparl/correction_norm"] = list_norm(correction)
    metrics["aparl/cosine"] = _flat_cosine(bt, total)
    metrics["aparl/cg_residual"] = sol.residual
    metrics["aparl/cg_iters"] = float(sol.iters)
    metrics["aparl/negative_curvature"] = float(sol.negative_curvature)
    metrics["aparl/score_grad_norm"] = list_norm(g_theta)
    return total, metrics


class APARLLearner:
    """PEBBLE's reward learner followed by ``steps`` A-PARL-corrected reward updates per fit.

    Experimental (``docs/aparl.md``): on the committed benchmark it does not beat PEBBLE yet.
    Each corrected update takes a minibatch of ``batch_size`` labelled pairs and
    ``lower_states`` replay states, computes :func:`aparl_reward_gradient` with the agent's
    actor and temperature, and steps the ensemble's optimiser.

    Args:
        base: the Bradley–Terry learner (its model and optimiser are the ones updated).
        steps: corrected updates per fit (0: exactly PEBBLE).
        batch_size: labelled pairs per corrected update.
        lower_states: replay states on which the lower-level objective is formed.
        cg_iters, damping: conjugate gradient on the damped curvature.
        correction_weight: scale of the implicit term (0: the ablation with BT-only updates).
        curvature: ``"fisher"`` (default) or ``"hessian"``: the actor loss's Hessian with the
            agent's twin critics (their minimum, as SAC's actor loss) as Q.
    """

    def __init__(
        self,
        base: BradleyTerryLearner,
        *,
        steps: int,
        batch_size: int,
        lower_states: int,
        cg_iters: int = 10,
        damping: float = 1e-2,
        correction_weight: float = 1.0,
        curvature: Literal["fisher", "hessian"] = "fisher",
    ) -> None:
        if curvature not in ("fisher", "hessian"):
            raise ValueError(f"curvature must be 'fisher' or 'hessian', got {curvature!r}")
        if steps < 0 or batch_size < 1 or lower_states < 1:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, lower_states >= 1; got {steps}, "
                f"{batch_size}, {lower_states}"
            )
        self.base, self.steps, self.batch_size = base, steps, batch_size
        self.lower_states, self.cg_iters, self.damping = lower_states, cg_iters, damping
        self.correction_weight, self.curvature = correction_weight, curvature

    def reward_fn(self) -> RewardFn:
        return self.base.reward_fn()

    def preference_probs(self, seg1: SegmentBatch, seg2: SegmentBatch) -> Tensor:
        return self.base.preference_probs(seg1, seg2)

    def fit(
        self, seg1: SegmentBatch, seg2: SegmentBatch, labels: Tensor, ctx: FitContext
    ) -> dict[str, float]:
        metrics = self.base.fit(seg1, seg2, labels, ctx)
        model = self.base.model
        params = [p for p in model.parameters() if p.requires_grad]
        diag: dict[str, float] = {}
        critic_fn = None
        if self.curvature == "hessian":
            critic = getattr(ctx.agent, "critic", None)
            if critic is None:
                raise ValueError(
                    "aparl_curvature: hessian needs an agent with twin critics (agent.critic)"
                )
            critic_fn = lambda o, a: critic(o, a, detach_params=True).amin(0)  # noqa: E731
        for _ in range(self.steps):
            take = ctx.rng.choice(
                len(labels), size=min(self.batch_size, len(labels)), replace=False
            )
            states = ctx.buffer.sample(self.lower_states, ctx.device).obs
            grads, diag = aparl_reward_gradient(
                model,
                ctx.agent.actor,
                seg1.take(take),
                seg2.take(take),
                labels[torch.as_tensor(take, device=labels.device)],
                obs_for_lower=states,
                critic_fn=critic_fn,
                alpha=float(ctx.agent.alpha),
                cg_iters=self.cg_iters,
                damping=self.damping,
                correction_weight=self.correction_weight,
                curvature=self.curvature,
            )
            model.optimizer.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.grad = g.detach()
            model.optimizer.step()
        return {**metrics, **diag}

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.base.load_state_dict(state)
