"""A-PARL's implicit term for the refit reward model against the exact hypergradient.

The exact problem: a softmax bandit whose "sequences" are n arms. The policy is π_θ =
softmax(θ) (one logit per arm: the non-parametric limit), the lower objective
V(θ, ν) = Σ_y π_θ(y) r_ν(y) − β KL(π_θ ‖ π_ref) has the closed-form maximiser
θ*(ν) = log π_ref + r_ν / β (up to a constant), so π*_ν ∝ π_ref exp(r_ν/β), and the upper
objective G(ν) = Σ_{y¹,y²} π*(y¹) π*(y²) ū_ν(y¹, y²) with ū the expected label log-likelihood
(teacher P(y¹ ≻ y²) = p, ū = p log σ(Δr) + (1 − p) log σ(−Δr); U is linear in the label, so the
expectation over labels is ū). Autograd through θ*(ν) gives dG/dν; with π* held fixed it gives
the direct term; their difference is the exact implicit term.

By hand (docs/aparl-lm.md): the score of arm y is s_y = e_y − π*, F = diag(π*) − π*π*ᵀ, and
g = E[(U − Ū)(s¹ + s²)] has components g_y = π*_y (A_y + B_y) with A_y = E[U − Ū | y¹ = y],
B_y = E[U − Ū | y² = y]; Σ_y g_y = 0, so g lies in the range of the singular F (whose null space
is the constant shift) and CG from 0 finds the min-norm solution x = A + B − const. Then
E[∇r sᵀ] x = Σ_y π*_y ∇r_y (x_y − π*·x) = Σ_i Cov_{π*⊗π*}(U(σ), ∇_ν r_ν(y^i)): the implicit
term is (1/β) Σ_i Cov(U, ∇r(y^i)) — no Hessian. The
estimator evaluated with every arm as a sample (weights π*) and every pair (weights π*π*)
must therefore equal the exact term up to rounding: float64, n = 5 so CG is exact after
rank(F) = 4 iterations; the remaining error is a few ulps of the O(1) entries times the
condition number of F (≈ 1/min π* ≈ 30), so 1e-9 relative is generous.
"""

from __future__ import annotations

import torch

from unialign.bilevel.hypergrad import implicit_hypergradient
from unialign.lm.refit_aparl import aparl_implicit_term, pair_log_likelihood

N_ARMS, DIM, HIDDEN = 5, 3, 4


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(N_ARMS, DIM, generator=g, dtype=torch.float64)
    log_ref = torch.log_softmax(torch.randn(N_ARMS, generator=g, dtype=torch.float64), 0)
    gold = torch.randn(N_ARMS, generator=g, dtype=torch.float64)
    w1 = torch.randn(HIDDEN, DIM, generator=g, dtype=torch.float64).requires_grad_()
    w2 = torch.randn(HIDDEN, generator=g, dtype=torch.float64).requires_grad_()
    p = torch.sigmoid(gold[:, None] - gold[None, :])  # teacher P(y¹ ≻ y²)

    def reward():  # a small nonlinear reward model r_ν(y) = w2 · tanh(W1 φ_y)
        return torch.tanh(feats @ w1.T) @ w2

    return log_ref, p, reward, [w1, w2]


def _pairs(n: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return torch.stack([i.reshape(-1), j.reshape(-1)], 1)


def _exact(beta: float, seed: int = 0):
    log_ref, p, reward, nu = _problem(seed)
    r = reward()
    pi = torch.softmax(log_ref + r / beta, 0)  # π*_ν
    u = pair_log_likelihood(r[:, None], r[None, :], p)
    total = torch.autograd.grad((pi[:, None] * pi[None, :] * u).sum(), nu, retain_graph=True)
    pd = pi.detach()
    direct = torch.autograd.grad((pd[:, None] * pd[None, :] * u).sum(), nu)
    return [t - d for t, d in zip(total, direct)], (log_ref, p, reward, nu, pd)


def _estimate(beta: float, seed: int = 0, *, utility=None, iters: int = N_ARMS):
    _, (log_ref, p, reward, nu, pi) = _exact(beta, seed)
    r = reward()
    pairs = _pairs(N_ARMS)
    scores = torch.eye(N_ARMS, dtype=torch.float64) - pi[None, :]  # s_y = e_y − π*
    u = pair_log_likelihood(r[pairs[:, 0]], r[pairs[:, 1]], p[pairs[:, 0], pairs[:, 1]])
    return aparl_implicit_term(
        scores, pi, r, nu, pairs, pi[pairs[:, 0]] * pi[pairs[:, 1]],
        u if utility is None else utility, beta=beta, iters=iters, damping=0.0,
    )  # fmt: skip


def test_estimator_equals_the_exact_implicit_term():
    """The docstring's bandit at β = 0.7: estimator = autograd through θ*(ν) − direct term."""
    exact, _ = _exact(0.7)
    est = _estimate(0.7)
    assert est.residual < 1e-10 and not est.negative_curvature
    for e, x in zip(exact, est.grads):
        assert float(e.abs().max()) > 1e-3  # the term is not trivially zero here
        torch.testing.assert_close(x, e, rtol=1e-9, atol=1e-12)


def test_estimator_equals_the_bilevel_hessian_solve():
    """The same term from unialign.bilevel's generic solver with the true Hessian of L = −V at
    θ* (CG on Hessian-vector products by double backward): the Fisher form is exact here."""
    beta = 0.7
    exact, (log_ref, p, reward, nu, _) = _exact(beta)
    theta = (log_ref + reward().detach() / beta).requires_grad_()

    def lower_loss():  # −V(θ, ν) = −Σ π r + β Σ π (log π − log π_ref)
        logpi = torch.log_softmax(theta, 0)
        pi = logpi.exp()
        return -(pi * reward()).sum() + beta * (pi * (logpi - log_ref)).sum()

    pi = torch.softmax(theta, 0)
    r = reward().detach()
    u = pair_log_likelihood(r[:, None], r[None, :], p)
    g_theta = torch.autograd.grad((pi[:, None] * pi[None, :] * u).sum(), theta)
    via_hessian = implicit_hypergradient(lower_loss, g_theta, [theta], nu, iters=N_ARMS)
    for e, x in zip(exact, via_hessian):
        torch.testing.assert_close(x, e, rtol=1e-8, atol=1e-12)


def test_correction_vanishes_as_beta_grows_and_for_constant_utility():
    """(1/β)·(…): the term at β = 10⁶ is 10⁻⁶ × (the term at β = 1 with π* of β = 10⁶) → 0,
    and it is 0 (up to rounding) when U is the same for every pair (then U − Ū = 0, g = 0, x = 0)."""
    big = _estimate(1e6)
    assert max(float(t.abs().max()) for t in big.grads) < 1e-5
    exact_big, _ = _exact(1e6)
    for e, x in zip(exact_big, big.grads):
        torch.testing.assert_close(x, e, rtol=1e-6, atol=1e-15)
    const = _estimate(0.7, utility=torch.full((N_ARMS * N_ARMS,), -0.3, dtype=torch.float64))
    # Ū = Σ_m v_m U_m equals U only up to rounding (Σ v_m = 1 ± ulps): |U − Ū| ~ 1e-17
    assert all(float(t.abs().max()) < 1e-12 for t in const.grads)
