"""Direct alignment objectives: the preference loss written in policy log-ratios.

Notation (``docs/losses-direct.md``): ℓ = per-sequence log-prob summed over completion tokens,
n = completion token count, r_w = ℓ_θ(y_w) − ℓ_ref(y_w), r_l = ℓ_θ(y_l) − ℓ_ref(y_l),
Δ = r_w − r_l, β > 0. Logged implicit rewards are β·r for reference-based objectives; the
reference-free ones log β·ℓ/n (SimPO, ORPO) or β·ℓ (CPO), as their papers and TRL do.

Paired objectives take :class:`PairedLogps`; KTO takes :class:`UnpairedLogps`; the listwise
ones (MPO, LiPO) take :class:`ListwiseLogps`; CoPG takes :class:`ScoredPairs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from unialign.losses._core import (
    LossOutput,
    LossSpec,
    PairedLogps,
    UnpairedLogps,
    check_in_range,
    check_positive,
    check_tensors,
    compute_dtype,
)

# Largest exponent fed to exp(): e^80 ≈ 5.5e34 stays finite in float32 and bfloat16 (same
# exponent range) with room for the β-scaled sums and gradients built on it. It is TRL's
# float32 clamp for the α-divergence, so values agree with TRL inside and at the clamp.
_MAX_EXP = 80.0
# ORPO's mean log-prob is clamped to ≤ −1e−6 (p̄ ≤ 1 − 1e−6) so the log-odds stay finite.
_ORPO_MAX_MEAN_LOGP = -1e-6
_TOKENS = ("chosen_tokens", "rejected_tokens")
_INF = math.inf


# ----------------------------------------------------------------------------------------
# Batch containers for inputs that are not preference pairs
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListwiseLogps:
    """K scored responses per prompt (MPO, LiPO). All tensors ``[B, K]``, K ≥ 2.

    Attributes:
        policy: ℓ_θ(y_k | x), summed over completion tokens.
        ref: ℓ_ref(y_k | x).
        scores: a score per response, higher is better: the reward S_k for MPO, the label
            ψ_k ∈ [0, 1] for LiPO (e.g. the average win rate against the other responses).
    """

    policy: Tensor
    ref: Tensor
    scores: Tensor


@dataclass(frozen=True)
class ScoredPairs:
    """Two independent completions with scalar rewards (CoPG). Tensors ``[B]``.

    CoPG needs no ranking: the ``chosen`` slot of ``logps`` simply holds the first completion
    y and the ``rejected`` slot the second, y′.

    Attributes:
        logps: ℓ_θ and ℓ_ref of y (``*_chosen``) and y′ (``*_rejected``).
        reward_chosen: R(x, y).
        reward_rejected: R(x, y′).
    """

    logps: PairedLogps
    reward_chosen: Tensor
    reward_rejected: Tensor


# ----------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------


def _validate(batch: PairedLogps, *, ref: bool, tokens: bool) -> torch.dtype:
    """Check a paired batch (names the offending field) and return the compute dtype."""
    required = ("policy_chosen", "policy_rejected")
    required += ("ref_chosen", "ref_rejected") if ref else ()
    required += _TOKENS if tokens else ()
    check_tensors(batch.tensors(), required=required, positive=_TOKENS)
    return compute_dtype(batch.policy_chosen)


def _log_ratios(batch: PairedLogps, *, tokens: bool = False):
    """(r_w, r_l) in the compute dtype, after validating the batch."""
    dt = _validate(batch, ref=True, tokens=tokens)
    r_w = batch.policy_chosen.to(dt) - batch.ref_chosen.to(dt)
    r_l = batch.policy_rejected.to(dt) - batch.ref_rejected.to(dt)
    return r_w, r_l


def _policy_logps(batch: PairedLogps, *, tokens: bool = False):
    """(ℓ_θ(y_w), ℓ_θ(y_l)) for reference-free objectives, after validating the batch."""
    dt = _validate(batch, ref=False, tokens=tokens)
    return batch.policy_chosen.to(dt), batch.policy_rejected.to(dt)


def _token_counts(batch: PairedLogps, like: Tensor):
    """(n_w, n_l) as floats in ``like``'s dtype (already validated > 0)."""
    return batch.chosen_tokens.to(like.dtype), batch.rejected_tokens.to(like.dtype)


