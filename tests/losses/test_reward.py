"""Reward-model objectives, ensemble aggregation and reward transforms.

Every expected value is derived by hand in the test's docstring. Identities used throughout:
−log σ(z) = log(1 + e^{−z}); log(1 + e^{z}) = z + log(1 + e^{−z});
log(1 + e^{−1}) = 0.313261687518, log(1 + e^{−2}) = 0.126928011042,
log(1 + e^{−4}) = 0.018149927917, log(1 + e^{−7}) = 0.000911466454, σ(−1) = 0.268941421370.
"""

import math

import pytest
import torch

from unialign.losses import REGISTRY
from unialign.losses.reward import (
    aggregate_ensemble,
    bradley_terry,
    combine_transformed,
    ensemble_mean,
    ensemble_min,
    ensemble_uwo,
    general_preference,
    log_sigmoid_transform,
    preference_cross_entropy,
)

L1 = 0.313261687518  # log(1 + e^{-1})
L2 = 0.126928011042  # log(1 + e^{-2})
LN2 = math.log(2.0)


def t(*v, dtype=torch.float64, grad=False):
    return torch.tensor(v, dtype=dtype, requires_grad=grad)


# ---------------------------------------------------------------- preference_cross_entropy


def test_pce_hand_derived_soft_labels():
    """z = R¹ − R² = 2 − 1 = 1 in both rows.

    y = 1: L = −log σ(1) = log(1 + e^{−1}) = 0.313261687518.
    y = 0.25: L = −0.25 log σ(1) − 0.75 log σ(−1) = 0.25·log(1 + e^{−1}) + 0.75·log(1 + e)
      = 0.25·L1 + 0.75·(1 + L1) = L1 + 0.75 = 1.063261687518.
    Accuracy: the model prefers the first item (z > 0); row 1's label agrees (1), row 2's
    label (0.25) says the second is preferred (0). prob_first = σ(1) = 1 − σ(−1) = 0.731058578630.
    """
    out = preference_cross_entropy(t(2.0, 2.0), t(1.0, 1.0), t(1.0, 0.25))
    assert out.losses.tolist() == pytest.approx([L1, L1 + 0.75], abs=1e-11)
    assert out.metrics["preference/accuracy"].tolist() == [1.0, 0.0]
    assert out.metrics["preference/prob_first"][0].item() == pytest.approx(
        0.731058578630, abs=1e-11
    )


def test_pce_label_half():
    """y = ½: L = ½[log(1 + e^{−z}) + log(1 + e^{z})] = ½[z + 2 log(1 + e^{−z})] for z ≥ 0.

    z = 2 (R¹ = −1, R² = −3): L = 1 + log(1 + e^{−2}) = 1.126928011042. z = 0: L = ln 2.
    Ties score accuracy ½ whatever the model predicts. The loss is symmetric in z under ½.
    """
    out = preference_cross_entropy(t(-1.0, 5.0, -3.0), t(-3.0, 5.0, -1.0), t(0.5, 0.5, 0.5))
    assert out.losses.tolist() == pytest.approx([1 + L2, LN2, 1 + L2], abs=1e-11)
    assert out.metrics["preference/accuracy"].tolist() == [0.5, 0.5, 0.5]


