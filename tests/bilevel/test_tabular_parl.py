"""PARL's hypergradient on the tabular bandit against the exact one (``unialign.bilevel.tabular``).

The lower level has the closed form θ*(ν) = r_ν/α (centred), so autograd through it gives the
exact dG/dν. The A-PARL estimator (direct term + implicit term by CG on HVPs of L = −V) must
match it; PEBBLE's direct term alone must not. Tolerances: float64, CG run to a relative
residual of 1e-14 → estimator relative error < 1e-10 (measured 1e-15 … 6e-13).
"""

import math

import pytest
import torch

from unialign.bilevel.tabular import EntropyBandit

DT = torch.float64


def _rel(x, ref):
    return ((x - ref).norm() / ref.norm()).item()


def _cos(x, ref):
    return (x @ ref / (x.norm() * ref.norm())).item()


def _problem(states, actions, dim, alpha, seed=0):
    g = torch.Generator().manual_seed(seed)
    bandit = EntropyBandit.random(states, actions, dim, alpha=alpha, generator=g)
    nu = torch.randn(bandit.features.shape[-1], generator=g, dtype=DT)
    return bandit, nu


# ----------------------------------------------------------------------------- tabular


def test_bandit_closed_forms_by_hand():
    """Lower level: V(θ*) = α log Σ_a exp(r/α) per state (the soft maximum) and ∇_θ V(θ*) = 0.
    Upper level: with ν = 0 every Δ_ν = 0, so U = log σ(0) = −ln 2 for every pair and
    G = −ln 2 whatever π* is."""
    bandit, nu = _problem(3, 4, None, alpha=0.7)
    theta = bandit.optimal_logits(nu).requires_grad_(True)
    v = bandit.lower_objective(theta, nu)
    soft_max = bandit.alpha * torch.logsumexp(bandit.reward(nu) / bandit.alpha, -1)
    torch.testing.assert_close(v, (bandit.state_probs * soft_max).sum())
    (grad,) = torch.autograd.grad(v, theta)
    assert grad.abs().max() < 1e-12
    zero = torch.zeros_like(nu)
    g0 = bandit.upper_objective(bandit.optimal_logits(zero), zero)
    assert g0.item() == pytest.approx(-math.log(2.0), abs=1e-14)


@pytest.mark.parametrize(
    ("states", "actions", "dim", "alpha"),
    [(3, 4, None, 0.5), (3, 4, 3, 0.5), (4, 5, 2, 0.3), (2, 3, None, 0.2)],
)
def test_aparl_matches_exact_hypergradient(states, actions, dim, alpha):
    """Undamped CG gives the minimum-norm solution of the singular softmax Hessian system;
    the null directions (per-state shifts) are annihilated by the cross term, so the
    estimate is exact up to rounding."""
    bandit, nu = _problem(states, actions, dim, alpha)
    exact = bandit.exact_hypergradient(nu)
    assert _rel(bandit.aparl_gradient(nu), exact) < 1e-10
    # At θ* the Hessian of L = −V is α Σ_s d(s)(diag π − ππᵀ), the Fisher matrix: the SAC
    # estimator's default curvature is exact here too.
    assert _rel(bandit.aparl_gradient(nu, curvature="fisher"), exact) < 1e-10


def test_pebble_gradient_is_biased():
    """PEBBLE's term alone, on two configurations where the distribution shift matters.

    Tabular reward (3 states × 4 actions, α = 0.5): relative error 0.23 (measured), cosine 0.98.
    Misspecified linear reward (d = 3 < 12, α = 0.5): the ignored term dominates and
    PEBBLE's direction is reversed, cosine −0.999 (measured), relative error 1.27.
    """
    bandit, nu = _problem(3, 4, None, 0.5)
    exact, pebble = bandit.exact_hypergradient(nu), bandit.pebble_gradient(nu)
    assert _rel(pebble, exact) > 0.1
    bandit, nu = _problem(3, 4, 3, 0.5)
    exact, pebble = bandit.exact_hypergradient(nu), bandit.pebble_gradient(nu)
    assert _rel(pebble, exact) > 1.0 and _cos(pebble, exact) < -0.9
    assert _rel(bandit.aparl_gradient(nu), exact) < 1e-10


def test_at_true_reward_pebble_vanishes_but_parl_does_not():
    """Tabular ν = r*: every pair's U is maximised (∂U/∂Δ = p* − σ(Δ) = 0), so PEBBLE's term is
    exactly 0; the PARL objective still moves, through π*, towards pairs with higher
    log-likelihood, and A-PARL follows the exact gradient there too."""
    bandit, _ = _problem(3, 4, None, 0.5)
    nu = bandit.true_reward.reshape(-1).clone()
    assert bandit.pebble_gradient(nu).abs().max() < 1e-14
    exact = bandit.exact_hypergradient(nu)
    assert exact.norm() > 1e-3  # measured 6.5e-3: small, but far from rounding
    assert _rel(bandit.aparl_gradient(nu), exact) < 1e-10


def test_gauge_shift_and_damping():
    """θ* + c_s (a constant per state) is the same policy: same estimate. Damping λ biases
    the result by O(λ/μ_min): error falls with λ, and undamped CG is exact."""
    bandit, nu = _problem(3, 4, None, 0.5)
    exact = bandit.exact_hypergradient(nu)
    shifted = bandit.optimal_logits(nu) + torch.tensor([[1.0], [-2.0], [5.0]], dtype=DT)
    assert _rel(bandit.aparl_gradient(nu, theta=shifted), exact) < 1e-10
    errs = [_rel(bandit.aparl_gradient(nu, damping=lam), exact) for lam in (1e-2, 1e-3, 1e-4)]
    assert errs[0] > errs[1] > errs[2] > 1e-10
    assert errs[2] < 1e-2


def test_neumann_series_on_bandit():
    """Neumann series with α_N = 1/(α max_s d(s)) ≥ 1/μ_max: converges, slowly (κ is large),
    to 3e-3 relative error after 2000 products (measured); asserted < 1e-2."""
    bandit, nu = _problem(3, 4, None, 0.5)
    step = 1.0 / (bandit.alpha * bandit.state_probs.max().item())
    est = bandit.aparl_gradient(nu, method="neumann", iters=2000, neumann_alpha=step)
    assert _rel(est, bandit.exact_hypergradient(nu)) < 1e-2


def test_monte_carlo_estimator_converges():
    """Sampled queries and labels, score function with a batch-mean baseline, exact lower
    Hessian: mean relative error over 3 draws falls from 3.2e-2 (N = 2·10³) to 4.6e-3
    (N = 2·10⁵) (measured); asserted < 0.03 at 2·10⁵ and at least halving. PEBBLE's sampled
    term stays > 0.1 away (measured 0.22-0.24)."""
    bandit, nu = _problem(3, 4, None, 0.5)
    exact = bandit.exact_hypergradient(nu)
    g = torch.Generator().manual_seed(7)
    errors = {}
    for n in (2_000, 200_000):
        errs, pebble_errs = [], []
        for _ in range(3):
            pebble, est, sol = bandit.mc_aparl_gradient(
                nu, bandit.sample_queries(nu, n, generator=g)
            )
            errs.append(_rel(est, exact))
            pebble_errs.append(_rel(pebble, exact))
            assert sol.residual < 1e-10
        errors[n] = sum(errs) / 3
        assert min(pebble_errs) > 0.1
    assert errors[200_000] < 0.03 and errors[200_000] < 0.5 * errors[2_000]
