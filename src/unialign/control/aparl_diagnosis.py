"""A-PARL's shipped SAC estimator on a problem where the exact hypergradient is known.

The problem is the soft linear-quadratic control problem of :mod:`unialign.bilevel.lq`
(θ*(ν) in closed form, ∇G by autograd through it). This module plugs that problem into the
**shipped** code path, :func:`unialign.control.aparl.aparl_reward_gradient`, unchanged:

- the actor is a Gaussian policy with the interface SAC's actor gives the estimator
  (``forward -> (mean, log_std)``, reparameterised ``sample``, ``log_prob`` of stored actions)
  but without the tanh squashing, which the closed form does not allow; its mean is linear in
  s (``hidden=None``: θ ∈ ℝ^{n+2}, the exact θ*(ν) is representable) or a product of two
  linear maps (``hidden=h``: over-parameterised, so the Fisher matrix is singular along
  directions that leave the policy unchanged, as for a neural actor);
- the reward model is the quadratic r_ν with the ensemble interface (K = 1 member);
- the actor sits at θ*(ν) (or at a stale policy, ``actor_lag``), the "critic" for the Hessian
  curvature and the full-Q cross term is the closed-form soft Q_ν.

:func:`estimator_draws` repeats the estimator on fresh samples (segments, teacher labels,
lower states, the actor's noise draw) and :func:`summarise` compares the draws with the exact
∇G: bias, spread and mean squared error of the implicit term and of the whole gradient.
Every gradient here is an **ascent** direction of G (the estimator returns the gradient of
the loss F = −G; it is negated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from unialign.bilevel.lq import GaussianPolicy, HypergradientEstimate, SoftLQ
from unialign.control.aparl import (
    aparl_reward_gradient,
    implicit_correction,
    importance_weights,
)
from unialign.control.types import SegmentBatch

__all__ = [
    "EstimatorVariant",
    "LinearGaussianActor",
    "QuadraticReward",
    "estimator_draws",
    "stale_policy",
    "summarise",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
#: On-policy pairs behind :func:`exact_score_gradient` in ``score="exact"`` variants.
EXACT_SCORE_PAIRS = 200_000


def _normal_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; μ, σ²) summed over the last axis."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(-1)


class LinearGaussianActor(nn.Module):
    """π_θ(a|s) = N(μ_θ(s), exp(ℓ)²), μ_θ(s) = W s + b or W₂ W₁ s + b (``hidden``)."""

    def __init__(self, obs_dim: int, *, hidden: int | None = None) -> None:
        super().__init__()
        dims = [obs_dim] if hidden is None else [obs_dim, hidden]
        self.layers = nn.ModuleList(
            nn.Linear(i, o, bias=False) for i, o in zip(dims, [*dims[1:], 1], strict=True)
        )
        self.bias = nn.Parameter(torch.zeros(1))
        self.log_std = nn.Parameter(torch.zeros(1))

    @classmethod
    def from_policy(
        cls, policy: GaussianPolicy, *, hidden: int | None = None, seed: int = 0
    ) -> LinearGaussianActor:
        """An actor that represents ``policy`` exactly (W₁ random, W₂ = K W₁⁺ when hidden)."""
        n = policy.gain.shape[1]
        actor = cls(n, hidden=hidden).to(policy.gain.dtype)
        with torch.no_grad():
            if hidden is None:
                actor.layers[0].weight.copy_(policy.gain)
            else:
                gen = torch.Generator().manual_seed(seed)
                w1 = torch.randn(hidden, n, generator=gen, dtype=policy.gain.dtype) / n**0.5
                actor.layers[0].weight.copy_(w1)
                actor.layers[1].weight.copy_(policy.gain @ torch.linalg.pinv(w1))
            actor.bias.copy_(policy.bias)
            actor.log_std.copy_(policy.log_std)
        return actor

    def as_policy(self) -> GaussianPolicy:
        """The policy as (K, k, ℓ), differentiable in the actor's parameters."""
        gain = self.layers[0].weight
        for layer in self.layers[1:]:
            gain = layer.weight @ gain
        return GaussianPolicy(gain, self.bias, self.log_std)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = obs
        for layer in self.layers:
            x = layer(x)
        mean = x + self.bias
        return mean, self.log_std.expand_as(mean)

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        return _normal_log_prob(actions, *self(obs))

    def sample(self, obs: Tensor, *, generator: torch.Generator | None = None):
        mean, log_std = self(obs)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        a = mean + log_std.exp() * eps
        return a, _normal_log_prob(a, mean, log_std)


