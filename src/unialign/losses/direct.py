"""Direct alignment objectives: the preference loss written in policy log-ratios.

Notation (``docs/losses-direct.md``): r_w = ℓ_θ(y_w) − ℓ_ref(y_w), r_l = ℓ_θ(y_l) − ℓ_ref(y_l),
Δ = r_w − r_l, β > 0. Logged implicit rewards are β·r.
"""

from __future__ import annotations

import torch.nn.functional as F

from unialign.losses._core import (
    LossOutput,
    LossSpec,
    PairedLogps,
    check_positive,
    check_tensors,
    compute_dtype,
)


def _log_ratios(batch: PairedLogps):
    """(r_w, r_l) in the compute dtype, after validating the batch."""
    check_tensors(
        batch.tensors(), required=("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
    )
    dt = compute_dtype(batch.policy_chosen)
    r_w = batch.policy_chosen.to(dt) - batch.ref_chosen.to(dt)
    r_l = batch.policy_rejected.to(dt) - batch.ref_rejected.to(dt)
    return r_w, r_l


def _reward_metrics(beta: float, r_w, r_l) -> dict:
    """The standard detached diagnostics: implicit rewards β·r and their margin/accuracy."""
    chosen, rejected = (beta * r_w).detach(), (beta * r_l).detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (chosen > rejected).to(chosen.dtype),
    }


def sigmoid(batch: PairedLogps, *, beta: float = 0.1) -> LossOutput:
    """DPO: ``L = −log σ(β Δ)``, Δ = r_w − r_l.

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model" (arXiv 2305.18290), Eq. 7.
    """
    check_positive("beta", beta)
    r_w, r_l = _log_ratios(batch)
    losses = -F.logsigmoid(beta * (r_w - r_l))
    return LossOutput(losses, _reward_metrics(beta, r_w, r_l))


SPECS: list[LossSpec] = [
    LossSpec(
        name="sigmoid",
        fn=sigmoid,
        family="direct",
        kind="paired",
        description="DPO: −log σ(β(r_w − r_l))",
        paper="Rafailov et al. 2023, arXiv 2305.18290",
        hparams={"beta": 0.1},
    ),
]
