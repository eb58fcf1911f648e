"""A-PARL's hypergradient correction for a reward model refit on the policy's own samples.

PARL (Chakraborty et al. 2023, "PARL: A Unified Framework for Policy Alignment in Reinforcement
Learning", arXiv 2308.02585) writes RLHF as a bilevel problem. Here (derivation in
``docs/aparl-lm.md``):

- lower level: θ*(ν) = argmax_θ V(θ, ν), V = E_{x, y∼π_θ}[r_ν(x, y)] − β KL(π_θ ‖ π_ref);
- upper level: G(ν) = E_{σ∼ρ(θ*(ν))}[U_ν(σ)], σ = (x, y¹, y²) a pair of the policy's samples
  with ρ(σ; θ) = π_θ(y¹|x) π_θ(y²|x), and U_ν(σ) = ℓ log σ(r_ν(y¹) − r_ν(y²))
  + (1 − ℓ) log σ(r_ν(y²) − r_ν(y¹)) the log-likelihood of the teacher's label ℓ.

Its gradient is ∇G = E[∇_ν U_ν] + (dθ*/dν)ᵀ E[U_ν ∇_θ log ρ] (classic RLHF keeps the first
term only), with dθ*/dν = −[∇²_θθ V]⁻¹ ∇²_θν V. For this V:

- ∇²_θν V = E[s ∇_ν r_νᵀ], s = ∇_θ log π_θ(y|x) the per-sequence score vector;
- −∇²_θθ V = β F at θ*, F = E[s sᵀ] the policy's Fisher information (V = β log Z − β KL(π_θ ‖
  π*_ν) with π*_ν ∝ π_ref exp(r_ν/β), and the Hessian of a KL at its minimum is the Fisher;
  exact for a softmax over whole sequences, an approximation for a parametric policy that is
  only near θ*).

So the implicit term is (1/β) E[∇_ν r sᵀ] F⁻¹ E[(U − Ū) (s¹ + s²)] (Ū: a baseline, unbiased
because E[s] = 0). :func:`aparl_implicit_term` evaluates it on weighted samples: F⁻¹ by
conjugate gradient (:func:`unialign.bilevel.hypergrad.conjugate_gradient`) on the damped
Fisher-vector product v ↦ Σ_n w_n s_n (s_n·v) + λv, and the cross term E[∇_ν r sᵀ] x as one
vector-Jacobian product ∇_ν Σ_n c_n r_ν(y_n) with c_n = w_n (s_n·x) centred per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from unialign.bilevel.hypergrad import conjugate_gradient, grad_or_zeros

__all__ = ["ImplicitTerm", "aparl_implicit_term", "pair_log_likelihood"]


class ImplicitTerm(NamedTuple):
    """The implicit term and diagnostics of its solve.

    Attributes:
        grads: one detached tensor per entry of ``nu``: (dθ*/dν)ᵀ E[U ∇_θ log ρ].
        residual: CG's relative residual ‖g − (F + λI)x‖ / ‖g‖.
        iters: Fisher-vector products spent.
        negative_curvature: CG met a non-positive direction (cannot happen with λ > 0).
    """

    grads: list[Tensor]
    residual: float
    iters: int
    negative_curvature: bool


def pair_log_likelihood(r1: Tensor, r2: Tensor, label: Tensor) -> Tensor:
    """U = ℓ log σ(r¹ − r²) + (1 − ℓ) log σ(r² − r¹), per pair (ℓ ∈ {0, ½, 1})."""
    d = r1 - r2
    return label * torch.nn.functional.logsigmoid(d) + (1 - label) * torch.nn.functional.logsigmoid(
        -d
    )


def aparl_implicit_term(
    scores: Tensor,
    weights: Tensor,
    rewards: Tensor,
    nu: Sequence[Tensor],
    pairs: Tensor,
    pair_weights: Tensor,
    utility: Tensor,
    *,
    beta: float,
    iters: int = 10,
    damping: float = 1e-3,
    groups: Tensor | None = None,
) -> ImplicitTerm:
    """(1/β) E[∇_ν r sᵀ] (F + λI)⁻¹ E[(U − Ū)(s¹ + s²)] on weighted samples (module docstring).

    Args:
        scores: ``[N, d]`` score vectors s_n = ∇_θ log π_θ(y_n | x_n) of the N samples.
        weights: ``[N]`` sample weights w_n summing to 1 (1/N for draws of the policy; π(y)
            for an exact expectation over every sequence).
        rewards: ``[N]`` r_ν(x_n, y_n), differentiable with respect to ``nu``.
        nu: the reward model's parameters.
        pairs: ``[M, 2]`` long, the samples (indices into N) of each labelled pair.
        pair_weights: ``[M]`` weights summing to 1 (1/M, or π(y¹)π(y²) for the exact sum).
        utility: ``[M]`` U_ν of each pair (its value only: it is detached here).
        beta: β > 0, the KL coefficient of the lower objective.
        iters: conjugate-gradient iterations (each one Fisher-vector product: 2·N·d flops).
        damping: λ ≥ 0 added to F (F has rank ≤ N ≪ d for an LM, so λ > 0 there).
        groups: ``[N]`` long, the prompt of each sample: c_n is centred within its prompt (a
            per-prompt baseline for ∇_ν r; unbiased because E[s | x] = 0). ``None``: one group.

    Returns:
        :class:`ImplicitTerm`; the full hypergradient is E[∇_ν U] plus ``grads``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (the lower objective's KL coefficient), got {beta}")
    s = scores.detach()
    w = weights.detach().to(s.dtype)
    u = utility.detach().to(s.dtype)
    v = pair_weights.detach().to(s.dtype)
    # g = Σ_m v_m (U_m − Ū)(s_{m1} + s_{m2}) = E[(U − Ū) ∇_θ log ρ(σ; θ)]
    adv = v * (u - (v * u).sum())
    g = adv @ s[pairs[:, 0]] + adv @ s[pairs[:, 1]]

    def fisher(x: list[Tensor]) -> list[Tensor]:  # F x = Σ_n w_n s_n (s_n · x)
        return [s.T @ (w * (s @ x[0]))]

    sol = conjugate_gradient(fisher, [g], iters=iters, damping=damping, tol=1e-12)
    a = w * (s @ sol.x[0])  # a_n = w_n (s_n · x)
    if groups is None:
        groups = torch.zeros(len(a), dtype=torch.long, device=a.device)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    a_sum = torch.zeros(n_groups, dtype=a.dtype, device=a.device).index_add_(0, groups, a)
    w_sum = torch.zeros(n_groups, dtype=a.dtype, device=a.device).index_add_(0, groups, w)
    c = a - w * (a_sum / w_sum.clamp_min(torch.finfo(a.dtype).tiny))[groups]
    cross = (c.to(rewards.dtype) * rewards).sum() / beta
    grads = grad_or_zeros(cross, list(nu), retain_graph=True)
    return ImplicitTerm([x.detach() for x in grads], sol.residual, sol.iters,
                        sol.negative_curvature)  # fmt: skip
