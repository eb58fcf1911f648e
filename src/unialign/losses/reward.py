"""Reward-model objectives and reward transforms.

The Bradley–Terry family models P(a ≻ b) = σ(R(a) − R(b)). The same objective trains a
language-model reward head on (chosen, rejected) completions and a control reward model on
pairs of trajectory segments (R = segment return Σ_t r̂(s_t, a_t)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from unialign.losses._core import LossOutput, LossSpec, check_tensors, compute_dtype


def preference_cross_entropy(returns_1: Tensor, returns_2: Tensor, labels: Tensor) -> LossOutput:
    """Bradley–Terry cross-entropy with soft labels, for segment (or response) pairs.

    ``P = σ(R¹ − R²)``; ``L = −[y log P + (1 − y) log(1 − P)]`` with ``y ∈ [0, 1]`` the
    probability that the first item is preferred (1: first wins, 0: second wins, ½: equal).
    Christiano et al. 2017, "Deep RL from Human Preferences" (arXiv 1706.03741), Eq. 1;
    Lee et al. 2021 (PEBBLE, arXiv 2106.05091), Eq. 4.

    Inputs ``[B]``; metrics: ``preference/accuracy`` (1 where the predicted winner matches a
    non-tied label, ½ on ties) and ``preference/prob_first``.
    """
    check_tensors({"returns_1": returns_1, "returns_2": returns_2, "labels": labels})
    if bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("labels must lie in [0, 1] (1: first preferred, 0: second, 0.5: equal)")
    dt = compute_dtype(returns_1)
    z = returns_1.to(dt) - returns_2.to(dt)
    y = labels.to(dt)
    losses = -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z))
    pred = (z > 0).to(dt)
    acc = torch.where(y == 0.5, torch.full_like(y, 0.5), (pred == (y > 0.5).to(dt)).to(dt))
    return LossOutput(
        losses,
        {"preference/accuracy": acc.detach(), "preference/prob_first": torch.sigmoid(z).detach()},
    )


SPECS: list[LossSpec] = [
    LossSpec(
        name="bt_soft",
        fn=preference_cross_entropy,
        family="reward",
        kind="reward",
        description="Bradley–Terry cross-entropy with soft labels y ∈ [0,1] on return pairs",
        paper="Christiano et al. 2017, arXiv 1706.03741; Lee et al. 2021 (PEBBLE), arXiv 2106.05091",
    ),
]
