"""PEBBLE's unsupervised pre-training reward: a particle-based state-entropy estimate.

PEBBLE (Lee, Smith & Abbeel 2021, arXiv 2106.05091), Eq. 3, after APT (Liu & Abbeel 2021,
arXiv 2103.04551): the entropy H(s) = −E[log p(s)] is estimated, up to constants, by the
distance of each state to its k-th nearest neighbour among the states visited so far, which
gives the intrinsic reward ``r_int(s) = log(c + ‖s − s^k‖)``. PEBBLE's code uses the raw
distance (``use_log=False``) and divides the reward by a running standard deviation of the
rewards seen so far (``normalize=True``).

Distances are computed in chunks with ``torch.cdist`` in its exact mode (no ``‖a‖² + ‖b‖² −
2ab`` matmul shortcut, whose cancellation error is largest for exactly the close pairs that a
nearest-neighbour distance depends on), against at most ``max_reference`` buffer states
(a uniform random subset when the buffer holds more).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["RunningMeanStd", "StateEntropyReward"]


class RunningMeanStd:
    """Running mean and (population) variance of a stream of scalars (Chan et al.'s update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 0.0, 0

    def update(self, x: Tensor) -> None:
        x = x.detach().double().reshape(-1)
        n = x.numel()
        if n == 0:
            return
        b_mean, b_var = float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = (
            float(state["mean"]),
            float(state["var"]),
            int(state["count"]),
        )


class StateEntropyReward:
    """``r_int(s) = log(c + ‖s − s^k‖)``, optionally divided by a running std.

    Args:
        k: which nearest neighbour (PEBBLE/APT: 5).
        c: the constant inside the log (APT: 1), keeping the reward finite at distance 0.
        use_log: False gives PEBBLE's code's reward, the raw k-NN distance.
        normalize: divide by the running std of all rewards computed so far (updated with
            the current batch first, as PEBBLE does); a zero std leaves the reward unscaled.
        max_reference: at most this many buffer states serve as neighbours.
        chunk_size: query states per ``cdist`` call (memory: chunk × max_reference floats).
        seed: for the reference subsample.
    """

    def __init__(
        self,
        k: int = 5,
        *,
        c: float = 1.0,
        use_log: bool = True,
        normalize: bool = True,
        max_reference: int = 10_000,
        chunk_size: int = 1024,
        seed: int = 0,
    ) -> None:
        if k < 1 or max_reference < k + 1 or chunk_size < 1:
            raise ValueError(
                f"need k >= 1, max_reference >= k + 1 and chunk_size >= 1; got k={k}, "
                f"max_reference={max_reference}, chunk_size={chunk_size}"
            )
        if use_log and c <= 0:
            raise ValueError(f"c must be > 0 so that log(c + distance) is finite, got {c}")
        self.k, self.c, self.use_log, self.normalize = k, c, use_log, normalize
        self.max_reference, self.chunk_size = max_reference, chunk_size
        self.stats = RunningMeanStd()
        self._rng = np.random.default_rng(seed)

    def knn_distance(self, obs: Tensor, reference: Tensor) -> Tensor:
        """‖s − s^k‖ for each row of ``obs [B, d]`` among the rows of ``reference [M, d]``.

        A query state's own copy in ``reference`` is not its neighbour: when a row of
        ``reference`` is at distance exactly 0, the first such row is skipped (so the state
        itself, stored in the buffer, is not counted; any further copies are).
        """
        if reference.shape[0] < self.k + 1:
            raise ValueError(
                f"need at least k + 1 = {self.k + 1} reference states, got {reference.shape[0]}"
            )
        out = []
        for chunk in obs.split(self.chunk_size):
            d = torch.cdist(chunk, reference, compute_mode="donot_use_mm_for_euclid_dist")
            nearest = torch.topk(d, self.k + 1, dim=1, largest=False, sorted=True).values
            out.append(torch.where(nearest[:, 0] == 0, nearest[:, self.k], nearest[:, self.k - 1]))
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, obs_batch: Tensor, buffer_obs: Tensor | np.ndarray) -> Tensor:
        """Intrinsic rewards ``[B]`` for ``obs_batch [B, d]`` against the buffer's states.

        ``buffer_obs`` may be a numpy array: the subsample is taken before it is copied to
        ``obs_batch``'s device, so pass the buffer's array rather than a device copy of it.
        """
        m = len(buffer_obs)
        if m > self.max_reference:
            keep = np.sort(self._rng.choice(m, size=self.max_reference, replace=False))
            buffer_obs = buffer_obs[keep]
        reference = torch.as_tensor(buffer_obs, device=obs_batch.device, dtype=obs_batch.dtype)
        r = self.knn_distance(obs_batch, reference)
        if self.use_log:
            r = torch.log(self.c + r)
        if self.normalize:
            self.stats.update(r)
            if self.stats.std > 0:
                r = r / self.stats.std
        return r

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict(), "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])
        self._rng.bit_generator.state = state["rng"]
