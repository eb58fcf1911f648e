"""Hand-derived values for the paired, reference-based direct objectives (DPO relatives).

Two fixed pairs recur (log-probs chosen so the log-ratios are round numbers):
  A: ℓ_θ(w)=−1, ℓ_ref(w)=−2 → r_w = 1;   ℓ_θ(l)=−3, ℓ_ref(l)=−2 → r_l = −1;  Δ = 2.
  B: ℓ_θ(w)=−2.5, ℓ_ref(w)=−2 → r_w = −0.5; ℓ_θ(l)=−0.5, ℓ_ref(l)=−2 → r_l = 1.5; Δ = −2.
Notation: sp(x) = log(1 + eˣ) = −log σ(−x), so −log σ(z) = sp(−z). Every expected value is
computed below with the math module from the formula in the docstring, never by the code.
"""

import math

import pytest
import torch

from unialign.losses import PairedLogps
from unialign.losses import direct as D


def _sp(x: float) -> float:
    return math.log1p(math.exp(x))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _pair(pc, pr, rc, rr, nc=None, nr=None):
    t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairedLogps(t(pc), t(pr), t(rc), t(rr), t(nc), t(nr))


A = ([-1.0], [-3.0], [-2.0], [-2.0])
B = ([-2.5], [-0.5], [-2.0], [-2.0])


def _one(out) -> float:
    return out.losses[0].item()


def test_cdpo():
    """ε = 0.25. A, β = ½: z = βΔ = 1; L = 0.75·sp(−1) + 0.25·sp(1) and sp(1) = 1 + sp(−1),
    so L = sp(−1) + 0.25 = 0.563261687518.
    B, β = 1: z = −2; L = 0.75·sp(2) + 0.25·sp(−2) = sp(−2) + 0.75·2 = 1.626928011043."""
    assert _one(D.cdpo(_pair(*A), beta=0.5, label_smoothing=0.25)) == pytest.approx(
        _sp(-1) + 0.25, abs=1e-12
    )
    assert _one(D.cdpo(_pair(*B), beta=1.0, label_smoothing=0.25)) == pytest.approx(
        _sp(-2) + 1.5, abs=1e-12
    )
    # ε = 0 is plain DPO: A, β = ½ → sp(−1)
    assert _one(D.cdpo(_pair(*A), beta=0.5, label_smoothing=0.0)) == pytest.approx(_sp(-1))


def test_robust():
    """ε = 0.25, 1 − 2ε = ½. A, β = ½: z = 1;
    L = [0.75·sp(−1) − 0.25·sp(1)]/0.5 = [0.5·sp(−1) − 0.25]/0.5 = sp(−1) − 0.5 = −0.186738…
    (robust DPO can be negative). B, β = 1: z = −2;
    L = [0.75·sp(2) − 0.25·sp(−2)]/0.5 = [1.5 + 0.5·sp(−2)]/0.5 = 3 + sp(−2) = 3.126928…"""
    assert _one(D.robust(_pair(*A), beta=0.5, label_smoothing=0.25)) == pytest.approx(
        _sp(-1) - 0.5, abs=1e-12
    )
    assert _one(D.robust(_pair(*B), beta=1.0, label_smoothing=0.25)) == pytest.approx(
        3 + _sp(-2), abs=1e-12
    )


def test_hinge():
    """A, β = ¼: 1 − ¼·2 = 0.5.  A, β = 1: 1 − 2 < 0 → 0.  B, β = 1: 1 − (−2) = 3."""
    assert _one(D.hinge(_pair(*A), beta=0.25)) == pytest.approx(0.5)
    assert _one(D.hinge(_pair(*A), beta=1.0)) == 0.0
    assert _one(D.hinge(_pair(*B), beta=1.0)) == pytest.approx(3.0)


def test_ipo_normalized_and_summed():
    """A with n_w = 2, n_l = 4, β = ½ (1/(2β) = 1):
    normalized Δ̄ = 1/2 − (−1)/4 = 0.75 → (0.75 − 1)² = 0.0625; summed Δ = 2 → (2 − 1)² = 1.
    B with n_w = 1, n_l = 3, β = 1 (1/(2β) = ½): Δ̄ = −0.5 − 1.5/3 = −1 → (−1.5)² = 2.25."""
    a = _pair(*A, [2.0], [4.0])
    assert _one(D.ipo(a, beta=0.5)) == pytest.approx(0.0625)
    assert _one(D.ipo(a, beta=0.5, normalize=False)) == pytest.approx(1.0)
    assert _one(D.ipo(_pair(*B, [1.0], [3.0]), beta=1.0)) == pytest.approx(2.25)
    # summing needs no token counts
    assert _one(D.ipo(_pair(*A), beta=0.5, normalize=False)) == pytest.approx(1.0)


