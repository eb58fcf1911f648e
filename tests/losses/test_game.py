"""Game-theoretic objectives (SPPO, INPO, DNO): hand-derived values, invariants, gradients,
extremes, bad input. Expected values are worked out in each docstring; log(1 + e^{−1}) =
0.313261687518 and log(1 + e^{2}) = 2 + log(1 + e^{−2}) = 2.126928011042."""

import math

import pytest
import torch

from unialign.losses import REGISTRY
from unialign.losses.game import (
    IterateLogps,
    SelfPlayLogps,
    dno,
    dno_filter_pairs,
    inpo,
    sppo,
)


def t(*v, dtype=torch.float64, grad=False):
    return torch.tensor(v, dtype=dtype, requires_grad=grad)


# ---------------------------------------------------------------- SPPO


def test_sppo_hand_derived_values():
    """Row 1: ℓ_θ = −3, ℓ_t = −4 → log-ratio 1; P̂ = 0.8, η = 10 → target 10·0.3 = 3;
    L = (1 − 3)² = 4; implied win rate ½ + 1/10 = 0.6.
    Row 2 (η = 4): ℓ_θ = −5.5, ℓ_t = −5 → −0.5; P̂ = 0.25 → target 4·(−0.25) = −1;
    L = (−0.5 + 1)² = 0.25; implied win rate ½ − 0.5/4 = 0.375.
    Gradient of row 1: ∂L/∂ℓ_θ = 2(1 − 3) = −4.
    """
    pol = t(-3.0, grad=True)
    out = sppo(SelfPlayLogps(pol, t(-4.0), t(0.8)), eta=10.0)
    assert out.losses.item() == pytest.approx(4.0, abs=1e-12)
    assert out.metrics["sppo/target"].item() == pytest.approx(3.0)
    assert out.metrics["sppo/log_ratio"].item() == pytest.approx(1.0)
    assert out.metrics["sppo/implied_win_rate"].item() == pytest.approx(0.6)
    out.losses.sum().backward()
    assert pol.grad.item() == pytest.approx(-4.0, abs=1e-12)
    out2 = sppo(SelfPlayLogps(t(-5.5), t(-5.0), t(0.25)), eta=4.0)
    assert out2.losses.item() == pytest.approx(0.25, abs=1e-12)
    assert out2.metrics["sppo/implied_win_rate"].item() == pytest.approx(0.375)


def test_sppo_invariants():
    """π_θ = π_t and P̂ = ½ ⇒ L = 0. π_θ = π_t ⇒ L = η²(P̂ − ½)², e.g. P̂ ∈ {1, 0} gives
    η²/4 (with η = 1/β each is one term of methods.md's sppo_hard = 1/(2β²) at r = 0)."""
    prev = t(-7.0, -1.0, -30.0)
    assert sppo(SelfPlayLogps(prev, prev, t(0.5, 0.5, 0.5)), eta=100.0).losses.tolist() == [0.0] * 3
    out = sppo(SelfPlayLogps(prev, prev, t(1.0, 0.0, 0.75)), eta=6.0)
    assert out.losses.tolist() == pytest.approx([9.0, 9.0, 2.25])


