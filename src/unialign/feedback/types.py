"""Candidates that feedback compares, for either kind of policy (shapes in each docstring).

A comparison is between two candidates of the same kind: two control *segments* (windows of a
trajectory) or two language-model *completions* of one prompt. Teachers, judges, the store and
the labelling app take these containers; neither engine's internals leak into the feedback
layer (``unialign.feedback`` imports nothing from ``lm/``, ``control/`` or ``bilevel/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SegmentBatch"]


@dataclass(frozen=True)
class SegmentBatch:
    """Trajectory segments σ = (s₁, a₁, …, s_H, a_H) of length H from single episodes.

    Attributes:
        obs: ``[N, H, obs_dim]``.
        actions: ``[N, H, act_dim]``.
        true_rewards: ``[N, H]`` the environment's reward (what simulated teachers see).
        indices: ``[N]`` long, replay-buffer index of each segment's first transition
            (lets the feedback store refer to a segment without copying it).
        absorbed: ``[N, H]`` bool, True at steps padded with the absorbing state after a
            termination (not chosen by the policy; true reward 0). ``None`` means no step is
            absorbed; read it through :attr:`absorbed_mask`.
    """

    obs: Tensor
    actions: Tensor
    true_rewards: Tensor
    indices: Tensor
    absorbed: Tensor | None = field(default=None)

    @property
    def length(self) -> int:
        return int(self.obs.shape[1])

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    @property
    def absorbed_mask(self) -> Tensor:
        """``[N, H]`` bool: True at absorbed (padded) steps, all False when none are."""
        if self.absorbed is None:
            return torch.zeros(self.obs.shape[:2], dtype=torch.bool, device=self.obs.device)
        return self.absorbed

    def take(self, idx: Tensor | list[int]) -> SegmentBatch:
        """The segments at positions ``idx`` (a CPU index works for tensors on any device)."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return SegmentBatch(
            self.obs[i.to(self.obs.device)],
            self.actions[i.to(self.actions.device)],
            self.true_rewards[i.to(self.true_rewards.device)],
            self.indices[i.to(self.indices.device)],
            None if self.absorbed is None else self.absorbed[i.to(self.absorbed.device)],
        )

    def to(self, device: torch.device | str) -> SegmentBatch:
        """The same segments with obs, actions, rewards and mask on ``device`` (indices stay)."""
        return SegmentBatch(
            self.obs.to(device),
            self.actions.to(device),
            self.true_rewards.to(device),
            self.indices,
            None if self.absorbed is None else self.absorbed.to(device),
        )
