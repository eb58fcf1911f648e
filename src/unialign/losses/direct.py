"""Direct alignment objectives: the preference loss written in policy log-ratios.

Notation (``docs/losses-direct.md``): ℓ = per-sequence log-prob summed over completion tokens,
n = completion token count, r_w = ℓ_θ(y_w) − ℓ_ref(y_w), r_l = ℓ_θ(y_l) − ℓ_ref(y_l),
Δ = r_w − r_l, β > 0. Logged implicit rewards are β·r for reference-based objectives.

This module holds the reference-based paired objectives (DPO and its relatives), which take
:class:`PairedLogps`. The rest of the family lives in sibling modules:

- :mod:`unialign.losses.reference_free` — SimPO, CPO, ORPO (no reference model).
- :mod:`unialign.losses.unpaired` — KTO, on :class:`UnpairedLogps`.
- :mod:`unialign.losses.listwise` — MPO, LiPO (:class:`ListwiseLogps`) and CoPG
  (:class:`ScoredPairs`).
- :mod:`unialign.losses._shared` — the helpers they share (log-ratios, metrics, logistic loss).

Those objectives are re-exported here, so ``from unialign.losses.direct import kto`` still works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from unialign.losses._core import (
    LossOutput,
    LossSpec,
    PairedLogps,
    check_in_range,
    check_positive,
)
from unialign.losses._shared import (
    _INF,
    _check_bool,
    _check_nonnegative,
    _direct,
    _log_ratios,
    _logistic,
    _nll,
    _reward_metrics,
    _token_counts,
)

# Largest exponent fed to exp(): e^80 ≈ 5.5e34 stays finite in float32 and bfloat16 (same
# exponent range) with room for the β-scaled sums and gradients built on it. It is TRL's
# float32 clamp for the α-divergence, so values agree with TRL inside and at the clamp.
_MAX_EXP = 80.0


# ----------------------------------------------------------------------------------------
# DPO and its direct relatives (reference-based, paired)
# ----------------------------------------------------------------------------------------


def sigmoid(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """DPO: ``L = −log σ(β Δ)``, Δ = r_w − r_l.

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model" (arXiv 2305.18290), Eq. 7.
    """
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch)
    losses = _logistic(beta * (r_w - r_l))
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def cdpo(batch: PairedLogps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Conservative DPO: ``L = −(1−ε) log σ(βΔ) − ε log σ(−βΔ)``, ε ∈ [0, ½].

    DPO against labels flipped with probability ε (ε = label_smoothing). Mitchell 2023,
    "A note on DPO with noisy preferences & relationship to IPO" (technical note).
    """
    check_positive("beta", beta)
    check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    r_w, r_l = _log_ratios(batch)
    losses = _logistic(beta * (r_w - r_l), label_smoothing)
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def robust(batch: PairedLogps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Robust DPO: ``L = [−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε)``, ε ∈ [0, ½).

    An unbiased estimate of the clean DPO loss when labels flip with probability ε.
    Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language Models with
    Noisy Feedback" (arXiv 2403.00409).
    """
    check_positive("beta", beta)
    check_in_range("label_smoothing", label_smoothing, 0.0, 0.5, high_inclusive=False)
    r_w, r_l = _log_ratios(batch)
    z = beta * (r_w - r_l)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def hinge(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """SLiC hinge on normalized log-ratios: ``L = max(0, 1 − βΔ)``.

    Zhao et al. 2023, "SLiC-HF" (arXiv 2305.10425) calibration loss with the reference-normalized
    likelihood of Liu et al. 2023 (RSO, arXiv 2309.06657); β plays 1/δ of SLiC's margin δ.
    """
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch)
    losses = torch.relu(1 - beta * (r_w - r_l))
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def ipo(batch: PairedLogps, *, beta: float = 0.1, normalize: bool = True) -> LossOutput:
    """IPO (ΨPO with Ψ = identity): ``L = (Δ̄ − 1/(2β))²``.

    Δ̄ = r_w/n_w − r_l/n_l (per-token log-ratios, the default and TRL's choice) or, with
    ``normalize=False``, Δ̄ = Δ (sums, as the paper writes it). β is the paper's τ.
    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences" (arXiv 2310.12036), Eq. 17.
    """
    check_positive("beta", beta)
    _check_bool("normalize", normalize)
    r_w, r_l = _log_ratios(batch, tokens=normalize)
    if normalize:
        n_w, n_l = _token_counts(batch, r_w)
        margin = r_w / n_w - r_l / n_l
    else:
        margin = r_w - r_l
    losses = (margin - 1 / (2 * beta)) ** 2
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def sigmoid_norm(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """Length-normalized DPO: ``L = −log σ(β(r_w/n_w − r_l/n_l))`` (TRL's ``sigmoid_norm``)."""
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch, tokens=True)
    n_w, n_l = _token_counts(batch, r_w)
    losses = _logistic(beta * (r_w / n_w - r_l / n_l))
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def _f_score(r: Tensor, divergence: str, alpha: float) -> Tensor:
    """s_f(r) = f′(π/π_ref) at log-ratio r, up to a constant that cancels in s(r_w) − s(r_l).

    The exponent of e^{−r} (forward KL) and e^{−αr} (α-divergence) is clamped at 80: exact
    inside, constant (zero gradient) beyond, where the exact loss exceeds β·e^80 anyway.
    """
    if divergence == "reverse_kl":  # f(u) = u log u: f′ = log u + 1
        return r
    if divergence == "forward_kl":  # f(u) = −log u: f′ = −1/u
        return 1 - torch.exp((-r).clamp(max=_MAX_EXP))
    if divergence == "js":  # f′(u) = log(2u/(1+u)) = log 2 + log σ(log u)
        return math.log(2.0) + F.logsigmoid(r)
    # α-divergence: f′(u) = (1 − u^{−α})/α
    return (1 - torch.exp((-alpha * r).clamp(max=_MAX_EXP))) / alpha


def _fdpo(batch: PairedLogps, beta: float, divergence: str, alpha: float = 0.5) -> LossOutput:
    """f-DPO: ``L = −log σ(β(s_f(r_w) − s_f(r_l)))``.

    Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with
    Diverse Divergence Constraints" (arXiv 2309.16240).
    """
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch)
    z = beta * (_f_score(r_w, divergence, alpha) - _f_score(r_l, divergence, alpha))
    return LossOutput(_logistic(z), _reward_metrics(beta, r_w, r_l))


def fdpo_reverse_kl(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """f-DPO with the reverse KL, s(r) = r: identical to DPO (``sigmoid``)."""
    return _fdpo(batch, beta, "reverse_kl")


def fdpo_forward_kl(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """f-DPO with the forward KL, s(r) = 1 − e^{−r} (exponent clamped at 80)."""
    return _fdpo(batch, beta, "forward_kl")


def fdpo_js(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """f-DPO with the Jensen–Shannon divergence, s(r) = log 2 + log σ(r)."""
    return _fdpo(batch, beta, "js")


def fdpo_alpha(batch: PairedLogps, *, beta: float = 0.1, alpha: float = 0.5) -> LossOutput:
    """f-DPO with the α-divergence, s(r) = (1 − e^{−αr})/α, α ∈ (0, 1) (exponent clamped at 80).

    TRL's ``f_alpha_divergence_coef`` a corresponds to ``alpha = 1 − a``.
    """
    check_in_range("alpha", alpha, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return _fdpo(batch, beta, "alpha", alpha)


def exo_pair(batch: PairedLogps, *, beta: float = 0.1, label_smoothing: float = 1e-3) -> LossOutput:
    """EXO (pairwise): ``L = KL(p_θ ‖ p_ε)`` over {y_w, y_l}.

    p = σ(βΔ): ``L = p[log p − log(1−ε)] + (1−p)[log(1−p) − log ε]``, ε ∈ (0, 1) the label
    smoothing of the target [1−ε, ε]. Ji et al. 2024, "Towards Efficient Exact Optimization
    of Language Model Alignment" (arXiv 2402.00856), Eq. 16 with K = 2.
    """
    check_positive("beta", beta)
    check_in_range(
        "label_smoothing", label_smoothing, 0.0, 1.0, low_inclusive=False, high_inclusive=False
    )
    r_w, r_l = _log_ratios(batch)
    z = beta * (r_w - r_l)
    eps = label_smoothing
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def nca_pair(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """NCA (pairwise): ``L = −log σ(βr_w) − ½ log σ(−βr_w) − ½ log σ(−βr_l)``.

    Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards"
    (arXiv 2402.05369), NCA with K = 2 and binary rewards.
    """
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch)
    losses = (
        -F.logsigmoid(beta * r_w)
        - 0.5 * F.logsigmoid(-beta * r_w)
        - 0.5 * F.logsigmoid(-beta * r_l)
    )
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def bco_pair(batch: PairedLogps, *, beta: float = 0.1, delta: float = 0.0) -> LossOutput:
    """BCO (pairwise): ``L = −log σ(βr_w − δ) − log σ(−(βr_l − δ))``.

    δ is the reward shift: the paper uses a running mean of the implicit rewards β·r; this
    function is pure, so the caller keeps that mean and passes it (0 = TRL 1.16).
    Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment"
    (arXiv 2404.04656).
    """
    check_positive("beta", beta)
    check_in_range("delta", delta, -_INF, _INF)
    r_w, r_l = _log_ratios(batch)
    losses = -F.logsigmoid(beta * r_w - delta) - F.logsigmoid(-(beta * r_l - delta))
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def sppo_hard(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """SPPO with hard win probabilities: ``L = (r_w − 1/(2β))² + (r_l + 1/(2β))²``.

    SPPO's squared loss with P̂(y_w ≻ π) = 1, P̂(y_l ≻ π) = 0 and η = 1/β. Wu et al. 2024,
    "Self-Play Preference Optimization for Language Model Alignment" (arXiv 2405.00675).
    """
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch)
    losses = (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def apo_zero(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """APO-zero: ``L = 1 − σ(βr_w) + σ(βr_l)`` (raise y_w, lower y_l).

    D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions"
    (arXiv 2408.06266), Eq. 7.
    """
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch)
    losses = 1 - torch.sigmoid(beta * r_w) + torch.sigmoid(beta * r_l)
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def apo_down(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """APO-down: ``L = σ(βr_w) + 1 − σ(βΔ)`` (lower both, y_l more).

    D'Oosterlinck et al. 2024 (arXiv 2408.06266), Eq. 8.
    """
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch)
    losses = torch.sigmoid(beta * r_w) + 1 - torch.sigmoid(beta * (r_w - r_l))
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def aot(
    batch: PairedLogps,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    unpaired: bool = False,
) -> LossOutput:
    """AOT: the DPO logistic loss on batch-sorted margins (first-order stochastic dominance).

    Paired: d = sort_B(ℓ_θ,w − ℓ_θ,l) − sort_B(ℓ_ref,w − ℓ_ref,l); unpaired: d = sort_B(r_w)
    − sort_B(r_l). ``L_i = −(1−ε) log σ(βd_i) − ε log σ(−βd_i)``. The i-th loss belongs to the
    i-th order statistic, not to example i, and depends on the whole batch (so gradient
    accumulation over micro-batches is not equivalent to one large batch).
    Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport"
    (arXiv 2406.05882).
    """
    check_positive("beta", beta)
    check_in_range("label_smoothing", label_smoothing, 0.0, 0.5)
    _check_bool("unpaired", unpaired)
    r_w, r_l = _log_ratios(batch)
    if unpaired:
        d = torch.sort(r_w).values - torch.sort(r_l).values
    else:
        dt = r_w.dtype
        pi = batch.policy_chosen.to(dt) - batch.policy_rejected.to(dt)
        ref = batch.ref_chosen.to(dt) - batch.ref_rejected.to(dt)
        d = torch.sort(pi).values - torch.sort(ref).values
    losses = _logistic(beta * d, label_smoothing)
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


def discopop(batch: PairedLogps, *, beta: float = 0.1, tau: float = 0.05) -> LossOutput:
    """DiscoPOP (log-ratio modulated loss): ``L = (1 − m)(−log σ(z)) + m·e^{−z}``.

    z = βΔ, m = σ(z/τ). The exponential term is computed as exp(log σ(z/τ) − z), which is
    exact and cannot overflow for τ < 1 (its exponent is additionally clamped at 80, which
    only matters for τ ≥ 1). Lu et al. 2024, "Discovering Preference Optimization Algorithms
    with and for Large Language Models" (arXiv 2406.08414), Eq. 27–28 (Appendix E.6).
    """
    check_positive("beta", beta)
    check_positive("tau", tau)
    r_w, r_l = _log_ratios(batch)
    z = beta * (r_w - r_l)
    logistic = torch.sigmoid(-z / tau) * F.softplus(-z)
    exponential = torch.exp((F.logsigmoid(z / tau) - z).clamp(max=_MAX_EXP))
    return LossOutput(logistic + exponential, _reward_metrics(beta, r_w, r_l))


def rpo(batch: PairedLogps, *, beta: float = 0.1, alpha: float = 1.0) -> LossOutput:
    """RPO: DPO plus an SFT term, ``L = −log σ(βΔ) + α·NLL(y_w)``, NLL = −ℓ_θ(y_w)/n_w.

    Liu et al. 2024, "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly
    an Adversarial Regularizer" (arXiv 2405.16436). Extra metric: ``nll/chosen``.
    """
    check_positive("beta", beta)
    _check_nonnegative("alpha", alpha)
    r_w, r_l = _log_ratios(batch, tokens=True)
    n_w, _ = _token_counts(batch, r_w)
    nll = _nll(batch.policy_chosen.to(r_w.dtype), n_w)
    losses = _logistic(beta * (r_w - r_l)) + alpha * nll
    return LossOutput(losses, {**_reward_metrics(beta, r_w, r_l), "nll/chosen": nll.detach()})


# ----------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------


_F_DPO = "Wang et al. 2023, arXiv 2309.16240"
_APO = "D'Oosterlinck et al. 2024, arXiv 2408.06266"

SPECS: list[LossSpec] = [
    _direct(
        name="sigmoid",
        fn=sigmoid,
        kind="paired",
        description="DPO: −log σ(β(r_w − r_l))",
        paper="Rafailov et al. 2023, arXiv 2305.18290",
        hparams={"beta": 0.1},
    ),
    _direct(
        name="cdpo",
        fn=cdpo,
        kind="paired",
        description="conservative DPO: DPO with label smoothing ε",
        paper="Mitchell 2023, technical note (no arXiv id)",
        hparams={"beta": 0.1, "label_smoothing": 0.1},
    ),
    _direct(
        name="robust",
        fn=robust,
        kind="paired",
        description="robust DPO: unbiased DPO under label-flip rate ε",
        paper="Chowdhury et al. 2024, arXiv 2403.00409",
        hparams={"beta": 0.1, "label_smoothing": 0.1},
    ),
    _direct(
        name="hinge",
        fn=hinge,
        kind="paired",
        description="SLiC hinge: max(0, 1 − β(r_w − r_l))",
        paper="Zhao et al. 2023, arXiv 2305.10425",
        hparams={"beta": 0.1},
    ),
    _direct(
        name="ipo",
        fn=ipo,
        kind="paired",
        description="IPO: (Δ − 1/(2β))², Δ on per-token log-ratios by default",
        paper="Azar et al. 2023, arXiv 2310.12036",
        hparams={"beta": 0.1, "normalize": True},
        needs_tokens=True,
    ),
    _direct(
        name="fdpo_reverse_kl",
        fn=fdpo_reverse_kl,
        kind="paired",
        description="f-DPO, reverse KL (= DPO)",
        paper=_F_DPO,
        hparams={"beta": 0.1},
    ),
    _direct(
        name="fdpo_forward_kl",
        fn=fdpo_forward_kl,
        kind="paired",
        description="f-DPO, forward KL: s(r) = 1 − e^{−r}",
        paper=_F_DPO,
        hparams={"beta": 0.1},
    ),
    _direct(
        name="fdpo_js",
        fn=fdpo_js,
        kind="paired",
        description="f-DPO, Jensen–Shannon: s(r) = log 2 + log σ(r)",
        paper=_F_DPO,
        hparams={"beta": 0.1},
    ),
    _direct(
        name="fdpo_alpha",
        fn=fdpo_alpha,
        kind="paired",
        description="f-DPO, α-divergence: s(r) = (1 − e^{−αr})/α",
        paper=_F_DPO,
        hparams={"beta": 0.1, "alpha": 0.5},
    ),
    _direct(
        name="sigmoid_norm",
        fn=sigmoid_norm,
        kind="paired",
        description="DPO on per-token log-ratios r/n",
        paper="length-normalized DPO (TRL sigmoid_norm)",
        hparams={"beta": 0.1},
        needs_tokens=True,
    ),
    _direct(
        name="exo_pair",
        fn=exo_pair,
        kind="paired",
        description="EXO: KL(σ(βΔ) ‖ [1−ε, ε]) over the pair",
        paper="Ji et al. 2024, arXiv 2402.00856",
        hparams={"beta": 0.1, "label_smoothing": 1e-3},
    ),
    _direct(
        name="nca_pair",
        fn=nca_pair,
        kind="paired",
        description="NCA: absolute likelihood of y_w vs both",
        paper="Chen et al. 2024, arXiv 2402.05369",
        hparams={"beta": 0.1},
    ),
    _direct(
        name="bco_pair",
        fn=bco_pair,
        kind="paired",
        description="BCO: binary classifier on β r_w, β r_l with shift δ",
        paper="Jung et al. 2024, arXiv 2404.04656",
        hparams={"beta": 0.1, "delta": 0.0},
    ),
    _direct(
        name="sppo_hard",
        fn=sppo_hard,
        kind="paired",
        description="SPPO with hard win rates: squared regression",
        paper="Wu et al. 2024, arXiv 2405.00675",
        hparams={"beta": 0.1},
    ),
    _direct(
        name="apo_zero",
        fn=apo_zero,
        kind="paired",
        description="APO-zero: raise y_w, lower y_l (anchored)",
        paper=_APO,
        hparams={"beta": 0.1},
    ),
    _direct(
        name="apo_down",
        fn=apo_down,
        kind="paired",
        description="APO-down: lower both, y_l more (anchored)",
        paper=_APO,
        hparams={"beta": 0.1},
    ),
    _direct(
        name="aot",
        fn=aot,
        kind="paired",
        description="AOT: DPO on batch-sorted margins (stochastic dominance)",
        paper="Melnyk et al. 2024, arXiv 2406.05882",
        hparams={"beta": 0.1, "label_smoothing": 0.0, "unpaired": False},
    ),
    _direct(
        name="discopop",
        fn=discopop,
        kind="paired",
        description="DiscoPOP: logistic/exponential mix, σ(βΔ/τ)",
        paper="Lu et al. 2024, arXiv 2406.08414",
        hparams={"beta": 0.1, "tau": 0.05},
    ),
    _direct(
        name="rpo",
        fn=rpo,
        kind="paired",
        description="RPO: DPO + α·NLL(y_w)",
        paper="Liu et al. 2024, arXiv 2405.16436",
        hparams={"beta": 0.1, "alpha": 1.0},
        needs_tokens=True,
    ),
]

# Re-exports: these objectives moved to sibling modules but stay importable from here.
from unialign.losses.listwise import ListwiseLogps, ScoredPairs, copg, lipo, mpo  # noqa: E402
from unialign.losses.reference_free import cpo, orpo, simpo  # noqa: E402
from unialign.losses.unpaired import kto  # noqa: E402

__all__ = [
    "SPECS",
    "ListwiseLogps",
    "ScoredPairs",
    "aot",
    "apo_down",
    "apo_zero",
    "bco_pair",
    "cdpo",
    "copg",
    "cpo",
    "discopop",
    "exo_pair",
    "fdpo_alpha",
    "fdpo_forward_kl",
    "fdpo_js",
    "fdpo_reverse_kl",
    "hinge",
    "ipo",
    "kto",
    "lipo",
    "mpo",
    "nca_pair",
    "orpo",
    "robust",
    "rpo",
    "sigmoid",
    "sigmoid_norm",
    "simpo",
    "sppo_hard",
]
