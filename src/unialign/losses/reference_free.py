"""Reference-free paired objectives: SimPO, CPO and ORPO (no reference model needed).

They take :class:`PairedLogps` with the policy log-probs and token counts only, and log
implicit rewards β·ℓ/n (SimPO, ORPO) or β·ℓ (CPO), as their papers and TRL do. Notation as in
:mod:`unialign.losses.direct` (``docs/losses-direct.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from unialign.losses._core import LossOutput, LossSpec, PairedLogps, check_positive
from unialign.losses._shared import (
    _check_nonnegative,
    _direct,
    _logistic,
    _nll,
    _policy_logps,
    _reward_metrics,
    _token_counts,
)

# ORPO's mean log-prob is clamped to ≤ −1e−6 (p̄ ≤ 1 − 1e−6) so the log-odds stay finite.
_ORPO_MAX_MEAN_LOGP = -1e-6


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


SPECS: list[LossSpec] = [
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
]
