"""Replay buffer: shapes, exact relabeling, episode-respecting segments, checkpoints.

Hand-built episodes encode where each transition came from in its true reward:
``r = 100·env + 10·episode + step`` (step counted from 0 inside the episode), so a segment's
true rewards tell exactly which env, episode and steps it covers.
"""

import numpy as np
import pytest
import torch

from unialign.control.buffer import ReplayBuffer
from unialign.control.types import SegmentBatch, TransitionBatch


def _fill(buf: ReplayBuffer, episode_lengths: list[list[int]]) -> None:
    """Add steps for ``len(episode_lengths)`` envs in lock step; env k plays episodes of the
    given lengths back to back (all must total the same number of steps). The last step of
    each episode is ``terminated`` for even episodes and ``truncated`` for odd ones."""
    n = len(episode_lengths)
    plans = []
    for lengths in episode_lengths:
        plan = [
            (ep, t, t == length - 1) for ep, length in enumerate(lengths) for t in range(length)
        ]
        plans.append(plan)
    total = len(plans[0])
    assert all(len(p) == total for p in plans)
    for s in range(total):
        obs = np.zeros((n, buf.obs_dim), np.float32)
        rew = np.zeros(n, np.float32)
        term = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        for k in range(n):
            ep, t, last = plans[k][s]
            rew[k] = 100 * k + 10 * ep + t
            obs[k] = rew[k]  # observation = the same code (lets relabel tests read it back)
            term[k] = last and ep % 2 == 0
            trunc[k] = last and ep % 2 == 1
        act = np.full((n, buf.act_dim), 0.5, np.float32)
        buf.add(obs, act, rew, obs + 1, term, trunc)


def test_add_sample_shapes_and_dones():
    buf = ReplayBuffer(100, obs_dim=3, act_dim=2, seed=0)
    _fill(buf, [[4, 6], [3, 7]])
    assert len(buf) == 20 and buf.num_envs == 2
    b = buf.sample(7)
    assert isinstance(b, TransitionBatch)
    assert b.obs.shape == (7, 3) and b.next_obs.shape == (7, 3)
    assert b.actions.shape == (7, 2) and b.rewards.shape == (7,) and b.dones.shape == (7,)
    assert b.obs.dtype == torch.float32
    torch.testing.assert_close(b.next_obs, b.obs + 1)
    # dones: 1 only on terminated steps (env 0 ep 0 ends at step 3; env 1 ep 0 at step 2),
    # never on truncated ones (the ends of the odd episodes).
    many = buf.sample(2000)
    assert len(set(many.rewards.tolist())) == 20  # every row is reachable
    assert set(many.rewards[many.dones == 1].tolist()) == {3.0, 102.0}


def test_relabel_recomputes_every_reward_exactly_and_new_adds_follow():
    buf = ReplayBuffer(100, obs_dim=3, act_dim=2)
    _fill(buf, [[4, 6], [3, 7]])
    true = buf.true_rewards().copy()
    np.testing.assert_array_equal(buf.training_rewards(), true)  # oracle by default

    def reward_fn(obs, act):  # integers and halves: exact in float32
        return obs[:, 0] * 2.0 - act[:, 1]

    buf.relabel(reward_fn, batch_size=3)  # chunks of 3 over 20 rows, the last one partial
    np.testing.assert_array_equal(buf.training_rewards(), true * 2.0 - 0.5)
    np.testing.assert_array_equal(buf.true_rewards(), true)  # true rewards untouched
    buf.add(np.full((2, 3), 7.0), np.zeros((2, 2)), [1.0, 2.0], np.zeros((2, 3)), [0, 0], [0, 0])
    np.testing.assert_array_equal(buf.training_rewards()[-2:], [14.0, 14.0])
    b = buf.sample(64)
    torch.testing.assert_close(b.rewards, b.obs[:, 0] * 2.0 - b.actions[:, 1])
    buf.use_true_rewards()
    np.testing.assert_array_equal(buf.training_rewards(), buf.true_rewards())


def test_relabel_accepts_torch_reward_functions():
    buf = ReplayBuffer(10, obs_dim=1, act_dim=1)
    buf.add([[1.0]], [[0.0]], [0.0], [[0.0]], [False], [False])
    buf.relabel(lambda o, a: torch.as_tensor(o).sum(1) * 3)
    assert buf.training_rewards().tolist() == [3.0]