def test_pce_gradcheck():
    r1, r2 = torch.randn(4, dtype=torch.float64, requires_grad=True), torch.randn(4).double()
    labels = t(1.0, 0.0, 0.5, 0.3)
    assert torch.autograd.gradcheck(lambda a: preference_cross_entropy(a, r2, labels).losses, r1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pce_extreme_inputs_finite(dtype):
    r1 = t(1e3, -1e3, 1e3, dtype=dtype, grad=True)
    r2 = t(-1e3, 1e3, 1e3, dtype=dtype)
    out = preference_cross_entropy(r1, r2, t(0.0, 1.0, 0.5, dtype=dtype))
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(r1.grad).all()
    assert out.losses[0].item() == pytest.approx(2000.0, rel=1e-3)  # −log σ(−2000) ≈ 2000


def test_pce_invalid_input():
    a = t(0.0, 0.0)
    for bad in (t(1.5, 0.0), t(-0.1, 1.0)):
        with pytest.raises(ValueError, match="labels"):
            preference_cross_entropy(a, a, bad)
    with pytest.raises(ValueError, match="returns_2"):
        preference_cross_entropy(a, t(0.0), t(1.0, 1.0))
    with pytest.raises(ValueError, match="returns_1"):
        preference_cross_entropy(t(float("nan"), 0.0), a, t(1.0, 1.0))
    with pytest.raises(ValueError, match="labels"):
        preference_cross_entropy(a, a, t(float("nan"), 1.0))


# ---------------------------------------------------------------- bradley_terry


def test_bt_hand_derived_values():
    """R_w = 1.5, R_l = −0.5, so R_w − R_l = 2 and R_w + R_l = 1.

    m = 0, c = 0: L = log(1 + e^{−2}) = 0.126928011042.
    m = 1, c = 0.1: L = log(1 + e^{−1}) + 0.1·1² = 0.413261687518.
    Per-pair margins [0, 3], c = 0: [log(1 + e^{−2}), log(1 + e^{1})] = [L2, 1 + L1].
    """
    w, rj = t(1.5, 1.5), t(-0.5, -0.5)
    assert bradley_terry(w, rj).losses.tolist() == pytest.approx([L2, L2], abs=1e-11)
    out = bradley_terry(w, rj, margin=1.0, centering=0.1)
    assert out.losses.tolist() == pytest.approx([L1 + 0.1, L1 + 0.1], abs=1e-11)
    per_pair = bradley_terry(w, rj, margin=t(0.0, 3.0))
    assert per_pair.losses.tolist() == pytest.approx([L2, 1 + L1], abs=1e-11)
    # Metrics ignore the margin: they describe the rewards themselves.
    assert out.metrics["rewards/chosen"].tolist() == [1.5, 1.5]
    assert out.metrics["rewards/rejected"].tolist() == [-0.5, -0.5]
    assert out.metrics["rewards/margins"].tolist() == [2.0, 2.0]
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 1.0]


def test_bt_hand_derived_gradient():
    """∂L/∂R_w = −σ(−(R_w − R_l − m)) + 2c(R_w + R_l); ∂L/∂R_l = σ(−z) + 2c(R_w + R_l).

    With R_w = 1.5, R_l = −0.5, m = 1, c = 0.1: z = 1, σ(−1) = 0.268941421370, so
    ∂L/∂R_w = −0.268941421370 + 0.2 = −0.068941421370 and ∂L/∂R_l = 0.468941421370.
    """
    w, rj = t(1.5, grad=True), t(-0.5, grad=True)
    bradley_terry(w, rj, margin=1.0, centering=0.1).losses.sum().backward()
    assert w.grad.item() == pytest.approx(-0.068941421370, abs=1e-11)
    assert rj.grad.item() == pytest.approx(0.468941421370, abs=1e-11)


def test_bt_invariants():
    """Equal rewards, m = 0, c = 0 ⇒ L = −log σ(0) = ln 2.
    Rewards summing to zero ⇒ the centering term vanishes: R_w = 2, R_l = −2 gives
    log(1 + e^{−4}) = 0.018149927917 for every c. Without centering the loss is
    shift-invariant: adding 7 to both rewards changes nothing.
    """
    assert bradley_terry(t(3.0, -1.0), t(3.0, -1.0)).losses.tolist() == pytest.approx([LN2] * 2)
    for c in (0.0, 0.01, 5.0):
        out = bradley_terry(t(2.0), t(-2.0), centering=c)
        assert out.losses.item() == pytest.approx(0.018149927917, abs=1e-11)
    w, rj = torch.randn(5).double(), torch.randn(5).double()
    assert torch.allclose(bradley_terry(w, rj).losses, bradley_terry(w + 7, rj + 7).losses)


