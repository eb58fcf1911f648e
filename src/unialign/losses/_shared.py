"""Pieces shared by the direct-alignment modules (not part of the public API).

Batch validation, the log-ratios r = ℓ_θ − ℓ_ref and policy log-probs, token counts, the
standard implicit-reward metrics, the label-smoothed logistic loss, the per-token NLL, the small
hyperparameter checks, and the ``_direct`` :class:`LossSpec` factory used by every ``SPECS``
list of :mod:`~unialign.losses.direct`, :mod:`~unialign.losses.reference_free`,
:mod:`~unialign.losses.unpaired` and :mod:`~unialign.losses.listwise`.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from unialign.losses._core import (
    LossSpec,
    PairedLogps,
    check_in_range,
    check_tensors,
    compute_dtype,
)

_TOKENS = ("chosen_tokens", "rejected_tokens")
_INF = math.inf


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


# Every entry is family "direct"; the rest is spelled out per objective.
_direct = partial(LossSpec, family="direct")
