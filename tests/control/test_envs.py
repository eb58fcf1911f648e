"""Environment factories: id scheme, action rescaling, episode limits, errors."""

import importlib.util

import numpy as np
import pytest

from unialign.control.envs import (
    env_spec,
    final_next_obs,
    make_env,
    make_vector_env,
)


def _needs(module: str):
    try:
        ok = importlib.util.find_spec(module) is not None
    except ImportError:  # pragma: no cover
        ok = False
    return pytest.mark.skipif(not ok, reason=f"{module} is not installed (pip install .[envs])")


def _check(env, obs_dim: int, act_dim: int):
    assert env.observation_space.shape == (obs_dim,)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (act_dim,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    obs, _ = env.reset()
    assert obs.shape == (obs_dim,) and obs.dtype == np.float32
    out = env.step(np.ones(act_dim, np.float32))  # the corner of [-1, 1] is a legal action
    assert out[0].shape == (obs_dim,) and out[0].dtype == np.float32
    assert np.isscalar(out[1]) or np.ndim(out[1]) == 0
    return out


def test_pendulum_actions_are_rescaled_to_the_env_bounds():
    env = make_env("Pendulum-v1", seed=0)
    _check(env, 3, 1)
    # the agent's +1 is Pendulum's +2 N·m: the rescaler maps [-1, 1] onto [-2, 2]
    assert env.unwrapped.action_space.high[0] == 2.0
    inner = env
    while not hasattr(inner, "action") or inner.__class__.__name__ != "RescaleAction":
        inner = inner.env
    np.testing.assert_allclose(inner.action(np.array([1.0, -0.5], np.float32)), [2.0, -1.0])
    assert env_spec("gym:Pendulum-v1") == (3, 1, 200)


def test_mujoco_env_and_seeding():
    a = make_env("InvertedPendulum-v5", seed=3)
    b = make_env("gym:InvertedPendulum-v5", seed=3)
    _check(a, 4, 1)
    _check(b, 4, 1)
    np.testing.assert_array_equal(a.reset()[0], b.reset()[0])
    assert env_spec("InvertedPendulum-v5").max_episode_steps == 1000


@pytest.mark.integration
@_needs("dm_control")
def test_dm_control_flattened_with_time_limit_as_truncation():
    env = make_env("dmc:cartpole-balance", seed=0, max_episode_steps=5)
    _check(env, 5, 1)  # position (3) + velocity (2)
    for _ in range(3):
        _, r, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        assert 0.0 <= r <= 1.0 and not terminated and not truncated
    _, _, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
    assert truncated and not terminated  # the 5th step hits the limit
    assert env_spec("dmc:cartpole-balance").max_episode_steps == 1000
    same = make_env("dmc:cartpole_balance", seed=0)  # B-Pref's spelling also works
    np.testing.assert_array_equal(
        same.reset(seed=1)[0], make_env("dmc:cartpole-balance").reset(seed=1)[0]
    )


@pytest.mark.integration
@_needs("metaworld")
def test_metaworld_reports_success():
    env = make_env("metaworld:door-open-v3", seed=0)
    *_, info = _check(env, 39, 4)
    assert "success" in info and float(info["success"]) in (0.0, 1.0)
    assert env_spec("metaworld:door-open-v3").max_episode_steps == 500


def test_vector_env_same_step_autoreset_and_final_obs():
    venv = make_vector_env("Pendulum-v1", 2, seed=0, max_episode_steps=3)
    obs, _ = venv.reset()
    assert obs.shape == (2, 3) and obs.dtype == np.float32
    assert venv.single_action_space.high[0] == 1.0
    act = np.zeros((2, 1), np.float32)
    for t in range(3):
        nxt, r, term, trunc, infos = venv.step(act)
        real = final_next_obs(nxt, infos)
        if t < 2:
            assert not trunc.any() and real is nxt
        else:  # both episodes end: next_obs is already the reset obs, the final one in info
            assert trunc.all()
            np.testing.assert_array_equal(real, np.stack(infos["final_obs"]))
            assert not np.array_equal(real, nxt)


def test_errors_for_discrete_and_unknown_ids():
    with pytest.raises(
        ValueError, match=r"SAC needs a continuous Box action space; CartPole-v1 has Discrete\(2\)"
    ):
        make_env("CartPole-v1")
    with pytest.raises(ValueError, match="did you mean 'Pendulum-v1'"):
        make_env("Pendulm-v1")
    with pytest.raises(ValueError, match="prefix must be one of gym:, dmc:, metaworld:"):
        make_env("mujoco:Hopper-v5")


@_needs("dm_control")
def test_unknown_dmc_task_suggests_close_matches():
    with pytest.raises(ValueError, match="dmc:walker-walk"):
        make_env("dmc:walker-wlak")