def test_sppo_gradcheck():
    pol = torch.randn(4, dtype=torch.float64, requires_grad=True)
    prev, wr = torch.randn(4).double(), t(0.0, 0.3, 0.5, 1.0)
    assert torch.autograd.gradcheck(lambda p: sppo(SelfPlayLogps(p, prev, wr), eta=3.0).losses, pol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sppo_extreme_inputs_finite(dtype):
    pol = t(1e3, -1e3, 0.0, dtype=dtype, grad=True)
    out = sppo(SelfPlayLogps(pol, t(-1e3, 1e3, 0.0, dtype=dtype), t(0.0, 1.0, 1.0, dtype=dtype)))
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(pol.grad).all()


def test_sppo_invalid_input():
    a = t(0.0, 0.0)
    with pytest.raises(ValueError, match="eta"):
        sppo(SelfPlayLogps(a, a, t(0.5, 0.5)), eta=0.0)
    with pytest.raises(ValueError, match="eta"):
        sppo(SelfPlayLogps(a, a, t(0.5, 0.5)), eta=-1.0)
    for bad in (t(1.2, 0.5), t(-0.1, 0.5)):
        with pytest.raises(ValueError, match="win_rate"):
            sppo(SelfPlayLogps(a, a, bad))
    with pytest.raises(ValueError, match="win_rate"):
        sppo(SelfPlayLogps(a, a, t(float("nan"), 0.5)))
    with pytest.raises(ValueError, match="previous"):
        sppo(SelfPlayLogps(a, t(0.0), t(0.5, 0.5)))
    with pytest.raises(ValueError, match="policy"):
        sppo(SelfPlayLogps(t(float("-inf"), 0.0), a, t(0.5, 0.5)))


# ---------------------------------------------------------------- INPO


def _pair(pc, pr, tc, tr, rc=None, rr=None, dtype=torch.float64, grad=False):
    """IterateLogps from lists: policy (pc, pr), previous iterate (tc, tr), reference (rc, rr)."""
    ref = [None if v is None else t(*v, dtype=dtype) for v in (rc, rr)]
    prev = [t(*v, dtype=dtype) for v in (tc, tr)]
    return IterateLogps(t(*pc, dtype=dtype, grad=grad), t(*pr, dtype=dtype), *prev, *ref)


def test_inpo_hand_derived_values():
    """Case 1: η = 2, τ = 0.25, ητ = ½. Policy ℓ_θ(w) = −2, ℓ_θ(l) = −6 → Δ_θ = 4;
    reference ℓ_ref = (−3, −4) → Δ_ref = 1; previous ℓ_t = (−2.5, −5.5) → Δ_t = 3.
    h = 4 − ½·1 − ½·3 = 2; target η/2 = 1; L = (2 − 1)² = 1.
    Baselines b = ½ℓ_ref + ½ℓ_t: b(w) = −2.75, b(l) = −4.75, so rewards/chosen =
    (−2 + 2.75)/2 = 0.375, rewards/rejected = (−6 + 4.75)/2 = −0.625, margin = 1 = h/η.
    Gradient: ∂L/∂ℓ_θ(w) = 2(h − η/2) = 2.

    Case 2: τ = 0 (no reference needed), η = 4: Δ_θ = −1 − (−2) = 1, Δ_t = −1.5 − (−1) = −0.5,
    h = 1.5, target 2, L = 0.25 (IPO against π_t with β = 1/η).
    """
    b = _pair([-2.0], [-6.0], [-2.5], [-5.5], [-3.0], [-4.0], grad=True)
    out = inpo(b, eta=2.0, tau=0.25)
    assert out.losses.item() == pytest.approx(1.0, abs=1e-12)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.375)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.625)
    assert out.metrics["rewards/margins"].item() == pytest.approx(1.0)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    out.losses.sum().backward()
    assert b.policy_chosen.grad.item() == pytest.approx(2.0, abs=1e-12)
    out2 = inpo(_pair([-1.0], [-2.0], [-1.5], [-1.0]), eta=4.0, tau=0.0)
    assert out2.losses.item() == pytest.approx(0.25, abs=1e-12)


def test_inpo_invariants():
    """π_θ = π_t = π_ref ⇒ every log-ratio margin is the same A, so
    h = A − ητA − (1 − ητ)A = 0 and L = (η/2)² = η²/4 (η = 5: 6.25).
    ητ = 1 ⇒ π_t drops out and INPO is IPO against π_ref with β = τ:
    τ = ½, η = 2, Δ_θ = 4, Δ_ref = 1 ⇒ L = (4 − 1 − 1/(2τ))² = (3 − 1)² = 4 for any ℓ_t.
    """
    same = [-4.0, -1.0], [-9.0, -2.0]
    b = _pair(*same, *same, *same)
    assert inpo(b, eta=5.0, tau=0.1).losses.tolist() == pytest.approx([6.25, 6.25])
    for prev in ([-2.5], [-40.0]):
        out = inpo(_pair([-2.0], [-6.0], prev, [-5.5], [-3.0], [-4.0]), eta=2.0, tau=0.5)
        assert out.losses.item() == pytest.approx(4.0, abs=1e-12)