def test_bt_gradcheck():
    w, rj = (torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    margins = t(0.0, 0.5, 1.0, 2.0)
    assert torch.autograd.gradcheck(
        lambda a, b: bradley_terry(a, b, margin=0.7, centering=0.05).losses, (w, rj)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: bradley_terry(a, b, margin=margins, centering=0.01).losses, (w, rj)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bt_extreme_inputs_finite(dtype):
    w = t(1e3, -1e3, 1e3, dtype=dtype, grad=True)
    rj = t(-1e3, 1e3, 1e3, dtype=dtype, grad=True)
    out = bradley_terry(w, rj, margin=1.0, centering=0.01)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(w.grad).all() and torch.isfinite(rj.grad).all()


def test_bt_invalid_input():
    a = t(0.0, 1.0)
    with pytest.raises(ValueError, match="centering"):
        bradley_terry(a, a, centering=-0.1)
    with pytest.raises(ValueError, match="margin"):
        bradley_terry(a, a, margin=-1.0)
    with pytest.raises(ValueError, match="margin"):
        bradley_terry(a, a, margin=t(1.0, -1.0))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry(a, a, margin=t(1.0))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry(a, a, margin=float("inf"))
    with pytest.raises(ValueError, match="rejected_rewards"):
        bradley_terry(a, t(0.0))
    with pytest.raises(ValueError, match="chosen_rewards"):
        bradley_terry(t(float("inf"), 0.0), a)
    with pytest.raises(ValueError, match="chosen_rewards"):
        bradley_terry(a.reshape(2, 1), a.reshape(2, 1))


# ---------------------------------------------------------------- general preference model


def test_gpm_hand_derived_values():
    """s = Σ_l (v_w[2l]·v_l[2l+1] − v_w[2l+1]·v_l[2l]).

    k = 1, v_w = (1, 2), v_l = (3, −1), τ = 1: s = 1·(−1) − 2·3 = −7;
      L = −log σ(−7) = 7 + log(1 + e^{−7}) = 7.000911466454.
    k = 2, v_w = (1, 0, 0.5, 0.5), v_l = (0, 1, 1, 1), τ = 0.5:
      block 1: 1·1 − 0·0 = 1; block 2: 0.5·1 − 0.5·1 = 0; s = 1; s/τ = 2;
      L = log(1 + e^{−2}) = 0.126928011042.
    """
    out = general_preference(t(1.0, 2.0).reshape(1, 2), t(3.0, -1.0).reshape(1, 2), tau=1.0)
    assert out.losses.item() == pytest.approx(7.000911466454, abs=1e-11)
    assert out.metrics["preference/score"].item() == pytest.approx(-7.0)
    assert out.metrics["preference/accuracy"].item() == 0.0
    out2 = general_preference(
        t(1.0, 0.0, 0.5, 0.5).reshape(1, 4), t(0.0, 1.0, 1.0, 1.0).reshape(1, 4), tau=0.5
    )
    assert out2.losses.item() == pytest.approx(L2, abs=1e-11)
    assert out2.metrics["preference/prob_chosen"].item() == pytest.approx(1 / (1 + math.exp(-2)))


def test_gpm_invariants_and_cycle():
    """s(y, y) = 0 ⇒ L = ln 2. Antisymmetry: L(w, rj) − L(l, w) = log σ(−z) − log σ(z) = −z
    with z = s/τ. Cycle: unit vectors at 0°, 120°, 240° give
    s(a, b) = sin 120°, s(b, c) = sin(240° − 120°), s(c, a) = −sin 240°, all = √3/2 > 0:
    a ≻ b ≻ c ≻ a, which no scalar reward can express.
    """
    v = torch.randn(3, 6, dtype=torch.float64)
    assert general_preference(v, v).losses.tolist() == pytest.approx([LN2] * 3)
    w, rj = torch.randn(3, 4).double(), torch.randn(3, 4).double()
    fwd, bwd = general_preference(w, rj, tau=0.3), general_preference(rj, w, tau=0.3)
    z = fwd.metrics["preference/score"] / 0.3
    assert torch.allclose(fwd.losses - bwd.losses, -z)
    ang = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    a, b, c = torch.stack([ang.cos(), ang.sin()], dim=1)
    first, second = torch.stack([a, b, c]), torch.stack([b, c, a])
    scores = general_preference(first, second).metrics["preference/score"]
    assert scores.tolist() == pytest.approx([math.sqrt(3) / 2] * 3, abs=1e-12)


def test_gpm_gradcheck():
    w, rj = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b: general_preference(a, b, tau=0.2).losses, (w, rj))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpm_extreme_inputs_finite(dtype):
    w = torch.tensor([[1e3, -1e3], [1e3, 1e3]], dtype=dtype, requires_grad=True)
    rj = torch.tensor([[1e3, 1e3], [1e3, -1e3]], dtype=dtype, requires_grad=True)
    out = general_preference(w, rj)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(w.grad).all() and torch.isfinite(rj.grad).all()


def test_gpm_invalid_input():
    v = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="tau"):
        general_preference(v, v, tau=0.0)
    with pytest.raises(ValueError, match="chosen_embeddings"):
        general_preference(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="rejected_embeddings"):
        general_preference(v, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="chosen_embeddings"):
        general_preference(torch.zeros(4), v)
    with pytest.raises(ValueError, match="chosen_embeddings"):
        general_preference(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="rejected_embeddings"):
        general_preference(v, torch.full((2, 4), float("nan")))


