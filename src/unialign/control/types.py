"""Typed batch containers shared by the control engine (shapes in each docstring)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unialign.feedback.types import SegmentBatch

__all__ = ["TransitionBatch", "SegmentBatch"]


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