class QuadraticReward(nn.Module):
    """r_ν of a :class:`SoftLQ` with the reward-ensemble interface (one member)."""

    def __init__(self, problem: SoftLQ, nu: Tensor) -> None:
        super().__init__()
        self.problem = problem
        self.nu = nn.Parameter(nu.detach().clone())

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.problem.reward(self.nu, obs, act)[None]

    def reward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.problem.reward(self.nu, obs, act)

    def segment_returns(self, seg: SegmentBatch) -> Tensor:
        return self(seg.obs, seg.actions).sum(-1)


@dataclass(frozen=True)
class EstimatorVariant:
    """One way of running the shipped estimator (defaults: the shipped loop's choices).

    Attributes:
        name: label in the results.
        sample: ``"replay"`` segments (and lower states) from a uniform mixture of 5 older
            policies (:func:`stale_policy` with lag 0, ¼, …, 1 × ``staleness``), as the
            replay buffer holds; ``"on_policy"``: fresh rollouts of θ*(ν).
        weights: score-term pair weights for replay segments: ``"none"``, ``"is"`` (plain
            likelihood ratio), ``"snis"`` (self-normalised), ``"snis_clip"`` (truncated at
            10 × the mean, then self-normalised).
        cross: ``"one_step"`` (r_ν, shipped) or ``"full_q"`` (closed-form Q_ν).
        curvature: ``"fisher"`` (shipped default), ``"hessian_q"`` (actor-loss Hessian with
            the exact soft Q as critic), ``"hessian_r"`` (actor-loss Hessian with Q ≈ r_ν,
            what ``curvature="hessian"`` does without a critic).
        damping, cg_iters: the conjugate-gradient solve.
        pairs, lower_states: N labelled pairs and B lower states per estimate.
        staleness: how old the replay's oldest policy is (see :func:`stale_policy`).
        actor_lag: the actor is ``stale_policy(θ*, actor_lag)`` (0: at the lower optimum).
        hidden: ``None`` linear actor; an int: the over-parameterised two-layer linear one.
        score: ``"sampled"``: g_θ from the N labelled pairs (the shipped score term);
            ``"exact"``: g_θ = −∇_θ E_{ρ_θ}[U_ν] by the pathwise derivative on
            ``exact_score_pairs`` on-policy pairs (:func:`exact_score_gradient`), so that only
            the solve and the cross term (:func:`~unialign.control.aparl.implicit_correction`)
            are left to err.
    """

    name: str
    sample: Literal["replay", "on_policy"] = "replay"
    weights: Literal["none", "is", "snis", "snis_clip"] = "none"
    cross: Literal["one_step", "full_q"] = "one_step"
    curvature: Literal["fisher", "hessian_q", "hessian_r"] = "fisher"
    damping: float = 1e-2
    cg_iters: int = 10
    pairs: int = 128
    lower_states: int = 256
    staleness: float = 1.0
    actor_lag: float = 0.0
    hidden: int | None = None
    score: Literal["sampled", "exact"] = "sampled"


def exact_score_gradient(
    problem: SoftLQ, nu: Tensor, actor: LinearGaussianActor, *, pairs: int, seed: int
) -> list[Tensor]:
    """g_θ = ∇_θ F = −∇_θ E_{σ¹,σ²∼ρ_θ}[U_ν(σ¹, σ²)] at the actor's θ (labels in expectation,
    whole episodes including any burn-in), by autograd through reparameterised rollouts;
    aligned with the actor's parameters. Monte-Carlo on ``pairs`` pairs."""
    gen = torch.Generator().manual_seed(seed)
    pol = actor.as_policy()
    o1, a1 = problem.rollout(pol, problem.sample_noise(pairs, generator=gen))
    o2, a2 = problem.rollout(pol, problem.sample_noise(pairs, generator=gen))
    u = problem.pair_loglik(nu.detach(), o1, a1, o2, a2).mean()
    return [-g for g in torch.autograd.grad(u, list(actor.parameters()), allow_unused=False)]


