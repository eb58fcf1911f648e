"""The style game: a skew-symmetric preference matrix over styles and its mixed Nash equilibrium.

M[i, j] = P(an answer of style i ≻ one of style j), with M + Mᵀ = 1 (so M[i, i] = ½). Two
policies that mix styles by π and π′ win against each other with probability πᵀ M π′. The
game with payoff A = M − ½ is symmetric and zero-sum (A = −Aᵀ), so its value is 0 and a
mixed Nash equilibrium π* is a distribution no style beats: (A π*)_s ≤ 0 for every style s.
It is found by a linear program (von Neumann's maximin):

    maximise v  subject to  Σ_i π_i A[i, j] ≥ v for every j,  Σ_i π_i = 1,  π ≥ 0,

then polished by solving the indifference equations (A π)_s = 0 on the LP's support, so that
its exploitability is 0 to rounding. For a 3-cycle (0 beats 1 by a = M01 − ½, 1 beats 2 by
b = M12 − ½, 2 beats 0 by c = M20 − ½) the equilibrium is π* ∝ (b, c, a); no code here
assumes three styles or a cycle.

The answer style :data:`~unialign.tasks.language.INVALID` is outside the matrix and always
loses: P(valid ≻ invalid) = 1 and P(invalid ≻ invalid) = ½. Distributions passed to the
metrics may carry an invalid share as an extra last entry (as :func:`style_distribution`
returns them).

Metrics: exploitability(π) = max_s P(s ≻ π) − ½ (0 exactly at an equilibrium, > 0 elsewhere
for a unique equilibrium); the total-variation distance to π*; πᵀ M π′ for win rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linprog

from unialign.tasks.language import classify_style

__all__ = [
    "DEFAULT_MATRIX",
    "StyleGame",
    "cyclic_matrix",
    "style_distribution",
    "total_variation",
]


def cyclic_matrix(win_probs: Sequence[float]) -> np.ndarray:
    """An n-style cycle: style i beats style i+1 (mod n) with probability ``win_probs[i]``;
    other pairs of distinct styles (n > 3) tie at ½."""
    n = len(win_probs)
    if n < 3:
        raise ValueError("a cycle needs at least 3 styles")
    m = np.full((n, n), 0.5)
    for i, p in enumerate(win_probs):
        m[i, (i + 1) % n], m[(i + 1) % n, i] = p, 1.0 - p
    return m


# list ≻ story (0.9), story ≻ question (0.7), question ≻ list (0.8): equilibrium
# π* ∝ (0.2, 0.3, 0.4) = (2/9, 1/3, 4/9), far from the corpus's style shares (0.45, 0.35, 0.20).
DEFAULT_MATRIX = cyclic_matrix([0.9, 0.7, 0.8])


def total_variation(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """½ Σ |p − q|; a shorter vector is padded with zeros (e.g. an equilibrium without the
    invalid entry)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    n = max(p.size, q.size)
    p, q = np.pad(p, (0, n - p.size)), np.pad(q, (0, n - q.size))
    return 0.5 * float(np.abs(p - q).sum())


def style_distribution(
    completions: Sequence[str | Sequence[dict[str, Any]]], styles: Sequence[str]
) -> np.ndarray:
    """Shares of each style among completions, ``[len(styles) + 1]``; the last entry is the
    invalid share (a style outside ``styles`` counts as invalid)."""
    if len(completions) == 0:
        raise ValueError("no completions to classify")
    index = {s: i for i, s in enumerate(styles)}
    counts = np.zeros(len(styles) + 1)
    for c in completions:
        counts[index.get(classify_style(c), len(styles))] += 1
    return counts / counts.sum()


