"""Hand-derived values for the listwise (MPO, LiPO) and scored-pair (CoPG) objectives."""

import math

import pytest
import torch

from unialign.losses import PairedLogps
from unialign.losses.direct import ListwiseLogps, ScoredPairs, copg, lipo, mpo


def _sp(x: float) -> float:
    return math.log1p(math.exp(x))


def _lists(r, scores):
    """Log-ratios r given as policy = r, ref = 0 (a shift of both cancels in r)."""
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return ListwiseLogps(t(r), torch.zeros(len(r), len(r[0]), dtype=torch.float64), t(scores))


LN2 = math.log(2.0)


def test_mpo_weighted_one_positive():
    """K = 3, β = 1, α = ln 2 (weights are powers of 2). Scores [3, 1, 2]: mean 2, deviations
    [1, −1, 0]; Y⁺ = {0}. s = r = [0, ln 2, −ln 2] → e^s = [1, 2, ½].
    abs weights 2^{|dev|} = [2, 2, 1]: L = −log(2·1 / (2·1 + 2·2 + 1·½)) = ln 3.25 = 1.178655…
    signed weights 2^{dev} = [2, ½, 1]: L = −log(2 / (2 + ½·2 + ½)) = ln 1.75 = 0.559616…
    Metrics: β r over Y⁺ = 0, over Y⁻ = mean(ln 2, −ln 2) = 0 → margin 0, accuracy 0."""
    b = _lists([[0.0, LN2, -LN2]], [[3.0, 1.0, 2.0]])
    out = mpo(b, beta=1.0, alpha=LN2)
    assert out.losses[0].item() == pytest.approx(math.log(3.25), abs=1e-12)
    assert mpo(b, beta=1.0, alpha=LN2, deviation="signed").losses[0].item() == pytest.approx(
        math.log(1.75), abs=1e-12
    )
    assert out.metrics["rewards/margins"][0].item() == pytest.approx(0.0, abs=1e-12)


def test_mpo_two_positives_unweighted():
    """K = 4, α = 0, β = ½. Scores [0, 1, 0, 1]: mean ½, Y⁺ = {1, 3}. r = [0, 2 ln 2, 2 ln 2, 0]
    → s = [0, ln 2, ln 2, 0], e^s = [1, 2, 2, 1]: L = −log((2 + 1)/(1 + 2 + 2 + 1)) = ln 2.
    Chosen-set mean β r = ln 2 / 2, rejected the same → margin 0."""
    b = _lists([[0.0, 2 * LN2, 2 * LN2, 0.0]], [[0.0, 1.0, 0.0, 1.0]])
    out = mpo(b, beta=0.5, alpha=0.0)
    assert out.losses[0].item() == pytest.approx(LN2, abs=1e-12)
    assert out.metrics["rewards/chosen"][0].item() == pytest.approx(LN2 / 2)


def test_mpo_with_two_responses_is_dpo():
    """K = 2, α = 0: Y⁺ = {winner}, L = −log(e^{s_w}/(e^{s_w} + e^{s_l})) = sp(−(s_w − s_l)).
    r = [1, −1] (winner first by score), β = ½ → sp(−1) = 0.313262…"""
    b = _lists([[1.0, -1.0]], [[0.9, 0.1]])
    assert mpo(b, beta=0.5, alpha=0.0).losses[0].item() == pytest.approx(_sp(-1.0), abs=1e-12)


def test_lipo_three_responses():
    """K = 3, β = 1, labels ψ = [1, ½, 0], s = r = [0, 1, −1].
    Ranks by s (descending): response 1 first, 0 second, 2 third → τ = [2, 1, 3].
    1/D(τ) = 1/log₂(1 + τ) = [1/log₂3, 1, ½] = [0.630930, 1, 0.5].
    Gains G = 2^ψ − 1 = [1, √2 − 1, 0] = [1, 0.414214, 0].
    Pairs with ψ_i > ψ_j: (0,1): Δ = 0.585786·0.369070 = 0.216197, sp(−(0 − 1)) = sp(1) = 1.313262;
    (0,2): Δ = 1·0.130930, sp(−1) = 0.313262; (1,2): Δ = 0.414214·0.5 = 0.207107, sp(−2) = 0.126928.
    L = 0.283923 + 0.041016 + 0.026288 = 0.351225…  Pairs ordered right by s: (0,2), (1,2) → ⅔."""
    inv = [1 / math.log2(3), 1.0, 0.5]
    g = [1.0, math.sqrt(2) - 1, 0.0]
    s = [0.0, 1.0, -1.0]
    expected = sum(
        abs(g[i] - g[j]) * abs(inv[i] - inv[j]) * _sp(-(s[i] - s[j]))
        for i, j in ((0, 1), (0, 2), (1, 2))
    )
    out = lipo(_lists([s], [[1.0, 0.5, 0.0]]), beta=1.0)
    assert out.losses[0].item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.351225, abs=1e-6)
    assert out.metrics["rewards/accuracies"][0].item() == pytest.approx(2 / 3)
    assert out.metrics["rewards/chosen"][0].item() == pytest.approx(0.0)  # best label: s₀
    assert out.metrics["rewards/rejected"][0].item() == pytest.approx(-1.0)  # worst: s₂


