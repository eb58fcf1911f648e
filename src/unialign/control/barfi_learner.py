"""BARFI's inner learner: an on-policy REINFORCE-with-entropy agent for discrete and Gaussian
actions, whole-episode collection, and the two objectives the hypergradient differentiates.

Why not SAC (the engine's other agent): BARFI's cross term ∇²_φθ J_φ needs the inner gradient
∇_θ J_φ as a differentiable function of the reward parameters φ, computed from stored
trajectories. With REINFORCE it is explicit: G_t^φ = Σ_k γ_φ^{k−t} r_φ(s_k, a_k) enters the
gradient linearly. With SAC, φ reaches the actor's gradient only through the critic, which is
the fixed point of a Bellman backup of r_φ: differentiating it needs a second implicit solve
(or unrolling many critic updates). See ``docs/barfi.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from unialign.bilevel.barfi import (
    BlendedReward,
    discounted_returns,
    reinforce_entropy_objective,
)
from unialign.control.nets import mlp

__all__ = [
    "EpisodeBatch",
    "DiscretePolicy",
    "GaussianPolicy",
    "make_policy",
    "collect_episodes",
    "inner_objective",
    "primary_objective",
]


@dataclass(frozen=True)
class EpisodeBatch:
    """Whole episodes, their T steps concatenated.

    Attributes:
        obs: ``[T, obs_dim]`` float32 states s_t.
        actions: ``[T]`` long (discrete) or ``[T, act_dim]`` float32 (Gaussian, unclipped).
        primary: ``[T]`` primary reward r_p.
        aux: ``[T]`` auxiliary reward h(s_{t+1}) of the heuristic h.
        shaping: ``[T]`` potential-based shaping γ h(s_{t+1}) − h(s_t) (h = 0 after a
            termination), with the γ given to :func:`collect_episodes`.
        ends: ``[T]`` bool, True at each episode's last step.
        episode_returns: ``[E]`` undiscounted primary return of each episode.
    """

    obs: Tensor
    actions: Tensor
    primary: Tensor
    aux: Tensor
    shaping: Tensor
    ends: Tensor
    episode_returns: Tensor

    @property
    def steps(self) -> int:
        return int(self.obs.shape[0])


class DiscretePolicy(nn.Module):
    """π_θ(·|s) = softmax(MLP(s)) over ``n`` actions."""

    def __init__(self, obs_dim: int, n: int, hidden: list[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, n, hidden)

    def log_prob_entropy(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(log π(a_t|s_t), H(π(·|s_t))), each ``[T]``."""
        logp = torch.log_softmax(self.net(obs), -1)
        return logp.gather(-1, actions[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)

    @torch.no_grad()
    def sample(self, obs: Tensor, generator: torch.Generator) -> Tensor:
        return torch.multinomial(torch.softmax(self.net(obs), -1), 1, generator=generator)[:, 0]


class GaussianPolicy(nn.Module):
    """π_θ(·|s) = N(MLP(s), diag σ²) with a state-independent log σ (initial σ = e^−0.5); the
    environment receives the sample clipped to [−1, 1], the log-likelihood uses the sample."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.full((act_dim,), -0.5))

    def log_prob_entropy(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """log N(a; μ, σ²) = −Σ_i [(a_i − μ_i)²/(2σ_i²) + log σ_i + ½ log 2π]; H = Σ_i log σ_i
        + d/2 (1 + log 2π). Each ``[T]``."""
        dist = torch.distributions.Normal(self.net(obs), self.log_std.exp())
        return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)

    @torch.no_grad()
    def sample(self, obs: Tensor, generator: torch.Generator) -> Tensor:
        mean = self.net(obs)
        noise = torch.randn(mean.shape, generator=generator)
        return mean + self.log_std.exp() * noise


def make_policy(env: gym.Env, hidden: list[int]) -> DiscretePolicy | GaussianPolicy:
    """A categorical policy for ``Discrete`` actions, a Gaussian one for ``Box`` actions."""
    obs_dim = int(np.prod(env.observation_space.shape))
    act = env.action_space
    if isinstance(act, spaces.Discrete):
        return DiscretePolicy(obs_dim, int(act.n), hidden)
    if isinstance(act, spaces.Box):
        return GaussianPolicy(obs_dim, int(np.prod(act.shape)), hidden)
    raise ValueError(f"BARFI needs Discrete or Box actions, got {act}")


def collect_episodes(
    env: gym.Env,
    policy: DiscretePolicy | GaussianPolicy,
    heuristic: Callable[[np.ndarray], float],
    *,
    episodes: int,
    seeds: list[int],
    shaping_discount: float,
    generator: torch.Generator,
) -> EpisodeBatch:
    """Run ``episodes`` whole episodes, episode i reset with ``seeds[i]`` (so a resumed run
    replays exactly), sampling actions with ``generator``."""
    obs_l, act_l, rp_l, aux_l, sh_l, end_l, rets = [], [], [], [], [], [], []
    discrete = isinstance(policy, DiscretePolicy)
    for i in range(episodes):
        obs, _ = env.reset(seed=seeds[i])
        obs = np.asarray(obs, dtype=np.float32).reshape(-1)
        h_prev, total, done = heuristic(obs), 0.0, False
        while not done:
            o = torch.from_numpy(obs)[None]
            a = policy.sample(o, generator)[0]
            env_a = int(a) if discrete else np.clip(a.numpy(), -1.0, 1.0)
            nxt, r, term, trunc, _ = env.step(env_a)
            nxt = np.asarray(nxt, dtype=np.float32).reshape(-1)
            h_next = heuristic(nxt)
            obs_l.append(obs)
            act_l.append(a)
            rp_l.append(float(r))
            aux_l.append(h_next)
            sh_l.append(shaping_discount * (0.0 if term else h_next) - h_prev)
            done = bool(term or trunc)
            end_l.append(done)
            total += float(r)
            obs, h_prev = nxt, h_next
        rets.append(total)
    f32 = torch.float32
    return EpisodeBatch(
        obs=torch.from_numpy(np.stack(obs_l)),
        actions=torch.stack(act_l),
        primary=torch.tensor(rp_l, dtype=f32),
        aux=torch.tensor(aux_l, dtype=f32),
        shaping=torch.tensor(sh_l, dtype=f32),
        ends=torch.tensor(end_l),
        episode_returns=torch.tensor(rets, dtype=f32),
    )


def _normalised(returns: Tensor) -> Tensor:
    """G / std(G) with std held constant: the advantages' scale stays O(1) whatever the
    reward scale (a fixed step size then suits every task), and φ still enters G linearly."""
    return returns / (returns.detach().std() + 1e-8)


def inner_objective(
    policy: DiscretePolicy | GaussianPolicy,
    blend: BlendedReward,
    batch: EpisodeBatch,
    aux: Tensor,
    *,
    entropy_coef: float,
) -> Tensor:
    """J_φ(θ): REINFORCE with entropy on r_φ = φ₁(s) + r_p + φ₃(s)·aux, discount γ_φ
    (``aux`` is ``batch.aux`` for BARFI and the naive sum, ``batch.shaping`` for shaping,
    zeros for the primary-only learner). Differentiable in θ and φ."""
    logp, entropy = policy.log_prob_entropy(batch.obs, batch.actions)
    rewards = blend(batch.obs, batch.primary, aux)
    returns = _normalised(discounted_returns(rewards, blend.discount, batch.ends))
    return reinforce_entropy_objective(logp, entropy, returns, entropy_coef=entropy_coef)


def primary_objective(
    policy: DiscretePolicy | GaussianPolicy, batch: EpisodeBatch, *, discount: float
) -> Tensor:
    """J_p(θ)'s surrogate: REINFORCE on the primary reward with a fixed discount, no entropy;
    its θ-gradient is the on-policy primary-return policy gradient of BARFI's outer level."""
    logp, entropy = policy.log_prob_entropy(batch.obs, batch.actions)
    returns = _normalised(discounted_returns(batch.primary, discount, batch.ends))
    return reinforce_entropy_objective(logp, entropy, returns, entropy_coef=0.0)
