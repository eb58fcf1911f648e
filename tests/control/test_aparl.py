"""A-PARL's SAC-side estimator (``unialign.control.aparl``) against brute force.

On a tiny actor (17 parameters) and reward ensemble
(32 parameters) the correction is recomputed by brute force — explicit Hessian
(``torch.autograd.functional.hessian``), explicit cross Jacobian, ``torch.linalg.solve`` — and
the segment log-probabilities independently through ``TransformedDistribution``.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution
from torch.func import functional_call

from unialign.control.aparl import aparl_reward_gradient
from unialign.control.reward_model import RewardEnsemble
from unialign.control.sac import SquashedGaussianActor, TwinCritic
from unialign.control.types import SegmentBatch

DT = torch.float64


# ----------------------------------------------------------------------------- SAC side

OBS, ACT, N, H, B = 2, 1, 6, 3, 8
ALPHA, SEED = 0.3, 1234


class _Sample(nn.Module):
    """Lets functional_call substitute the actor's parameters inside ``actor.sample``."""

    def __init__(self, actor):
        super().__init__()
        self.actor = actor

    def forward(self, obs):
        return self.actor.sample(obs)


def _tiny(hidden=(3,), dtype=DT):
    torch.manual_seed(0)
    actor = SquashedGaussianActor(OBS, ACT, hidden).to(dtype)
    reward = RewardEnsemble(OBS, ACT, ensemble_size=2, hidden=hidden, seed=1).to(dtype)
    critic = TwinCritic(OBS, ACT, hidden).to(dtype)

    def seg(n, h):
        return SegmentBatch(
            torch.randn(n, h, OBS, dtype=dtype),
            torch.rand(n, h, ACT, dtype=dtype) * 1.8 - 0.9,
            torch.zeros(n, h, dtype=dtype),
            torch.arange(n),
        )

    seg1, seg2 = seg(N, H), seg(N, H)
    labels = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 1.0], dtype=dtype)
    states = torch.randn(B, OBS, dtype=dtype)
    return actor, reward, critic, seg1, seg2, labels, states


def _flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params])


def _unflat(module, flat, prefix=""):
    out, i = {}, 0
    for name, p in module.named_parameters():
        out[prefix + name] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def _call(actor, reward, seg1, seg2, labels, states, *, critic_fn=None, **kw):
    torch.manual_seed(SEED)  # the one reparameterised draw inside the estimator
    return aparl_reward_gradient(
        reward,
        actor,
        seg1,
        seg2,
        labels,
        obs_for_lower=states,
        critic_fn=critic_fn,
        alpha=ALPHA,
        **kw,
    )


def test_log_prob_fallback_matches_sampled_log_prob():
    """log π of the actor's own samples, recomputed from (mean, log_std) via atanh."""
    actor, *_, states = _tiny(hidden=(8,))
    with torch.no_grad():
        a, logp = actor.sample(states)
    torch.testing.assert_close(actor.log_prob(states, a), logp)


def test_correction_off_is_plain_bt_gradient():
    actor, reward, _, seg1, seg2, labels, states = _tiny()
    grads, metrics = _call(actor, reward, seg1, seg2, labels, states, correction_weight=0.0)
    params = [p for p in reward.parameters() if p.requires_grad]
    loss, _ = reward.loss(seg1, seg2, labels)  # PEBBLE's ensemble loss
    expected = torch.autograd.grad(loss, params)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
    assert metrics["aparl/correction_norm"] == 0.0 and metrics["aparl/cosine"] == 1.0


