"""Environment factories: one id scheme for Gymnasium, dm_control and Meta-World.

Ids:

* ``Pendulum-v1`` or ``gym:HalfCheetah-v5`` — any registered Gymnasium id;
* ``dmc:DOMAIN-TASK`` — a dm_control suite task (``dmc:walker-walk``, ``dmc:cartpole-balance``,
  ``dmc:ball_in_cup-catch``); state observations flattened into one float32 ``Box``;
  1000 steps per episode by default, the time limit reported as ``truncated``;
* ``metaworld:TASK-v3`` — a Meta-World v3 task through ``gymnasium.make("Meta-World/MT1",
  env_name=TASK-v3)`` (a new goal among the task's 50 each reset); ``info["success"]`` is
  Meta-World's success flag; 500 steps per episode.

Every env returned acts in ``[-1, 1]^act_dim``: continuous actions are rescaled from the
agent's ``[-1, 1]`` to the env's bounds (``gymnasium.wrappers.RescaleAction``), so SAC's tanh
policy needs no per-env scaling. Observations are flat float32 arrays. Discrete action spaces
are rejected (SAC needs a ``Box``). Nothing here renders.
"""

from __future__ import annotations

import difflib
import functools
import os
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

PREFIXES = ("gym:", "dmc:", "metaworld:")
DMC_EPISODE_STEPS = 1000
METAWORLD_EPISODE_STEPS = 500


class EnvSpec(NamedTuple):
    """Sizes of an environment as the agent sees it (after `make_env`'s wrappers)."""

    obs_dim: int
    act_dim: int
    max_episode_steps: int | None


@functools.lru_cache(maxsize=64)
def env_spec(env_id: str) -> EnvSpec:
    """``obs_dim``, ``act_dim`` and ``max_episode_steps`` of ``env_id`` (builds it once)."""
    env = make_env(env_id)
    try:
        return EnvSpec(
            obs_dim=int(np.prod(env.observation_space.shape)),
            act_dim=int(np.prod(env.action_space.shape)),
            max_episode_steps=_max_episode_steps(env),
        )
    finally:
        env.close()


env_dims = env_spec  # ``obs_dim, act_dim, max_episode_steps = env_dims(env_id)``