def test_sigmoid_norm():
    """A, n = (2, 4), β = ½: Δ̄ = 0.75, z = 0.375 → sp(−0.375) = 0.523123…
    B, n = (1, 3), β = 1: Δ̄ = −1 → sp(1) = 1.313261687518."""
    assert _one(D.sigmoid_norm(_pair(*A, [2.0], [4.0]), beta=0.5)) == pytest.approx(
        _sp(-0.375), abs=1e-12
    )
    assert _one(D.sigmoid_norm(_pair(*B, [1.0], [3.0]), beta=1.0)) == pytest.approx(
        _sp(1.0), abs=1e-12
    )


def test_exo_pair():
    """ε = 0.1, p = σ(z): L = p(log p − log 0.9) + (1 − p)(log(1 − p) − log 0.1).
    A, β = ½: z = 1, p = σ(1) = 0.731058578630 → L = 0.731059·(−0.313262 + 0.105361)
    + 0.268941·(−1.313262 + 2.302585) = −0.151988 + 0.266070 = 0.114082…
    B, β = 1: z = −2, p = σ(−2) = 0.119202922022, same formula."""

    def exo(z, eps):
        p = _sig(z)
        return p * (math.log(p) - math.log(1 - eps)) + (1 - p) * (math.log(1 - p) - math.log(eps))

    assert _one(D.exo_pair(_pair(*A), beta=0.5, label_smoothing=0.1)) == pytest.approx(
        exo(1.0, 0.1), abs=1e-12
    )
    assert _one(D.exo_pair(_pair(*A), beta=0.5, label_smoothing=0.1)) == pytest.approx(
        0.114082, abs=1e-6
    )
    assert _one(D.exo_pair(_pair(*B), beta=1.0, label_smoothing=0.1)) == pytest.approx(
        exo(-2.0, 0.1), abs=1e-12
    )


def test_nca_pair():
    """A, β = ½: βr_w = ½, βr_l = −½:
    L = sp(−½) + ½ sp(½) + ½ sp(−½) = 1.5·0.474077 + 0.5·0.974077 = 1.198154…
    B, β = 1: βr_w = −½, βr_l = 1.5: L = sp(½) + ½ sp(−½) + ½ sp(1.5)."""
    assert _one(D.nca_pair(_pair(*A), beta=0.5)) == pytest.approx(
        1.5 * _sp(-0.5) + 0.5 * _sp(0.5), abs=1e-12
    )
    assert _one(D.nca_pair(_pair(*B), beta=1.0)) == pytest.approx(
        _sp(0.5) + 0.5 * _sp(-0.5) + 0.5 * _sp(1.5), abs=1e-12
    )


def test_bco_pair_with_and_without_shift():
    """A, β = ½ (βr_w = ½, βr_l = −½). δ = 0: L = sp(−½) + sp(−½) = 0.948154…
    δ = ½: L = −log σ(½ − ½) − log σ(−(−½ − ½)) = ln 2 + sp(−1) = 1.006409…
    B, β = 1, δ = −1: L = −log σ(−½ + 1) − log σ(−(1.5 + 1)) = sp(−½) + sp(2.5)."""
    assert _one(D.bco_pair(_pair(*A), beta=0.5)) == pytest.approx(2 * _sp(-0.5), abs=1e-12)
    assert _one(D.bco_pair(_pair(*A), beta=0.5, delta=0.5)) == pytest.approx(
        math.log(2) + _sp(-1.0), abs=1e-12
    )
    assert _one(D.bco_pair(_pair(*B), beta=1.0, delta=-1.0)) == pytest.approx(
        _sp(-0.5) + _sp(2.5), abs=1e-12
    )


def test_sppo_hard():
    """A, β = ½ (1/(2β) = 1): (1 − 1)² + (−1 + 1)² = 0 — both log-ratios at their targets.
    B, β = 1 (1/(2β) = ½): (−½ − ½)² + (1.5 + ½)² = 1 + 4 = 5."""
    assert _one(D.sppo_hard(_pair(*A), beta=0.5)) == pytest.approx(0.0)
    assert _one(D.sppo_hard(_pair(*B), beta=1.0)) == pytest.approx(5.0)


