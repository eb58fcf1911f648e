"""Direct-family properties derived by hand, and the family's specific bad inputs.

- the first-step invariants (π_θ = π_ref, or equal per-token likelihoods for the
  reference-free objectives), derived by hand below; every ``paired`` objective in the registry
  must have one (a new one fails until its value is derived and added to ``R0_PAIRED``);
- ValueError naming the argument for out-of-domain hyperparameters and for the family's
  specific bad inputs (missing reference or token counts, zero token counts, ...).

Gradient checks, extreme inputs, shapes, dtypes, NaN/inf inputs and invalid hyperparameter
types are checked for every registry entry in ``test_registry.py``; batches come from
``registry_inputs``.
"""

import math

import pytest
import torch

from unialign.losses import REGISTRY, PairedLogps, UnpairedLogps
from unialign.losses.direct import ListwiseLogps, ScoredPairs

from .registry_inputs import batch_of

LN2 = math.log(2.0)
PAIRED = sorted(name for name, spec in REGISTRY.items() if spec.kind == "paired")


def _paired(pc, pr, rc, rr, tokens=((3.0, 4.0, 5.0), (2.0, 6.0, 1.0)), dtype=torch.float64):
    t = lambda v: None if v is None else torch.tensor(v, dtype=dtype)  # noqa: E731
    nc, nr = tokens if tokens is not None else (None, None)
    return PairedLogps(t(pc), t(pr), t(rc), t(rr), t(nc), t(nr))


# ---------------------------------------------------------------------------------------------
# First-step invariants
# ---------------------------------------------------------------------------------------------

EPS_EXO = REGISTRY["exo_pair"].hparams["label_smoothing"]
BETA = 0.1  # the registry default for every reference-based entry checked below

# π_θ = π_ref ⇒ r_w = r_l = 0, Δ = 0, at the registry defaults (β = 0.1):
#   logistic family: −log σ(0) = ln 2 (cdpo/robust/aot: ε mixes ln 2 with ln 2; f-DPO: every
#   s_f(0) is equal, so s_w − s_l = 0); hinge: 1 − 0 = 1; ipo: (0 − 1/(2β))² = 1/(4β²) = 25;
#   sppo_hard: (1/(2β))² + (1/(2β))² = 1/(2β²) = 50; apo_zero: 1 − ½ + ½ = 1;
#   apo_down: ½ + 1 − ½ = 1; nca_pair: ln 2 + ½ ln 2 + ½ ln 2 = 2 ln 2; bco_pair (δ = 0): 2 ln 2;
#   discopop: m = σ(0) = ½ → ½ ln 2 + ½ e⁰ = (ln 2 + 1)/2;
#   exo_pair: p = ½ → ½(−ln 2 − log(1−ε)) + ½(−ln 2 − log ε) = −ln 2 − ½ log(ε(1−ε));
#   rpo (α = 1): ln 2 + α·(−ℓ_w/n_w), per example: ℓ_w = [−4, −1, −9], n_w = [3, 4, 5] below.
R0_PAIRED = {
    "rpo": [LN2 + 4 / 3, LN2 + 1 / 4, LN2 + 9 / 5],
    "sigmoid": LN2, "cdpo": LN2, "robust": LN2, "aot": LN2, "sigmoid_norm": LN2,
    "fdpo_reverse_kl": LN2, "fdpo_forward_kl": LN2, "fdpo_js": LN2, "fdpo_alpha": LN2,
    "hinge": 1.0, "ipo": 1 / (4 * BETA**2), "sppo_hard": 1 / (2 * BETA**2),
    "apo_zero": 1.0, "apo_down": 1.0, "nca_pair": 2 * LN2, "bco_pair": 2 * LN2,
    "discopop": (LN2 + 1) / 2, "exo_pair": -LN2 - 0.5 * math.log(EPS_EXO * (1 - EPS_EXO)),
}  # fmt: skip


@pytest.mark.parametrize("name", PAIRED)
def test_first_step_invariant_paired(name):
    if name not in R0_PAIRED:
        pytest.fail(
            f"{name!r} is a paired objective without a first-step value: derive its loss at "
            "π_θ = π_ref and the registry defaults by hand and add it to R0_PAIRED",
            pytrace=False,
        )
    b = _paired([-4.0, -1.0, -9.0], [-7.0, -2.0, -3.0], [-4.0, -1.0, -9.0], [-7.0, -2.0, -3.0])
    spec = REGISTRY[name]
    assert spec.hparams["beta"] == BETA
    out = spec.fn(b, **spec.hparams)
    expected = R0_PAIRED[name]
    expected = expected if isinstance(expected, list) else [expected] * 3
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["rewards/margins"].tolist() == [0.0] * 3


