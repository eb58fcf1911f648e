"""Properties every direct-family objective must have, parametrized over the registry.

- the first-step invariants (π_θ = π_ref, or equal per-token likelihoods for the
  reference-free objectives), derived by hand below;
- float64 gradient checks;
- finite losses and gradients at |r| up to 1e3 in float32 and bfloat16;
- ValueError naming the argument for bad hyperparameters and bad inputs.
"""

import math

import pytest
import torch

from unialign.losses import REGISTRY, PairedLogps, UnpairedLogps
from unialign.losses.direct import ListwiseLogps, ScoredPairs

DIRECT = sorted(name for name, spec in REGISTRY.items() if spec.family == "direct")
LN2 = math.log(2.0)


def test_registry_has_the_whole_family():
    assert set(DIRECT) == {
        "sigmoid", "cdpo", "robust", "hinge", "ipo", "fdpo_reverse_kl", "fdpo_forward_kl",
        "fdpo_js", "fdpo_alpha", "sigmoid_norm", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
        "apo_zero", "apo_down", "aot", "discopop", "rpo", "simpo", "cpo", "orpo", "kto", "mpo",
        "lipo", "copg",
    }  # fmt: skip
    for name in DIRECT:
        spec = REGISTRY[name]
        assert spec.description and spec.paper and "beta" in spec.hparams


# ---------------------------------------------------------------------------------------------
# Input builders: one batch per kind, from plain lists
# ---------------------------------------------------------------------------------------------


def _paired(pc, pr, rc, rr, tokens=((3.0, 4.0, 5.0), (2.0, 6.0, 1.0)), dtype=torch.float64):
    t = lambda v: None if v is None else torch.tensor(v, dtype=dtype)  # noqa: E731
    nc, nr = tokens if tokens is not None else (None, None)
    return PairedLogps(t(pc), t(pr), t(rc), t(rr), t(nc), t(nr))


def _leaves(batch):
    """The floating-point tensors a loss is differentiated with respect to."""
    if isinstance(batch, PairedLogps):
        return [
            getattr(batch, f)
            for f in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
            if getattr(batch, f) is not None
        ]
    if isinstance(batch, UnpairedLogps):  # z₀ is detached, so only policy and ref
        return [batch.policy, batch.ref]
    if isinstance(batch, ListwiseLogps):
        return [batch.policy, batch.ref]
    return [*_leaves(batch.logps), batch.reward_chosen, batch.reward_rejected]


def _rebuild(batch, leaves):
    """The same batch with ``leaves`` (in ``_leaves`` order) substituted."""
    it = iter(leaves)
    if isinstance(batch, PairedLogps):
        kw = {
            f: (next(it) if getattr(batch, f) is not None else None)
            for f in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
        }
        return PairedLogps(
            **kw, chosen_tokens=batch.chosen_tokens, rejected_tokens=batch.rejected_tokens
        )
    if isinstance(batch, UnpairedLogps):
        return UnpairedLogps(next(it), next(it), batch.desirable, batch.kl_policy, batch.kl_ref)
    if isinstance(batch, ListwiseLogps):
        return ListwiseLogps(next(it), next(it), batch.scores)
    logps = _rebuild(batch.logps, [next(it) for _ in range(4)])
    return ScoredPairs(logps, next(it), next(it))


