"""The objective library: pure loss functions over log-prob and reward tensors.

Families (one module and one docs page each):

- :mod:`unialign.losses.direct` — direct alignment from preference pairs (DPO and relatives),
  with its sibling modules :mod:`~unialign.losses.reference_free` (SimPO, CPO, ORPO),
  :mod:`~unialign.losses.unpaired` (KTO) and :mod:`~unialign.losses.listwise` (MPO, LiPO,
  CoPG); all share one docs page.
- :mod:`unialign.losses.reward` — reward models: Bradley–Terry, ensembles, transforms.
- :mod:`unialign.losses.game` — squared-loss game-theoretic objectives (SPPO, INPO, DNO).
- :mod:`unialign.losses.policy_gradient` — policy-gradient RLHF: REINFORCE/RLOO, PPO's clipped
  surrogate, GRPO and its variants, GSPO, the clipped value loss, GAE and KL estimators.

``REGISTRY`` maps the names used in configs and on the command line to :class:`LossSpec`.
"""

from unialign.losses import (
    direct,
    game,
    listwise,
    policy_gradient,
    reference_free,
    reward,
    unpaired,
)
from unialign.losses._core import (
    LossOutput,
    LossSpec,
    PairedLogps,
    UnpairedLogps,
)

REGISTRY: dict[str, LossSpec] = {}
for _module in (direct, reference_free, unpaired, listwise, reward, game, policy_gradient):
    for _spec in _module.SPECS:
        if _spec.name in REGISTRY:
            raise RuntimeError(f"duplicate objective name {_spec.name!r}")
        REGISTRY[_spec.name] = _spec


def get_loss(name: str) -> LossSpec:
    """Look an objective up by its config/CLI name; the error lists the valid names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; valid names: {', '.join(sorted(REGISTRY))} "
            "(run `unialign losses` for descriptions)"
        ) from None


__all__ = ["REGISTRY", "LossOutput", "LossSpec", "PairedLogps", "UnpairedLogps", "get_loss"]
