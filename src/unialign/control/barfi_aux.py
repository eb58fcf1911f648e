"""Auxiliary (heuristic) rewards for BARFI, named per task: a good and a bad one each.

A heuristic is a function h(s) of the state; BARFI and the naive sum use it as the auxiliary
reward of the state reached, r_aux(s, a, s') = h(s'), and potential-based shaping (Ng, Harada,
Russell 1999) uses it as the potential, F(s, a, s') = γ h(s') − h(s) with h = 0 after a
termination. Each h is bounded in about [−2, 2], the scale of one step of primary reward.
The bad ones are bad enough to matter: added to CartPole's +1 per step, the bad bonus makes
staying upright cost reward, so the naive sum teaches the agent to drop the pole.

| task | name | h(s) | what it rewards |
|---|---|---|---|
| CartPole-v1 | good | 1 − abs(θ)/θ_max − abs(x)/x_max | pole upright, cart centred |
| CartPole-v1 | bad | 2·abs(θ)/θ_max − 2 | a tilted pole: r_p + h < 0 while upright |
| MountainCar-v0 | good | abs(v)/v_max + (x − x_min)/(x_max − x_min) | speed and height |
| MountainCar-v0 | bad | 1 − abs(v)/v_max | standing still at the bottom |
| InvertedPendulum-v5 | good | 1 − abs(θ)/0.2 | pole upright |
| InvertedPendulum-v5 | bad | 2·abs(θ)/0.2 − 2 | a tilted pole: r_p + h < 0 while upright |

θ_max = 0.2095 rad and x_max = 2.4 are CartPole's termination limits; MountainCar's position
lies in [−1.2, 0.6] and its speed in [−0.07, 0.07]; InvertedPendulum-v5 ends when abs(θ) > 0.2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["AUX_REWARDS", "aux_reward", "task_name"]

Heuristic = Callable[[np.ndarray], float]

_CP_THETA, _CP_X = 0.2095, 2.4
_MC_V, _MC_LOW, _MC_HIGH = 0.07, -1.2, 0.6
_IP_THETA = 0.2


def _cartpole_good(s: np.ndarray) -> float:
    return 1.0 - abs(s[2]) / _CP_THETA - abs(s[0]) / _CP_X


def _cartpole_bad(s: np.ndarray) -> float:
    return 2.0 * abs(s[2]) / _CP_THETA - 2.0


def _mountaincar_good(s: np.ndarray) -> float:
    return abs(s[1]) / _MC_V + (s[0] - _MC_LOW) / (_MC_HIGH - _MC_LOW)


def _mountaincar_bad(s: np.ndarray) -> float:
    return 1.0 - abs(s[1]) / _MC_V


def _pendulum_good(s: np.ndarray) -> float:
    return 1.0 - abs(s[1]) / _IP_THETA


def _pendulum_bad(s: np.ndarray) -> float:
    return 2.0 * abs(s[1]) / _IP_THETA - 2.0


AUX_REWARDS: dict[str, dict[str, Heuristic]] = {
    "CartPole-v1": {"good": _cartpole_good, "bad": _cartpole_bad},
    "MountainCar-v0": {"good": _mountaincar_good, "bad": _mountaincar_bad},
    "InvertedPendulum-v5": {"good": _pendulum_good, "bad": _pendulum_bad},
}


def task_name(env_id: str) -> str:
    """``gym:CartPole-v1`` → ``CartPole-v1`` (the registry key)."""
    return env_id.split(":", 1)[1] if env_id.startswith("gym:") else env_id


def aux_reward(env_id: str, name: str) -> Heuristic:
    """The heuristic ``name`` of ``env_id``; the error lists the tasks and names there are."""
    task = task_name(env_id)
    if task not in AUX_REWARDS:
        raise ValueError(
            f"env {env_id!r} has no auxiliary rewards; BARFI's tasks are "
            f"{', '.join(sorted(AUX_REWARDS))} (add one to unialign.control.barfi_aux)"
        )
    if name not in AUX_REWARDS[task]:
        raise ValueError(
            f"aux {name!r} is not defined for {task}; choose one of {', '.join(AUX_REWARDS[task])}"
        )
    return AUX_REWARDS[task][name]
