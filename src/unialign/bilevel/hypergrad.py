"""Implicit-differentiation hypergradients over lists of parameter tensors.

Setting and sign conventions (used by every function here and checked in
``tests/bilevel/test_hypergrad.py``):

- The lower problem is written as a **minimisation**, θ*(ν) = argmin_θ L(θ, ν). For an RL
  lower level that maximises a value V, pass L = −V. The Hessian H = ∇²_θθ L is then positive
  (semi-)definite near a minimiser, which conjugate gradient needs.
- Stationarity ∇_θ L(θ*(ν), ν) = 0 gives, by the implicit function theorem,
  dθ*/dν = −H⁻¹ ∇²_θν L, where ∇²_θν L = ∂(∇_θ L)/∂ν has shape [dim θ, dim ν].
  The same formula holds with V in place of L (both factors change sign), which is the form
  PARL states: dθ*/dν = −[∇²_θθ V]⁻¹ ∇²_θν V.
- For an upper function F(ν) = f(θ*(ν), ν) with g_θ = ∇_θ f,
  dF/dν = ∇_ν f + (dθ*/dν)ᵀ g_θ = ∇_ν f − (∇²_νθ L) H⁻¹ g_θ.
  :func:`implicit_hypergradient` returns the **second term only**, the implicit term
  −(∇²_νθ L) H⁻¹ g_θ; add the direct term ∇_ν f yourself. Whether f is maximised or
  minimised does not matter: the map g_θ ↦ implicit term is linear.
- (∇²_νθ L) v is computed without forming any matrix as ∇_ν ⟨∇_θ L, v⟩ with v held fixed
  (:func:`cross_vjp`), and H⁻¹ g_θ by conjugate gradient or a Neumann series on
  Hessian-vector products H p = ∇_θ ⟨∇_θ L, p⟩ (:func:`hvp`), i.e. by double backward.

Cost of one :func:`implicit_hypergradient` call: one backward pass with ``create_graph=True``
for ∇_θ L, ``iters`` Hessian-vector products (each a backward pass through the graph of
∇_θ L, roughly twice the cost of a plain backward), and one more such pass for the cross term:
``iters + 1`` double-backward passes in all. Conjugate gradient may stop early on ``tol``.

Singular H (for example softmax logits, invariant to a per-state constant shift): conjugate
gradient started at 0 stays in the Krylov space of b, so when b lies in the range of H it
converges to the minimum-norm solution H⁺b. If the null space of H is also annihilated by
the cross term (it is whenever L is invariant along those directions for every ν), the
hypergradient is exact without damping. ``damping`` λ > 0 solves (H + λI)x = b instead,
which is well posed for any b and biases the result by O(λ / smallest nonzero eigenvalue).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "SolveResult",
    "list_dot",
    "list_norm",
    "grad_or_zeros",
    "hvp",
    "cross_vjp",
    "conjugate_gradient",
    "neumann_inverse",
    "inverse_hvp",
    "implicit_hypergradient",
]

Vectors = list[Tensor]
MatVec = Callable[[Vectors], Vectors]


class SolveResult(NamedTuple):
    """An approximate solution of (H + λI) x = b.

    Attributes:
        x: the solution, one tensor per parameter tensor, detached.
        residual: ‖b − (H + λI) x‖ / ‖b‖ (0 when b = 0). Conjugate gradient reports its
            recursively updated residual, the Neumann series its exact residual.
        iters: Hessian-vector products spent.
        negative_curvature: True when conjugate gradient met a direction p with
            pᵀ(H + λI)p ≤ 0 and stopped there (the system is not positive definite: raise
            ``damping``); the returned x is the last iterate before that direction.
    """

    x: Vectors
    residual: float
    iters: int
    negative_curvature: bool = False


def list_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Σ_i ⟨a_i, b_i⟩ over two lists of same-shaped tensors (a 0-dim tensor)."""
    terms = [torch.sum(x * y) for x, y in zip(a, b, strict=True)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def list_norm(a: Sequence[Tensor]) -> float:
    """Euclidean norm of a list of tensors seen as one flat vector."""
    return math.sqrt(float(list_dot(a, a)))


def _as_list(t: Tensor | Sequence[Tensor]) -> Vectors:
    return [t] if isinstance(t, Tensor) else list(t)


def grad_or_zeros(
    out: Tensor,
    inputs: Sequence[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Vectors:
    """``torch.autograd.grad`` with zeros for inputs that ``out`` does not depend on."""
    if not out.requires_grad:  # e.g. a loss linear in θ has a constant gradient
        return [torch.zeros_like(p) for p in inputs]
    grads = torch.autograd.grad(
        out, inputs, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, inputs, strict=True)]


def _first_grads(loss: Callable[[], Tensor] | Sequence[Tensor], params: Sequence[Tensor]):
    if callable(loss):
        return grad_or_zeros(loss(), params, create_graph=True, retain_graph=True)
    return list(loss)


def hvp(
    loss: Callable[[], Tensor] | Sequence[Tensor],
    params: Sequence[Tensor],
    v: Sequence[Tensor],
) -> Vectors:
    """Hessian-vector product (∇²_θθ L) v by double backward.

    Args:
        loss: either a closure returning the scalar L, or the first gradients ∇_θ L already
            computed with ``create_graph=True`` (pass those to reuse one graph across many
            products, as the solvers below do).
        params: θ, the tensors to differentiate with respect to (``requires_grad=True``).
        v: one tensor per parameter, same shapes.

    Returns:
        ∇_θ ⟨∇_θ L, v⟩, detached. The graph of ∇_θ L is retained for further products.
    """
    grads = _first_grads(loss, params)
    dot = list_dot(grads, [x.detach() for x in v])
    return [h.detach() for h in grad_or_zeros(dot, params, create_graph=False, retain_graph=True)]


def cross_vjp(grads_theta: Sequence[Tensor], nu: Sequence[Tensor], v: Sequence[Tensor]) -> Vectors:
    """(∇²_νθ L) v = ∇_ν ⟨∇_θ L, v⟩ with v held fixed: one backward pass to ν.

    ``grads_theta`` must be ∇_θ L computed with ``create_graph=True``. Returns one tensor per
    entry of ``nu`` (zeros where L does not depend on it), detached.
    """
    dot = list_dot(grads_theta, [x.detach() for x in v])
    return [g.detach() for g in grad_or_zeros(dot, nu, create_graph=False, retain_graph=True)]


def conjugate_gradient(
    matvec: MatVec,
    b: Tensor | Sequence[Tensor],
    *,
    iters: int = 20,
    tol: float = 1e-10,
    damping: float = 0.0,
) -> SolveResult:
    """Solve (H + λI) x = b by conjugate gradient, with H given as a product ``matvec``.

    H must be symmetric; H + λI positive definite on the Krylov space of b (positive
    semi-definite H with b in its range also works: the iterates converge to the minimum-norm
    solution). Starts at x = 0, stops after ``iters`` products or when the relative residual
    ‖r‖/‖b‖ ≤ ``tol``. On a non-positive curvature direction it stops and returns the current
    iterate with ``negative_curvature=True`` (truncated CG, as in Steihaug's method), so a
    non-convex lower problem yields a finite, shortened solve rather than a blow-up.

    Cost: at most ``iters`` calls of ``matvec``. Exact after dim(b) iterations in exact
    arithmetic; in practice the error falls like ((√κ − 1)/(√κ + 1))^k for condition number κ.
    """
    b = [x.detach() for x in _as_list(b)]
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = float(list_dot(r, r))
    b_norm = math.sqrt(rs)
    if b_norm == 0.0:
        return SolveResult(x, 0.0, 0)
    k = 0
    negative = False
    while k < iters and math.sqrt(rs) > tol * b_norm:
        hp = matvec(p)
        ap = [h + damping * q for h, q in zip(hp, p, strict=True)]
        k += 1
        p_ap = float(list_dot(p, ap))
        if not p_ap > 0.0:  # also catches NaN
            negative = True
            break
        step = rs / p_ap
        x = [xi + step * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - step * ai for ri, ai in zip(r, ap, strict=True)]
        rs_new = float(list_dot(r, r))
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p, strict=True)]
        rs = rs_new
    return SolveResult(x, math.sqrt(rs) / b_norm, k, negative)


