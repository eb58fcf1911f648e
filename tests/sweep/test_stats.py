"""The t quantile, means with 95 % intervals, normalisation and first-reach (by hand)."""

import math

import pytest

from unialign.sweep.report import first_reach
from unialign.sweep.stats import mean_ci95, normalize, t_quantile_two_sided


@pytest.mark.parametrize(
    ("df", "t"), [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045)]
)
def test_t_quantile_matches_the_printed_table(df, t):
    """Two-sided 95 % Student-t quantiles as printed in t tables (3 decimals); ν = 1 is
    tan(0.475 π) = 12.7062 exactly, so the closed form is checked to 1e-9 there."""
    assert t_quantile_two_sided(0.95, df) == pytest.approx(t, abs=5e-4)
    assert t_quantile_two_sided(0.95, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-9)


def test_mean_ci95_by_hand():
    """[1, 3]: mean 2, s = √2, half = 12.706 · √2/√2 = 12.706. [1, 2, 3, 4, 5] with a null:
    mean 3, s = √2.5, half = 2.776 · √2.5/√5 = 2.776 · 0.7071 = 1.963; one missing."""
    assert mean_ci95([1, 3]) == pytest.approx(
        {"n": 2, "missing": 0, "mean": 2.0, "ci95": 12.706}, abs=5e-4
    )
    s = mean_ci95([1, 2, None, 3, 4, 5])
    assert s["n"] == 5 and s["missing"] == 1 and s["mean"] == 3.0
    assert s["ci95"] == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)
    assert mean_ci95([4]) == {"n": 1, "missing": 0, "mean": 4.0, "ci95": None}
    assert mean_ci95([None]) == {"n": 0, "missing": 1, "mean": None, "ci95": None}


def test_normalize_and_first_reach():
    """(−500 − (−1000)) / (−100 − (−1000)) = 500/900; the curve's normalised values are
    0, 0.5, 0.95, 1 → first ≥ 0.9 at x = 20, where the last aux point at or before is 7."""
    assert normalize(-500, -1000, -100) == pytest.approx(500 / 900)
    assert normalize(3, 2, 2) == 1.0  # zero span divides by 1
    curve = [[0, 0.0], [10, 5.0], [20, 9.5], [30, 10.0]]
    x, aux = first_reach(curve, {"q": [[0, 0], [15, 7], [25, 9]]}, 0.0, 10.0, 0.9)
    assert x == 20 and aux == {"q": 7}
    assert first_reach(curve, {"q": [[0, 0]]}, 0.0, 100.0, 0.9) == (None, {"q": None})


def test_mean_curve_interpolates_onto_the_common_range():
    """Curves (0,1),(10,3) and (5,0),(10,2),(20,4) share x ∈ [5, 10]: at 5 the first is 2
    (halfway from 1 to 3), the second 0 → mean 1, s.d. 1 (population); at 10: 3 and 2 → 2.5,
    0.5. Disjoint curves share nothing."""
    from unialign.sweep.report import _mean_curve

    xs, mean, sd = _mean_curve([[(0, 1), (10, 3)], [(5, 0), (10, 2), (20, 4)]])
    assert xs.tolist() == [5, 10] and mean.tolist() == [1, 2.5] and sd.tolist() == [1, 0.5]
    assert len(_mean_curve([[(0, 1), (1, 3)], [(5, 0), (10, 2)]])[0]) == 0