# ---------------------------------------------------------------- ensembles

R = [[1.0, 4.0], [2.0, 0.0], [6.0, 2.0]]  # K = 3 heads, B = 2 examples


def test_ensemble_hand_derived_values():
    """Column 0: heads 1, 2, 6 → mean 3, min 1, population variance ((−2)² + (−1)² + 3²)/3
    = 14/3; UWO with λ = 0.25: 3 − 14/12 = 11/6. Column 1: heads 4, 0, 2 → mean 2, min 0,
    variance (2² + (−2)² + 0²)/3 = 8/3; UWO: 2 − 8/12 = 4/3. (The sample variance, /(K−1),
    would give 3 − 0.25·7 = 1.25 for column 0: this checks the population form.)
    """
    r = torch.tensor(R, dtype=torch.float64)
    assert aggregate_ensemble(r, method="mean").tolist() == pytest.approx([3.0, 2.0])
    assert aggregate_ensemble(r, method="min").tolist() == [1.0, 0.0]
    uwo = aggregate_ensemble(r, method="uwo", coef=0.25)
    assert uwo.tolist() == pytest.approx([11 / 6, 4 / 3], abs=1e-12)
    assert ensemble_mean(r).tolist() == pytest.approx([3.0, 2.0])
    assert ensemble_min(r).tolist() == [1.0, 0.0]
    assert ensemble_uwo(r, coef=0.25).tolist() == pytest.approx([11 / 6, 4 / 3], abs=1e-12)


def test_ensemble_hand_derived_gradient():
    """∂UWO/∂R_k = 1/K − λ·(2/K)(R_k − R̄) (Σ_k (R_k − R̄) = 0 kills the R̄-path term).
    Column 0, λ = 0.25: head 0 (R − R̄ = −2): 1/3 + 1/3 = 2/3; head 1 (−1): 1/3 + 1/6 = 1/2;
    head 2 (+3): 1/3 − 1/2 = −1/6. min sends gradient 1 to the arg-min head only.
    """
    r = torch.tensor(R, dtype=torch.float64, requires_grad=True)
    aggregate_ensemble(r, method="uwo", coef=0.25)[0].backward()
    assert r.grad[:, 0].tolist() == pytest.approx([2 / 3, 1 / 2, -1 / 6], abs=1e-12)
    r.grad = None
    aggregate_ensemble(r, method="min")[1].backward()
    assert r.grad[:, 1].tolist() == [0.0, 1.0, 0.0]


def test_ensemble_identical_heads():
    """K copies of one head: mean = min = that head, zero variance, so UWO = the head for any λ."""
    head = torch.tensor([0.3, -2.0, 7.5], dtype=torch.float64)
    r = head.expand(4, 3)
    for method in ("mean", "min", "uwo"):
        assert torch.allclose(aggregate_ensemble(r, method=method, coef=10.0), head)
    assert torch.allclose(aggregate_ensemble(head[None], method="uwo", coef=3.0), head)  # K = 1


def test_ensemble_trailing_dims():
    """[K, B, H] per-step rewards, K = 2 heads x and x + 2: mean x + 1, min x; each head is
    1 away from the mean, so the population variance is 1 and UWO(λ = 1) = x + 1 − 1 = x."""
    x = torch.randn(3, 4, dtype=torch.float64)
    r = torch.stack([x, x + 2])
    assert torch.allclose(aggregate_ensemble(r, method="mean"), x + 1)
    assert torch.allclose(aggregate_ensemble(r, method="min"), x)
    assert torch.allclose(aggregate_ensemble(r, method="uwo", coef=1.0), x)