def neumann_inverse(
    matvec: MatVec,
    b: Tensor | Sequence[Tensor],
    *,
    iters: int = 20,
    alpha: float = 1.0,
    damping: float = 0.0,
) -> SolveResult:
    """Approximate (H + λI)⁻¹ b by the truncated Neumann series α Σ_{k<K} (I − α(H + λI))^k b.

    Converges when every eigenvalue μ of H + λI satisfies 0 < αμ < 2; α ≤ 1/μ_max gives a
    monotone decrease of the error, which shrinks like (1 − αμ_min)^K. The residual of the
    truncated sum is exactly (I − α(H + λI))^K b, which the last term already computed gives
    for free. Cost: K = ``iters`` calls of ``matvec``. Used by BARFI and by stochastic
    bilevel methods because each term needs only a product, never a step size search.
    """
    b = [x.detach() for x in _as_list(b)]
    b_norm = list_norm(b)
    p = [t.clone() for t in b]
    acc = [torch.zeros_like(t) for t in b]
    if b_norm == 0.0:
        return SolveResult(acc, 0.0, 0)
    for _ in range(iters):
        acc = [a + q for a, q in zip(acc, p, strict=True)]
        hp = matvec(p)
        p = [q - alpha * (h + damping * q) for q, h in zip(p, hp, strict=True)]
    return SolveResult([alpha * a for a in acc], list_norm(p) / b_norm, iters)


