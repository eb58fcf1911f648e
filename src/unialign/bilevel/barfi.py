"""BARFI's blended reward and the hypergradient of the primary return through the inner learner.

Paper: Gupta, Chandak, Jordan, Thomas, da Silva, *Behavior Alignment via Reward Function
Optimization* (NeurIPS 2023, arXiv 2310.19007). Formulas and derivation: ``docs/barfi.md``.

- **Blended reward** (the parametrisation of the authors' release):
  r_φ(s, a) = φ₁(s) + r_p(s, a) + φ₃(s)·r_aux(s, a), discount γ_φ = σ(θ_γ).
  φ₁ and φ₃ are the two outputs of one small network of the state (a linear map of one-hot
  states is the tabular case); φ = (network weights, θ_γ). Initialised at φ₁ = 0, φ₃ = 1 and
  γ = 0.99, i.e. at the naive sum r_p + r_aux.
- **Inner level.** θ maximises J_φ(θ), here REINFORCE with entropy on r_φ:
  J_φ(θ) ≈ mean_t[(G_t^φ − b^φ) log π_θ(a_t|s_t)] + β mean_t H(π_θ(·|s_t)),
  G_t^φ = Σ_{k≥t} γ_φ^{k−t} r_φ(s_k, a_k) (:func:`discounted_returns`, differentiable in the
  rewards and in γ_φ), b^φ the batch mean of G^φ (differentiable too).
- **Outer level.** φ maximises the primary return J_p(θ*(φ)). J_p does not depend on φ
  directly, so dJ_p/dφ = (dθ*/dφ)ᵀ ∇_θ J_p and, by the implicit function theorem at a
  stationary point of J_φ (sign conventions of :mod:`unialign.bilevel.hypergrad`, L = −J_φ):
  dJ_p/dφ = −(∇²_φθ L)(∇²_θθ L)⁻¹ ∇_θ J_p.
  ``variant="neumann"`` approximates (∇²_θθ L)⁻¹ by K terms of α Σ_k (I − α∇²_θθ L)^k
  (:func:`unialign.bilevel.hypergrad.neumann_inverse`); ``variant="first_order"`` replaces
  ∇²_θθ L by I/η, giving η·(∇²_φθ J_φ) ∇_θ J_p — the direction of differentiating one inner
  gradient step of size η (the paper's first-order approximation).

Every gradient returned here is an **ascent** direction of J_p. Imports no engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from unialign.bilevel.hypergrad import (
    cross_vjp,
    grad_or_zeros,
    hvp,
    inverse_hvp,
    list_norm,
)

__all__ = [
    "BlendedReward",
    "HypergradResult",
    "barfi_hypergradient",
    "dominant_curvature",
    "discount_logit",
    "discounted_returns",
    "reinforce_entropy_objective",
]

Variant = Literal["neumann", "first_order"]
MAX_DISCOUNT_LOGIT = 15.0  # σ(15) = 1 − 3.1e-7, still below 1 in float32


def discount_logit(gamma: float) -> float:
    """θ_γ with σ(θ_γ) = γ, for γ ∈ (0, 1)."""
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"a learned discount must lie in (0, 1), got {gamma}")
    return math.log(gamma / (1.0 - gamma))


class BlendedReward(nn.Module):
    """r_φ(s, a) = φ₁(s) + r_p(s, a) + φ₃(s)·r_aux(s, a) and γ_φ = σ(θ_γ).

    Args:
        obs_dim: size of the state vector the network reads (one-hot states: S).
        hidden: hidden widths of the φ network (``()`` = linear).
        init_aux_weight: φ₃ at initialisation (1 = the naive sum r_p + r_aux).
        init_discount: γ_φ at initialisation.
        learn_discount: False freezes θ_γ (it is then left out of :meth:`outer_parameters`).

    The last layer starts with zero weights and bias (0, ``init_aux_weight``), so φ₁ = 0 and
    φ₃ = ``init_aux_weight`` in every state at the start.
    """

    def __init__(
        self,
        obs_dim: int,
        hidden: Sequence[int] = (),
        *,
        init_aux_weight: float = 1.0,
        init_discount: float = 0.99,
        learn_discount: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.Tanh()]
            d = h
        last = nn.Linear(d, 2)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor([0.0, init_aux_weight]))
        self.net = nn.Sequential(*layers, last)
        self.discount_logit = nn.Parameter(
            torch.tensor(discount_logit(init_discount)), requires_grad=learn_discount
        )

    def components(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(φ₁(s), φ₃(s)), each ``[N]`` for ``obs`` ``[N, obs_dim]``."""
        out = self.net(obs)
        return out[..., 0], out[..., 1]

    def forward(self, obs: Tensor, primary: Tensor, aux: Tensor) -> Tensor:
        """r_φ ``[N]`` from states ``[N, obs_dim]``, r_p ``[N]`` and r_aux ``[N]``."""
        phi1, phi3 = self.components(obs)
        return phi1 + primary + phi3 * aux

    @property
    def discount(self) -> Tensor:
        """γ_φ = σ(θ_γ) ∈ (0, 1), a 0-dim tensor differentiable in θ_γ.

        θ_γ is clamped to ±``MAX_DISCOUNT_LOGIT`` first: in float32 σ(θ) rounds to exactly 1
        from θ ≈ 17 on, and γ = 1 would be a different (undiscounted) objective."""
        return torch.sigmoid(self.discount_logit.clamp(-MAX_DISCOUNT_LOGIT, MAX_DISCOUNT_LOGIT))

    def outer_parameters(self) -> list[Tensor]:
        """φ: the network's tensors, then θ_γ when it is learned."""
        return [p for p in self.parameters() if p.requires_grad]