def test_inpo_gradcheck():
    pc, pr = (torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    rest = [torch.randn(3, dtype=torch.float64) for _ in range(4)]
    assert torch.autograd.gradcheck(
        lambda a, b: inpo(IterateLogps(a, b, *rest), eta=3.0, tau=0.2).losses, (pc, pr)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inpo_extreme_inputs_finite(dtype):
    big = [1e3, -1e3]
    b = _pair(big, big[::-1], big[::-1], big, big[::-1], big, dtype=dtype, grad=True)
    out = inpo(b)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(b.policy_chosen.grad).all()


def test_inpo_invalid_input():
    b = _pair([0.0], [0.0], [0.0], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="eta"):
        inpo(b, eta=0.0)
    with pytest.raises(ValueError, match="tau"):
        inpo(b, tau=-0.1)
    with pytest.raises(ValueError, match="tau"):
        inpo(b, eta=5.0, tau=0.3)  # ητ = 1.5 > 1
    with pytest.raises(ValueError, match="ref_chosen"):
        inpo(_pair([0.0], [0.0], [0.0], [0.0]), tau=0.1)
    with pytest.raises(ValueError, match="previous_rejected"):
        inpo(_pair([0.0], [0.0], [0.0], [float("nan")], [0.0], [0.0]))
    with pytest.raises(ValueError, match="policy_rejected"):
        inpo(_pair([0.0], [0.0, 1.0], [0.0], [0.0], [0.0], [0.0]))


# ---------------------------------------------------------------- DNO


def test_dno_hand_derived_values():
    """Row 1: ℓ_θ(w) = −1, ℓ_t(w) = −2 → +1; ℓ_θ(l) = −3, ℓ_t(l) = −2 → −1; Δ = 2;
    β = 0.5: L = −log σ(1) = 0.313261687518; rewards/chosen = 0.5·1 = 0.5.
    Row 2 (β = 1): ℓ_θ(w) = −2.5 vs −2 → −0.5; ℓ_θ(l) = −0.5 vs −2 → 1.5; Δ = −2:
    L = −log σ(−2) = 2.126928011042. The π_ref fields are present but must be ignored.
    """
    b = _pair([-1.0], [-3.0], [-2.0], [-2.0], [0.0], [-50.0])
    out = dno(b, beta=0.5)
    assert out.losses.item() == pytest.approx(0.313261687518, abs=1e-11)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert out.metrics["rewards/margins"].item() == pytest.approx(1.0)
    out2 = dno(_pair([-2.5], [-0.5], [-2.0], [-2.0]), beta=1.0)
    assert out2.losses.item() == pytest.approx(2.126928011042, abs=1e-11)


def test_dno_first_step_invariant():
    """π_θ = π_t ⇒ both log-ratios are 0 ⇒ L = −log σ(0) = ln 2, whatever π_ref is."""
    b = _pair([-4.0, -1.0], [-7.0, -2.0], [-4.0, -1.0], [-7.0, -2.0], [0.0, 0.0], [-9.0, 3.0])
    assert dno(b, beta=0.3).losses.tolist() == pytest.approx([math.log(2.0)] * 2)


def test_dno_gradcheck():
    args = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *a: dno(IterateLogps(*a), beta=0.3).losses, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dno_extreme_inputs_finite(dtype):
    b = _pair([1e3, -1e3], [-1e3, 1e3], [0.0, 0.0], [0.0, 0.0], dtype=dtype, grad=True)
    out = dno(b, beta=1.0)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(b.policy_chosen.grad).all()


def test_dno_invalid_input():
    b = _pair([0.0], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="beta"):
        dno(b, beta=0.0)
    with pytest.raises(ValueError, match="previous_chosen"):
        dno(IterateLogps(t(0.0), t(0.0), None, t(0.0)))
    with pytest.raises(ValueError, match="previous_chosen"):
        dno(_pair([0.0], [0.0], [float("inf")], [0.0]))


def test_dno_filter_pairs():
    """Margins (0, 0.3, 0.5, 0.9, −0.2): threshold 0.4 keeps 0.5 and 0.9; threshold 0 keeps
    every strictly positive margin and drops the tie and the negative one."""
    m = t(0.0, 0.3, 0.5, 0.9, -0.2)
    assert dno_filter_pairs(m, 0.4).tolist() == [False, False, True, True, False]
    assert dno_filter_pairs(m, 0.0).tolist() == [False, True, True, True, False]
    with pytest.raises(ValueError, match="threshold"):
        dno_filter_pairs(m, -1.0)
    with pytest.raises(ValueError, match="win_margins"):
        dno_filter_pairs(t(float("nan")), 0.1)


def test_registry_entries():
    for name in ("sppo", "inpo", "dno"):
        spec = REGISTRY[name]
        assert spec.family == "game" and spec.kind == "game" and spec.paper
    assert REGISTRY["inpo"].hparams == {"eta": 5.0, "tau": 0.1}
