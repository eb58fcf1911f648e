"""Replay buffer for off-policy control with relabelable rewards and episode-aware segments.

Layout. Transitions from a vector env of ``n`` copies are stored interleaved: the call that adds
step ``t`` writes env ``k``'s transition at row ``(t · n + k) mod capacity`` (capacity is
rounded down to a multiple of ``n`` at the first `add`). Consecutive steps of one env are
therefore ``n`` rows apart, and a segment is determined by its first row and its length.

Every row holds ``obs | action | training reward | next_obs | done | true reward`` in one
float32 array, so `sample` is a single gather. Each row also records an episode id (a per-env
counter bumped after every terminated or truncated step): a window of ``H`` steps of one env lies
inside one episode exactly when its first and last rows carry the same id and the window does not
run past the newest row.

Rewards. The *true* reward (the environment's) is stored once and never changes; teachers and
evaluation read it. The *training* reward is what `sample` returns to SAC: the true reward by
default (the oracle), or ``reward_fn(obs, act)`` after `relabel` (PEBBLE relabels the whole
buffer after each reward-model update; later `add` calls apply the same function to new rows).

Early termination (absorbing states). In tasks whose episodes *terminate* (InvertedPendulum,
Hopper), the most informative comparisons are between a segment that survives and one that
ends: `sample_segments(..., absorbing=True)` also returns windows that run past a termination,
padded with the absorbing state — the terminal ``next_obs``, a zero action, true reward 0 (the
environment pays nothing after the end). A reward model trained on such segments learns
r̂(absorbing); for SAC to see the same thing, `relabel(..., absorbing_gamma=γ)` adds the
discounted value of staying absorbed forever, ``γ/(1 − γ) · r̂(s_T, 0)``, to the reward of every
terminated transition (whose target does not bootstrap). This is the absorbing-state treatment
of Kostrikov et al. 2019 ("Discriminator-Actor-Critic", arXiv 1809.02925, Sec. 4.2). Tasks that
only truncate are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from unialign.control.types import SegmentBatch, TransitionBatch

RewardFn = Callable[[np.ndarray, np.ndarray], Any]
"""``reward_fn(obs [N, obs_dim], act [N, act_dim]) -> [N]`` (numpy or a torch tensor)."""


class ReplayBuffer:
    """Ring buffer of transitions from ``num_envs`` parallel envs (``num_envs`` set by `add`).

    Args:
        capacity: maximum number of transitions kept (oldest overwritten first).
        obs_dim, act_dim: flat observation and action sizes.
        seed: seed of the sampling RNG (part of `state_dict`).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, *, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        o, a = obs_dim, act_dim
        # column slices of the packed row: obs | act | reward | next_obs | done | true reward
        self._obs, self._act, self._rew = slice(0, o), slice(o, o + a), o + a
        self._next, self._done, self._true = slice(o + a + 1, 2 * o + a + 1), 2 * o + a + 1, -1
        self._data = np.zeros((capacity, 2 * o + a + 3), dtype=np.float32)
        self._episode = np.zeros(capacity, dtype=np.int64)
        self._capacity = capacity
        self._rng = np.random.default_rng(seed)
        self.num_envs = 0  # fixed by the first add
        self._ptr = 0  # next row to write
        self._size = 0
        self._next_episode = np.zeros(0, dtype=np.int64)  # per env
        self.reward_fn: RewardFn | None = None
        self.absorbing_gamma: float | None = None  # see the module docstring

    # ------------------------------------------------------------------------- writing
    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        true_reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Store one step of a vector env: every argument has a leading ``num_envs`` axis.

        ``next_obs`` must be the true successor state, also when the episode ended (with
        Gymnasium's autoreset, the final observation from ``info``; see
        `unialign.control.envs.final_next_obs`).
        """
        obs = np.asarray(obs, dtype=np.float32)
        n = obs.shape[0]
        if self.num_envs == 0:
            if n > self._capacity:
                raise ValueError(f"capacity {self._capacity} is smaller than num_envs {n}")
            self.num_envs = n
            self._capacity -= self._capacity % n
            self._next_episode = np.zeros(n, dtype=np.int64)
        elif n != self.num_envs:
            raise ValueError(f"this buffer stores {self.num_envs} envs per step, got {n}")
        rows = slice(self._ptr, self._ptr + n)
        action = np.asarray(action, dtype=np.float32).reshape(n, self.act_dim)
        true_reward = np.asarray(true_reward, dtype=np.float32).reshape(n)
        terminated = np.asarray(terminated, dtype=bool).reshape(n)
        truncated = np.asarray(truncated, dtype=bool).reshape(n)
        d = self._data[rows]
        d[:, self._obs] = obs.reshape(n, self.obs_dim)
        d[:, self._act] = action
        d[:, self._next] = np.asarray(next_obs, dtype=np.float32).reshape(n, self.obs_dim)
        d[:, self._done] = terminated
        d[:, self._true] = true_reward
        if self.reward_fn is None:
            d[:, self._rew] = true_reward
        else:
            r = self.reward_fn(np.ascontiguousarray(d[:, self._obs]), action)
            d[:, self._rew] = _as_numpy(r).reshape(n)
            self._add_absorbing_value(d)
        self._episode[rows] = self._next_episode
        self._next_episode += terminated | truncated
        self._ptr = (self._ptr + n) % self._capacity
        self._size = min(self._size + n, self._capacity)

    # ------------------------------------------------------------------------ rewards
    def relabel(
        self, reward_fn: RewardFn, batch_size: int = 4096, *, absorbing_gamma: float | None = None
    ) -> None:
        """Recompute the training reward of every stored transition as ``reward_fn(s, a)``.

        Runs in chunks of ``batch_size`` rows; ``reward_fn`` is kept and applied to rows added
        later, until the next `relabel` or `use_true_rewards`. With ``absorbing_gamma`` = γ,
        terminated transitions also get ``γ/(1 − γ) · reward_fn(s_T, 0)`` (module docstring).
        """
        if absorbing_gamma is not None and not 0 < absorbing_gamma < 1:
            raise ValueError(f"absorbing_gamma must lie in (0, 1), got {absorbing_gamma}")
        self.reward_fn, self.absorbing_gamma = reward_fn, absorbing_gamma
        for start in range(0, self._size, batch_size):
            chunk = self._data[start : min(start + batch_size, self._size)]
            obs, act = (np.ascontiguousarray(chunk[:, c]) for c in (self._obs, self._act))
            chunk[:, self._rew] = _as_numpy(reward_fn(obs, act)).reshape(len(chunk))
            self._add_absorbing_value(chunk)

    def _add_absorbing_value(self, rows: np.ndarray) -> None:
        """Add ``γ/(1 − γ) · r̂(s_T, 0)`` to the training reward of terminated ``rows`` (in place)."""
        if self.absorbing_gamma is None or self.reward_fn is None:
            return
        term = rows[:, self._done] > 0.5
        if not term.any():
            return
        g = self.absorbing_gamma
        nxt = np.ascontiguousarray(rows[term][:, self._next])
        r_abs = _as_numpy(self.reward_fn(nxt, np.zeros((len(nxt), self.act_dim), np.float32)))
        rows[term, self._rew] += g / (1 - g) * r_abs.reshape(-1)

    def use_true_rewards(self) -> None:
        """Train on the environment's rewards (the oracle): copy them, forget any reward_fn."""
        self.reward_fn, self.absorbing_gamma = None, None
        self._data[: self._size, self._rew] = self._data[: self._size, self._true]

    # ----------------------------------------------------------------------- reading
    def observations(self) -> np.ndarray:
        """``[len, obs_dim]`` view of every stored observation (row order, not time order;
        a strided view into the packed rows — ``np.ascontiguousarray`` copies it)."""
        return self._data[: self._size, self._obs]

    def true_rewards(self) -> np.ndarray:
        """``[len]`` view of every stored true reward."""
        return self._data[: self._size, self._true]

    def training_rewards(self) -> np.ndarray:
        """``[len]`` view of every stored training reward (what `sample` returns)."""
        return self._data[: self._size, self._rew]

    def sample(self, batch_size: int, device: str | torch.device = "cpu") -> TransitionBatch:
        """Uniform minibatch (with replacement) using the *training* rewards."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self._rng.integers(0, self._size, size=batch_size)
        rows = torch.from_numpy(self._data[idx]).to(device, non_blocking=True)
        # contiguous fields: MKL's skinny matmuls (e.g. the first layer's weight gradient)
        # are several times slower on column slices of the packed rows
        return TransitionBatch(
            obs=rows[:, self._obs].contiguous(),
            actions=rows[:, self._act].contiguous(),
            rewards=rows[:, self._rew].contiguous(),
            next_obs=rows[:, self._next].contiguous(),
            dones=rows[:, self._done].contiguous(),
        )

    def _segment_rows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``[N, length]`` row indices of the segments beginning at rows ``starts``."""
        steps = np.arange(length, dtype=np.int64) * self.num_envs
        return (starts[:, None] + steps[None, :]) % self._capacity

    def _window_ok(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Whether the ``length``-step window of one env beginning at each row lies inside one
        stored episode: filled, not running past the newest step, one episode id at both ends
        (ids are per-env counters, so equal ids at both ends mean no reset in between)."""
        if length < 1:
            raise ValueError(f"segment length must be positive, got {length}")
        n, size, cap = max(self.num_envs, 1), self._size, self._capacity
        ok = (starts >= 0) & (starts < size)
        if size == 0:
            return ok
        oldest = self._ptr if size == cap else 0
        age = ((starts - oldest) % cap) // n  # in steps, 0 = the oldest step held
        ok &= age + (length - 1) <= size // n - 1
        s = np.where(ok, starts, 0)
        ends = (s + (length - 1) * n) % cap
        return ok & (self._episode[s] == self._episode[ends])

    def _valid_starts(self, length: int) -> np.ndarray:
        rows = np.arange(self._size, dtype=np.int64)
        return rows[self._window_ok(rows, length)]

    def _segments(self, rows: np.ndarray, starts: np.ndarray, device) -> SegmentBatch:
        data = torch.from_numpy(self._data[rows])  # [N, H, width]
        return SegmentBatch(
            obs=data[..., self._obs].to(device),
            actions=data[..., self._act].to(device),
            true_rewards=data[..., self._true].to(device),
            indices=torch.from_numpy(starts.astype(np.int64)).to(device),
        )

    def sample_segments(
        self,
        n: int,
        length: int,
        device: str | torch.device = "cpu",
        *,
        absorbing: bool = False,
    ) -> SegmentBatch:
        """``n`` uniformly drawn windows of ``length`` consecutive steps of one env's episode.

        A window never crosses a reset (it may end on the episode's last step). With
        ``absorbing``, windows that run past a *termination* are drawn too, padded with the
        absorbing state (module docstring). Raises ``ValueError`` when no window exists yet.
        """
        if not absorbing:
            valid = self._valid_starts(length)
        else:
            rows = np.arange(self._size, dtype=np.int64)
            valid = rows[self._window_ok(rows, length) | self._absorbed_window_ok(rows, length)]
        if valid.size == 0:
            raise ValueError(
                f"no segment of {length} steps inside one episode yet "
                f"({self._size} transitions stored over {self.num_envs} envs)"
            )
        starts = valid[self._rng.integers(0, valid.size, size=n)]
        seg = self._segments(self._segment_rows(starts, length), starts, device)
        return self._pad_absorbed(seg, starts, length) if absorbing else seg

    def _terminal_offsets(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Per start row: the step k < length of the first terminated transition of the start's
        episode inside the window, or ``length`` if there is none."""
        rows = self._segment_rows(starts, length)  # [N, H]
        same = self._episode[rows] == self._episode[starts][:, None]
        term = (self._data[rows, self._done] > 0.5) & same
        return np.where(term.any(1), term.argmax(1), length)

    def _absorbed_window_ok(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Windows with a termination at step k whose steps 0..k are stored (padded after k).

        Steps 0..k are in the start's episode by construction of k; only the range needs
        checking (no step past the newest one)."""
        if self._size == 0:
            return np.zeros(len(starts), dtype=bool)
        k = self._terminal_offsets(starts, length)
        n, cap = max(self.num_envs, 1), self._capacity
        oldest = self._ptr if self._size == cap else 0
        age = ((starts - oldest) % cap) // n
        return (k < length) & (age + k <= self._size // n - 1)

    def _pad_absorbed(self, seg: SegmentBatch, starts: np.ndarray, length: int) -> SegmentBatch:
        k = torch.from_numpy(self._terminal_offsets(starts, length)).to(seg.obs.device)
        after = torch.arange(length, device=seg.obs.device)[None, :] > k[:, None]  # [N, H]
        if not bool(after.any()):
            return SegmentBatch(seg.obs, seg.actions, seg.true_rewards, seg.indices, after)
        term_rows = self._segment_rows(starts, length)[
            np.arange(len(starts)), np.minimum(k.cpu().numpy(), length - 1)
        ]
        s_T = torch.from_numpy(self._data[term_rows][:, self._next]).to(seg.obs.device)
        obs = torch.where(after[..., None], s_T[:, None, :], seg.obs)
        actions = seg.actions.masked_fill(after[..., None], 0.0)
        rewards = seg.true_rewards.masked_fill(after, 0.0)
        return SegmentBatch(obs, actions, rewards, seg.indices, after)

    def segment_at(
        self, indices: np.ndarray | torch.Tensor, length: int, device: str | torch.device = "cpu"
    ) -> SegmentBatch:
        """Rebuild the segments whose first rows are ``indices`` (from `SegmentBatch.indices`).

        Raises ``ValueError`` if one of them no longer lies inside one stored episode (its rows
        were overwritten since).
        """
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        starts = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = ~self._window_ok(starts, length)
        if bad.any():
            raise ValueError(
                f"segments at rows {starts[bad][:5].tolist()} (length {length}) are no longer "
                "stored inside one episode"
            )
        return self._segments(self._segment_rows(starts, length), starts, device)

    # -------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Stored rows (the filled part only), pointers and RNG state (``reward_fn`` excluded:
        call `relabel` again after restoring the reward model)."""
        s = self._size
        return {
            "capacity": self._capacity,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "num_envs": self.num_envs,
            "ptr": self._ptr,
            "size": s,
            "data": self._data[:s].copy(),
            "episode": self._episode[:s].copy(),
            "next_episode": self._next_episode.copy(),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state["obs_dim"], state["act_dim"]) != (self.obs_dim, self.act_dim):
            raise ValueError(
                f"checkpoint holds obs_dim/act_dim {state['obs_dim']}/{state['act_dim']}, "
                f"this buffer {self.obs_dim}/{self.act_dim}"
            )
        if state["capacity"] > self._data.shape[0]:
            raise ValueError(
                f"checkpoint capacity {state['capacity']} exceeds this buffer's "
                f"{self._data.shape[0]}"
            )
        s = int(state["size"])
        self._capacity, self.num_envs = int(state["capacity"]), int(state["num_envs"])
        self._ptr, self._size = int(state["ptr"]), s
        self._data[:s] = state["data"]
        self._episode[:s] = state["episode"]
        self._next_episode = np.asarray(state["next_episode"], dtype=np.int64).copy()
        self._rng.bit_generator.state = state["rng"]
        self.reward_fn = None


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)