def discounted_returns(rewards: Tensor, gamma: Tensor | float, episode_ends: Tensor) -> Tensor:
    """G_t = Σ_{k=t}^{e(t)} γ^{k−t} r_k within each episode, differentiable in r and γ.

    Args:
        rewards: ``[T]`` rewards of consecutive steps of one or more episodes.
        gamma: discount, a float or a 0-dim tensor in (0, 1].
        episode_ends: ``[T]`` bool, True at the last step of each episode (the last entry
            must be True: a batch holds whole episodes).

    Computed per episode as G = M r with M_tk = γ^{k−t} for t ≤ k, 0 otherwise (O(L²) for
    an episode of L steps). The recursion G_t = r_t + γ G_{t+1} gives the same values; the
    matrix form keeps the autograd graph shallow, which matters for the double-backward
    passes of the hypergradient.
    """
    if rewards.dim() != 1 or episode_ends.shape != rewards.shape:
        raise ValueError(
            f"rewards and episode_ends must be [T] of one shape, got {tuple(rewards.shape)} "
            f"and {tuple(episode_ends.shape)}"
        )
    if rewards.shape[0] == 0:
        return rewards
    if not bool(episode_ends[-1]):
        raise ValueError("episode_ends[-1] must be True: pass whole episodes")
    gamma = torch.as_tensor(gamma, dtype=rewards.dtype)
    lengths = torch.diff(torch.flatten(torch.nonzero(episode_ends)), prepend=torch.tensor([-1]))
    out = []
    for r in torch.split(rewards, lengths.tolist()):
        t = torch.arange(r.shape[0])
        lag = t[None, :] - t[:, None]  # k − t
        powers = torch.where(lag >= 0, gamma ** lag.clamp(min=0).to(r.dtype), 0.0)
        out.append(powers @ r)
    return torch.cat(out)


def reinforce_entropy_objective(
    logp: Tensor, entropy: Tensor, returns: Tensor, *, entropy_coef: float
) -> Tensor:
    """J = mean_t[(G_t − Ḡ) log π(a_t|s_t)] + β mean_t H_t, a surrogate maximised in θ.

    Its θ-gradient is REINFORCE (Williams 1992) with the batch-mean baseline Ḡ plus the
    entropy bonus's gradient. ``returns`` may depend on φ (BARFI's inner objective keeps that
    graph for the cross term ∇²_φθ J); the baseline is the mean of the same tensor, so it is
    a function of φ as well (its expected score-function term is zero for every φ).
    All inputs ``[T]``.
    """
    adv = returns - returns.mean()
    return (adv * logp).mean() + entropy_coef * entropy.mean()


