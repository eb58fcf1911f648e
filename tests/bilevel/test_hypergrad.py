"""Hessian-vector products, CG / Neumann inverses and the implicit hypergradient (float64).

The reference problem is a quadratic lower level L(θ, ν) = ½ θᵀAθ − θᵀBν with A SPD, so
∇_θ L = Aθ − Bν, θ*(ν) = A⁻¹Bν, ∇²_θθ L = A and ∇²_νθ L = −Bᵀ. For an upper f(θ, ν) the
implicit term is −(−Bᵀ) A⁻¹ g_θ = Bᵀ A⁻¹ g_θ = (dθ*/dν)ᵀ g_θ, and the whole hypergradient is
compared with autograd through the closed form θ*(ν) = solve(A, Bν).
"""

import pytest
import torch

from unialign.bilevel.hypergrad import (
    conjugate_gradient,
    hvp,
    implicit_hypergradient,
    neumann_inverse,
)

DT = torch.float64


def _spd(n: int, cond: float, seed: int = 0) -> torch.Tensor:
    """Q diag(eig) Qᵀ with eigenvalues spread log-uniformly on [1, cond]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=DT)
    return q @ torch.diag(eig) @ q.T


def _matvec(m: torch.Tensor):
    return lambda v: [m @ v[0]]


def test_hvp_matches_explicit_hessian():
    """f(x) = Σ sin(x_i) x_j c_ij: compare (∇²f) v with torch.autograd.functional.hessian."""
    c = torch.randn(4, 4, dtype=DT)
    x = torch.randn(4, dtype=DT, requires_grad=True)
    v = torch.randn(4, dtype=DT)

    def f(z):
        return (torch.sin(z)[:, None] * z[None, :] * c).sum()

    hess = torch.autograd.functional.hessian(f, x.detach())
    (hv,) = hvp(lambda: f(x), [x], [v])
    torch.testing.assert_close(hv, hess @ v, rtol=1e-12, atol=1e-12)
    # The same product from precomputed first gradients (the form the solvers reuse).
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    (hv2,) = hvp([g], [x], [v])
    torch.testing.assert_close(hv2, hv, rtol=0, atol=0)


def test_hvp_over_parameter_lists():
    """Two parameter tensors: the blocks of the product equal H·vec(v) of the joint Hessian."""
    a = torch.randn(2, dtype=DT, requires_grad=True)
    b = torch.randn(3, dtype=DT, requires_grad=True)
    w = torch.randn(2, 3, dtype=DT)

    def f(z):
        return torch.exp(z[:2] @ w @ z[2:]) + (z**4).sum()

    z = torch.cat([a, b]).detach()
    hess = torch.autograd.functional.hessian(f, z)
    va, vb = torch.randn(2, dtype=DT), torch.randn(3, dtype=DT)
    ha, hb = hvp(lambda: f(torch.cat([a, b])), [a, b], [va, vb])
    torch.testing.assert_close(torch.cat([ha, hb]), hess @ torch.cat([va, vb]))


def test_cg_solves_spd_system():
    a = _spd(12, cond=50.0)
    x_true = torch.randn(12, dtype=DT)
    b = a @ x_true
    sol = conjugate_gradient(_matvec(a), [b], iters=100, tol=1e-13)
    torch.testing.assert_close(sol.x[0], x_true, rtol=1e-9, atol=1e-9)
    assert sol.residual <= 1e-13 and sol.iters <= 100 and not sol.negative_curvature
    # The reported residual is the true relative residual.
    true_res = ((b - a @ sol.x[0]).norm() / b.norm()).item()
    assert true_res < 1e-11


def test_cg_damping_solves_shifted_system():
    """damping λ: CG solves (A + λI)x = b, not Ax = b."""
    a = _spd(8, cond=10.0)
    b = torch.randn(8, dtype=DT)
    lam = 0.7
    sol = conjugate_gradient(_matvec(a), [b], iters=50, tol=1e-14, damping=lam)
    torch.testing.assert_close(sol.x[0], torch.linalg.solve(a + lam * torch.eye(8, dtype=DT), b))


def test_cg_singular_min_norm_and_damping_bias():
    """PSD A with a null space, b ∈ range(A): undamped CG gives the min-norm solution A⁺b;
    with damping λ the error to A⁺b is O(λ) (λ/μ_min per eigen-direction, μ_min = 1 here)."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=DT))
    eig = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 4.0], dtype=DT)
    a = q @ torch.diag(eig) @ q.T
    b = a @ torch.randn(6, generator=g, dtype=DT)
    x_min = torch.linalg.pinv(a) @ b
    sol = conjugate_gradient(_matvec(a), [b], iters=20, tol=1e-14)
    torch.testing.assert_close(sol.x[0], x_min, rtol=1e-10, atol=1e-10)
    errs = []
    for lam in (1e-1, 1e-2, 1e-3):
        x = conjugate_gradient(_matvec(a), [b], iters=20, tol=1e-14, damping=lam).x[0]
        errs.append(((x - x_min).norm() / x_min.norm()).item())
        assert errs[-1] <= 1.01 * lam
    assert errs[0] > errs[1] > errs[2]