def test_apo_zero_and_down():
    """β = 1. apo_zero A: 1 − σ(1) + σ(−1) = 2σ(−1) = 2/(1 + e) = 0.537882842739;
    apo_zero B: 1 − σ(−½) + σ(1.5). apo_down A: σ(1) + 1 − σ(2) = 0.731059 + 1 − 0.880797
    = 0.850261…; apo_down B: σ(−½) + 1 − σ(−2)."""
    a, b = _pair(*A), _pair(*B)
    assert _one(D.apo_zero(a, beta=1.0)) == pytest.approx(2 / (1 + math.e), abs=1e-12)
    assert _one(D.apo_zero(b, beta=1.0)) == pytest.approx(1 - _sig(-0.5) + _sig(1.5))
    assert _one(D.apo_down(a, beta=1.0)) == pytest.approx(_sig(1) + 1 - _sig(2), abs=1e-12)
    assert _one(D.apo_down(b, beta=1.0)) == pytest.approx(_sig(-0.5) + 1 - _sig(-2))


def test_aot_sorts_over_the_batch():
    """Two pairs: ℓ_θ(w) = [−1, −4], ℓ_θ(l) = [−3, −1], ℓ_ref(w) = [−2, −2], ℓ_ref(l) = [−2, −3].
    Paired: policy margins [2, −3] sort to [−3, 2]; reference margins [0, 1] sort to [0, 1];
    d = [−3, 1]. β = ½: L = [sp(1.5), sp(−0.5)] (per example it would be Δ = [2, −4]).
    Unpaired: r_w = [1, −2] → [−2, 1]; r_l = [−1, 2] → [−1, 2]; d = [−1, −1]; L = sp(½) twice.
    Label smoothing ε = 0.2 on the paired d: L = 0.8·sp(−βd) + 0.2·sp(βd)."""
    b = _pair([-1.0, -4.0], [-3.0, -1.0], [-2.0, -2.0], [-2.0, -3.0])
    out = D.aot(b, beta=0.5)
    assert out.losses.tolist() == pytest.approx([_sp(1.5), _sp(-0.5)], abs=1e-12)
    assert D.aot(b, beta=0.5, unpaired=True).losses.tolist() == pytest.approx([_sp(0.5)] * 2)
    smooth = D.aot(b, beta=0.5, label_smoothing=0.2).losses.tolist()
    expected = [0.8 * _sp(-z) + 0.2 * _sp(z) for z in (-1.5, 0.5)]
    assert smooth == pytest.approx(expected, abs=1e-12)
    # the metrics stay per example: β r_w = [0.5, −1]
    assert out.metrics["rewards/chosen"].tolist() == pytest.approx([0.5, -1.0])


def test_discopop():
    """m = σ(z/τ): L = (1 − m)·sp(−z) + m·e^{−z}.
    A, β = ½, τ = 0.05: z = 1, m = σ(20) = 1 − 2.06e−9 → L ≈ e^{−1} = 0.367879…
    B, β = 1, τ = 0.05: z = −2, m = σ(−40) ≈ 4.2e−18 → L ≈ sp(2) = 2.126928…
    A, β = ½, τ = 1: z = 1, m = σ(1): L = σ(−1)·sp(−1) + σ(1)·e^{−1}; since σ(1)/e = σ(−1),
    L = σ(−1)(1 + sp(−1)) = 0.268941·1.313262 = 0.353190…"""

    def disco(z, tau):
        m = _sig(z / tau)
        return (1 - m) * _sp(-z) + m * math.exp(-z)

    assert _one(D.discopop(_pair(*A), beta=0.5)) == pytest.approx(disco(1.0, 0.05), abs=1e-12)
    assert _one(D.discopop(_pair(*B), beta=1.0)) == pytest.approx(disco(-2.0, 0.05), abs=1e-12)
    assert _one(D.discopop(_pair(*A), beta=0.5, tau=1.0)) == pytest.approx(
        disco(1.0, 1.0), abs=1e-12
    )
    assert disco(1.0, 1.0) == pytest.approx(0.353190, abs=1e-6)


def test_discopop_large_negative_margin_is_finite():
    """z = −1000 (β = 1, Δ = −1000): m = σ(−20000) underflows to 0, e^{1000} overflows, and the
    naive m·e^{−z} is 0·inf = NaN. Exactly: m·e^{−z} = exp(log σ(z/τ) − z) ≈ e^{−19000} = 0,
    so L = sp(1000) = 1000."""
    b = _pair([-1000.0], [0.0], [0.0], [0.0])
    assert _one(D.discopop(b, beta=1.0)) == pytest.approx(1000.0)


