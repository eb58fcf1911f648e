"""Unpaired direct alignment: KTO, on single completions labelled desirable or not.

Takes :class:`UnpairedLogps`. Notation as in :mod:`unialign.losses.direct`
(``docs/losses-direct.md``).
"""

from __future__ import annotations

import torch

from unialign.losses._core import (
    LossOutput,
    LossSpec,
    UnpairedLogps,
    check_positive,
    check_tensors,
    compute_dtype,
)
from unialign.losses._shared import _direct

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
        boolean=("desirable",),
    )
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


SPECS: list[LossSpec] = [
    _direct(
        name="kto",
        fn=kto,
        kind="unpaired",
        description="KTO: prospect-theoretic value of r against a KL baseline",
        paper="Ethayarajh et al. 2024, arXiv 2402.01306",
        hparams={"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    ),
]