def make_env(
    env_id: str, *, seed: int | None = None, max_episode_steps: int | None = None
) -> gym.Env:
    """Build one environment for ``env_id`` (see the module docstring for the id scheme).

    ``seed`` seeds the env (by a first ``reset(seed=seed)``) and its action space, so later
    ``reset()`` calls without a seed continue a reproducible sequence. ``max_episode_steps``
    overrides the default episode length.
    """
    kind, name = _parse(env_id)
    if kind == "dmc":
        env = _make_dmc(name, seed=seed, max_episode_steps=max_episode_steps)
    elif kind == "metaworld":
        env = _make_metaworld(name, seed=seed, max_episode_steps=max_episode_steps)
    else:
        env = _make_gym(name, max_episode_steps=max_episode_steps)
    env = _standardize(env, env_id)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(
    env_id: str,
    num_envs: int,
    *,
    seed: int | None = None,
    max_episode_steps: int | None = None,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of `make_env` (env ``i`` seeded ``seed + i``) in a `SyncVectorEnv`.

    Autoreset is ``SAME_STEP``: every ``step`` is a real transition; when an episode ends the
    returned observation is already the next episode's first one and the true final
    observation is in ``info["final_obs"]`` — use `final_next_obs` before storing transitions.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be positive, got {num_envs}")

    def factory(i: int):
        s = None if seed is None else seed + i
        return lambda: make_env(env_id, seed=s, max_episode_steps=max_episode_steps)

    venv = gym.vector.SyncVectorEnv(
        [factory(i) for i in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    if seed is not None:
        venv.action_space.seed(seed)
    return venv


def final_next_obs(next_obs: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
    """The true successor states of a ``SAME_STEP`` vector-env step.

    ``next_obs`` rows of envs whose episode ended are replaced by ``infos["final_obs"]``.
    """
    mask = infos.get("_final_obs")
    if mask is None or not np.any(mask):
        return next_obs
    out = np.array(next_obs, copy=True)
    for i in np.flatnonzero(mask):
        out[i] = infos["final_obs"][i]
    return out


# ----------------------------------------------------------------------------- parsing
def _parse(env_id: str) -> tuple[str, str]:
    if ":" in env_id:
        prefix, name = env_id.split(":", 1)
        if f"{prefix}:" not in PREFIXES:
            raise ValueError(
                f"unknown environment id {env_id!r}: the prefix must be one of "
                f"{', '.join(PREFIXES)} (or none, for a plain Gymnasium id)"
            )
        return prefix, name
    return "gym", env_id


def _unknown(env_id: str, candidates: list[str]) -> ValueError:
    close = difflib.get_close_matches(env_id, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"unknown environment id {env_id!r}. Accepted: a Gymnasium id (optionally 'gym:ID'), "
        f"'dmc:DOMAIN-TASK' or 'metaworld:TASK-v3'{hint}"
    )


# ---------------------------------------------------------------------------- builders
def _make_gym(name: str, *, max_episode_steps: int | None) -> gym.Env:
    try:
        return gym.make(name, max_episode_steps=max_episode_steps, disable_env_checker=True)
    except gym.error.Error as e:  # NameNotFound, VersionNotFound, NamespaceNotFound, …
        raise _unknown(name, list(gym.registry)) from e


def _make_dmc(name: str, *, seed: int | None, max_episode_steps: int | None) -> gym.Env:
    # dm_control picks an OpenGL backend at import; we never render, so on a headless machine
    # skip the probing (and its GLFW warnings) unless the user chose a backend.
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "disable"
    from dm_control import suite  # slow import: only when a dmc env is asked for

    tasks = {f"{d}-{t}": (d, t) for d, t in suite.ALL_TASKS}
    tasks.update({f"{d}_{t}": (d, t) for d, t in suite.ALL_TASKS})  # B-Pref's spelling
    if name not in tasks:
        raise _unknown(f"dmc:{name}", [f"dmc:{k}" for k in tasks if "-" in k])
    env = DMCEnv(*tasks[name], seed=seed)
    return gym.wrappers.TimeLimit(env, max_episode_steps or DMC_EPISODE_STEPS)


def _make_metaworld(name: str, *, seed: int | None, max_episode_steps: int | None) -> gym.Env:
    import metaworld  # registers "Meta-World/MT1"

    names = sorted(metaworld.ALL_V3_ENVIRONMENTS)
    if name not in names:
        raise _unknown(f"metaworld:{name}", [f"metaworld:{n}" for n in names])
    steps = max_episode_steps or METAWORLD_EPISODE_STEPS
    if steps > METAWORLD_EPISODE_STEPS:  # the env itself refuses steps past max_path_length
        raise ValueError(f"Meta-World episodes last at most {METAWORLD_EPISODE_STEPS} steps")
    return gym.make(
        "Meta-World/MT1",
        env_name=name,
        seed=seed,
        max_episode_steps=steps,
        disable_env_checker=True,
    )


def _standardize(env: gym.Env, env_id: str) -> gym.Env:
    """Reject non-Box actions, rescale actions to [-1, 1], cast observations to float32."""
    act = env.action_space
    if not isinstance(act, spaces.Box):
        env.close()
        raise ValueError(f"SAC needs a continuous Box action space; {env_id} has {act}")
    if not isinstance(env.observation_space, spaces.Box):
        env.close()
        raise ValueError(
            f"{env_id}: only Box observations are supported, got {env.observation_space}"
        )
    if not (np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high))):
        env.close()
        raise ValueError(f"{env_id}: unbounded action space {act} cannot be rescaled to [-1, 1]")
    if not (np.all(act.low == -1.0) and np.all(act.high == 1.0) and act.dtype == np.float32):
        env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))
    obs = env.observation_space
    low, high = obs.low.reshape(-1), obs.high.reshape(-1)
    if env_id.startswith("metaworld:"):
        low = high = None  # Meta-World declares the goal slots [0, 0] but fills them in
    space = spaces.Box(
        -np.inf if low is None else low.astype(np.float32),
        np.inf if high is None else high.astype(np.float32),
        shape=(int(np.prod(obs.shape)),),
        dtype=np.float32,
    )
    return gym.wrappers.TransformObservation(
        env, lambda o: np.asarray(o, dtype=np.float32).reshape(-1), space
    )


def _max_episode_steps(env: gym.Env) -> int | None:
    e: Any = env
    while e is not None:
        if isinstance(e, gym.wrappers.TimeLimit):
            return int(e._max_episode_steps)
        e = getattr(e, "env", None)
    return None


# ----------------------------------------------------------------------- dm_control
class DMCEnv(gym.Env):
    """A dm_control suite task as a Gymnasium env with flattened float32 state observations.

    The task's own time limit is disabled (`make_env` adds a ``TimeLimit``, which reports the
    end as ``truncated``); an episode that the task itself ends with discount 0 is
    ``terminated``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, domain: str, task: str, *, seed: int | None = None) -> None:
        from dm_control import suite

        kwargs: dict[str, Any] = {"random": seed, "time_limit": float("inf")}
        self._env = suite.load(domain, task, task_kwargs=kwargs)
        a = self._env.action_spec()
        self.action_space = spaces.Box(
            np.asarray(a.minimum, np.float32).reshape(a.shape),
            np.asarray(a.maximum, np.float32).reshape(a.shape),
            dtype=np.float32,
        )
        dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    @staticmethod
    def _flat(observation: dict[str, Any]) -> np.ndarray:
        return np.concatenate(
            [np.asarray(v, dtype=np.float32).reshape(-1) for v in observation.values()]
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:  # the task draws initial states from its own RandomState
            self._env.task._random = np.random.RandomState(seed)
        return self._flat(self._env.reset().observation), {}

    def step(self, action: np.ndarray):
        ts = self._env.step(action)
        terminated = bool(ts.last() and ts.discount == 0.0)
        truncated = bool(ts.last() and not terminated)
        return self._flat(ts.observation), float(ts.reward or 0.0), terminated, truncated, {}

    def close(self) -> None:
        self._env.close()