def random_batch(kind, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    n = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    if kind == "paired":
        return _paired(*(n(3).tolist() for _ in range(4)), dtype=dtype)
    if kind == "paired_ref_free":
        neg = lambda: (-(torch.rand(3, generator=g, dtype=dtype) + 0.5) * 3).tolist()  # noqa: E731
        return _paired(neg(), neg(), None, None, dtype=dtype)
    if kind == "unpaired":
        return UnpairedLogps(n(3), n(3), torch.tensor([True, False, True]), n(3), n(3))
    if kind == "listwise":
        scores = torch.rand(2, 4, generator=g, dtype=dtype)
        return ListwiseLogps(n(2, 4), n(2, 4), scores)
    if kind == "scored_pairs":
        return ScoredPairs(random_batch("paired", dtype), n(3), n(3))
    raise AssertionError(kind)


def extreme_batch(kind, dtype):
    """|log-ratio| (or |log-prob| for reference-free) of 1e3 on both sides."""
    big = 1e3
    if kind in ("paired", "scored_pairs"):
        b = _paired([big, -big, big], [-big, big, big], [0.0] * 3, [0.0] * 3, dtype=dtype)
        if kind == "paired":
            return b
        rewards = torch.tensor([big, -big, 0.0], dtype=dtype)
        return ScoredPairs(b, rewards, -rewards)
    if kind == "paired_ref_free":
        return _paired([-big, 0.0, -big], [0.0, -big, -big], None, None, dtype=dtype)
    if kind == "unpaired":
        t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
        return UnpairedLogps(
            t([big, -big, big]),
            t([0.0] * 3),
            torch.tensor([True, False, False]),
            t([big, -big, 5.0]),
            t([0.0] * 3),
        )
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    return ListwiseLogps(
        t([[big, -big, 0.0], [-big, big, big]]),
        t([[0.0] * 3] * 2),
        t([[1.0, 0.0, 0.5], [0.2, 0.9, 0.1]]),
    )


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
#   exo_pair: p = ½ → ½(−ln 2 − log(1−ε)) + ½(−ln 2 − log ε) = −ln 2 − ½ log(ε(1−ε)).
R0_PAIRED = {
    "sigmoid": LN2, "cdpo": LN2, "robust": LN2, "aot": LN2, "sigmoid_norm": LN2,
    "fdpo_reverse_kl": LN2, "fdpo_forward_kl": LN2, "fdpo_js": LN2, "fdpo_alpha": LN2,
    "hinge": 1.0, "ipo": 1 / (4 * BETA**2), "sppo_hard": 1 / (2 * BETA**2),
    "apo_zero": 1.0, "apo_down": 1.0, "nca_pair": 2 * LN2, "bco_pair": 2 * LN2,
    "discopop": (LN2 + 1) / 2, "exo_pair": -LN2 - 0.5 * math.log(EPS_EXO * (1 - EPS_EXO)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(R0_PAIRED))
def test_first_step_invariant_paired(name):
    b = _paired([-4.0, -1.0, -9.0], [-7.0, -2.0, -3.0], [-4.0, -1.0, -9.0], [-7.0, -2.0, -3.0])
    spec = REGISTRY[name]
    assert spec.hparams["beta"] == BETA
    out = spec.fn(b, **spec.hparams)
    assert out.losses.tolist() == pytest.approx([R0_PAIRED[name]] * 3, abs=1e-12)
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
# Gradients and extremes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIRECT)
def test_gradcheck(name):
    spec = REGISTRY[name]
    batch = random_batch(spec.kind)
    leaves = [t.detach().clone().requires_grad_(True) for t in _leaves(batch)]

    def f(*xs):
        return spec.fn(_rebuild(batch, xs), **spec.hparams).losses

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", DIRECT)
def test_extreme_inputs_are_finite(name, dtype):
    spec = REGISTRY[name]
    batch = extreme_batch(spec.kind, dtype)
    leaves = [t.detach().clone().requires_grad_(True) for t in _leaves(batch)]
    out = spec.fn(_rebuild(batch, leaves), **spec.hparams)
    out.losses.sum().backward()
    assert bool(torch.isfinite(out.losses).all()), out.losses
    for leaf in leaves:
        assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all()), leaf.grad
    for key, value in out.metrics.items():
        assert not value.requires_grad, key
        assert value.shape == out.losses.shape, key


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


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), True])
def test_bad_beta(name, beta):
    spec = REGISTRY[name]
    with pytest.raises(ValueError, match="beta"):
        spec.fn(random_batch(spec.kind), **{**spec.hparams, "beta": beta})


