"""The control algorithms: each is a reward learner given to the one loop (one line each).

An entry names the algorithm, says what it is, whether it is experimental, and builds its
reward learner from the run's configuration (no builder: SAC trains on the true reward, and no
feedback is asked). Everything else — agent, labeller, query selector, schedule — is shared.
Adding an algorithm: its module (a ``RewardLearner``, see :mod:`unialign.control.components`),
its test, its docs entry and one line in :data:`ALGORITHMS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from unialign.control.components import RewardLearner

if TYPE_CHECKING:
    from unialign.control.config import ControlConfig

__all__ = ["ALGORITHMS", "ControlAlgorithm", "get_algorithm"]

#: ``(config, obs_dim, act_dim, device) -> reward learner``
LearnerBuilder = Callable[["ControlConfig", int, int, torch.device], RewardLearner]


@dataclass(frozen=True)
class ControlAlgorithm:
    """A registry entry; ``build_learner=None`` means SAC trains on the true reward."""

    name: str
    description: str
    build_learner: LearnerBuilder | None
    experimental: bool = False
    docs: str = "docs/control-training.md"

    @property
    def learns_reward(self) -> bool:
        return self.build_learner is not None


def _bradley_terry(cfg: ControlConfig, obs_dim: int, act_dim: int, device: torch.device):
    from unialign.control.learners import BradleyTerryLearner
    from unialign.control.reward_model import RewardEnsemble

    model = RewardEnsemble(
        obs_dim,
        act_dim,
        ensemble_size=cfg.reward_ensemble,
        hidden=tuple(cfg.reward_hidden),
        lr=cfg.reward_lr,
        seed=cfg.seed,
    ).to(device)
    return BradleyTerryLearner(model, epochs=cfg.reward_epochs, batch_size=cfg.reward_batch)


def _aparl(cfg: ControlConfig, obs_dim: int, act_dim: int, device: torch.device):
    from unialign.control.aparl import APARLLearner

    return APARLLearner(
        _bradley_terry(cfg, obs_dim, act_dim, device),
        steps=cfg.aparl_steps,
        batch_size=cfg.reward_batch,
        lower_states=cfg.aparl_states,
        cg_iters=cfg.aparl_cg_iters,
        damping=cfg.aparl_damping,
        correction_weight=cfg.aparl_weight,
        curvature=cfg.aparl_curvature,
    )


ALGORITHMS: dict[str, ControlAlgorithm] = {
    a.name: a
    for a in (
        ControlAlgorithm("oracle", "SAC on the true reward (no feedback)", None),
        ControlAlgorithm("pebble", "reward ensemble fitted by Bradley–Terry, buffer relabelled", _bradley_terry),
        ControlAlgorithm("aparl", "pebble + the A-PARL hypergradient correction", _aparl, experimental=True, docs="docs/aparl.md"),
    )
}  # fmt: skip


def get_algorithm(name: str) -> ControlAlgorithm:
    """The registry entry for ``name``; the error lists the valid names."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown control algorithm {name!r}; choose from {', '.join(ALGORITHMS)}"
        ) from None
