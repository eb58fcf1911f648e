"""Typed batch containers shared by the control engine (shapes in each docstring)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class TransitionBatch:
    """A minibatch of transitions from the replay buffer.

    Attributes:
        obs: ``[B, obs_dim]`` float32.
        actions: ``[B, act_dim]`` float32, in the agent's [-1, 1] action space.
        rewards: ``[B]`` the rewards SAC trains on (true rewards for ``oracle``, the reward
            model's relabelled rewards for ``pebble``/``aparl``).
        next_obs: ``[B, obs_dim]``.
        dones: ``[B]`` 1.0 where the episode terminated (not truncated) at this step.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    dones: Tensor


@dataclass(frozen=True)
class SegmentBatch:
    """Trajectory segments σ = (s₁, a₁, …, s_H, a_H) of length H from single episodes.

    Attributes:
        obs: ``[N, H, obs_dim]``.
        actions: ``[N, H, act_dim]``.
        true_rewards: ``[N, H]`` the environment's reward (what simulated teachers see).
        indices: ``[N]`` long, replay-buffer index of each segment's first transition
            (lets the feedback store refer to a segment without copying it).
    """

    obs: Tensor
    actions: Tensor
    true_rewards: Tensor
    indices: Tensor

    @property
    def length(self) -> int:
        return int(self.obs.shape[1])

    def __len__(self) -> int:
        return int(self.obs.shape[0])