@pytest.mark.parametrize(("name", "override", "arg"), BAD_HPARAMS)
def test_bad_hyperparameters(name, override, arg):
    spec = REGISTRY[name]
    with pytest.raises(ValueError, match=arg):
        spec.fn(random_batch(spec.kind), **{**spec.hparams, **override})


def _replace(batch, **kw):
    fields = {f: getattr(batch, f) for f in batch.__dataclass_fields__}
    return type(batch)(**{**fields, **kw})


def _bad_paired_inputs(spec):
    b = random_batch(spec.kind)
    nan = torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64)
    inf = torch.tensor([0.0, float("inf"), 0.0], dtype=torch.float64)
    cases = [
        (_replace(b, policy_rejected=torch.zeros(2, dtype=torch.float64)), "^policy_rejected"),
        (_replace(b, policy_rejected=nan), "^policy_rejected"),
        (_replace(b, policy_chosen=inf), "^policy_chosen"),
        (_replace(b, policy_chosen=torch.zeros(3, 1, dtype=torch.float64)), "^policy_chosen"),
    ]
    if spec.kind == "paired":
        cases.append((_replace(b, ref_rejected=nan), "^ref_rejected"))
        cases.append((_replace(b, ref_chosen=None, ref_rejected=None), "^ref_chosen"))
    if spec.needs_tokens:
        zero = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
        cases.append((_replace(b, rejected_tokens=zero), "^rejected_tokens"))
        cases.append((_replace(b, chosen_tokens=None, rejected_tokens=None), "^chosen_tokens"))
    if spec.name == "orpo":  # log-probabilities must be ≤ 0
        cases.append(
            (_replace(b, policy_chosen=torch.ones(3, dtype=torch.float64)), "^policy_chosen")
        )
    return cases


def bad_inputs(spec):
    """(batch, regex naming the offending argument) pairs for one objective."""
    b = random_batch(spec.kind)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    if spec.kind in ("paired", "paired_ref_free"):
        return _bad_paired_inputs(spec)
    if spec.kind == "unpaired":
        return [
            (_replace(b, kl_ref=f64([0.0, float("nan"), 0.0])), "^kl_ref"),
            (_replace(b, desirable=f64([1.0, 0.0, 1.0])), "^desirable"),
            (_replace(b, ref=f64([0.0, 0.0])), "^ref has shape"),
            (_replace(b, ref=None), "^ref is required"),
        ]
    if spec.kind == "listwise":
        cases = [
            (_replace(b, policy=b.policy[:, 0]), "^policy must"),
            (_replace(b, ref=b.ref[:, :3]), "^ref has shape"),
            (_replace(b, scores=b.scores.masked_fill(b.scores > 0.5, float("nan"))), "^scores"),
            (ListwiseLogps(b.policy[:, :1], b.ref[:, :1], b.scores[:, :1]), "K ≥ 2"),
        ]
        if spec.name == "mpo":
            cases.append((_replace(b, scores=torch.ones_like(b.scores)), "^scores"))
        if spec.name == "lipo":
            cases.append((_replace(b, scores=b.scores + 1), "^scores"))
        return cases
    pairs = b.logps
    return [
        (_replace(b, reward_chosen=f64([0.0, float("inf"), 0.0])), "^reward_chosen"),
        (_replace(b, reward_rejected=f64([0.0, 1.0])), "^reward_rejected"),
        (_replace(b, logps=_replace(pairs, ref_chosen=None)), "^ref_chosen"),
        (pairs, "ScoredPairs"),
    ]


@pytest.mark.parametrize("name", DIRECT)
def test_bad_inputs_name_the_argument(name):
    spec = REGISTRY[name]
    cases = bad_inputs(spec)
    assert cases
    for batch, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            spec.fn(batch, **spec.hparams)
