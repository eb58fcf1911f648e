"""Means with 95 % t-intervals and normalised scores: the arithmetic of a sweep's table.

The two-sided Student-t quantile is computed from the closed-form CDF for integer degrees of
freedom (Abramowitz & Stegun 1964, 26.7.3–26.7.4): with θ = atan(t/√ν),

    ν odd:   P(|T| ≤ t) = (2/π) [θ + sin θ (cos θ + (2/3) cos³θ + … + (2·4⋯(ν−3))/(1·3⋯(ν−2)) cos^{ν−2}θ)]
    ν even:  P(|T| ≤ t) = sin θ [1 + (1/2) cos²θ + (1·3)/(2·4) cos⁴θ + … + (1·3⋯(ν−3))/(2·4⋯(ν−2)) cos^{ν−2}θ]

(the sum inside is empty for ν = 1 and ν = 2), inverted by bisection on θ ∈ (0, π/2), so the
library needs no SciPy. ν = 1 gives t₀.₉₇₅ = tan(0.475 π) = 12.706.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_ci95", "normalize", "t_quantile_two_sided"]


def _abs_t_cdf(theta: float, df: int) -> float:
    """P(|T| ≤ tan θ · √df) for a Student t with ``df`` degrees of freedom (A&S 26.7.3–4)."""
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        term, total = c, 0.0
        for k in range(1, (df - 1) // 2 + 1):  # terms cos^{2k-1}θ with ratios 2/3, 4/5, …
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return (2 / math.pi) * (theta + s * total) if df > 1 else 2 * theta / math.pi
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):  # terms cos^{2k-2}θ with ratios 1/2, 3/4, …
        total += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * total


def t_quantile_two_sided(level: float, df: int) -> float:
    """t with P(|T| ≤ t) = ``level`` (0.95 → the 97.5 % quantile) for integer ``df`` ≥ 1."""
    if df < 1 or not 0 < level < 1:
        raise ValueError(f"need df ≥ 1 and 0 < level < 1, got df={df}, level={level}")
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):  # the CDF rises monotonically in θ; 200 halvings reach float precision
        mid = (lo + hi) / 2
        if _abs_t_cdf(mid, df) < level:
            lo = mid
        else:
            hi = mid
    return math.tan((lo + hi) / 2) * math.sqrt(df)


def mean_ci95(values: Sequence[float | None]) -> dict:
    """Mean and 95 % t-interval half-width over the non-null values.

    ``half = t₀.₉₇₅(n−1) · s / √n`` with ``s`` the sample standard deviation (ddof 1); ``null``
    for n < 2. Returns ``{"n", "missing", "mean", "ci95"}``, ``missing`` counting nulls.
    """
    vals = [float(v) for v in values if v is not None]
    out = {"n": len(vals), "missing": len(values) - len(vals)}
    if not vals:
        return out | {"mean": None, "ci95": None}
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return out | {"mean": mean, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = t_quantile_two_sided(0.95, len(vals) - 1) * sd / math.sqrt(len(vals))
    return out | {"mean": mean, "ci95": half}


def normalize(score: float, low: float, high: float) -> float:
    """(score − low) / (high − low); a zero span (high = low) divides by 1 instead."""
    span = high - low
    return (score - low) / (span if abs(span) > 1e-9 else 1.0)
