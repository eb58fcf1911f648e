"""Hand-derived values for the reference-free objectives (SimPO, CPO, ORPO) and unpaired KTO.

sp(x) = log(1 + eˣ), so −log σ(z) = sp(−z). Expected values come from the math module.
"""

import math

import pytest
import torch

from unialign.losses import PairedLogps, UnpairedLogps
from unialign.losses import direct as D


def _sp(x: float) -> float:
    return math.log1p(math.exp(x))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _free(pc, pr, nc, nr):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairedLogps(t(pc), t(pr), chosen_tokens=t(nc), rejected_tokens=t(nr))


def test_simpo():
    """Case 1: ℓ_w = −2, n_w = 2 → −1; ℓ_l = −6, n_l = 3 → −2; β = 2, γ = ½:
    z = 2·(−1 − (−2)) − ½ = 1.5 → L = sp(−1.5) = 0.201413…; logged rewards β ℓ/n = (−2, −4).
    Case 2: ℓ_w = −3, n_w = 1; ℓ_l = −4, n_l = 4 → −1; β = 1, γ = 1: z = −2 − 1 = −3 →
    L = sp(3) = 3.048587…"""
    out = D.simpo(_free([-2.0], [-6.0], [2.0], [3.0]), beta=2.0, gamma=0.5)
    assert out.losses[0].item() == pytest.approx(_sp(-1.5), abs=1e-12)
    assert out.metrics["rewards/chosen"][0].item() == pytest.approx(-2.0)
    assert out.metrics["rewards/rejected"][0].item() == pytest.approx(-4.0)
    out2 = D.simpo(_free([-3.0], [-4.0], [1.0], [4.0]), beta=1.0, gamma=1.0)
    assert out2.losses[0].item() == pytest.approx(_sp(3.0), abs=1e-12)


def test_cpo():
    """Case 1: ℓ_w = −2, ℓ_l = −4, n_w = 4, β = ½, α = 1: z = ½·2 = 1;
    L = sp(−1) + 2/4 = 0.313262 + 0.5 = 0.813262…; logged rewards β ℓ = (−1, −2).
    Case 2: ℓ_w = −5, ℓ_l = −3, n_w = 5, β = 1, α = ½: z = −2; L = sp(2) + ½·1 = 2.626928…"""
    out = D.cpo(_free([-2.0], [-4.0], [4.0], [9.0]), beta=0.5, alpha=1.0)
    assert out.losses[0].item() == pytest.approx(_sp(-1) + 0.5, abs=1e-12)
    assert out.metrics["rewards/chosen"][0].item() == pytest.approx(-1.0)
    assert out.metrics["nll/chosen"][0].item() == pytest.approx(0.5)
    out2 = D.cpo(_free([-5.0], [-3.0], [5.0], [2.0]), beta=1.0, alpha=0.5)
    assert out2.losses[0].item() == pytest.approx(_sp(2) + 0.5, abs=1e-12)


def test_orpo():
    """Case 1: n = 2 each; ℓ_w = 2 ln ½ → p̄_w = ½, odds 1, log odds 0; ℓ_l = 2 ln ¼ → p̄_l = ¼,
    odds ⅓, log odds −ln 3. Log odds ratio = ln 3; λ = 0.1:
    L = −ln ½ − 0.1 log σ(ln 3) = ln 2 + 0.1 ln(4/3) = 0.693147 + 0.028768 = 0.721915…
    Case 2: p̄_w = 0.2 (n = 1), p̄_l = 0.8 (n = 3, ℓ_l = 3 ln 0.8): odds ¼ and 4, ratio
    ln(1/16); λ = ½: L = ln 5 + ½ ln(1 + 16) = 1.609438 + 1.416607 = 3.026045…"""
    out = D.orpo(_free([2 * math.log(0.5)], [2 * math.log(0.25)], [2.0], [2.0]), beta=0.1)
    assert out.losses[0].item() == pytest.approx(math.log(2) + 0.1 * math.log(4 / 3), abs=1e-12)
    assert out.metrics["orpo/log_odds_ratio"][0].item() == pytest.approx(math.log(3))
    assert out.metrics["nll/chosen"][0].item() == pytest.approx(math.log(2))
    out2 = D.orpo(_free([math.log(0.2)], [3 * math.log(0.8)], [1.0], [3.0]), beta=0.5)
    assert out2.losses[0].item() == pytest.approx(math.log(5) + 0.5 * math.log(17), abs=1e-12)
    assert out2.losses[0].item() == pytest.approx(3.026045, abs=1e-6)


