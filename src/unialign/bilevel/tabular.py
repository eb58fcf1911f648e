"""An entropy-regularised contextual bandit where PARL's bilevel problem is solvable exactly.

The problem (notation of ``docs/aparl.md``):

- States s ∈ {1..S} with probabilities d(s); actions a ∈ {1..A}; reward features φ(s, a) ∈ ℝᵈ;
  the learned reward is r_ν(s, a) = φ(s, a)ᵀν (``features = eye`` gives a tabular reward).
- Lower level: softmax policy π_θ(·|s) = softmax(θ_s), θ ∈ ℝ^{S×A},
  V(θ, ν) = Σ_s d(s) [Σ_a π_θ(a|s) r_ν(s, a) + α H(π_θ(·|s))].
  Its maximiser is θ*(ν)_s = r_ν(s, ·)/α up to a constant per state; π* ∝ exp(r_ν/α). We fix
  the constant by centring each row (the minimum-norm representative).
- Upper level: for each state a pair (a, b) is drawn i.i.d. from π_θ*(·|s) and a teacher with
  true reward r* labels "a ≻ b" with probability p* = σ(r*(s, a) − r*(s, b)). The expected
  preference log-likelihood of the pair is
  U_ν(s, a, b) = p* log σ(Δ_ν) + (1 − p*) log σ(−Δ_ν),  Δ_ν = r_ν(s, a) − r_ν(s, b),
  and G(ν) = Σ_s d(s) Σ_{a,b} π*(a|s) π*(b|s) U_ν(s, a, b) is maximised.

Because θ*(ν) is in closed form, autograd through it gives the exact ∇G, against which the
A-PARL estimator (direct term + implicit term by conjugate gradient on Hessian-vector products
of L = −V) and PEBBLE's direct term alone are compared in ``tests/bilevel/test_aparl.py``.
All gradients in this module are **ascent** directions of G.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from unialign.bilevel.hypergrad import (
    SolveResult,
    cross_vjp,
    implicit_hypergradient,
    inverse_hvp,
)

__all__ = ["EntropyBandit", "QuerySample"]


@dataclass(frozen=True)
class QuerySample:
    """Sampled preference queries, all ``[N]``: state, first and second action, label y ∈ {0, 1}."""

    states: Tensor
    first: Tensor
    second: Tensor
    labels: Tensor


@dataclass(frozen=True)
class EntropyBandit:
    """Entropy-regularised contextual bandit with a linear reward model.

    Attributes:
        features: ``[S, A, d]`` φ(s, a).
        state_probs: ``[S]`` d(s), positive, summing to one.
        true_reward: ``[S, A]`` r*(s, a), the teacher's reward.
        alpha: entropy temperature α > 0.
    """

    features: Tensor
    state_probs: Tensor
    true_reward: Tensor
    alpha: float

    @classmethod
    def random(
        cls,
        states: int,
        actions: int,
        dim: int | None = None,
        *,
        alpha: float = 0.5,
        reward_scale: float = 2.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> EntropyBandit:
        """A random instance; ``dim=None`` gives the tabular reward φ = identity (d = S·A)."""
        kw = {"generator": generator, "dtype": dtype}
        if dim is None:
            feats = torch.eye(states * actions, dtype=dtype).reshape(states, actions, -1)
        else:
            feats = torch.randn(states, actions, dim, **kw)
        probs = torch.softmax(torch.randn(states, **kw), 0)
        true = reward_scale * torch.randn(states, actions, **kw)
        return cls(feats, probs, true, alpha)

    # --- the two levels -------------------------------------------------------------------
    def reward(self, nu: Tensor) -> Tensor:
        """r_ν = φ ν, ``[S, A]``."""
        return self.features @ nu

    def optimal_logits(self, nu: Tensor) -> Tensor:
        """θ*(ν) = r_ν/α, centred per state (differentiable in ν)."""
        z = self.reward(nu) / self.alpha
        return z - z.mean(-1, keepdim=True)

    def lower_objective(self, theta: Tensor, nu: Tensor) -> Tensor:
        """V(θ, ν) = Σ_s d(s) [Σ_a π_θ(a|s) r_ν(s, a) + α H(π_θ(·|s))], maximised in θ."""
        logp = F.log_softmax(theta, -1)
        per_state = (logp.exp() * (self.reward(nu) - self.alpha * logp)).sum(-1)
        return (self.state_probs * per_state).sum()

    def pair_loglik(self, nu: Tensor) -> Tensor:
        """U_ν(s, a, b), ``[S, A, A]``: the label-expected preference log-likelihood."""
        r = self.reward(nu)
        delta = r[:, :, None] - r[:, None, :]
        t = self.true_reward
        p_true = torch.sigmoid(t[:, :, None] - t[:, None, :])
        return p_true * F.logsigmoid(delta) + (1 - p_true) * F.logsigmoid(-delta)

    def upper_objective(self, theta: Tensor, nu: Tensor) -> Tensor:
        """G(θ, ν) = Σ_s d(s) Σ_{a,b} π_θ(a|s) π_θ(b|s) U_ν(s, a, b); G(ν) = G(θ*(ν), ν)."""
        pi = torch.softmax(theta, -1)
        pair = pi[:, :, None] * pi[:, None, :]
        return (self.state_probs * (pair * self.pair_loglik(nu)).sum((-1, -2))).sum()

    # --- gradients ------------------------------------------------------------------------
    def exact_hypergradient(self, nu: Tensor) -> Tensor:
        """dG/dν by autograd through the closed form θ*(ν): the ground truth."""
        nu = nu.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.upper_objective(self.optimal_logits(nu), nu), nu)
        return g

    def pebble_gradient(self, nu: Tensor) -> Tensor:
        """∇_ν G(θ, ν) at θ = θ*(ν) held fixed: reward learning that ignores the shift."""
        nu = nu.detach().requires_grad_(True)
        theta = self.optimal_logits(nu).detach()
        (g,) = torch.autograd.grad(self.upper_objective(theta, nu), nu)
        return g

    def aparl_gradient(
        self,
        nu: Tensor,
        *,
        theta: Tensor | None = None,
        method: Literal["cg", "neumann"] = "cg",
        iters: int | None = None,
        damping: float = 0.0,
        neumann_alpha: float = 1.0,
        curvature: Literal["hessian", "fisher"] = "hessian",
    ) -> Tensor:
        """A-PARL with exact expectations: ∇_ν G + implicit term (CG on HVPs of L = −V).

        g_θ = ∇_θ G(θ, ν) = Σ U ∇_θ[π(a)π(b)] is the score-function term in expectation.
        ``theta`` defaults to θ*(ν); ``iters`` defaults to 2·S·A (CG is exact after S·A
        steps in exact arithmetic; the extra steps absorb rounding). ``curvature="fisher"``
        solves with α·Σ_s d(s) F_s(θ), F_s = diag(π) − ππᵀ the softmax Fisher matrix, instead
        of ∇²_θθ L; the two coincide at θ*(ν) (the SAC estimator's default relies on this).
        """
        theta = self.optimal_logits(nu) if theta is None else theta
        theta = theta.detach().requires_grad_(True)
        nu = nu.detach().requires_grad_(True)
        direct, g_theta = torch.autograd.grad(self.upper_objective(theta, nu), (nu, theta))
        implicit = implicit_hypergradient(
            lambda: -self.lower_objective(theta, nu),
            [g_theta],
            [theta],
            [nu],
            method=method,
            iters=iters if iters is not None else 2 * theta.numel(),
            damping=damping,
            tol=1e-14,
            neumann_alpha=neumann_alpha,
            curvature=(lambda: self.alpha * self.fisher_surrogate(theta))
            if curvature == "fisher"
            else None,
        )
        return direct + implicit[0]

    def fisher_surrogate(self, theta: Tensor) -> Tensor:
        """Σ_s d(s) KL(π_θ₀(·|s) ‖ π_θ(·|s)) with θ₀ = θ frozen: its Hessian is Σ_s d(s) F_s."""
        logp = F.log_softmax(theta, -1)
        logp0 = logp.detach()
        return (self.state_probs * (logp0.exp() * (logp0 - logp)).sum(-1)).sum()

    # --- Monte Carlo version (what runs on SAC) -------------------------------------------
    def sample_queries(
        self, nu: Tensor, n: int, *, generator: torch.Generator | None = None
    ) -> QuerySample:
        """n queries: s ∼ d, a, b ∼ π_θ*(ν)(·|s) i.i.d., y ∼ Bernoulli(σ(r*(s,a) − r*(s,b)))."""
        pi = torch.softmax(self.optimal_logits(nu.detach()), -1)
        s = torch.multinomial(self.state_probs, n, replacement=True, generator=generator)
        ab = torch.multinomial(pi[s], 2, replacement=True, generator=generator)
        a, b = ab[:, 0], ab[:, 1]
        p = torch.sigmoid(self.true_reward[s, a] - self.true_reward[s, b])
        y = torch.bernoulli(p, generator=generator)
        return QuerySample(s, a, b, y)

    def mc_aparl_gradient(
        self,
        nu: Tensor,
        queries: QuerySample,
        *,
        iters: int | None = None,
        damping: float = 0.0,
    ) -> tuple[Tensor, Tensor, SolveResult]:
        """A-PARL from sampled queries, the estimator used on SAC, returning (PEBBLE, A-PARL).

        Direct term: mean_i ∇_ν U_ν(s_i, a_i, b_i; y_i) with the sampled label.
        Score term:  g_θ = mean_i (U_i − Ū) ∇_θ[log π_θ(a_i|s_i) + log π_θ(b_i|s_i)] at θ*(ν),
        with the batch-mean baseline Ū (bias O(1/N), variance much lower than without it).
        The inverse Hessian uses the exact lower objective (no sampling there).
        """
        theta = self.optimal_logits(nu).detach().requires_grad_(True)
        nu = nu.detach().requires_grad_(True)
        s, a, b, y = queries.states, queries.first, queries.second, queries.labels
        r = self.reward(nu)
        delta = r[s, a] - r[s, b]
        u = y * F.logsigmoid(delta) + (1 - y) * F.logsigmoid(-delta)
        (direct,) = torch.autograd.grad(u.mean(), nu)
        logp = F.log_softmax(theta, -1)
        score = logp[s, a] + logp[s, b]
        adv = (u - u.mean()).detach()
        (g_theta,) = torch.autograd.grad((adv * score).mean(), theta)
        grads = torch.autograd.grad(-self.lower_objective(theta, nu), theta, create_graph=True)
        sol = inverse_hvp(
            grads,
            [theta],
            [g_theta],
            iters=iters or 2 * theta.numel(),
            damping=damping,
            tol=1e-14,
        )
        (cross,) = cross_vjp(grads, [nu], sol.x)
        return direct, direct - cross, sol