def test_ensemble_gradcheck():
    r = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for method in ("mean", "min", "uwo"):
        assert torch.autograd.gradcheck(lambda x, m=method: aggregate_ensemble(x, method=m), r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ensemble_extreme_inputs_finite(dtype):
    r = torch.tensor([[1e3, -1e3], [-1e3, 1e3], [1e3, 1e3]], dtype=dtype, requires_grad=True)
    out = aggregate_ensemble(r, method="uwo", coef=1.0)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(r.grad).all()


def test_ensemble_invalid_input():
    r = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="method"):
        aggregate_ensemble(r, method="median")
    with pytest.raises(ValueError, match="coef"):
        aggregate_ensemble(r, method="uwo", coef=-0.1)
    with pytest.raises(ValueError, match="coef"):
        ensemble_uwo(r, coef=float("nan"))
    with pytest.raises(ValueError, match="rewards"):
        aggregate_ensemble(torch.zeros(3))
    with pytest.raises(ValueError, match="rewards"):
        aggregate_ensemble(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="rewards"):
        aggregate_ensemble(torch.tensor([[0.0, float("inf")]]))


# ---------------------------------------------------------------- transform and combine


def test_transform_hand_derived_values():
    """u = log σ(r − r_ref). r = 3, r_ref = 1: log σ(2) = −log(1 + e^{−2}) = −0.126928011042.
    r = 0, r_ref = 2: log σ(−2) = −log(1 + e^{2}) = −(2 + log(1 + e^{−2})) = −2.126928011042.
    Combining the two as properties of one output: −0.126928011042 − 2.126928011042
    = −2.253856022084 = log[σ(2)·σ(−2)], the log probability of beating both references.
    """
    u = log_sigmoid_transform(t(3.0, 0.0), t(1.0, 2.0))
    assert u.tolist() == pytest.approx([-L2, -(2 + L2)], abs=1e-11)
    combined = combine_transformed(t(3.0, 0.0).reshape(2, 1), t(1.0, 2.0).reshape(2, 1))
    assert combined.tolist() == pytest.approx([-(2 + 2 * L2)], abs=1e-11)


def test_transform_invariants():
    """r = r_ref ⇒ u = log σ(0) = −ln 2; u < 0 always and increases with r; with P equal
    properties at their references the combination is −P·ln 2."""
    ref = torch.randn(4).double()
    assert log_sigmoid_transform(ref, ref).tolist() == pytest.approx([-LN2] * 4)
    r = torch.linspace(-5, 5, 11, dtype=torch.float64)
    u = log_sigmoid_transform(r, torch.zeros(11, dtype=torch.float64))
    assert (u < 0).all() and (u.diff() > 0).all()
    refs = torch.randn(3, 2).double()
    assert combine_transformed(refs, refs).tolist() == pytest.approx([-3 * LN2] * 2)


def test_transform_gradcheck():
    r, ref = (torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(log_sigmoid_transform, (r, ref))
    rp, refp = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(combine_transformed, (rp, refp))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transform_extreme_inputs_finite(dtype):
    """u(1e3 vs −1e3) ≈ 0 with gradient ≈ 0; u(−1e3 vs 1e3) = −2000 with gradient 1."""
    r = torch.tensor([1e3, -1e3], dtype=dtype, requires_grad=True)
    ref = torch.tensor([-1e3, 1e3], dtype=dtype)
    u = log_sigmoid_transform(r, ref)
    u.sum().backward()
    assert torch.isfinite(u).all() and torch.isfinite(r.grad).all()
    assert u[1].item() == pytest.approx(-2000.0) and r.grad[1].item() == pytest.approx(1.0)
    c = combine_transformed(r.detach()[:, None].expand(2, 3), ref[:, None].expand(2, 3))
    assert torch.isfinite(c).all()


def test_transform_invalid_input():
    with pytest.raises(ValueError, match="reference_rewards"):
        log_sigmoid_transform(t(0.0, 1.0), t(0.0))
    with pytest.raises(ValueError, match="rewards"):
        log_sigmoid_transform(t(float("nan")), t(0.0))
    with pytest.raises(ValueError, match="reference_rewards"):
        combine_transformed(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="rewards"):
        combine_transformed(torch.zeros(3), torch.zeros(3))


# ---------------------------------------------------------------- registry


def test_registry_entries():
    kinds = {
        "bt_soft": "reward",
        "bradley_terry": "reward",
        "gpm": "reward",
        "ensemble_mean": "aggregate",
        "ensemble_min": "aggregate",
        "ensemble_uwo": "aggregate",
        "log_sigmoid_transform": "aggregate",
        "combine_transformed": "aggregate",
    }
    for name, kind in kinds.items():
        spec = REGISTRY[name]
        assert spec.family == "reward" and spec.kind == kind and spec.paper
    assert REGISTRY["ensemble_uwo"].hparams == {"coef": 0.1}