def test_cg_stops_on_negative_curvature():
    """Indefinite matrix along b: CG must stop, flag it and return a finite iterate."""
    a = torch.diag(torch.tensor([-1.0, 2.0], dtype=DT))
    sol = conjugate_gradient(_matvec(a), [torch.tensor([1.0, 0.0], dtype=DT)], iters=10)
    assert sol.negative_curvature and torch.isfinite(sol.x[0]).all()
    zero = conjugate_gradient(_matvec(a), [torch.zeros(2, dtype=DT)], iters=10)
    assert zero.iters == 0 and zero.residual == 0.0 and (zero.x[0] == 0).all()


def test_neumann_series_converges_to_inverse():
    """α = 1/μ_max, error (1 − μ_min/μ_max)^K: κ = 5, K = 150 → 0.8^150 ≈ 3e-15."""
    a = _spd(10, cond=5.0)
    b = torch.randn(10, dtype=DT)
    sol = neumann_inverse(_matvec(a), [b], iters=150, alpha=1 / 5.0)
    torch.testing.assert_close(sol.x[0], torch.linalg.solve(a, b), rtol=1e-10, atol=1e-10)
    true_res = ((b - a @ sol.x[0]).norm() / b.norm()).item()
    assert sol.residual == pytest.approx(true_res, rel=1e-6, abs=1e-14)
    short = neumann_inverse(_matvec(a), [b], iters=5, alpha=1 / 5.0)
    assert short.residual > 1e-2  # truncation visibly reported


def _quadratic_problem(seed=0):
    """θ = (θ₁ ∈ ℝ³, θ₂ ∈ ℝ²), ν = (ν₁ ∈ ℝ², ν₂ ∈ ℝ²); A SPD 5×5 (κ = 8), B 5×4."""
    g = torch.Generator().manual_seed(seed)
    a = _spd(5, cond=8.0, seed=seed)
    b = torch.randn(5, 4, generator=g, dtype=DT)
    c = torch.randn(5, generator=g, dtype=DT)
    nu0 = torch.randn(4, generator=g, dtype=DT)

    def lower(theta, nu):
        return 0.5 * theta @ a @ theta - theta @ b @ nu

    def upper(theta, nu):  # non-quadratic in θ, with a direct ν term
        return torch.sin(theta + c).sum() + (theta**2).sum() * nu.sum() + (nu**3).sum()

    def closed_form(nu):
        return torch.linalg.solve(a, b @ nu)

    return a, b, lower, upper, closed_form, nu0


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_implicit_hypergradient_matches_closed_form(method):
    a, b, lower, upper, closed_form, nu0 = _quadratic_problem()
    # Ground truth: d/dν f(θ*(ν), ν) by autograd through the closed form.
    nu = nu0.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(upper(closed_form(nu), nu), nu)

    theta_star = closed_form(nu0)
    t1 = theta_star[:3].clone().requires_grad_(True)
    t2 = theta_star[3:].clone().requires_grad_(True)
    n1 = nu0[:2].clone().requires_grad_(True)
    n2 = nu0[2:].clone().requires_grad_(True)
    theta, nus = [t1, t2], [n1, n2]

    def joined():
        return torch.cat([t1, t2]), torch.cat([n1, n2])

    f = upper(*joined())
    g_theta = torch.autograd.grad(f, theta, retain_graph=True)
    direct = torch.autograd.grad(f, nus)
    kw = {"iters": 50} if method == "cg" else {"iters": 400, "neumann_alpha": 1 / 8.0}
    implicit = implicit_hypergradient(
        lambda: lower(*joined()), g_theta, theta, nus, method=method, **kw
    )
    total = torch.cat([d + i for d, i in zip(direct, implicit)])
    torch.testing.assert_close(total, exact, rtol=1e-6, atol=1e-6)
    # Sign convention: the implicit term alone is (dθ*/dν)ᵀ g_θ = Bᵀ A⁻¹ g_θ.
    jac = torch.autograd.functional.jacobian(closed_form, nu0)
    torch.testing.assert_close(
        torch.cat(implicit), jac.T @ torch.cat(g_theta), rtol=1e-6, atol=1e-6
    )


def test_implicit_hypergradient_sign_invariant_to_max_form():
    """Passing L = −V for a maximised V: the implicit term of a concave V equals that of L."""
    a, b, lower, upper, closed_form, nu0 = _quadratic_problem(seed=3)
    theta = closed_form(nu0).clone().requires_grad_(True)
    nu = nu0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(upper(theta, nu), theta)
    from_l = implicit_hypergradient(lambda: lower(theta, nu), [g], [theta], [nu], iters=30)
    value = lambda: -lower(theta, nu)  # noqa: E731  V, maximised at the same θ*
    from_v = implicit_hypergradient(lambda: -value(), [g], [theta], [nu], iters=30)
    torch.testing.assert_close(from_l[0], from_v[0], rtol=0, atol=0)
    jac = torch.autograd.functional.jacobian(closed_form, nu0)
    torch.testing.assert_close(from_l[0], jac.T @ g)


def test_implicit_hypergradient_damping_biases():
    """Damping λ replaces A by A + λI: the implicit term is Bᵀ(A + λI)⁻¹g exactly."""
    a, b, lower, upper, closed_form, nu0 = _quadratic_problem(seed=5)
    theta = closed_form(nu0).clone().requires_grad_(True)
    nu = nu0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(upper(theta, nu), theta)
    lam = 0.5
    out = implicit_hypergradient(
        lambda: lower(theta, nu), [g], [theta], [nu], iters=30, damping=lam
    )
    torch.testing.assert_close(
        out[0], b.T @ torch.linalg.solve(a + lam * torch.eye(5, dtype=DT), g)
    )
