"""The exact side of the A-PARL diagnosis: the soft LQ problem of ``unialign.bilevel.lq``.

Hand-checkable cases for θ*(ν) (the discounted Riccati fixed point and the soft-optimal
Gaussian), and the exact ∇G checked against central finite differences of the same
common-random-number objective.
"""

import math

import pytest
import torch

from unialign.bilevel.lq import GaussianPolicy, SoftLQ

DT = torch.float64


def _scalar(gamma, alpha=0.5, a=1.0, b=1.0):
    return SoftLQ(
        A=torch.tensor([[a]], dtype=DT),
        B=torch.tensor([[b]], dtype=DT),
        noise_std=0.3,
        gamma=gamma,
        alpha=alpha,
        true_nu=torch.tensor([1.0, 0.0, 0.5], dtype=DT),
        horizon=4,
    )


def test_cost_matrix_and_reward_by_hand():
    """ν = (q, m, ρ) for z = (s, a): M = [[q, m], [m, ρ]], r = −½(q s² + 2 m s a + ρ a²).
    s = 2, a = −1, ν = (1, 0.5, 3): r = −½(4 − 2 + 3) = −2.5."""
    p = _scalar(0.0)
    nu = torch.tensor([1.0, 0.5, 3.0], dtype=DT)
    torch.testing.assert_close(p.cost_matrix(nu), torch.tensor([[1.0, 0.5], [0.5, 3.0]], dtype=DT))
    r = p.reward(nu, torch.tensor([2.0], dtype=DT), torch.tensor([-1.0], dtype=DT))
    assert float(r) == pytest.approx(-2.5, abs=1e-15)


def test_myopic_policy_by_hand():
    """γ = 0: Q = r, so π* ∝ exp(r/α) = N(−m s/ρ, α/ρ). ν = (2, 0.5, 4), α = 0.5:
    K = −0.125, σ² = 0.125, log σ = ½ log 0.125."""
    p = _scalar(0.0)
    pol = p.optimal_policy(torch.tensor([2.0, 0.5, 4.0], dtype=DT))
    assert float(pol.gain) == pytest.approx(-0.125, abs=1e-15)
    assert float(pol.log_std) == pytest.approx(0.5 * math.log(0.125), abs=1e-14)


def test_riccati_golden_ratio():
    """s' = s + a, r = −½(s² + a²), γ = 1: P = 1 + P − P²/(1 + P) ⇒ P² − P − 1 = 0,
    P = φ = (1 + √5)/2; K = −P/(1 + P) = −1/φ; σ² = α/(1 + P) = α/φ²."""
    phi = (1 + math.sqrt(5)) / 2
    p = _scalar(1.0, alpha=0.5)
    nu = torch.tensor([1.0, 0.0, 1.0], dtype=DT)
    assert float(p.riccati(nu)) == pytest.approx(phi, rel=1e-12)
    pol = p.optimal_policy(nu)
    assert float(pol.gain) == pytest.approx(-1 / phi, rel=1e-12)
    assert float(2 * pol.log_std) == pytest.approx(math.log(0.5 / phi**2), rel=1e-12)


def _two_dim(gamma=0.9, burn_in=0):
    return SoftLQ.example(gamma=gamma, horizon=5, burn_in=burn_in)


NU = torch.tensor([0.5, 0.2, 0.0, 1.0, 0.1, 0.4], dtype=DT)


