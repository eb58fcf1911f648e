"""Stepping several environments with deterministic, resumable episodes.

Each episode of environment ``i`` is reset with a seed derived from (run seed, i, episode
number), so the sequence of episodes is a function of the seed alone. A checkpoint stores the
actions taken so far in each open episode; on resume the environment is reset with the same
seed and those actions are replayed, which restores the simulator exactly (classic control
and MuJoCo are deterministic given the seed and the actions) without pickling simulator state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unialign.control.envs import make_env


@dataclass
class StepResult:
    """One step of all environments (leading axis = environment).

    ``next_obs`` holds the true last observation of an episode that just ended (what the
    replay buffer needs); ``obs_after`` the observation the policy acts on next (the reset
    observation where an episode ended). ``finished`` lists (env index, return, length,
    success) of the episodes that ended on this step.
    """

    next_obs: np.ndarray
    obs_after: np.ndarray
    true_reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    finished: list[tuple[int, float, int, float | None]] = field(default_factory=list)


class EpisodeRunner:
    """``num_envs`` copies of ``env_id`` stepped together with seeded, replayable episodes."""

    def __init__(self, env_id: str, num_envs: int, seed: int) -> None:
        self.env_id = env_id
        self.seed = seed
        self.envs = [make_env(env_id) for _ in range(num_envs)]
        self.episode = [0] * num_envs
        self.open_actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.ep_return = [0.0] * num_envs
        self.ep_success: list[float | None] = [None] * num_envs
        self.obs = np.stack([self._reset(i) for i in range(num_envs)])

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def _episode_seed(self, i: int) -> int:
        # distinct, reproducible seeds for every (run, env, episode); kept below 2**31
        return (self.seed * 1_000_003 + i * 10_007 + self.episode[i] * 7_919) % (2**31 - 1)

    def _reset(self, i: int) -> np.ndarray:
        obs, _ = self.envs[i].reset(seed=self._episode_seed(i))
        self.open_actions[i] = []
        self.ep_return[i] = 0.0
        self.ep_success[i] = None
        return np.asarray(obs, dtype=np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        n = self.num_envs
        next_obs = np.empty_like(self.obs)
        rew = np.empty(n, dtype=np.float32)
        term = np.zeros(n, dtype=bool)
        trunc = np.zeros(n, dtype=bool)
        finished = []
        obs_after = np.empty_like(self.obs)
        for i, env in enumerate(self.envs):
            o, r, te, tr, info = env.step(actions[i])
            self.open_actions[i].append(np.asarray(actions[i], dtype=np.float32))
            self.ep_return[i] += float(r)
            if "success" in info:
                self.ep_success[i] = max(self.ep_success[i] or 0.0, float(info["success"]))
            next_obs[i], rew[i], term[i], trunc[i] = o, r, te, tr
            if te or tr:
                finished.append(
                    (i, self.ep_return[i], len(self.open_actions[i]), self.ep_success[i])
                )
                self.episode[i] += 1
                obs_after[i] = self._reset(i)
            else:
                obs_after[i] = o
        self.obs = obs_after
        return StepResult(next_obs, obs_after.copy(), rew, term, trunc, finished)

    def state_dict(self) -> dict:
        return {
            "episode": list(self.episode),
            "open_actions": [np.stack(a) if a else np.zeros((0,)) for a in self.open_actions],
        }

    def load_state_dict(self, state: dict) -> None:
        """Reset every env into its saved episode and replay that episode's actions."""
        self.episode = list(state["episode"])
        for i in range(self.num_envs):
            obs = self._reset(i)
            for a in state["open_actions"][i]:
                obs, r, te, tr, info = self.envs[i].step(a)
                self.open_actions[i].append(np.asarray(a, dtype=np.float32))
                self.ep_return[i] += float(r)
                if "success" in info:
                    self.ep_success[i] = max(self.ep_success[i] or 0.0, float(info["success"]))
                if te or tr:  # cannot happen for a saved open episode
                    raise RuntimeError(
                        f"replaying env {i}'s open episode ended early; the environment is not deterministic"
                    )
            self.obs[i] = np.asarray(obs, dtype=np.float32)

    def close(self) -> None:
        for env in self.envs:
            env.close()
