"""Agreement statistics against values worked out by hand (derivations in the docstrings)."""

import math

import pytest

from unialign.label.agreement import (
    agreement_report,
    cohen_kappa,
    krippendorff_alpha,
    oracle_labels,
)


def test_cohen_kappa_two_categories():
    """a = 1 1 0 0 1, b = 1 0 0 0 1: they agree on 4 of 5, p_o = 0.8.
    a has three 1s and two 0s, b two 1s and three 0s: p_e = (3·2 + 2·3)/25 = 0.48.
    κ = (0.8 − 0.48)/(1 − 0.48) = 0.32/0.52 = 8/13."""
    assert cohen_kappa([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(8 / 13)


def test_cohen_kappa_with_ties():
    """a = 1 ½ 0 1, b = 1 ½ 1 0: p_o = 2/4. Both have two 1s, one ½, one 0:
    p_e = (2·2 + 1·1 + 1·1)/16 = 6/16. κ = (0.5 − 0.375)/(1 − 0.375) = 0.2."""
    assert cohen_kappa([1, 0.5, 0, 1], [1, 0.5, 1, 0]) == pytest.approx(0.2)


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
    # p_o = 0, p_e = (1·1 + 1·1)/4 = 0.5: κ = −0.5/0.5 = −1
    assert cohen_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))  # p_e = 1: undefined
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa([1], [1, 0])


def test_krippendorff_alpha_nominal_by_hand():
    """Units [1,1], [1,0], [0,0,0], [1] (the last is unpairable and ignored).
    Coincidences: [1,1] gives o_11 += 2/(2−1) = 2; [1,0] gives o_10 = o_01 = 1; [0,0,0] has
    6 ordered pairs, o_00 += 6/(3−1) = 3. So n_1 = 3, n_0 = 4, n = 7; observed disagreement
    Σ_{c≠k} o_ck = 2, expected Σ_{c≠k} n_c n_k = 2·3·4 = 24.
    α = 1 − (n − 1)·2/24 = 1 − 12/24 = 0.5."""
    assert krippendorff_alpha([[1, 1], [1, 0], [0, 0, 0], [1]]) == pytest.approx(0.5)


def test_krippendorff_alpha_with_ties_and_edges():
    """Units [1, ½], [½, ½]: o_{1,½} = o_{½,1} = 1, o_{½,½} = 2; n_1 = 1, n_½ = 3, n = 4.
    α = 1 − 3·2/(2·1·3) = 0."""
    assert krippendorff_alpha([[1, 0.5], [0.5, 0.5]]) == pytest.approx(0.0)
    assert krippendorff_alpha([[1, 1], [0, 0]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([[1, 1], [1, 1, 1]]))  # one category: undefined
    assert math.isnan(krippendorff_alpha([[1], [0]]))  # nothing pairable


def test_oracle_labels_follow_the_rational_teacher():
    assert oracle_labels({1: (1.0, 0.0), 2: (0.2, 0.4), 3: (0.5, 0.5)}) == {
        1: 1.0,
        2: 0.0,
        3: 0.5,
    }
    assert oracle_labels({}) == {}


def test_agreement_report():
    """ada and bob share queries 1-4 (ada skipped 5). ada: 1 1 0 ½ ; bob: 1 0 0 ½.
    Pair: p_o = 3/4; ada has two 1s, one 0, one ½; bob one 1, two 0s, one ½:
    p_e = (2·1 + 1·2 + 1·1)/16 = 5/16, κ = (0.75 − 0.3125)/(0.6875) = 7/11.
    Oracle (true returns) on queries 1-3: 1, 1, 0 → ada agrees on 1, 2, 3 (3/3) and bob on 1, 3."""
    meta = {"left": 1, "latency_ms": 1000}
    labels = [
        (1, "human:ada", 1.0, {"left": 1, "latency_ms": 500}),  # left pick
        (2, "human:ada", 1.0, {"left": 2, "latency_ms": 1500}),  # right pick
        (3, "human:ada", 0.0, {"left": 2, "latency_ms": 1000}),  # left pick
        (4, "human:ada", 0.5, meta),
        (5, "human:ada", None, meta),
        (1, "human:bob", 1.0, meta),
        (2, "human:bob", 0.0, meta),
        (3, "human:bob", 0.0, meta),
        (4, "human:bob", 0.5, meta),
    ]
    returns = {1: (2.0, 1.0), 2: (3.0, 0.0), 3: (0.0, 1.0)}
    report = agreement_report(labels, returns)
    ada, bob = report.annotators
    assert (ada.labeler, ada.labelled, ada.first, ada.second, ada.ties, ada.skipped) == (
        "human:ada", 5, 2, 1, 1, 1,
    )  # fmt: skip
    assert ada.left_share == pytest.approx(2 / 3)
    assert ada.median_latency_ms == pytest.approx(1000)
    assert (ada.oracle_n, ada.oracle_agreement) == (3, 1.0)
    assert (bob.oracle_n, bob.oracle_agreement) == (3, pytest.approx(2 / 3))
    (pair,) = report.pairs
    assert (pair.a, pair.b, pair.common) == ("human:ada", "human:bob", 4)
    assert pair.agreement == pytest.approx(0.75)
    assert pair.kappa == pytest.approx(7 / 11)
    assert report.alpha_items == 4
    assert report.alpha == pytest.approx(krippendorff_alpha([[1, 1], [1, 0], [0, 0], [0.5, 0.5]]))
