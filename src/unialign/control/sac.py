"""Soft Actor-Critic (Haarnoja et al. 2018: arXiv 1801.01290 and 1812.05905), compact and fast.

Equations (numbers from 1812.05905, "Soft Actor-Critic Algorithms and Applications"):

* critic (Eq. 5, with the soft value of Eq. 3 and a target network θ̄):
  ``J_Q(θ_i) = E[½ (Q_θi(s,a) − y)²]``,
  ``y = r + γ (1 − d) (min_j Q_θ̄j(s', a') − α log π(a'|s'))``, ``a' ~ π(·|s')``
  (twin critics and their min, as in the paper's practical algorithm; Fujimoto et al. 2018).
* actor (Eq. 7, reparameterized as Eq. 9, ``a = f_φ(ε; s)``):
  ``J_π(φ) = E[α log π(a|s) − min_j Q_θj(s, a)]``.
* temperature (Eq. 18, optimized in log α as in the authors' code):
  ``J(α) = E[−log α · (log π(a|s) + H̄)]``, target entropy ``H̄ = −act_dim``.
* squashing correction (1801.01290, Appendix C):
  ``log π(a|s) = log N(u; μ, σ) − Σ_i log(1 − tanh² u_i)``, ``a = tanh u``.

Speed (``benchmarks/sac_throughput.py``, ``docs/control-sac.md``): the twin critics are one
fused `EnsembleMLP` (one batched matmul per layer); the three losses come from one forward pass
and go through **one** backward and **one** fused Adam step (the actor and temperature losses
see the critic as it was before this step's critic update, rlkit's ordering; the actor loss
evaluates the critic with detached weights, so no critic weight gradient is computed for it);
the Polyak update is one ``torch._foreach_lerp_``; metrics are returned lazily so a GPU run
does not synchronize on every update.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unialign.control.nets import EnsembleMLP, mlp
from unialign.control.types import TransitionBatch

_LOG2 = math.log(2.0)
_METRICS = ("loss/critic", "loss/actor", "loss/alpha", "sac/alpha", "sac/q_mean", "sac/entropy")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class SACConfig:
    """SAC hyperparameters (defaults: the paper's Table 1 / Stable-Baselines3's)."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and of each critic."""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and temperature (each overridable below)."""
    actor_lr: float | None = None
    critic_lr: float | None = None
    alpha_lr: float | None = None
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the target critics: ``θ̄ ← (1 − τ) θ̄ + τ θ``."""
    batch_size: int = 256
    """Transitions per gradient update (the training loop samples this many)."""
    init_alpha: float = 1.0
    """Initial entropy temperature α."""
    autotune_alpha: bool = True
    """Tune α toward the target entropy (Eq. 18); if False α stays at ``init_alpha``."""
    target_entropy: float | None = None
    """Target entropy H̄; ``None`` means ``−act_dim``."""
    learning_starts: int = 1000
    """Environment steps of uniformly random actions before the first update (used by the loop)."""
    actor_update_interval: int = 1
    """Update the actor (and α) every this many critic updates."""
    target_update_interval: int = 1
    """Polyak-update the target critics every this many critic updates."""
    log_std_min: float = -20.0
    log_std_max: float = 2.0


class SquashedGaussianActor(nn.Module):
    """π_φ(a|s): ``a = tanh(u)``, ``u ~ N(μ_φ(s), σ_φ(s)²)`` — actions lie in (−1, 1).

    ``forward(obs)`` returns the pre-squash ``(mean, log_std)`` (``[B, act_dim]`` each);
    ``mean_action(obs)`` the deterministic action ``tanh(μ)``; ``sample(obs)`` a reparameterized
    action and its log-density.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        *,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.net = mlp(obs_dim, 2 * act_dim, hidden)  # one head for mean and log-std
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def mean_action(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.forward(obs)[0])

    def sample(
        self, obs: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterized sample ``a = tanh(μ + σ ε)``, ``ε ~ N(0, I)``, and ``log π(a|s)``.

        Returns ``action [B, act_dim]`` and ``log_prob [B]`` (:func:`tanh_gaussian_log_prob`),
        both differentiable w.r.t. the actor's parameters.
        """
        mean, log_std = self.forward(obs)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * eps
        return torch.tanh(u), tanh_gaussian_log_prob(u, eps, log_std)

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """``log π(a|s)`` of given actions in (−1, 1), ``[B]`` (e.g. stored replay actions).

        ``u = atanh(a)`` with ``a`` clipped to ``±(1 − ACTION_CLIP)`` so actions that saturated
        tanh in float32 stay finite; then :func:`tanh_gaussian_log_prob` with ``ε = (u − μ)/σ``.
        """
        mean, log_std = self.forward(obs)
        u = torch.atanh(actions.clamp(-1 + ACTION_CLIP, 1 - ACTION_CLIP))
        return tanh_gaussian_log_prob(u, (u - mean) * torch.exp(-log_std), log_std)