def stale_policy(policy: GaussianPolicy, lag: float) -> GaussianPolicy:
    """An older policy: gain shrunk by (1 − ½ lag), log-std raised by ½ lag (early SAC
    policies act less decisively and explore more). ``lag = 0`` is ``policy`` itself."""
    return GaussianPolicy(
        policy.gain * (1 - 0.5 * lag), policy.bias.clone(), policy.log_std + 0.5 * lag
    )


def _segments(problem: SoftLQ, policies, n: int, gen: torch.Generator):
    """n segments, each from a uniformly chosen policy; with their behaviour log-probs."""
    which = torch.randint(len(policies), (n,), generator=gen)
    noise = problem.sample_noise(n, generator=gen)
    obs = torch.empty(n, problem.horizon, problem.state_dim, dtype=problem.A.dtype)
    act = torch.empty(n, problem.horizon, 1, dtype=problem.A.dtype)
    logb = torch.empty(n, dtype=problem.A.dtype)
    for j, pol in enumerate(policies):
        o, a = problem.rollout(pol, noise)
        sel = which == j
        obs[sel], act[sel] = o[sel], a[sel]
        logb[sel] = _normal_log_prob(a, o @ pol.gain.T + pol.bias, pol.log_std).sum(-1)[sel]
    seg = SegmentBatch(obs, act, torch.zeros(n, problem.horizon, dtype=obs.dtype), torch.arange(n))
    return seg, logb