class StyleGame:
    """A symmetric zero-sum game over answer styles (see the module docstring).

    Args:
        matrix: ``[S, S]`` with entries in [0, 1] and M + Mᵀ = 1 to 1e-9; it is stored with
            each lower-triangle entry set to 1 − the upper one, so that the stored matrix
            satisfies M + Mᵀ = 1 exactly in floating point.
        styles: S style names (default ``style0``, ``style1``, ...).
    """

    def __init__(
        self, matrix: Sequence[Sequence[float]] | np.ndarray, styles: Sequence[str] | None = None
    ) -> None:
        m = np.array(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
            raise ValueError(f"matrix must be square with at least 2 styles, got {m.shape}")
        if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
            raise ValueError("matrix entries must be probabilities in [0, 1]")
        if np.abs(m + m.T - 1).max() > 1e-9:
            raise ValueError("matrix must satisfy M + Mᵀ = 1 (P(i ≻ j) + P(j ≻ i) = 1)")
        upper = np.triu_indices(m.shape[0], 1)
        m.T[upper] = 1.0 - m[upper]
        np.fill_diagonal(m, 0.5)
        self.matrix = m
        self.styles = (
            tuple(styles) if styles is not None else tuple(f"style{i}" for i in range(len(m)))
        )
        if len(self.styles) != len(m):
            raise ValueError(f"{len(self.styles)} style names for a {len(m)}-style matrix")
        self._equilibrium: np.ndarray | None = None

    @property
    def n_styles(self) -> int:
        return len(self.styles)

    def extended(self) -> np.ndarray:
        """``[S+1, S+1]``: M with the invalid style appended, which every style beats surely."""
        s = self.n_styles
        ext = np.full((s + 1, s + 1), 0.5)
        ext[:s, :s] = self.matrix
        ext[:s, s], ext[s, :s] = 1.0, 0.0
        return ext

    def _as_extended(self, dist: Sequence[float] | np.ndarray) -> np.ndarray:
        p = np.asarray(dist, dtype=np.float64)
        if p.shape not in ((self.n_styles,), (self.n_styles + 1,)):
            raise ValueError(
                f"a distribution over {self.n_styles} styles (+ invalid) has "
                f"{self.n_styles} or {self.n_styles + 1} entries, got shape {p.shape}"
            )
        if p.min() < 0 or abs(p.sum() - 1) > 1e-6:
            raise ValueError("a distribution must be non-negative and sum to 1")
        return np.pad(p, (0, self.n_styles + 1 - p.size))

    def equilibrium(self) -> np.ndarray:
        """A mixed Nash equilibrium π* over the S styles (the LP's, polished); unique for a
        generic matrix, otherwise one vertex of the equilibrium set."""
        if self._equilibrium is None:
            self._equilibrium = _solve_symmetric(self.matrix - 0.5)
        return self._equilibrium.copy()

    def style_win_probabilities(self, dist: Sequence[float] | np.ndarray) -> np.ndarray:
        """``[S]``: P(style s ≻ π) = Σ_j M[s, j] π_j for each valid style s."""
        return (self.extended() @ self._as_extended(dist))[: self.n_styles]

    def exploitability(self, dist: Sequence[float] | np.ndarray) -> float:
        """max_s P(s ≻ π) − ½: how much the best pure style beats π by (0 at equilibrium)."""
        return float(self.style_win_probabilities(dist).max() - 0.5)

    def win_rate(
        self, dist: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray
    ) -> float:
        """P(π ≻ π′) = πᵀ M π′ over styles (the quality term of the judge left out)."""
        return float(self._as_extended(dist) @ self.extended() @ self._as_extended(other))

    def distance(self, dist: Sequence[float] | np.ndarray) -> float:
        """Total variation between π (an invalid share counts as off-equilibrium) and π*."""
        return total_variation(self._as_extended(dist), self.equilibrium())

    def index(self, style: str) -> int:
        """The row of a style; :data:`INVALID` (or an unknown style) is row S."""
        return self.styles.index(style) if style in self.styles else self.n_styles

    def __repr__(self) -> str:
        return f"StyleGame(styles={self.styles}, matrix={self.matrix.tolist()})"


def _solve_symmetric(payoff: np.ndarray) -> np.ndarray:
    """Equilibrium of the symmetric zero-sum game with skew-symmetric ``payoff`` A."""
    n = payoff.shape[0]
    # variables (π_1..π_n, v): minimise −v s.t. v − (Aᵀπ)_j ≤ 0, Σπ = 1, π ≥ 0
    res = linprog(
        c=np.r_[np.zeros(n), -1.0],
        A_ub=np.c_[-payoff.T, np.ones(n)],
        b_ub=np.zeros(n),
        A_eq=np.r_[np.ones(n), 0.0][None, :],
        b_eq=[1.0],
        bounds=[(0, None)] * n + [(None, None)],
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"the equilibrium LP failed: {res.message}")
    lp = np.clip(res.x[:n], 0, None)
    lp /= lp.sum()
    best, best_gap = lp, float((payoff @ lp).max())
    # Polish: on the support S the equilibrium makes every supported style indifferent,
    # (Aπ)_s = 0 for s ∈ S, with Σπ = 1; solve that square-or-tall system exactly.
    support = np.flatnonzero(lp > 1e-9)
    system = np.r_[payoff[np.ix_(support, support)], np.ones((1, support.size))]
    rhs = np.r_[np.zeros(support.size), 1.0]
    sol, *_ = np.linalg.lstsq(system, rhs, rcond=None)
    if sol.min() > -1e-9:
        polished = np.zeros(n)
        polished[support] = np.clip(sol, 0, None)
        polished /= polished.sum()
        gap = float((payoff @ polished).max())
        if gap <= best_gap + 1e-15:
            best = polished
    return best
