"""DPO sigmoid loss: hand-derived values, invariants, gradients, extremes, bad input."""

import math

import pytest
import torch

from unialign.losses import PairedLogps
from unialign.losses.direct import sigmoid


def _batch(pc, pr, rc, rr, dtype=torch.float64):
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    return PairedLogps(t(pc), t(pr), t(rc), t(rr))


def test_hand_derived_values():
    """Case 1: ℓ_θ(w)=−1, ℓ_ref(w)=−2 → r_w = 1; ℓ_θ(l)=−3, ℓ_ref(l)=−2 → r_l = −1; Δ = 2.
    β = 0.5: βΔ = 1, loss = −log σ(1) = log(1 + e^{−1}) = 0.313261687518...

    Case 2: r_w = −0.5 (−2.5 vs −2), r_l = 1.5 (−0.5 vs −2); Δ = −2; β = 1:
    loss = −log σ(−2) = log(1 + e^{2}) = 2.126928011042...
    """
    out = sigmoid(_batch([-1.0, -2.5], [-3.0, -0.5], [-2.0, -2.0], [-2.0, -2.0]), beta=0.5)
    assert out.losses[0].item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-12)
    out2 = sigmoid(_batch([-2.5], [-0.5], [-2.0], [-2.0]), beta=1.0)
    assert out2.losses[0].item() == pytest.approx(2.126928011042, abs=1e-11)
    # metrics: β r_w = 0.5, β r_l = −0.5
    assert out.metrics["rewards/chosen"][0].item() == pytest.approx(0.5)
    assert out.metrics["rewards/margins"][0].item() == pytest.approx(1.0)
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 0.0]


def test_first_step_invariant():
    """π_θ = π_ref ⇒ r = 0 ⇒ loss = −log σ(0) = ln 2."""
    out = sigmoid(_batch([-4.0, -1.0], [-7.0, -2.0], [-4.0, -1.0], [-7.0, -2.0]), beta=0.1)
    assert torch.allclose(out.losses, torch.full((2,), math.log(2.0), dtype=torch.float64))


def test_gradcheck():
    args = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *a: sigmoid(PairedLogps(*a), beta=0.3).losses, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_inputs_finite(dtype):
    pc = torch.tensor([1e3, -1e3], dtype=dtype, requires_grad=True)
    pr = torch.tensor([-1e3, 1e3], dtype=dtype, requires_grad=True)
    zeros = torch.zeros(2, dtype=dtype)
    out = sigmoid(PairedLogps(pc, pr, zeros, zeros), beta=1.0)
    out.losses.sum().backward()
    assert (
        torch.isfinite(out.losses).all()
        and torch.isfinite(pc.grad).all()
        and torch.isfinite(pr.grad).all()
    )


def test_invalid_input():
    b = _batch([0.0], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="beta"):
        sigmoid(b, beta=0.0)
    with pytest.raises(ValueError, match="policy_rejected"):
        sigmoid(_batch([0.0], [0.0, 1.0], [0.0], [0.0]), beta=0.1)
    with pytest.raises(ValueError, match="ref_chosen"):
        sigmoid(_batch([0.0], [0.0], [float("nan")], [0.0]), beta=0.1)