class HypergradResult(NamedTuple):
    """The BARFI hypergradient: ``grads`` (one tensor per φ tensor, ascent on J_p, detached),
    ``residual`` (the Neumann series' relative residual ‖(I − αH)^K g‖/‖g‖; NaN for
    first-order) and ``products`` (Hessian-vector products spent)."""

    grads: list[Tensor]
    residual: float
    products: int


def dominant_curvature(
    grads_theta: Sequence[Tensor], theta: Sequence[Tensor], *, iters: int = 10, seed: int = 0
) -> float:
    """|μ|_max of H = ∇²_θθ L by power iteration: v ← Hv/‖Hv‖, returning ‖Hv‖ for unit v.

    ``grads_theta`` is ∇_θ L with ``create_graph=True``. The start vector is drawn from its own
    generator (``seed``), so the global random state is untouched. The estimate approaches the
    largest |μ| from below, at a rate set by the ratio of the two largest |μ|; ``iters``
    Hessian-vector products.
    """
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in theta]
    mu = 0.0
    for _ in range(iters):
        n = list_norm(v)
        if n == 0.0:
            return 0.0
        hv = hvp(grads_theta, theta, [x / n for x in v])
        mu, v = list_norm(hv), hv
    return mu


def barfi_hypergradient(
    inner_objective: Callable[[], Tensor],
    outer_grad_theta: Sequence[Tensor],
    theta: Sequence[Tensor],
    phi: Sequence[Tensor],
    *,
    variant: Variant = "neumann",
    neumann_terms: int = 10,
    neumann_alpha: float | None = 1.0,
    damping: float = 0.0,
    first_order_scale: float = 1.0,
    power_iters: int = 10,
) -> HypergradResult:
    """dJ_p/dφ ≈ −(∇²_φθ L) H⁻¹ ∇_θ J_p with L = −J_φ (see the module docstring).

    Args:
        inner_objective: closure returning the scalar J_φ(θ) (maximised by the inner learner),
            built from ``theta`` and ``phi``.
        outer_grad_theta: ∇_θ J_p, e.g. a primary-return policy gradient.
        theta: inner parameters (``requires_grad=True``).
        phi: outer parameters (``requires_grad=True``).
        variant: ``"neumann"`` (H⁻¹ ≈ α Σ_{k<K} (I − α(H + λI))^k, K = ``neumann_terms``)
            or ``"first_order"`` (H⁻¹ ≈ η I, η = ``first_order_scale``).
        neumann_alpha: α; the series converges when 0 < α·μ < 2 for every eigenvalue μ of
            H + λI, so H must be positive definite there (raise ``damping`` λ otherwise).
            ``None``: α = 1/(|μ|_max + λ) from ``power_iters`` steps of
            :func:`dominant_curvature` on this batch, so that α·|μ| ≤ 1 for every eigenvalue
            (up to the power iteration's error): a negative-curvature direction then grows at
            most like 2^K instead of without bound.

    Cost: one ``create_graph`` backward for ∇_θ L, K Hessian-vector products (plus
    ``power_iters`` when α is chosen automatically; none for first-order) and one backward to
    φ for the cross term.
    """
    theta, phi = list(theta), list(phi)
    grads = grad_or_zeros(-inner_objective(), theta, create_graph=True, retain_graph=True)
    if variant == "neumann":
        extra = 0
        if neumann_alpha is None:
            mu = dominant_curvature(grads, theta, iters=power_iters)
            neumann_alpha = 1.0 / (mu + damping) if mu + damping > 0 else 1.0
            extra = power_iters
        sol = inverse_hvp(
            grads,
            theta,
            outer_grad_theta,
            method="neumann",
            iters=neumann_terms,
            damping=damping,
            neumann_alpha=neumann_alpha,
        )
        x, residual, products = sol.x, sol.residual, sol.iters + extra
    elif variant == "first_order":
        x = [first_order_scale * g.detach() for g in outer_grad_theta]
        residual, products = math.nan, 0
    else:
        raise ValueError(f"variant must be 'neumann' or 'first_order', got {variant!r}")
    return HypergradResult([-c for c in cross_vjp(grads, phi, x)], residual, products)