#: Stored actions are clipped to ±(1 − ACTION_CLIP) before ``atanh`` (float32 tanh saturates).
ACTION_CLIP = 1e-6


def tanh_gaussian_log_prob(u: Tensor, eps: Tensor, log_std: Tensor) -> Tensor:
    """Log-density of ``a = tanh(u)``, ``u ~ N(μ, σ²)`` (diagonal), summed over the last axis.

    With ``ε = (u − μ)/σ`` (1801.01290, Appendix C, Eq. 21)::

        log π(a|s) = Σ_i [ −ε_i²/2 − log σ_i − ½ log 2π − log(1 − tanh² u_i) ]

    and ``log(1 − tanh² u) = 2 (log 2 − u − softplus(−2u))``: exact, and stable for large
    ``|u|``, where the common ``log(1 − a² + 1e-6)`` saturates. The one copy of this density in
    unialign (the actor's samples, stored actions, A-PARL's score term).
    """
    log_det = 2.0 * (_LOG2 - u - F.softplus(-2.0 * u))
    return (-0.5 * eps.square() - log_std - log_det).sum(-1) - u.shape[-1] * _HALF_LOG_2PI


class TwinCritic(nn.Module):
    """``n`` Q-networks ``Q(s, a)`` fused into one `EnsembleMLP`; ``forward`` returns ``[n, B]``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], n: int = 2) -> None:
        super().__init__()
        self.q = EnsembleMLP(n, obs_dim + act_dim, 1, hidden)

    def reset_parameters(self) -> None:
        self.q.reset_parameters()

    def forward(self, obs: Tensor, act: Tensor, *, detach_params: bool = False) -> Tensor:
        return self.q(torch.cat([obs, act], dim=-1), detach_params=detach_params).squeeze(-1)


class _LazyMetrics(MutableMapping[str, float]):
    """Update metrics kept as one detached tensor; converted to floats on first access.

    Reading forces a device synchronization on a GPU, so a training loop that logs every k
    updates pays for it only then. Behaves as a ``dict[str, float]`` otherwise (it can be
    updated with more metrics).
    """

    def __init__(self, names: Sequence[str], values: Tensor) -> None:
        self._names: tuple[str, ...] | None = tuple(names)
        self._values: Tensor | None = values
        self._dict: dict[str, float] = {}

    def _get(self) -> dict[str, float]:
        if self._values is not None:
            self._dict = {**dict(zip(self._names, self._values.tolist())), **self._dict}
            self._names = self._values = None
        return self._dict

    def __getitem__(self, key: str) -> float:
        return self._get()[key]

    def __setitem__(self, key: str, value: float) -> None:
        self._get()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


class SAC:
    """Soft Actor-Critic agent acting in ``[-1, 1]^act_dim``.

    Attributes: ``actor`` (`SquashedGaussianActor`), ``critic`` and ``critic_target``
    (`TwinCritic`; ``critic(obs, act)`` returns ``[2, B]``), ``log_alpha``, ``optimizer`` (one
    fused Adam over critic, actor and log α; one param group per distinct learning rate),
    ``generator`` (the torch RNG of the agent's action noise, part of the checkpoint so a
    resumed run continues exactly). ``seed`` fixes the initial weights (without touching the
    global torch RNG) and the action noise.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        cfg: SACConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.cfg = cfg = cfg or SACConfig()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG left as it was
            torch.manual_seed(seed)
            actor = SquashedGaussianActor(
                obs_dim,
                act_dim,
                cfg.hidden,
                log_std_min=cfg.log_std_min,
                log_std_max=cfg.log_std_max,
            )
            critic = TwinCritic(obs_dim, act_dim, cfg.hidden)
        self.actor = actor.to(self.device)
        self.critic = critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(
            torch.full((1,), math.log(cfg.init_alpha), device=self.device),
            requires_grad=cfg.autotune_alpha,
        )
        self.target_entropy = (
            float(-act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        lrs = [(cfg.critic_lr or cfg.lr, list(self.critic.parameters()))]
        lrs.append((cfg.actor_lr or cfg.lr, list(self.actor.parameters())))
        if cfg.autotune_alpha:
            lrs.append((cfg.alpha_lr or cfg.lr, [self.log_alpha]))
        groups: dict[float, list[Tensor]] = {}  # one param group per distinct learning rate:
        for lr, params in lrs:  # the fused step's per-group overhead is paid once
            groups.setdefault(lr, []).extend(params)
        groups_list = [{"params": ps, "lr": lr} for lr, ps in groups.items()]
        self.optimizer = torch.optim.Adam(groups_list, fused=True)
        self._online = list(self.critic.parameters())
        self._target = list(self.critic_target.parameters())
        self.num_updates = 0

    # ----------------------------------------------------------------------------- acting
    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def act(self, obs: np.ndarray, *, deterministic: bool = False) -> np.ndarray:
        """Action(s) in ``[-1, 1]`` for ``obs`` of shape ``[obs_dim]`` or ``[N, obs_dim]``."""
        with torch.inference_mode():
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            single = o.dim() == 1
            if single:
                o = o.unsqueeze(0)
            if deterministic:
                a = self.actor.mean_action(o)
            else:
                a = self.actor.sample(o, generator=self.generator)[0]
            a = a.cpu().numpy()
        return a[0] if single else a

    # ---------------------------------------------------------------------------- learning
    def update(self, batch: TransitionBatch) -> MutableMapping[str, float]:
        """One gradient step on critics, actor (every ``actor_update_interval``) and α.

        Returns metrics ``loss/critic``, ``loss/actor``, ``loss/alpha``, ``sac/alpha``,
        ``sac/q_mean``, ``sac/entropy`` (a dict-like mapping of floats, converted from one
        tensor on first access; actor/alpha entries are NaN on steps that skip the actor).
        """
        cfg = self.cfg
        obs, act = batch.obs, batch.actions
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():  # soft TD target y (Eq. 5 with Eq. 3)
            next_act, next_logp = self.actor.sample(batch.next_obs, generator=self.generator)
            q_next = self.critic_target(batch.next_obs, next_act).amin(0)
            y = batch.rewards + cfg.gamma * (1.0 - batch.dones) * (q_next - alpha * next_logp)
        q = self.critic(obs, act)
        critic_loss = 0.5 * (q - y).square().mean(1).sum()  # Σ_i J_Q(θ_i)
        loss = critic_loss
        actor_loss = alpha_loss = entropy = None
        if self.num_updates % cfg.actor_update_interval == 0:
            act_pi, logp_pi = self.actor.sample(obs, generator=self.generator)
            q_pi = self.critic(obs, act_pi, detach_params=True).amin(0)
            actor_loss = (alpha * logp_pi - q_pi).mean()  # Eq. 9
            loss = loss + actor_loss
            entropy = -logp_pi.detach().mean()
            if cfg.autotune_alpha:  # Eq. 18 in log α; its gradient is −E[log π + H̄]
                alpha_loss = self.log_alpha * (entropy - self.target_entropy)
                alpha_loss = alpha_loss.squeeze(0)
                loss = loss + alpha_loss
        # The three losses share no parameters with a gradient path between them (y and α
        # are detached, the actor loss sees detached critic weights): one backward, one step.
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.num_updates += 1
        if self.num_updates % cfg.target_update_interval == 0:
            with torch.no_grad():
                torch._foreach_lerp_(self._target, self._online, cfg.tau)
        nan = critic_loss.new_full((), float("nan"))  # for what this step did not compute
        values = [critic_loss, actor_loss, alpha_loss, alpha.squeeze(0), q.mean(), entropy]
        values = torch.stack([nan if v is None else v for v in values]).detach()
        return _LazyMetrics(_METRICS, values)

    def reset_critic(self) -> None:
        """Re-initialize the critics (and targets) and clear their Adam state."""
        self.critic.reset_parameters()
        self.critic_target.load_state_dict(self.critic.state_dict())
        for p in self._online:
            self.optimizer.state.pop(p, None)

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-for-bit (given the same batches)."""
        return {
            "config": asdict(self.cfg),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.num_updates = int(state["num_updates"])


def evaluate(
    agent: Any,
    env_id: str,
    *,
    episodes: int = 10,
    seed: int = 0,
    deterministic: bool = True,
) -> dict[str, float]:
    """Run ``episodes`` episodes of ``agent.act(obs, deterministic=…)`` on a fresh env.

    Returns ``eval/true_return`` (mean undiscounted environment return), ``eval/return_std``,
    ``eval/episode_length`` and, where the environment reports ``info["success"]``
    (Meta-World), ``eval/success_rate``: the fraction of episodes with a success at any step.
    """
    from unialign.control.envs import make_env

    env = make_env(env_id, seed=seed)
    returns, lengths, successes = [], [], []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            ret, n, success, done = 0.0, 0, None, False
            while not done:
                obs, r, terminated, truncated, info = env.step(
                    agent.act(obs, deterministic=deterministic)
                )
                ret, n, done = ret + float(r), n + 1, terminated or truncated
                if "success" in info:
                    success = bool(success) or bool(info["success"])
            returns.append(ret)
            lengths.append(n)
            if success is not None:
                successes.append(success)
    finally:
        env.close()
    out = {
        "eval/true_return": float(np.mean(returns)),
        "eval/return_std": float(np.std(returns)),
        "eval/episode_length": float(np.mean(lengths)),
    }
    if successes:
        out["eval/success_rate"] = float(np.mean(successes))
    return out