def test_first_step_invariant_rpo():
    """r = 0: L = ln 2 + α·(−ℓ_w/n_w), α = 1: ℓ_w = [−4, −1, −9], n_w = [2, 4, 3] →
    ln 2 + [2, 0.25, 3]."""
    b = _paired(
        [-4.0, -1.0, -9.0],
        [-7.0, -2.0, -3.0],
        [-4.0, -1.0, -9.0],
        [-7.0, -2.0, -3.0],
        tokens=((2.0, 4.0, 3.0), (1.0, 1.0, 1.0)),
    )
    out = REGISTRY["rpo"].fn(b, **REGISTRY["rpo"].hparams)
    assert out.losses.tolist() == pytest.approx([LN2 + 2, LN2 + 0.25, LN2 + 3], abs=1e-12)


def test_first_step_invariants_reference_free():
    """Equal per-token likelihoods ℓ_w/n_w = ℓ_l/n_l = −½ (ℓ_w = −1, n_w = 2; ℓ_l = −2, n_l = 4):
    simpo (β = 2, γ = ½): −log σ(−γ) = log(1 + e^{½}) = 0.974077;
    orpo (λ = 0.1): odds equal → NLL + λ ln 2 = ½ + 0.1 ln 2.
    Equal sums ℓ_w = ℓ_l = −2 (n_w = 4): cpo (α = 1): ln 2 + 2/4."""
    per_token = _paired([-1.0], [-2.0], None, None, tokens=([2.0], [4.0]))
    simpo, orpo, cpo = (REGISTRY[n] for n in ("simpo", "orpo", "cpo"))
    assert simpo.fn(per_token, **simpo.hparams).losses.item() == pytest.approx(
        math.log1p(math.exp(0.5)), abs=1e-12
    )
    assert orpo.fn(per_token, **orpo.hparams).losses.item() == pytest.approx(0.5 + 0.1 * LN2)
    equal = _paired([-2.0], [-2.0], None, None, tokens=([4.0], [1.0]))
    assert cpo.fn(equal, **cpo.hparams).losses.item() == pytest.approx(LN2 + 0.5, abs=1e-12)


def test_first_step_invariant_kto():
    """r = 0 and KL pairs at 0 ⇒ z₀ = 0 ⇒ every loss is λ·(1 − σ(0)) = λ/2 = ½ (λ = 1)."""
    z = torch.zeros(4, dtype=torch.float64)
    b = UnpairedLogps(z - 3, z - 3, torch.tensor([True, False, True, False]), z - 1, z - 1)
    assert REGISTRY["kto"].fn(b).losses.tolist() == [0.5] * 4