def inverse_hvp(
    grads_theta: Sequence[Tensor],
    theta: Sequence[Tensor],
    b: Sequence[Tensor],
    *,
    method: Literal["cg", "neumann"] = "cg",
    iters: int = 20,
    damping: float = 0.0,
    tol: float = 1e-10,
    neumann_alpha: float = 1.0,
) -> SolveResult:
    """(∇²_θθ L + λI)⁻¹ b from the first gradients ``grads_theta`` (``create_graph=True``)."""
    matvec: MatVec = lambda v: hvp(grads_theta, theta, v)  # noqa: E731
    if method == "cg":
        return conjugate_gradient(matvec, b, iters=iters, tol=tol, damping=damping)
    if method == "neumann":
        return neumann_inverse(matvec, b, iters=iters, alpha=neumann_alpha, damping=damping)
    raise ValueError(f"method must be 'cg' or 'neumann', got {method!r}")


def implicit_hypergradient(
    lower_loss: Callable[[], Tensor],
    upper_grad_theta: Sequence[Tensor],
    theta: Sequence[Tensor],
    nu: Sequence[Tensor],
    *,
    method: Literal["cg", "neumann"] = "cg",
    iters: int = 20,
    damping: float = 0.0,
    tol: float = 1e-10,
    neumann_alpha: float = 1.0,
    curvature: Callable[[], Tensor] | None = None,
) -> Vectors:
    """The implicit term −(∇²_νθ L) (∇²_θθ L + λI)⁻¹ g_θ of dF/dν at θ ≈ θ*(ν).

    Args:
        lower_loss: closure returning the scalar lower loss L(θ, ν) (minimised over θ;
            pass −V for a maximised value V), built from the tensors in ``theta`` and ``nu``.
        upper_grad_theta: g_θ = ∇_θ f(θ, ν) of the upper function at the current θ.
        theta: lower-level parameters (``requires_grad=True``), ideally at a minimiser of L.
        nu: upper-level parameters (``requires_grad=True``).
        method: ``"cg"`` (conjugate gradient) or ``"neumann"`` (series with step
            ``neumann_alpha``).
        iters: Hessian-vector products for the inverse; ``tol`` stops CG early.
        damping: λ ≥ 0 added to the Hessian.
        curvature: optional closure returning a scalar whose θ-Hessian replaces ∇²_θθ L in
            the solve, e.g. a Gauss–Newton or Fisher surrogate that is positive semi-definite
            by construction (for an entropy-regularised policy at its optimum, the Hessian of
            L is α times the policy's Fisher matrix). The cross term still comes from
            ``lower_loss``. Costs one more ``create_graph`` backward.

    Returns:
        One detached tensor per entry of ``nu``; the full hypergradient is ∇_ν f plus this.
        Cost: ``iters + 1`` double-backward passes plus one backward (see module docstring).
    """
    theta, nu = list(theta), list(nu)
    grads = grad_or_zeros(lower_loss(), theta, create_graph=True, retain_graph=True)
    curv = (
        grads
        if curvature is None
        else grad_or_zeros(curvature(), theta, create_graph=True, retain_graph=True)
    )
    sol = inverse_hvp(
        curv,
        theta,
        upper_grad_theta,
        method=method,
        iters=iters,
        damping=damping,
        tol=tol,
        neumann_alpha=neumann_alpha,
    )
    return [-c for c in cross_vjp(grads, nu, sol.x)]