def estimator_draws(
    problem: SoftLQ, nu: Tensor, variant: EstimatorVariant, *, replicates: int, seed: int
) -> dict[str, Tensor]:
    """``replicates`` independent runs of the shipped estimator: ``{"direct", "implicit"}``,
    each ``[replicates, d]`` (ascent directions of G), plus ``"cg_residual"`` ``[replicates]``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        star = problem.optimal_policy(nu)
    current = stale_policy(star, variant.actor_lag)
    actor = LinearGaussianActor.from_policy(current, hidden=variant.hidden, seed=seed)
    model = QuadraticReward(problem, nu)
    if variant.sample == "on_policy":
        behaviour = [current]
    else:
        behaviour = [stale_policy(star, variant.staleness * j / 4) for j in range(5)]
    q_mat = problem.q_matrix(nu).detach()
    critic = {
        "hessian_q": lambda o, a: (
            -0.5 * torch.einsum("bi,ij,bj->b", torch.cat([o, a], -1), q_mat, torch.cat([o, a], -1))
        ),
        "hessian_r": None,
        "fisher": None,
    }[variant.curvature]
    q_nu_fn = (lambda o, a: problem.soft_q(model.nu, o, a)) if variant.cross == "full_q" else None
    solve = {
        "critic_fn": critic,
        "alpha": problem.alpha,
        "cg_iters": variant.cg_iters,
        "damping": variant.damping,
        "cg_tol": 1e-12,
        "curvature": "fisher" if variant.curvature == "fisher" else "hessian",
        "q_nu_fn": q_nu_fn,
    }
    if variant.score == "exact":
        g_exact = exact_score_gradient(problem, nu, actor, pairs=EXACT_SCORE_PAIRS, seed=seed)
    direct, implicit, residual = [], [], []
    for _ in range(replicates):
        seg1, logb1 = _segments(problem, behaviour, variant.pairs, gen)
        seg2, logb2 = _segments(problem, behaviour, variant.pairs, gen)
        p = problem.preference_probability(seg1.obs, seg1.actions, seg2.obs, seg2.actions)
        labels = torch.bernoulli(p, generator=gen)
        states_seg, _ = _segments(problem, behaviour, variant.lower_states, gen)
        pick = torch.randint(problem.horizon, (variant.lower_states,), generator=gen)
        states = states_seg.obs[torch.arange(variant.lower_states), pick]
        weights = None
        if variant.weights != "none":
            weights = importance_weights(
                actor,
                seg1,
                seg2,
                logb1,
                logb2,
                self_normalise=variant.weights != "is",
                clip=10.0 if variant.weights == "snis_clip" else None,
            )
        # PEBBLE's term (correction_weight 0 returns before drawing any noise)
        bt, _ = aparl_reward_gradient(
            model,
            actor,
            seg1,
            seg2,
            labels,
            obs_for_lower=states,
            alpha=problem.alpha,
            correction_weight=0.0,
        )
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))  # actor.sample
        if variant.score == "exact":
            imp, sol = implicit_correction(model, actor, g_exact, obs_for_lower=states, **solve)
            correction, res = imp[0], sol.residual
        else:
            total, metrics = aparl_reward_gradient(
                model, actor, seg1, seg2, labels, obs_for_lower=states, pair_weights=weights,
                **solve,
            )  # fmt: skip
            correction, res = total[0] - bt[0], metrics["aparl/cg_residual"]
        direct.append(-bt[0])
        implicit.append(-correction)
        residual.append(res)
    return {
        "direct": torch.stack(direct),
        "implicit": torch.stack(implicit),
        "cg_residual": torch.tensor(residual),
    }


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def summarise(draws: dict[str, Tensor], exact: HypergradientEstimate) -> dict[str, float]:
    """Bias, spread and error of the draws against the exact gradients (norms relative to
    ‖exact implicit‖ for the implicit term, to ‖exact ∇G‖ for whole gradients).

    - ``implicit_bias``: ‖mean − exact‖/‖exact‖; ``implicit_bias_mc``: its Monte-Carlo
      error from the draws' spread, √(tr Cov / R)/‖exact‖ (plus the exact side's own error,
      ``exact_implicit_se``);
    - ``implicit_cos_mean``: cosine(mean, exact); ``implicit_cos``: mean per-draw cosine;
    - ``implicit_std``: √(E‖draw − mean‖²)/‖exact‖; ``implicit_rmse``: √(E‖draw − exact‖²)/‖exact‖;
    - ``aparl_rmse`` / ``pebble_rmse``: √(E‖ĝ − ∇G‖²)/‖∇G‖ of the whole A-PARL gradient
      (direct + implicit) and of PEBBLE's (direct only), and their mean cosines with ∇G:
      the figure that says whether adding the estimated term brings a step closer to ∇G.
    """
    imp, dirs = draws["implicit"], draws["direct"]
    r = imp.shape[0]
    ex_i, ex_t = exact.implicit, exact.total
    ni, nt = float(ex_i.norm()), float(ex_t.norm())
    mean = imp.mean(0)
    spread = (imp - mean).square().sum(-1)
    tot = dirs + imp
    out = {
        "implicit_bias": float((mean - ex_i).norm()) / ni,
        "implicit_bias_mc": math.sqrt(float(spread.mean()) / r) / ni,
        "exact_implicit_se": float(exact.implicit_se.norm()) / ni,
        "implicit_cos_mean": float(_cos(mean, ex_i)),
        "implicit_cos": float(_cos(imp, ex_i.expand_as(imp)).mean()),
        "implicit_std": math.sqrt(float(spread.mean())) / ni,
        "implicit_rmse": math.sqrt(float((imp - ex_i).square().sum(-1).mean())) / ni,
        "implicit_norm_ratio": float(imp.norm(dim=-1).mean()) / ni,
        "aparl_rmse": math.sqrt(float((tot - ex_t).square().sum(-1).mean())) / nt,
        "pebble_rmse": math.sqrt(float((dirs - ex_t).square().sum(-1).mean())) / nt,
        "aparl_cos": float(_cos(tot, ex_t.expand_as(tot)).mean()),
        "pebble_cos": float(_cos(dirs, ex_t.expand_as(dirs)).mean()),
        "direct_bias": float((dirs.mean(0) - exact.direct).norm()) / float(exact.direct.norm()),
        "cg_residual": float(draws["cg_residual"].median()),
    }
    return out