def test_optimal_policy_minimises_the_expected_actor_loss():
    """SAC's actor loss with the soft Q, in closed form for a = μ + σε, μ = K s + k:
    E[α log π − Q] = −(α/2) log(2πeσ²) + ½[sᵀG_ss s + 2 μ G_as s + G_aa(μ² + σ²)] (+ const).
    Its gradient in (K, k, log σ) vanishes at θ*(ν) (to rounding, ~1e-15 × scale)."""
    p = _two_dim()
    g = p.q_matrix(NU).detach()
    pol = p.optimal_policy(NU)
    theta = [t.detach().clone().requires_grad_(True) for t in (pol.gain, pol.bias, pol.log_std)]
    s = torch.randn(64, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    mu = s @ theta[0].T + theta[1]
    var = torch.exp(2 * theta[2])
    quad = (
        (s @ g[:2, :2] * s).sum(-1, keepdim=True)
        + 2 * mu * (s @ g[:2, 2:])
        + g[2, 2] * (mu**2 + var)
    )
    loss = (-0.5 * p.alpha * torch.log(2 * math.pi * math.e * var) + 0.5 * quad).mean()
    for grad in torch.autograd.grad(loss, theta):
        assert grad.abs().max() < 1e-12


def test_riccati_derivative_matches_finite_differences():
    """dP/dν through the unrolled fixed point vs central differences (h = 1e-6: truncation
    O(h²) ≈ 1e-12, rounding ≈ 1e-16/h = 1e-10)."""
    p = _two_dim(gamma=0.99)
    x = NU.clone().requires_grad_(True)
    w = torch.tensor([[1.0, 0.3], [0.3, -2.0]], dtype=DT)  # a fixed contraction of P
    (auto,) = torch.autograd.grad((p.riccati(x) * w).sum(), x)
    h, fd = 1e-6, torch.empty(6, dtype=DT)
    for i in range(6):
        e = torch.zeros(6, dtype=DT)
        e[i] = h
        fd[i] = ((p.riccati(NU + e) - p.riccati(NU - e)) * w).sum() / (2 * h)
    torch.testing.assert_close(auto, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("burn_in", [0, 3])
def test_upper_gradient_matches_finite_differences(burn_in):
    """∇Ĝ on fixed noise (common random numbers make Ĝ a smooth function of ν) vs central
    differences, h = 1e-5 (truncation ~h² × third derivative ≈ 1e-10). The split into
    PEBBLE's term (rollouts detached) and the implicit term is checked the same way, with the
    policy frozen at θ*(ν₀)."""
    p = _two_dim(burn_in=burn_in)
    gen = torch.Generator().manual_seed(0)
    n1, n2 = p.sample_noise(500, generator=gen), p.sample_noise(500, generator=gen)
    x = NU.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(p.upper_objective(x, n1, n2), x)
    (direct,) = torch.autograd.grad(p.upper_objective(x, n1, n2, shift=False), x)
    frozen = p.optimal_policy(NU)
    o1, a1 = p.rollout(frozen, n1)
    o2, a2 = p.rollout(frozen, n2)
    h, fd, fd_direct = 1e-5, torch.empty(6, dtype=DT), torch.empty(6, dtype=DT)
    for i in range(6):
        e = torch.zeros(6, dtype=DT)
        e[i] = h
        fd[i] = (p.upper_objective(NU + e, n1, n2) - p.upper_objective(NU - e, n1, n2)) / (2 * h)
        up = p.pair_loglik(NU + e, o1, a1, o2, a2).mean()
        fd_direct[i] = (up - p.pair_loglik(NU - e, o1, a1, o2, a2).mean()) / (2 * h)
    torch.testing.assert_close(auto, fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(direct, fd_direct, rtol=1e-6, atol=1e-9)
    assert (auto - direct).norm() > 1e-3 * auto.norm()  # the implicit term is not vacuous


def test_example_instance():
    """The diagnosis instance: M_{ν*} = diag(1, 0.5, 0.2) (r* = −½(s₁² + ½ s₂² + 0.2 a²))."""
    p = SoftLQ.example()
    torch.testing.assert_close(
        p.cost_matrix(p.true_nu), torch.diag(torch.tensor([1.0, 0.5, 0.2], dtype=DT))
    )
    assert (p.gamma, p.alpha, p.horizon, p.nu_dim) == (0.99, 0.1, 10, 6)


def test_hypergradient_blocks_and_errors():
    """total = direct + implicit per block, so also for the means; standard errors positive."""
    p = _two_dim()
    est = p.hypergradient(NU, pairs=400, blocks=4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(est.total, est.direct + est.implicit)
    assert est.pairs == 400 and bool((est.implicit_se > 0).all())


def test_rollout_follows_the_dynamics():
    """One step by hand: s₀ = start_std·ξ, a₀ = K s₀ + k + σ ε₀, s₁ = A s₀ + B a₀ + ω w₀."""
    p = _two_dim()
    pol = GaussianPolicy(
        torch.tensor([[0.5, -1.0]], dtype=DT),
        torch.tensor([0.1], dtype=DT),
        torch.zeros(1, dtype=DT),
    )
    noise = p.sample_noise(1, generator=torch.Generator().manual_seed(2))
    obs, act = p.rollout(pol, noise)
    s0 = noise.start[0]
    a0 = pol.gain[0] @ s0 + 0.1 + noise.action[0, 0, 0]
    torch.testing.assert_close(act[0, 0, 0], a0)
    torch.testing.assert_close(obs[0, 1], p.A @ s0 + p.B[:, 0] * a0 + 0.3 * noise.state[0, 0])