def test_rpo():
    """A with n_w = 2, β = ½, α = ½: NLL = −ℓ_θ(w)/n_w = 1/2; L = sp(−1) + ½·½ = 0.563261…
    B with n_w = 5, β = 1, α = 2: NLL = 2.5/5 = ½; L = sp(2) + 1 = 3.126928…"""
    out = D.rpo(_pair(*A, [2.0], [3.0]), beta=0.5, alpha=0.5)
    assert _one(out) == pytest.approx(_sp(-1) + 0.25, abs=1e-12)
    assert out.metrics["nll/chosen"][0].item() == pytest.approx(0.5)
    assert _one(D.rpo(_pair(*B, [5.0], [1.0]), beta=1.0, alpha=2.0)) == pytest.approx(
        _sp(2) + 1, abs=1e-12
    )


class TestFDPO:
    """s_f(r) per divergence; L = sp(−β(s(r_w) − s(r_l)))."""

    def test_reverse_kl_is_dpo(self):
        """s(r) = r: A, β = ½ → sp(−1); B, β = 1 → sp(2)."""
        assert _one(D.fdpo_reverse_kl(_pair(*A), beta=0.5)) == pytest.approx(_sp(-1))
        assert _one(D.fdpo_reverse_kl(_pair(*B), beta=1.0)) == pytest.approx(_sp(2))

    def test_forward_kl(self):
        """s(r) = 1 − e^{−r}. A: s_w − s_l = e − e^{−1} = 2 sinh 1 = 2.350402; β = ½ →
        L = sp(−1.175201) = 0.269078…  B: s_w − s_l = e^{−1.5} − e^{0.5}; β = 1."""
        assert _one(D.fdpo_forward_kl(_pair(*A), beta=0.5)) == pytest.approx(
            _sp(-math.sinh(1.0)), abs=1e-12
        )
        assert _one(D.fdpo_forward_kl(_pair(*B), beta=1.0)) == pytest.approx(
            _sp(-(math.exp(-1.5) - math.exp(0.5))), abs=1e-12
        )

    def test_js(self):
        """s(r) = log 2 + log σ(r), so s_w − s_l = log(σ(r_w)/σ(r_l)). A: σ(1)/σ(−1) = e → 1;
        β = ½ → L = sp(−½) = 0.474077…  B: log σ(−½) − log σ(1.5); β = 1."""
        assert _one(D.fdpo_js(_pair(*A), beta=0.5)) == pytest.approx(_sp(-0.5), abs=1e-12)
        diff = math.log(_sig(-0.5)) - math.log(_sig(1.5))
        assert _one(D.fdpo_js(_pair(*B), beta=1.0)) == pytest.approx(_sp(-diff), abs=1e-12)

    def test_alpha(self):
        """α = ½: s(r) = 2(1 − e^{−r/2}). A: s_w − s_l = 2(e^{½} − e^{−½}) = 4 sinh ½ = 2.084381;
        β = ½ → L = sp(−1.042191) = 0.302089…  B: s_w − s_l = 2(e^{−0.75} − e^{0.25}); β = 1."""
        assert _one(D.fdpo_alpha(_pair(*A), beta=0.5, alpha=0.5)) == pytest.approx(
            _sp(-2 * math.sinh(0.5)), abs=1e-12
        )
        diff = 2 * (math.exp(-0.75) - math.exp(0.25))
        assert _one(D.fdpo_alpha(_pair(*B), beta=1.0, alpha=0.5)) == pytest.approx(
            _sp(-diff), abs=1e-12
        )

    def test_alpha_other_value(self):
        """α = 0.2: s(r) = 5(1 − e^{−0.2r}); A: s_w − s_l = 5(e^{0.2} − e^{−0.2}) = 10 sinh 0.2
        = 2.013360; β = ½ → L = sp(−1.006680)."""
        assert _one(D.fdpo_alpha(_pair(*A), beta=0.5, alpha=0.2)) == pytest.approx(
            _sp(-5 * math.sinh(0.2)), abs=1e-12
        )

    def test_exponent_clamp_is_exact_at_80(self):
        """Forward KL, r_w = −100, r_l = 0, β = ½: the exponent −r_w = 100 is clamped to 80, so
        s_w = 1 − e^{80}, s_l = 0 and L = sp(½(e^{80} − 1)) = ½(e^{80} − 1) (+ e^{−huge}).
        At r_w = −80 the clamp is inactive and gives the same value."""
        expected = 0.5 * (math.exp(80.0) - 1)
        for r_w in (-100.0, -80.0):
            b = _pair([r_w], [0.0], [0.0], [0.0])
            assert _one(D.fdpo_forward_kl(b, beta=0.5)) == pytest.approx(expected, rel=1e-12)