def test_lipo_pair_with_better_second():
    """K = 2, β = ½, ψ = [0, 1], r = [1, 0] → s = [½, 0]: τ = [1, 2], 1/D = [1, 1/log₂3];
    G = [0, 1]; one pair (1 over 0): Δ = 1·(1 − 0.630930) = 0.369070, sp(−(0 − ½)) = sp(½)
    = 0.974077 → L = 0.359503…; the pair is misordered → accuracy 0."""
    out = lipo(_lists([[1.0, 0.0]], [[0.0, 1.0]]), beta=0.5)
    expected = (1 - 1 / math.log2(3)) * _sp(0.5)
    assert out.losses[0].item() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["rewards/accuracies"][0].item() == 0.0


def _scored(r, r_other, reward, reward_other):
    t = lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=True)  # noqa: E731
    zeros = torch.zeros(len(r), dtype=torch.float64)
    logps = PairedLogps(t(r), t(r_other), zeros, zeros)
    return ScoredPairs(
        logps,
        torch.tensor(reward, dtype=torch.float64),
        torch.tensor(reward_other, dtype=torch.float64),
    )


def test_copg_value_matches_paper_objective():
    """β = ½; r = 1, r′ = −1; R = 2, R′ = 0. Paper (Eq. 7–9), with R^π_{β/2}(y) = R − (β/2) r:
    R_{β/2}(y) = 2 − ¼ = 1.75, R_{β/2}(y′) = 0 + ¼ = 0.25;
    ℓ = (1.75 − 0.25)·1 + (0.25 − 1.75)·(−1) = 3, and our loss is −ℓ = −3.
    Same from L = (β/2)a² − ΔR·a with a = 2, ΔR = 2: ¼·4 − 4 = −3.
    Case 2: β = 1, r = ½, r′ = 1.5 (a = −1), R = −1, R′ = 1 (ΔR = −2): L = ½ − 2 = −1.5."""
    out = copg(_scored([1.0], [-1.0], [2.0], [0.0]), beta=0.5)
    assert out.losses[0].item() == pytest.approx(-3.0)
    assert out.metrics["rewards/target_margins"][0].item() == pytest.approx(2.0)
    assert out.metrics["rewards/accuracies"][0].item() == 1.0  # a = 2 has the sign of ΔR
    assert copg(_scored([0.5], [1.5], [-1.0], [1.0]), beta=1.0).losses[0].item() == (
        pytest.approx(-1.5)
    )


def test_copg_gradient_is_the_contrastive_policy_gradient():
    """Paper Eq. 18–19: ∇ℓ = (R^π_β(y) − R^π_β(y′))∇ln π(y) − (same)∇ln π(y′); our loss is −ℓ,
    so ∂L/∂ℓ_θ(y) = −(R − βr − R′ + βr′) = −(2 − ½ − 0 − ½) = −1 and ∂L/∂ℓ_θ(y′) = +1
    (β = ½, r = 1, r′ = −1, R = 2, R′ = 0)."""
    b = _scored([1.0], [-1.0], [2.0], [0.0])
    copg(b, beta=0.5).losses.sum().backward()
    assert b.logps.policy_chosen.grad.item() == pytest.approx(-1.0)
    assert b.logps.policy_rejected.grad.item() == pytest.approx(1.0)


def test_copg_with_half_reward_gap_follows_ipo():
    """Paper Property 3: with R − R′ = ½, L = (β/2)a² − a/2 = (β/2)(a − 1/(2β))² − 1/(8β), i.e.
    (β/2)·IPO(summed) up to a constant. β = ½, a = 3 (r = 2, r′ = −1):
    L = ¼·9 − 1.5 = 0.75 and (¼)(3 − 1)² − ¼ = 0.75; gradient ∂L/∂r = βa − ½ = 1."""
    b = _scored([2.0], [-1.0], [0.25], [-0.25])
    out = copg(b, beta=0.5)
    assert out.losses[0].item() == pytest.approx(0.75)
    out.losses.sum().backward()
    assert b.logps.policy_chosen.grad.item() == pytest.approx(1.0)
