"""A linear-quadratic soft (max-entropy) control problem where PARL's hypergradient is exact.

Used to diagnose A-PARL's SAC-side estimator (``unialign.control.aparl_diagnosis``,
``docs/aparl.md`` "Diagnosis"). Notation of ``docs/aparl.md``:

- Dynamics s' = A s + B a + w, w ∼ N(0, ω² I), s ∈ ℝⁿ, a ∈ ℝ (one action dimension, so the
  optimal Gaussian policy is representable by a diagonal-Gaussian actor).
- Learned reward r_ν(s, a) = −½ zᵀ M_ν z, z = (s, a), M_ν symmetric with its upper triangle
  (row-major) equal to ν ∈ ℝ^{(n+1)(n+2)/2}. The teacher's reward is r_{ν*}.
- Lower level: maximum-entropy RL with temperature α and discount γ (SAC's problem). The soft
  Q-function is quadratic, Q_ν(s, a) = −½ zᵀ G_ν z + const, G_ν = M_ν + γ [A B]ᵀ P_ν [A B],
  with P_ν the fixed point of the (discounted) Riccati map
  P = G_ss − G_sa G_aa⁻¹ G_as (the soft value is V(s) = −½ sᵀ P s + const: the entropy only
  shifts the constant, so the gain is the ordinary LQR gain; Haarnoja et al. 2017, arXiv
  1702.08165, and Levine 2018, arXiv 1805.00909, for the max-entropy LQR).
  The optimal policy π*(a|s) ∝ exp(Q_ν(s, a)/α) is N(K s, α/G_aa), K = −G_aa⁻¹ G_as: θ*(ν) in
  closed form, differentiable in ν (autograd through the Riccati fixed point, unrolled).
- Upper level: pairs of segments σ = (s_t, a_t)_{t<H}, windows [T₀, T₀ + H) of episodes that
  start at s₀ ∼ N(0, s₀_std² I) and follow π*; a Bradley–Terry teacher (rationality β) prefers
  σ¹ with probability p* = σ(β(R*(σ¹) − R*(σ²))), R* the return under r_{ν*}. With the label
  in expectation, U_ν = p* log σ(Δ_ν) + (1 − p*) log σ(−Δ_ν), Δ_ν = R_ν(σ¹) − R_ν(σ²), and
  G(ν) = E[U_ν], the expectation over pairs from ρ(θ*(ν)) (PARL, arXiv 2308.02585, Eq. of the
  upper objective).

The exact ∇G is the pathwise derivative: rollouts are reparameterised,
σ = σ(θ*(ν), ξ) with noise ξ = (s₀, ε, w) held fixed (common random numbers), and autograd
differentiates U through both R_ν and the trajectories. Its Monte-Carlo error is reported
from independent blocks of pairs (:meth:`SoftLQ.hypergradient`). Holding the trajectories
fixed gives PEBBLE's term E[∇_ν U]; the difference is the distribution-shift (implicit) term.
Nothing here imports an engine; torch only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GaussianPolicy", "HypergradientEstimate", "RolloutNoise", "SoftLQ"]


@dataclass(frozen=True)
class GaussianPolicy:
    """π(a|s) = N(K s + k, exp(log_std)²): ``gain [1, n]``, ``bias [1]``, ``log_std [1]``."""

    gain: Tensor
    bias: Tensor
    log_std: Tensor


@dataclass(frozen=True)
class RolloutNoise:
    """Noise of N episodes of T steps: ``start [N, n]``, ``action [N, T, 1]``, ``state [N, T, n]``
    (standard normal; scaled by the problem's and the policy's standard deviations)."""

    start: Tensor
    action: Tensor
    state: Tensor


@dataclass(frozen=True)
class HypergradientEstimate:
    """Exact-side gradients of G (ascent), each ``[d]``, with Monte-Carlo standard errors.

    ``total`` = ∇G, ``direct`` = E[∇_ν U] (PEBBLE's term), ``implicit`` = total − direct;
    ``*_se`` are standard errors from ``blocks`` independent blocks of pairs.
    """

    total: Tensor
    direct: Tensor
    implicit: Tensor
    total_se: Tensor
    direct_se: Tensor
    implicit_se: Tensor
    pairs: int
    blocks: int


@dataclass(frozen=True)
class SoftLQ:
    """The problem's constants (see the module docstring); float64 tensors.

    Attributes:
        A: ``[n, n]``; B: ``[n, 1]``; noise_std: ω; gamma: γ ≤ 1 (γ = 1 needs a stabilisable
        system); alpha: α > 0; true_nu: ν*, ``[d]``; start_std: s₀'s standard deviation;
        horizon: H; burn_in: T₀ steps before the window (0: segments start at the episode's
        start); beta: the teacher's rationality.
    """

    A: Tensor
    B: Tensor
    noise_std: float
    gamma: float
    alpha: float
    true_nu: Tensor
    start_std: float = 1.0
    horizon: int = 10
    burn_in: int = 0
    beta: float = 1.0

    @classmethod
    def example(
        cls,
        *,
        gamma: float = 0.99,
        alpha: float = 0.1,
        horizon: int = 10,
        burn_in: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> SoftLQ:
        """The instance of the diagnosis (``benchmarks/aparl_diagnosis.py``) and its tests:
        A = [[0.95, 0.2], [0, 0.9]], B = (0.1, 0.5)ᵀ, ω = 0.3, s₀ ∼ N(0, I), teacher
        r* = −½(s₁² + ½ s₂² + 0.2 a²), i.e. ν* = (1, 0, 0, 0.5, 0, 0.2) in the order
        (ss₁₁, ss₁₂, sa₁, ss₂₂, sa₂, aa)."""
        return cls(
            A=torch.tensor([[0.95, 0.2], [0.0, 0.9]], dtype=dtype),
            B=torch.tensor([[0.1], [0.5]], dtype=dtype),
            noise_std=0.3,
            gamma=gamma,
            alpha=alpha,
            true_nu=torch.tensor([1.0, 0.0, 0.0, 0.5, 0.0, 0.2], dtype=dtype),
            horizon=horizon,
            burn_in=burn_in,
        )

    @property
    def state_dim(self) -> int:
        return int(self.A.shape[0])

    @property
    def nu_dim(self) -> int:
        z = self.state_dim + 1
        return z * (z + 1) // 2

    # --- the reward and the lower level ---------------------------------------------------
    def cost_matrix(self, nu: Tensor) -> Tensor:
        """M_ν, ``[n+1, n+1]`` symmetric, upper triangle (row-major) = ν."""
        z = self.state_dim + 1
        rows, cols = torch.triu_indices(z, z)
        m = torch.zeros(z, z, dtype=nu.dtype, device=nu.device).index_put((rows, cols), nu)
        return m + m.T - torch.diag(torch.diagonal(m))

    def reward(self, nu: Tensor, obs: Tensor, act: Tensor) -> Tensor:
        """r_ν(s, a) = −½ zᵀ M_ν z over leading axes: ``obs [..., n]``, ``act [..., 1]`` → ``[...]``."""
        z = torch.cat([obs, act], -1)
        return -0.5 * torch.einsum("...i,ij,...j->...", z, self.cost_matrix(nu), z)

    def riccati(self, nu: Tensor, *, grad_iters: int = 300, tol: float = 1e-13) -> Tensor:
        """P_ν, the fixed point of P ↦ G_ss − G_sa G_aa⁻¹ G_as, ``[n, n]``.

        Iterated to ``tol`` without a graph, then ``grad_iters`` more steps with one, so
        dP/dν is the Neumann series of the fixed point truncated after ``grad_iters`` terms:
        its error shrinks like c^grad_iters, c = γ ρ(A + BK)² < 1 (checked by finite
        differences in the tests).
        """
        with torch.no_grad():
            p = torch.zeros_like(self.A)
            for _ in range(100_000):
                nxt = self._riccati_step(p, nu)
                if not torch.isfinite(nxt).all():
                    raise ValueError("the Riccati iteration diverged: is M_ν positive definite?")
                done = (nxt - p).abs().max() <= tol * (1.0 + p.abs().max())
                p = nxt
                if done:
                    break
        for _ in range(grad_iters):
            p = self._riccati_step(p, nu)
        return p

    def _riccati_step(self, p: Tensor, nu: Tensor) -> Tensor:
        g = self._g_from_p(p, nu)
        n = self.state_dim
        return g[:n, :n] - g[:n, n:] @ g[n:, :n] / g[n, n]

    def _g_from_p(self, p: Tensor, nu: Tensor) -> Tensor:
        phi = torch.cat([self.A, self.B], 1)  # [n, n+1]
        return self.cost_matrix(nu) + self.gamma * phi.T @ p @ phi

    def q_matrix(self, nu: Tensor) -> Tensor:
        """G_ν = M_ν + γ [A B]ᵀ P_ν [A B], ``[n+1, n+1]``: Q_ν(s, a) = −½ zᵀ G_ν z + const."""
        return self._g_from_p(self.riccati(nu), nu)

    def soft_q(self, nu: Tensor, obs: Tensor, act: Tensor) -> Tensor:
        """Q_ν(s, a) up to its constant (which no θ-gradient sees), differentiable in ν."""
        z = torch.cat([obs, act], -1)
        return -0.5 * torch.einsum("...i,ij,...j->...", z, self.q_matrix(nu), z)

    def optimal_policy(self, nu: Tensor) -> GaussianPolicy:
        """θ*(ν): K = −G_as/G_aa, k = 0, σ² = α/G_aa (differentiable in ν)."""
        g, n = self.q_matrix(nu), self.state_dim
        gaa = g[n, n]
        if not gaa > 0:
            raise ValueError(f"G_aa = {float(gaa):.3g} ≤ 0: r_ν is not concave in the action")
        gain = -g[n:, :n] / gaa
        log_std = 0.5 * torch.log(self.alpha / gaa).reshape(1)
        return GaussianPolicy(gain, torch.zeros(1, dtype=g.dtype), log_std)

    # --- rollouts and the upper level -----------------------------------------------------
    def sample_noise(self, episodes: int, *, generator: torch.Generator) -> RolloutNoise:
        """Standard-normal noise for ``episodes`` episodes of T₀ + H steps."""
        t, n = self.burn_in + self.horizon, self.state_dim
        kw = {"generator": generator, "dtype": self.A.dtype}
        return RolloutNoise(
            torch.randn(episodes, n, **kw),
            torch.randn(episodes, t, 1, **kw),
            torch.randn(episodes, t, n, **kw),
        )

    def rollout(self, policy: GaussianPolicy, noise: RolloutNoise) -> tuple[Tensor, Tensor]:
        """The windows [T₀, T₀ + H): ``obs [N, H, n]``, ``act [N, H, 1]``, differentiable in
        the policy (a = K s + k + σ ε, s' = A s + B a + ω w)."""
        s = self.start_std * noise.start
        obs, act = [], []
        std = policy.log_std.exp()
        for t in range(self.burn_in + self.horizon):
            a = s @ policy.gain.T + policy.bias + std * noise.action[:, t]
            if t >= self.burn_in:
                obs.append(s)
                act.append(a)
            s = s @ self.A.T + a @ self.B.T + self.noise_std * noise.state[:, t]
        return torch.stack(obs, 1), torch.stack(act, 1)

    def preference_probability(self, obs1: Tensor, act1: Tensor, obs2: Tensor, act2: Tensor):
        """The teacher's p* = σ(β(R*(σ¹) − R*(σ²))), ``[N]``."""
        r1 = self.reward(self.true_nu, obs1, act1).sum(-1)
        r2 = self.reward(self.true_nu, obs2, act2).sum(-1)
        return torch.sigmoid(self.beta * (r1 - r2))

    def pair_loglik(self, nu: Tensor, obs1, act1, obs2, act2) -> Tensor:
        """U_ν per pair with the label in expectation, ``[N]``."""
        p = self.preference_probability(obs1, act1, obs2, act2)
        delta = self.reward(nu, obs1, act1).sum(-1) - self.reward(nu, obs2, act2).sum(-1)
        return p * F.logsigmoid(delta) + (1 - p) * F.logsigmoid(-delta)

    def upper_objective(
        self, nu: Tensor, noise1: RolloutNoise, noise2: RolloutNoise, *, shift: bool = True
    ) -> Tensor:
        """Ĝ(ν) = mean over pairs of U_ν on rollouts of θ*(ν) with fixed noise; ``shift=False``
        detaches the rollouts (the pairs' distribution no longer moves with ν)."""
        pol = self.optimal_policy(nu)
        if not shift:
            pol = GaussianPolicy(*(t.detach() for t in (pol.gain, pol.bias, pol.log_std)))
        o1, a1 = self.rollout(pol, noise1)
        o2, a2 = self.rollout(pol, noise2)
        return self.pair_loglik(nu, o1, a1, o2, a2).mean()

    def hypergradient(
        self, nu: Tensor, *, pairs: int, blocks: int = 20, generator: torch.Generator
    ) -> HypergradientEstimate:
        """∇G, PEBBLE's term and the implicit term by autograd on ``blocks`` independent
        blocks of ``pairs // blocks`` pairs each; means and standard errors over blocks."""
        per = pairs // blocks
        x = nu.detach().clone().requires_grad_(True)
        pol = self.optimal_policy(x)  # one graph through the Riccati fixed point, reused
        tot, dirs = [], []
        for _ in range(blocks):
            o1, a1 = self.rollout(pol, self.sample_noise(per, generator=generator))
            o2, a2 = self.rollout(pol, self.sample_noise(per, generator=generator))
            u = self.pair_loglik(x, o1, a1, o2, a2).mean()
            (gt,) = torch.autograd.grad(u, x, retain_graph=True)
            fixed = (o1.detach(), a1.detach(), o2.detach(), a2.detach())
            (gd,) = torch.autograd.grad(self.pair_loglik(x, *fixed).mean(), x)
            tot.append(gt)
            dirs.append(gd)
        t, d = torch.stack(tot), torch.stack(dirs)
        i = t - d

        def se(x: Tensor) -> Tensor:
            return x.std(0) / blocks**0.5

        return HypergradientEstimate(
            t.mean(0), d.mean(0), i.mean(0), se(t), se(d), se(i), per * blocks, blocks
        )