def _reward_metrics(beta: float, r_w, r_l) -> dict:
    """The standard detached diagnostics: implicit rewards β·r and their margin/accuracy."""
    chosen, rejected = (beta * r_w).detach(), (beta * r_l).detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (chosen > rejected).to(chosen.dtype),
    }


def _logistic(z: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``−(1−ε) log σ(z) − ε log σ(−z)``: DPO's logistic loss, conservative when ε > 0."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def _nll(logp: Tensor, tokens: Tensor) -> Tensor:
    """Per-token negative log-likelihood of a completion, ``−ℓ/n``."""
    return -logp / tokens


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_nonnegative(name: str, value: float) -> None:
    check_in_range(name, value, 0.0, _INF)


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
# Reference-free objectives
# ----------------------------------------------------------------------------------------


def simpo(batch: PairedLogps, *, beta: float = 2.0, gamma: float = 0.5) -> LossOutput:
    """SimPO: ``L = −log σ(β(ℓ_θ(y_w)/n_w − ℓ_θ(y_l)/n_l) − γ)``, no reference model.

    γ ≥ 0 is an absolute target margin (TRL's ``simpo_gamma``; the authors' code takes
    γ/β). Rewards logged: β·ℓ/n. Meng, Xia & Chen 2024, "SimPO: Simple Preference
    Optimization with a Reference-Free Reward" (arXiv 2405.14734).
    """
    check_positive("beta", beta)
    _check_nonnegative("gamma", gamma)
    l_w, l_l = _policy_logps(batch, tokens=True)
    n_w, n_l = _token_counts(batch, l_w)
    a_w, a_l = l_w / n_w, l_l / n_l
    losses = _logistic(beta * (a_w - a_l) - gamma)
    return LossOutput(losses, _reward_metrics(beta, a_w, a_l))


def cpo(batch: PairedLogps, *, beta: float = 0.1, alpha: float = 1.0) -> LossOutput:
    """CPO: ``L = −log σ(β(ℓ_θ(y_w) − ℓ_θ(y_l))) + α·NLL(y_w)``, NLL = −ℓ_θ(y_w)/n_w.

    Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM
    Performance in Machine Translation" (arXiv 2401.08417); α = TRL's ``cpo_alpha``.
    Rewards logged: β·ℓ. Extra metric: ``nll/chosen``.
    """
    check_positive("beta", beta)
    _check_nonnegative("alpha", alpha)
    l_w, l_l = _policy_logps(batch, tokens=True)
    n_w, _ = _token_counts(batch, l_w)
    nll = _nll(l_w, n_w)
    losses = _logistic(beta * (l_w - l_l)) + alpha * nll
    return LossOutput(losses, {**_reward_metrics(beta, l_w, l_l), "nll/chosen": nll.detach()})


def _log_odds(mean_logp: Tensor) -> Tensor:
    """log(p̄/(1 − p̄)) for p̄ = e^{mean_logp}, mean_logp clamped to ≤ −1e−6.

    log(1 − e^x) is log(−expm1(x)) near 0 and log1p(−e^x) below −ln 2 (no cancellation).
    """
    x = mean_logp.clamp(max=_ORPO_MAX_MEAN_LOGP)
    log1mexp = torch.where(
        x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )
    return x - log1mexp


def orpo(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """ORPO: ``L = NLL(y_w) − λ log σ(log odds(y_w) − log odds(y_l))``, λ = ``beta``.

    odds(y) = p̄/(1 − p̄), p̄ = exp(ℓ_θ(y)/n) (per-token geometric mean probability; clamped to
    p̄ ≤ 1 − 1e−6). ``beta`` is the paper's λ (TRL's ORPOConfig calls it beta too). Inputs
    must be log-probabilities (≤ 0). Rewards logged: β·ℓ/n. Extra metrics: ``nll/chosen``,
    ``orpo/log_odds_ratio``. Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference
    Optimization without Reference Model" (arXiv 2403.07691), Eqs. 4 and 7.
    """
    check_positive("beta", beta)
    l_w, l_l = _policy_logps(batch, tokens=True)
    for name, t in (("policy_chosen", l_w), ("policy_rejected", l_l)):
        if bool((t > 0).any()):
            raise ValueError(f"{name} must be a log-probability (≤ 0) for ORPO's odds")
    n_w, n_l = _token_counts(batch, l_w)
    a_w, a_l = l_w / n_w, l_l / n_l
    log_odds_ratio = _log_odds(a_w) - _log_odds(a_l)
    nll = _nll(l_w, n_w)
    losses = nll - beta * F.logsigmoid(log_odds_ratio)
    metrics = {
        **_reward_metrics(beta, a_w, a_l),
        "nll/chosen": nll.detach(),
        "orpo/log_odds_ratio": log_odds_ratio.detach(),
    }
    return LossOutput(losses, metrics)


# ----------------------------------------------------------------------------------------
# Unpaired: KTO
# ----------------------------------------------------------------------------------------


def kto(
    batch: UnpairedLogps,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO: ``L = λ_D(1 − σ(β(r − z₀)))`` if desirable, ``λ_U(1 − σ(β(z₀ − r)))`` otherwise.

    r = ℓ_θ(y) − ℓ_ref(y); z₀ = max(0, mean over the batch of ℓ_θ(y′) − ℓ_ref(y′)) on
    mismatched (x, y′), detached (a batch-local estimate: in data-parallel training TRL
    averages it over all processes). λ_D, λ_U = desirable_weight, undesirable_weight.
    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
    (arXiv 2402.01306). Metrics: ``rewards/implicit`` (β·r), ``rewards/accuracies``
    (1 where β(r − z₀) has the label's sign), ``kl/baseline`` (z₀).
    """
    check_positive("beta", beta)
    check_positive("desirable_weight", desirable_weight)
    check_positive("undesirable_weight", undesirable_weight)
    check_tensors(
        batch.tensors(),
        required=("policy", "ref", "desirable", "kl_policy", "kl_ref"),
        positive=("tokens",),
    )
    if batch.desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor, got dtype {batch.desirable.dtype}")
    dt = compute_dtype(batch.policy)
    r = batch.policy.to(dt) - batch.ref.to(dt)
    z0 = (batch.kl_policy.to(dt) - batch.kl_ref.to(dt)).mean().clamp(min=0).detach()
    margin = beta * (r - z0)
    losses = torch.where(
        batch.desirable,
        desirable_weight * (1 - torch.sigmoid(margin)),
        undesirable_weight * (1 - torch.sigmoid(-margin)),
    )
    correct = torch.where(batch.desirable, margin > 0, margin < 0)
    metrics = {
        "rewards/implicit": (beta * r).detach(),
        "rewards/accuracies": correct.to(dt),
        "kl/baseline": z0.expand_as(r),
    }
    return LossOutput(losses, metrics)


# ----------------------------------------------------------------------------------------
# Listwise and scored-pair objectives (MPO, LiPO, CoPG)
# ----------------------------------------------------------------------------------------


def _list_log_ratios(batch: ListwiseLogps):
    """(r, scores) ``[B, K]`` in the compute dtype, after validating the batch."""
    named = {"policy": batch.policy, "ref": batch.ref, "scores": batch.scores}
    for name, t in named.items():
        if not isinstance(t, Tensor) or t.dim() != 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must be a [B, K] tensor (K responses per prompt), got {shape}"
            )
        if t.shape != batch.policy.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but policy has {tuple(batch.policy.shape)}"
            )
    if batch.policy.shape[1] < 2:
        raise ValueError(
            f"policy needs K ≥ 2 responses per prompt, got K = {batch.policy.shape[1]}"
        )
    check_tensors({name: t.reshape(-1) for name, t in named.items()})  # finiteness
    dt = compute_dtype(batch.policy)
    return batch.policy.to(dt) - batch.ref.to(dt), batch.scores.to(dt)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def mpo(
    batch: ListwiseLogps, *, beta: float = 0.1, alpha: float = 1.0, deviation: str = "abs"
) -> LossOutput:
    """MPO: a weighted Bradley–Terry contrast of the chosen set against all K responses.

    s_k = β r_k; S̄ = mean_k S_k; Y⁺ = {k: S_k > S̄}, the rest are rejected;
    w_k = exp(α·|S_k − S̄|) (``deviation="abs"``, outliers on both sides weigh more) or
    exp(α(S_k − S̄)) (``"signed"``, the form Gupta et al. restate in REFA, Eq. 5);
    ``L = −log(Σ_{Y⁺} w_k e^{s_k} / Σ_k w_k e^{s_k})``. K = 2, α = 0 gives DPO.
    Gupta et al. 2025, "Multi-Preference Optimization: Generalizing DPO via Set-Level
    Contrasts" (arXiv 2412.04628; v1 titled SWEPO). Metrics: mean β·r over the chosen and
    rejected sets, their margin and whether it is positive.
    """
    check_positive("beta", beta)
    _check_nonnegative("alpha", alpha)
    if deviation not in ("abs", "signed"):
        raise ValueError(f"deviation must be 'abs' or 'signed', got {deviation!r}")
    r, scores = _list_log_ratios(batch)
    dev = scores - scores.mean(dim=1, keepdim=True)
    chosen = dev > 0
    if not bool(chosen.any(dim=1).all()):
        raise ValueError("scores: every list needs a response scored above the list's mean")
    logits = beta * r + alpha * (dev.abs() if deviation == "abs" else dev)
    losses = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~chosen, -_INF), 1)
    rewards = (beta * r).detach()
    pos, neg = chosen.to(r.dtype), (~chosen).to(r.dtype)
    c, rj = _masked_mean(rewards, pos), _masked_mean(rewards, neg)
    metrics = {
        "rewards/chosen": c,
        "rewards/rejected": rj,
        "rewards/margins": c - rj,
        "rewards/accuracies": (c > rj).to(r.dtype),
    }
    return LossOutput(losses, metrics)


def lipo(batch: ListwiseLogps, *, beta: float = 0.05) -> LossOutput:
    """LiPO-λ: Lambda-weighted pairwise logistic loss over K ranked responses.

    s_k = β r_k; ``L = Σ_{ψ_i > ψ_j} Δ_ij log(1 + e^{−(s_i − s_j)})`` with Lambda weight
    Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|, gain G = 2^ψ − 1, discount D(τ) = log₂(1 + τ),
    τ_k the 1-based rank of response k when sorted by s (detached; ties keep list order).
    Labels ψ ∈ [0, 1]. Liu et al. 2024, "LiPO: Listwise Preference Optimization through
    Learning-to-Rank" (arXiv 2402.01878), Eq. 8. Metrics: β·r of the best- and worst-labelled
    response, their margin, and ``rewards/accuracies`` = fraction of labelled pairs ordered
    correctly by s.
    """
    check_positive("beta", beta)
    r, psi = _list_log_ratios(batch)
    if bool(((psi < 0) | (psi > 1)).any()):
        raise ValueError("scores must be LiPO labels in [0, 1]")
    s = beta * r
    with torch.no_grad():
        order = torch.argsort(s, dim=1, descending=True, stable=True)
        positions = torch.arange(1, s.shape[1] + 1, dtype=s.dtype, device=s.device).expand_as(s)
        rank = torch.empty_like(s).scatter_(1, order, positions)
        gain, inv_disc = 2**psi - 1, 1 / torch.log2(1 + rank)
        lam = (gain[:, :, None] - gain[:, None, :]).abs() * (
            inv_disc[:, :, None] - inv_disc[:, None, :]
        ).abs()
        pairs = psi[:, :, None] > psi[:, None, :]
    diff = s[:, :, None] - s[:, None, :]  # diff[b, i, j] = s_i − s_j
    losses = (lam * F.softplus(-diff) * pairs).sum(dim=(1, 2))
    rewards = s.detach()
    best = rewards.gather(1, psi.argmax(1, keepdim=True)).squeeze(1)
    worst = rewards.gather(1, psi.argmin(1, keepdim=True)).squeeze(1)
    n_pairs = pairs.sum(dim=(1, 2)).clamp(min=1).to(s.dtype)
    metrics = {
        "rewards/chosen": best,
        "rewards/rejected": worst,
        "rewards/margins": best - worst,
        "rewards/accuracies": ((diff.detach() > 0) & pairs).sum(dim=(1, 2)).to(s.dtype) / n_pairs,
    }
    return LossOutput(losses, metrics)


def copg(batch: ScoredPairs, *, beta: float = 0.1) -> LossOutput:
    """CoPG: contrastive off-policy policy gradient on two scored completions.

    With R^π_{β/2}(y) = R(y) − (β/2)·r(y), the paper maximizes
    ℓ = (R^π_{β/2}(y) − R^π_{β/2}(y′))·r(y) + (R^π_{β/2}(y′) − R^π_{β/2}(y))·r(y′); we
    minimize ``L = −ℓ = (β/2)(r − r′)² − (R − R′)(r − r′)``, whose gradient is
    −(R^π_β(y) − R^π_β(y′))∇(log π(y) − log π(y′)). With R − R′ = ½ this is the IPO gradient
    scaled by β/2. Flet-Berliac et al. 2024, "Contrastive Policy Gradient" (arXiv
    2406.19185), Eqs. 7–9, 17–19. Metrics: β·r of both, their margin,
    ``rewards/target_margins`` (R − R′) and ``rewards/accuracies`` (the margin has the sign
    of R − R′).
    """
    check_positive("beta", beta)
    if not isinstance(batch, ScoredPairs):
        raise ValueError(f"copg takes a ScoredPairs batch, got {type(batch).__name__}")
    r, r_other = _log_ratios(batch.logps)
    check_tensors(
        {
            "policy_chosen": batch.logps.policy_chosen,
            "reward_chosen": batch.reward_chosen,
            "reward_rejected": batch.reward_rejected,
        }
    )
    target = batch.reward_chosen.to(r.dtype) - batch.reward_rejected.to(r.dtype)
    a = r - r_other
    losses = 0.5 * beta * a**2 - target * a
    metrics = _reward_metrics(beta, r, r_other)
    metrics["rewards/target_margins"] = target.detach()
    metrics["rewards/accuracies"] = (a.detach() * target.detach() > 0).to(r.dtype)
    return LossOutput(losses, metrics)


# ----------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------


# Every entry is family "direct"; the rest is spelled out per objective.
_direct = partial(LossSpec, family="direct")
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
    _direct(
        name="simpo",
        fn=simpo,
        kind="paired_ref_free",
        description="SimPO: −log σ(β(ℓ_w/n_w − ℓ_l/n_l) − γ)",
        paper="Meng et al. 2024, arXiv 2405.14734",
        hparams={"beta": 2.0, "gamma": 0.5},
        needs_tokens=True,
    ),
    _direct(
        name="cpo",
        fn=cpo,
        kind="paired_ref_free",
        description="CPO: −log σ(β(ℓ_w − ℓ_l)) + α·NLL(y_w)",
        paper="Xu et al. 2024, arXiv 2401.08417",
        hparams={"beta": 0.1, "alpha": 1.0},
        needs_tokens=True,
    ),
    _direct(
        name="orpo",
        fn=orpo,
        kind="paired_ref_free",
        description="ORPO: NLL(y_w) − λ log σ(log odds ratio)",
        paper="Hong et al. 2024, arXiv 2403.07691",
        hparams={"beta": 0.1},
        needs_tokens=True,
    ),
    _direct(
        name="kto",
        fn=kto,
        kind="unpaired",
        description="KTO: prospect-theoretic value of r against a KL baseline",
        paper="Ethayarajh et al. 2024, arXiv 2402.01306",
        hparams={"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    ),
    _direct(
        name="mpo",
        fn=mpo,
        kind="listwise",
        description="MPO: weighted BT of the chosen set vs all K responses",
        paper="Gupta et al. 2025, arXiv 2412.04628",
        hparams={"beta": 0.1, "alpha": 1.0, "deviation": "abs"},
    ),
    _direct(
        name="lipo",
        fn=lipo,
        kind="listwise",
        description="LiPO-λ: Lambda-weighted pairwise logistic over K ranked",
        paper="Liu et al. 2024, arXiv 2402.01878",
        hparams={"beta": 0.05},
    ),
    _direct(
        name="copg",
        fn=copg,
        kind="scored_pairs",
        description="CoPG: off-policy contrastive PG on two scored samples",
        paper="Flet-Berliac et al. 2024, arXiv 2406.19185",
        hparams={"beta": 0.1},
    ),
]
