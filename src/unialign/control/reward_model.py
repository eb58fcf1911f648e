"""The learned reward r̂(s, a): an ensemble of K MLPs fitted to segment preferences.

Christiano et al. 2017 (arXiv 1706.03741) and PEBBLE (Lee, Smith & Abbeel 2021,
arXiv 2106.05091, Eq. 4): with segment returns ``R̂_k(σ) = Σ_t r̂_k(s_t, a_t)`` each member k
models ``P_k(σ¹ ≻ σ²) = σ(R̂_k(σ¹) − R̂_k(σ²))`` and minimizes the Bradley–Terry cross-entropy
against the label y ∈ {0, ½, 1}. The ensemble's loss, the sum of the members' mean losses, is
:func:`unialign.losses.reward.ensemble_preference_cross_entropy` — the objective library's one
copy, also used by A-PARL (no private copy here). SAC trains on the members' mean reward.

The members are one :class:`~unialign.control.nets.EnsembleMLP` (stacked weights, one batched
matmul per layer) followed by the output activation (PEBBLE: tanh, bounding r̂ to [−1, 1]).
``RewardEnsemble`` is a plain ``nn.Module`` whose ``forward(obs, act)`` returns the per-member
rewards, so ``torch.func.functional_call(ensemble, params, (obs, act))`` gives rewards — and,
summed over the time axis, segment returns — as a function of the parameters (A-PARL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from unialign.control.nets import EnsembleMLP
from unialign.control.types import SegmentBatch
from unialign.losses.reward import ensemble_preference_cross_entropy

__all__ = ["RewardEnsemble"]

_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "none": lambda x: x}


class RewardEnsemble(nn.Module):
    """K independent reward MLPs ``r̂_k([s, a])`` with their own Adam optimizer.

    Args:
        obs_dim, act_dim: input sizes; a member sees the concatenation ``[s, a]``.
        ensemble_size: K (PEBBLE: 3).
        hidden: hidden layer sizes of each member (ReLU between layers).
        lr: Adam learning rate (PEBBLE: 3e-4).
        seed: initializes the members without touching the global torch RNG.
        output_activation: ``tanh`` (PEBBLE), ``sigmoid`` or ``none``.
        device: where the parameters live.

    ``optimizer`` is public: checkpoint it alongside ``state_dict()`` to resume exactly.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        ensemble_size: int = 3,
        hidden: Sequence[int] = (256, 256),
        lr: float = 3e-4,
        seed: int = 0,
        output_activation: Literal["tanh", "sigmoid", "none"] = "tanh",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        if output_activation not in _ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {sorted(_ACTIVATIONS)}, got {output_activation!r}"
            )
        self.obs_dim, self.act_dim, self.ensemble_size = obs_dim, act_dim, ensemble_size
        self.output_activation = output_activation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.members = EnsembleMLP(ensemble_size, obs_dim + act_dim, 1, hidden)
        self.to(device)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    @property
    def device(self) -> torch.device:
        return self.members.weights[0].device

    # -- rewards -----------------------------------------------------------------------------

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        """Per-member rewards: ``obs [..., obs_dim]``, ``act [..., act_dim]`` → ``[K, ...]``."""
        x = torch.cat([obs, act], dim=-1)
        return self._rewards(x.reshape(-1, x.shape[-1])).reshape(self.ensemble_size, *x.shape[:-1])

    def _rewards(self, x: Tensor) -> Tensor:
        """Members on ``[M, in]`` (shared) or ``[K, M, in]`` (one batch each) → ``[K, M]``."""
        return _ACTIVATIONS[self.output_activation](self.members(x).squeeze(-1))

    def reward(self, obs: Tensor, act: Tensor) -> Tensor:
        """The ensemble-mean reward ``[...]`` that SAC trains on."""
        return self(obs, act).mean(dim=0)

    @torch.no_grad()
    def numpy_reward(
        self, obs: np.ndarray, act: np.ndarray, *, batch_size: int = 65_536
    ) -> np.ndarray:
        """:meth:`reward` on numpy arrays ``[B, ·]`` in chunks, as float32 ``[B]`` (relabelling)."""
        out = np.empty(len(obs), dtype=np.float32)
        for start in range(0, len(obs), batch_size):
            o = torch.as_tensor(
                obs[start : start + batch_size], dtype=torch.float32, device=self.device
            )
            a = torch.as_tensor(
                act[start : start + batch_size], dtype=torch.float32, device=self.device
            )
            out[start : start + len(o)] = self.reward(o, a).cpu().numpy()
        return out

    def segment_returns(self, seg: SegmentBatch) -> Tensor:
        """``R̂_k(σ) = Σ_t r̂_k(s_t, a_t)`` for each member and segment: ``[K, N]``."""
        return self(seg.obs.to(self.device), seg.actions.to(self.device)).sum(dim=-1)

    def preference_probs(self, seg1: SegmentBatch, seg2: SegmentBatch) -> Tensor:
        """``P_k(σ¹ ≻ σ²) = σ(R̂_k(σ¹) − R̂_k(σ²))``: ``[K, N]``."""
        return torch.sigmoid(self.segment_returns(seg1) - self.segment_returns(seg2))

    # -- objective ---------------------------------------------------------------------------

    def loss(
        self,
        seg1: SegmentBatch,
        seg2: SegmentBatch,
        labels: Tensor,
        *,
        member_mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """``Σ_k mean_n BT-CE(R̂_k(σ¹_n), R̂_k(σ²_n), y_n)`` and its metrics.

        ``member_mask`` ``[K, N]`` (bool or 0/1) restricts member k's mean to its selected pairs
        (e.g. bootstrap resamples); a member with no selected pair contributes 0.
        """
        r1, r2 = self.segment_returns(seg1), self.segment_returns(seg2)
        mask = None if member_mask is None else member_mask.to(r1.device)
        out = ensemble_preference_cross_entropy(
            r1, r2, labels.to(r1.device, r1.dtype), member_mask=mask
        )
        total = out.losses.sum()
        acc = out.metrics["preference/accuracy"]
        if mask is not None:
            m = mask.to(acc.dtype)
            acc = (acc * m).sum(1) / m.sum(1).clamp_min(1.0)
        metrics = {
            "reward_model/loss": float(total.detach()) / self.ensemble_size,
            "reward_model/accuracy": float(acc.mean()),
        }
        return total, metrics

    def train_epochs(
        self,
        seg1: SegmentBatch,
        seg2: SegmentBatch,
        labels: Tensor,
        *,
        epochs: int,
        batch_size: int = 128,
        rng: np.random.Generator,
        target_accuracy: float | None = None,
    ) -> dict[str, float]:
        """PEBBLE's reward update: ``epochs`` passes over all N labelled pairs.

        Each epoch draws an independent permutation per member (PEBBLE's ``train_reward``), so
        members see different minibatches; one Adam step per minibatch on the summed member
        losses. With ``target_accuracy`` (PEBBLE: 0.97) training stops after the first epoch
        whose training accuracy reaches it. Returns the last epoch's mean loss per member
        (``reward_model/loss``), its training accuracy (``reward_model/accuracy``, ties count
        ½) and ``reward_model/epochs`` run.
        """
        n = len(labels)
        if n == 0 or len(seg1) != n or len(seg2) != n:
            raise ValueError(f"need N > 0 pairs with N labels, got {len(seg1)}, {len(seg2)}, {n}")
        dev = self.device
        o1, a1 = seg1.obs.to(dev), seg1.actions.to(dev)
        o2, a2 = seg2.obs.to(dev), seg2.actions.to(dev)
        y = labels.to(dev, torch.float32)
        metrics: dict[str, float] = {}
        for epoch in range(1, epochs + 1):
            perms = torch.as_tensor(
                np.stack([rng.permutation(n) for _ in range(self.ensemble_size)]), device=dev
            )
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev)
            for start in range(0, n, batch_size):
                idx = perms[:, start : start + batch_size]  # [K, b]: member k's minibatch
                ret1 = self._member_returns(o1[idx], a1[idx])
                ret2 = self._member_returns(o2[idx], a2[idx])
                out = ensemble_preference_cross_entropy(ret1, ret2, y[idx])
                loss_sum += out.metrics["preference/pair_loss"].sum()
                correct += out.metrics["preference/accuracy"].sum()
                self.optimizer.zero_grad(set_to_none=True)
                out.losses.sum().backward()
                self.optimizer.step()
            accuracy = float(correct) / (n * self.ensemble_size)
            metrics = {
                "reward_model/loss": float(loss_sum) / (n * self.ensemble_size),
                "reward_model/accuracy": accuracy,
                "reward_model/epochs": float(epoch),
            }
            if target_accuracy is not None and accuracy >= target_accuracy:
                break
        return metrics

    def _member_returns(self, obs: Tensor, act: Tensor) -> Tensor:
        """Per-member segment returns on per-member inputs ``[K, b, H, ·]`` → ``[K, b]``."""
        k, b, h = obs.shape[:3]
        x = torch.cat([obs, act], dim=-1).reshape(k, b * h, -1)
        return self._rewards(x).reshape(k, b, h).sum(dim=-1)