def _codes(seg: SegmentBatch) -> np.ndarray:
    return seg.true_rewards.numpy().astype(int)


def test_segments_lie_inside_one_episode_and_cover_every_valid_window():
    """Env 0 plays episodes of 4 and 6 steps, env 1 of 3 and 7. Windows of H = 3 inside one
    episode: (4−3+1) + (6−3+1) + (3−3+1) + (7−3+1) = 2 + 4 + 1 + 5 = 12; their returns are
    3·first + 0 + 1 + 2."""
    buf = ReplayBuffer(100, obs_dim=3, act_dim=2, seed=1)
    _fill(buf, [[4, 6], [3, 7]])
    seg = buf.sample_segments(400, 3)
    assert seg.obs.shape == (400, 3, 3) and seg.actions.shape == (400, 3, 2)
    assert seg.length == 3 and len(seg) == 400 and seg.indices.dtype == torch.long
    codes = _codes(seg)
    np.testing.assert_array_equal(np.diff(codes, axis=1), 1)  # consecutive steps …
    assert (codes // 10 == codes[:, :1] // 10).all()  # … of one env and episode
    np.testing.assert_array_equal(codes.sum(1), 3 * codes[:, 0] + 3)  # exact segment returns
    expected = {0, 1, 10, 11, 12, 13, 100, 110, 111, 112, 113, 114}
    assert set(codes[:, 0].tolist()) == expected
    with pytest.raises(ValueError, match="no segment of 8 steps"):
        buf.sample_segments(1, 8)


def test_segments_do_not_wrap_across_the_ring_write_pointer():
    """Capacity 10, one env, one 15-step episode: rows hold steps 10–14 (rows 0–4) and 5–9
    (rows 5–9). Windows of 4 may start at steps 5…11 only; a window from step 12 would run
    into step 5 (the oldest row) and is not a real trajectory."""
    buf = ReplayBuffer(10, obs_dim=1, act_dim=1, seed=0)
    _fill(buf, [[15]])
    assert len(buf) == 10
    codes = _codes(buf.sample_segments(300, 4))
    np.testing.assert_array_equal(np.diff(codes, axis=1), 1)
    assert set(codes[:, 0].tolist()) == set(range(5, 12))


def test_capacity_rounds_down_to_a_multiple_of_num_envs():
    buf = ReplayBuffer(7, obs_dim=1, act_dim=1)
    _fill(buf, [[5], [5]])  # 10 transitions into 6 usable rows
    assert buf.capacity == 6 and len(buf) == 6
    codes = _codes(buf.sample_segments(100, 3))  # the 3 newest steps of each env: 2, 3, 4
    assert set(codes[:, 0].tolist()) == {2, 102}


def test_segment_at_round_trip_and_stale_indices():
    buf = ReplayBuffer(100, obs_dim=3, act_dim=2, seed=2)
    _fill(buf, [[4, 6], [3, 7]])
    seg = buf.sample_segments(16, 3)
    again = buf.segment_at(seg.indices, 3)
    for name in ("obs", "actions", "true_rewards", "indices"):
        torch.testing.assert_close(getattr(again, name), getattr(seg, name))
    row_of_step_3 = 3 * 2  # env 0, step 3 (the last of its first episode)
    with pytest.raises(ValueError, match="no longer"):
        buf.segment_at(np.array([row_of_step_3]), 3)


def test_state_dict_round_trip_continues_identically(tmp_path):
    buf = ReplayBuffer(50, obs_dim=3, act_dim=2, seed=3)
    _fill(buf, [[4, 6], [3, 7]])
    buf.sample(5)
    path = tmp_path / "buf.pt"
    torch.save(buf.state_dict(), path)
    other = ReplayBuffer(50, obs_dim=3, act_dim=2, seed=99)
    other.load_state_dict(torch.load(path, weights_only=False))
    assert len(other) == len(buf)
    a, b = buf.sample(8), other.sample(8)
    torch.testing.assert_close(a.obs, b.obs)
    sa, sb = buf.sample_segments(5, 3), other.sample_segments(5, 3)
    torch.testing.assert_close(sa.true_rewards, sb.true_rewards)
    _fill(buf, [[2], [2]])
    _fill(other, [[2], [2]])
    np.testing.assert_array_equal(buf.observations(), other.observations())
    sa, sb = buf.sample_segments(50, 2), other.sample_segments(50, 2)
    torch.testing.assert_close(sa.true_rewards, sb.true_rewards)


def test_errors():
    buf = ReplayBuffer(10, obs_dim=1, act_dim=1)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)
    with pytest.raises(ValueError, match="no segment"):
        buf.sample_segments(1, 2)
    buf.add(np.zeros((2, 1)), np.zeros((2, 1)), [0, 0], np.zeros((2, 1)), [0, 0], [0, 0])
    with pytest.raises(ValueError, match="2 envs"):
        buf.add(np.zeros((3, 1)), np.zeros((3, 1)), [0] * 3, np.zeros((3, 1)), [0] * 3, [0] * 3)