def test_first_step_invariants_listwise_and_copg():
    """r = 0 for every response.
    mpo (β = 0.1, α = 1, abs): scores [1, 0] → deviations ±½, equal weights → L = ln 2;
    scores [2, 0, 1, 1] → deviations [1, −1, 0, 0], weights [e, e, 1, 1], Y⁺ = {0}:
    L = −log(e/(2e + 2)) = log(2 + 2/e) = 1.005969… (computed with math below).
    lipo: equal s keep list order as ranks (τ = [1, 2]); ψ = [1, 0]: Δ = 1·(1 − 1/log₂3),
    L = ln 2·(1 − 1/log₂3) = 0.255821…
    copg: a = r − r′ = 0 ⇒ L = (β/2)·0 − ΔR·0 = 0 whatever the rewards."""
    zeros = torch.zeros(1, 2, dtype=torch.float64)
    mpo_b = ListwiseLogps(zeros - 5, zeros - 5, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert REGISTRY["mpo"].fn(mpo_b).losses.item() == pytest.approx(LN2, abs=1e-12)
    z4 = torch.zeros(1, 4, dtype=torch.float64)
    mpo_4 = ListwiseLogps(z4, z4, torch.tensor([[2.0, 0.0, 1.0, 1.0]], dtype=torch.float64))
    assert REGISTRY["mpo"].fn(mpo_4).losses.item() == pytest.approx(
        math.log(2 + 2 / math.e), abs=1e-12
    )
    lipo_b = ListwiseLogps(zeros, zeros, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert REGISTRY["lipo"].fn(lipo_b).losses.item() == pytest.approx(
        LN2 * (1 - 1 / math.log2(3)), abs=1e-12
    )
    pairs = _paired([-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0])
    scored = ScoredPairs(pairs, torch.tensor([1.0, -2.0, 0.0]), torch.tensor([0.0, 3.0, 0.0]))
    assert REGISTRY["copg"].fn(scored).losses.tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

BAD_HPARAMS = [
    ("cdpo", {"label_smoothing": 0.6}, "label_smoothing"),
    ("cdpo", {"label_smoothing": -0.1}, "label_smoothing"),
    ("robust", {"label_smoothing": 0.5}, "label_smoothing"),
    ("exo_pair", {"label_smoothing": 0.0}, "label_smoothing"),
    ("exo_pair", {"label_smoothing": 1.0}, "label_smoothing"),
    ("aot", {"label_smoothing": 0.7}, "label_smoothing"),
    ("aot", {"unpaired": 1}, "unpaired"),
    ("ipo", {"normalize": "yes"}, "normalize"),
    ("fdpo_alpha", {"alpha": 0.0}, "alpha"),
    ("fdpo_alpha", {"alpha": 1.0}, "alpha"),
    ("discopop", {"tau": 0.0}, "tau"),
    ("discopop", {"tau": float("inf")}, "tau"),
    ("bco_pair", {"delta": float("nan")}, "delta"),
    ("rpo", {"alpha": -1.0}, "alpha"),
    ("cpo", {"alpha": -0.5}, "alpha"),
    ("simpo", {"gamma": -0.1}, "gamma"),
    ("kto", {"desirable_weight": 0.0}, "desirable_weight"),
    ("kto", {"undesirable_weight": -1.0}, "undesirable_weight"),
    ("mpo", {"alpha": -1.0}, "alpha"),
    ("mpo", {"deviation": "squared"}, "deviation"),
]


@pytest.mark.parametrize(
    "name", sorted(n for n, spec in REGISTRY.items() if "beta" in spec.hparams)
)
@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), True])
def test_bad_beta(name, beta):
    spec = REGISTRY[name]
    with pytest.raises(ValueError, match="beta"):
        spec.fn(*batch_of(name), **{**spec.hparams, "beta": beta})


@pytest.mark.parametrize(("name", "override", "arg"), BAD_HPARAMS)
def test_bad_hyperparameters(name, override, arg):
    spec = REGISTRY[name]
    with pytest.raises(ValueError, match=arg):
        spec.fn(*batch_of(name), **{**spec.hparams, **override})


def _replace(batch, **kw):
    fields = {f: getattr(batch, f) for f in batch.__dataclass_fields__}
    return type(batch)(**{**fields, **kw})


def bad_inputs(spec):
    """(batch, regex naming the offending argument) pairs specific to one direct objective.

    Shapes, dtypes and NaN/inf of every input are checked for every objective in
    ``test_registry.py``; these are the cases that depend on what the objective needs."""
    (b,) = batch_of(spec.name)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    cases = []
    if spec.kind == "paired":
        cases.append((_replace(b, ref_chosen=None, ref_rejected=None), "^ref_chosen"))
    if spec.needs_tokens:
        cases.append((_replace(b, rejected_tokens=f64([1.0, 0.0, 2.0])), "^rejected_tokens"))
        cases.append((_replace(b, chosen_tokens=None, rejected_tokens=None), "^chosen_tokens"))
    if spec.name == "orpo":  # log-probabilities must be ≤ 0
        cases.append((_replace(b, policy_chosen=torch.ones(3, dtype=torch.float64)), "^policy_chosen"))  # fmt: skip
    if spec.kind == "unpaired":
        cases.append((_replace(b, ref=None), "^ref is required"))
    if spec.kind == "listwise":
        cases.append((ListwiseLogps(b.policy[:, :1], b.ref[:, :1], b.scores[:, :1]), "K ≥ 2"))
    if spec.name == "mpo":
        cases.append((_replace(b, scores=torch.ones_like(b.scores)), "^scores"))
    if spec.name == "lipo":
        cases.append((_replace(b, scores=b.scores + 1), "^scores"))
    if spec.kind == "scored_pairs":
        cases.append((_replace(b, logps=_replace(b.logps, ref_chosen=None)), "^ref_chosen"))
        cases.append((b.logps, "ScoredPairs"))
    return cases


@pytest.mark.parametrize("name", sorted(n for n, s in REGISTRY.items() if s.family == "direct"))
def test_bad_inputs_name_the_argument(name):
    spec = REGISTRY[name]
    for batch, pattern in bad_inputs(spec):
        with pytest.raises(ValueError, match=pattern):
            spec.fn(batch, **spec.hparams)