@pytest.mark.parametrize(
    ("curvature", "with_critic"), [("fisher", False), ("hessian", False), ("hessian", True)]
)
def test_correction_matches_brute_force(curvature, with_critic):
    """correction = −(∇²_νθ L)ᵀ (H + λI)⁻¹ g_θ with every piece formed explicitly:
    H = α·Hessian of mean_s KL(N(μ₀, σ₀) ‖ N(μ_θ, σ_θ)) (Fisher) or the Hessian of the actor
    loss mean[α log π − Q] at the same noise draw; ∇²_νθ L from −mean r̄_ν(s, a_θ)."""
    actor, reward, critic, seg1, seg2, labels, states = _tiny()
    critic_fn = (lambda o, a: critic(o, a).min(0).values) if with_critic else None
    theta0, nu0 = _flat(actor.parameters()), _flat(reward.parameters())

    def lower_parts(theta, nu):
        """(α log π − Q, −r̄) on the replay states, same noise as the estimator's draw."""
        torch.manual_seed(SEED)
        a, logp = functional_call(_Sample(actor), _unflat(actor, theta, "actor."), (states,))
        r = functional_call(reward, _unflat(reward, nu), (states, a)).mean(0)
        q = critic_fn(states, a) if with_critic else r
        return (ALPHA * logp - q).mean(), -r.mean()

    def fisher_kl(theta):
        with torch.no_grad():
            m0, ls0 = actor(states)
        m, ls = functional_call(actor, _unflat(actor, theta), (states,))
        kl = torch.distributions.kl_divergence(Normal(m0, ls0.exp()), Normal(m, ls.exp()))
        return ALPHA * kl.sum(-1).mean()

    if curvature == "fisher":
        hess = torch.autograd.functional.hessian(fisher_kl, theta0)
    else:
        hess = torch.autograd.functional.hessian(lambda t: lower_parts(t, nu0)[0], theta0)

    def grad_theta_of_cross(nu):
        t = theta0.clone().requires_grad_(True)
        return torch.autograd.grad(lower_parts(t, nu)[1], t, create_graph=True)[0]

    cross = torch.autograd.functional.jacobian(grad_theta_of_cross, nu0)  # [dim θ, dim ν]

    def seg_logp(theta, seg):
        mean, log_std = functional_call(actor, _unflat(actor, theta), (seg.obs.reshape(-1, OBS),))
        dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
        return dist.log_prob(seg.actions.reshape(-1, ACT)).sum(-1).reshape(N, H).sum(1)

    with torch.no_grad():
        z = reward.segment_returns(seg1) - reward.segment_returns(seg2)  # [K, N]
        ell = -(labels * F.logsigmoid(z) + (1 - labels) * F.logsigmoid(-z)).sum(0)
    t = theta0.clone().requires_grad_(True)
    score = seg_logp(t, seg1) + seg_logp(t, seg2)
    (g_theta,) = torch.autograd.grad(((ell - ell.mean()) * score).mean(), t)

    eig_min = torch.linalg.eigvalsh(hess).min().item()
    lam = max(1e-2, 0.1 - eig_min)  # makes H + λI positive definite for CG
    expected = -cross.T @ torch.linalg.solve(hess + lam * torch.eye(len(theta0), dtype=DT), g_theta)

    bt, _ = _call(actor, reward, seg1, seg2, labels, states, correction_weight=0.0)
    kw = {"critic_fn": critic_fn, "curvature": curvature, "damping": lam, "cg_tol": 1e-13}
    total, metrics = _call(actor, reward, seg1, seg2, labels, states, cg_iters=300, **kw)
    correction = _flat(total) - _flat(bt)
    assert expected.norm() > 1e-3 * _flat(bt).norm()  # the check is not vacuous
    torch.testing.assert_close(correction, expected, rtol=1e-6, atol=1e-9)
    assert metrics["aparl/cg_residual"] < 1e-10 and metrics["aparl/negative_curvature"] == 0.0
    assert metrics["aparl/correction_norm"] == pytest.approx(expected.norm().item(), rel=1e-6)
    half, _ = _call(
        actor, reward, seg1, seg2, labels, states, cg_iters=300, correction_weight=0.5, **kw
    )
    torch.testing.assert_close(_flat(half) - _flat(bt), 0.5 * expected, rtol=1e-6, atol=1e-9)


def test_finite_on_default_sized_float32_nets():
    """SAC-sized pieces in float32, a critic, saturated stored actions (±1): all finite."""
    torch.manual_seed(0)
    actor = SquashedGaussianActor(5, 2, (64, 64))
    reward = RewardEnsemble(5, 2, ensemble_size=3, hidden=(64, 64), seed=0)
    critic = TwinCritic(5, 2, (64, 64))
    acts = (torch.rand(16, 10, 2) * 2 - 1).clamp(-0.99, 0.99)
    acts[0, 0] = 1.0  # a saturated tanh action from the buffer
    seg1 = SegmentBatch(torch.randn(16, 10, 5), acts, torch.zeros(16, 10), torch.arange(16))
    seg2 = SegmentBatch(torch.randn(16, 10, 5), -acts, torch.zeros(16, 10), torch.arange(16))
    labels = torch.randint(0, 2, (16,)).float()
    grads, metrics = aparl_reward_gradient(
        reward,
        actor,
        seg1,
        seg2,
        labels,
        obs_for_lower=torch.randn(64, 5),
        critic_fn=lambda o, a: critic(o, a).min(0).values,
        alpha=0.1,
    )
    params = [p for p in reward.parameters() if p.requires_grad]
    assert len(grads) == len(params)
    assert all(g.shape == p.shape and torch.isfinite(g).all() for g, p in zip(grads, params))
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["aparl/correction_norm"] > 0.0