def test_absorbing_segments_run_past_terminations_only():
    """One env: episode 0 (4 steps, terminated at step 3), episode 1 (6 steps, truncated).

    Windows of H = 3 inside one episode: ep 0 starts 0, 1 (codes 0..3); ep 1 starts 0..3
    (codes 10..15). With ``absorbing``, ep 0's windows starting at steps 2 and 3 also qualify
    (they cross the termination after code 3) and are padded with the terminal next_obs
    (obs + 1 = 4), a zero action and true reward 0; ep 1 ends by truncation, so its late
    starts (steps 4, 5) never qualify.
    """
    buf = ReplayBuffer(50, obs_dim=1, act_dim=1, seed=0)
    _fill(buf, [[4, 6]])
    seg = buf.sample_segments(500, 3, absorbing=True)
    firsts = set(seg.true_rewards[:, 0].tolist())
    assert firsts == {0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0}
    starts_at_3 = seg.true_rewards[:, 0] == 3.0
    assert starts_at_3.any()
    torch.testing.assert_close(seg.true_rewards[starts_at_3][0], torch.tensor([3.0, 0.0, 0.0]))
    torch.testing.assert_close(seg.obs[starts_at_3][0, :, 0], torch.tensor([3.0, 4.0, 4.0]))
    torch.testing.assert_close(seg.actions[starts_at_3][0, :, 0], torch.tensor([0.5, 0.0, 0.0]))
    starts_at_2 = seg.true_rewards[:, 0] == 2.0
    torch.testing.assert_close(seg.true_rewards[starts_at_2][0], torch.tensor([2.0, 3.0, 0.0]))
    # without absorbing, nothing crosses the termination
    plain = buf.sample_segments(500, 3)
    assert set(plain.true_rewards[:, 0].tolist()) == {0.0, 1.0, 10.0, 11.0, 12.0, 13.0}


def test_relabel_adds_the_absorbing_value_to_terminated_rows():
    """reward_fn(s, a) = s + a. Terminated row (code 3, next_obs 4): 3 + 0.5 plus
    γ/(1−γ)·reward_fn(4, 0) = 9 · 4 = 36 at γ = 0.9, so 39.5; other rows get s + 0.5.
    A row added later that terminates gets the same treatment."""
    buf = ReplayBuffer(50, obs_dim=1, act_dim=1, seed=0)
    _fill(buf, [[4, 6]])
    buf.relabel(lambda o, a: (o + a).sum(-1), absorbing_gamma=0.9)
    train, true = buf.training_rewards(), buf.true_rewards()
    expected = true + 0.5
    expected[true == 3.0] += 9.0 * 4.0
    np.testing.assert_allclose(train, expected, rtol=1e-6)
    buf.add(
        np.array([[7.0]]),
        np.array([[0.5]]),
        np.array([0.0]),
        np.array([[8.0]]),
        np.array([True]),
        np.array([False]),
    )
    np.testing.assert_allclose(buf.training_rewards()[-1], 7.5 + 9.0 * 8.0, rtol=1e-6)
    with pytest.raises(ValueError, match="absorbing_gamma"):
        buf.relabel(lambda o, a: o.sum(-1), absorbing_gamma=1.0)