def test_orpo_probability_one_is_clamped():
    """ℓ_w = 0 (p̄_w = 1, infinite odds) is clamped to a mean log-prob of −1e−6:
    log odds_w = −1e−6 − log(1 − e^{−1e−6}) ≈ −log(1e−6) = 13.8155; ℓ_l = ln ½ (log odds 0);
    L = 0 (NLL, up to the clamp: the loss uses the unclamped ℓ_w = 0) + λ sp(−13.8155) ≈ 1e−7."""
    out = D.orpo(_free([0.0], [math.log(0.5)], [1.0], [1.0]), beta=0.1)
    x = -1e-6
    expected_ratio = x - math.log(-math.expm1(x))
    assert out.metrics["orpo/log_odds_ratio"][0].item() == pytest.approx(expected_ratio)
    assert out.losses[0].item() == pytest.approx(0.1 * _sp(-expected_ratio), rel=1e-9)


def _unpaired(policy, ref, desirable, kl_policy, kl_ref):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return UnpairedLogps(t(policy), t(ref), torch.tensor(desirable), t(kl_policy), t(kl_ref))


def test_kto():
    """β = ½, λ_D = 1, λ_U = 2. ℓ_θ = [−1, −2, −3], ℓ_ref = [−2, −1, −3] → r = [1, −1, 0];
    labels [desirable, undesirable, undesirable]. KL pairs: ℓ_θ(y′) − ℓ_ref(y′) =
    [−1+2, −1+1.5, −1+1] = [1, 0.5, 0] → z₀ = mean = 0.5.
    L₀ = 1 − σ(½(1 − 0.5)) = σ(−0.25) = 0.437823…
    L₁ = 2(1 − σ(½(0.5 − (−1)))) = 2σ(−0.75) = 0.641643…
    L₂ = 2(1 − σ(½(0.5 − 0))) = 2σ(−0.25) = 0.875647…
    Accuracies: β(r − z₀) = [0.25, −0.75, −0.25] → [1, 1, 1]."""
    b = _unpaired(
        [-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0], [True, False, False], [-1.0] * 3, [-2.0, -1.5, -1.0]
    )
    out = D.kto(b, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    expected = [_sig(-0.25), 2 * _sig(-0.75), 2 * _sig(-0.25)]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["kl/baseline"].tolist() == pytest.approx([0.5] * 3)
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 1.0, 1.0]
    assert out.metrics["rewards/implicit"].tolist() == pytest.approx([0.5, -0.5, 0.0])


def test_kto_baseline_clamped_at_zero():
    """Same r = [1, −1, 0], β = 1, weights 1. KL pairs all −1 → mean −1 → z₀ = max(0, −1) = 0.
    L = [1 − σ(1), 1 − σ(1), 1 − σ(0)] = [σ(−1), σ(−1), ½]; accuracies [1, 1, 0] (β r₂ = 0)."""
    b = _unpaired(
        [-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0], [True, False, False], [-2.0] * 3, [-1.0] * 3
    )
    out = D.kto(b, beta=1.0)
    assert out.losses.tolist() == pytest.approx([_sig(-1), _sig(-1), 0.5], abs=1e-12)
    assert out.metrics["kl/baseline"].tolist() == [0.0, 0.0, 0.0]
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 1.0, 0.0]


def test_kto_baseline_is_detached():
    """z₀ carries no gradient: ∂L/∂ℓ_θ(y′) = 0 even though z₀ > 0."""
    kl_policy = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    b = UnpairedLogps(
        torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True),
        torch.tensor([-1.5, -1.0], dtype=torch.float64),
        torch.tensor([True, False]),
        kl_policy,
        torch.zeros(2, dtype=torch.float64),
    )
    D.kto(b, beta=0.5).losses.sum().backward()
    assert kl_policy.grad is None or bool((kl_policy.grad == 0).all())
