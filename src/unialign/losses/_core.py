"""Shared pieces of the objective library: batch containers, the output type, validation.

Every loss in :mod:`unialign.losses` is a small pure function over tensors. It takes a typed
batch container (or plain tensors where the inputs are not log-probs), keyword-only
hyperparameters, and returns a :class:`LossOutput`: per-example losses (differentiable) and
per-example diagnostics (detached). Averaging over the batch is the caller's job, so gradient
accumulation stays exact.

Numerics: losses compute in ``float32`` when given ``bfloat16``/``float16`` inputs and in the
input precision otherwise (so ``float64`` gradchecks stay in ``float64``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "LossOutput",
    "PairedLogps",
    "UnpairedLogps",
    "LossSpec",
    "compute_dtype",
    "check_positive",
    "check_in_range",
    "check_tensors",
    "check_dtype",
    "present_tensors",
]


def present_tensors(batch: object) -> dict[str, Tensor]:
    """The tensor fields of a batch dataclass that are not ``None``, by field name."""
    return {
        f.name: getattr(batch, f.name) for f in fields(batch) if getattr(batch, f.name) is not None
    }


@dataclass(frozen=True)
class LossOutput:
    """What every objective returns.

    Attributes:
        losses: ``[B]`` per-example losses, differentiable. Reduce with ``.mean()``.
        metrics: name → ``[B]`` detached per-example diagnostics, with stable namespaced
            names (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
            ``rewards/accuracies``, ...).
    """

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def mean_metrics(self) -> dict[str, float]:
        """Batch means of the diagnostics as Python floats (for logging)."""
        return {k: float(v.float().mean()) for k, v in self.metrics.items()}


@dataclass(frozen=True)
class PairedLogps:
    """Per-sequence log-probabilities of a batch of preference pairs.

    All tensors have shape ``[B]``. ``ℓ(y|x) = Σ_t log π(y_t | x, y_<t)`` summed over
    **completion tokens only**.

    Attributes:
        policy_chosen: ℓ_θ(y_w | x).
        policy_rejected: ℓ_θ(y_l | x).
        ref_chosen: ℓ_ref(y_w | x); ``None`` for reference-free objectives.
        ref_rejected: ℓ_ref(y_l | x); ``None`` for reference-free objectives.
        chosen_tokens: n(y_w), completion token counts (float or int); ``None`` when no
            objective in use needs lengths.
        rejected_tokens: n(y_l).
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_tokens: Tensor | None = None
    rejected_tokens: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        """The tensors that are present, by field name."""
        return present_tensors(self)


@dataclass(frozen=True)
class UnpairedLogps:
    """Per-sequence log-probabilities of unpaired (KTO-style) examples, shapes ``[B]``.

    Attributes:
        policy: ℓ_θ(y | x).
        ref: ℓ_ref(y | x).
        desirable: bool ``[B]``; True where the completion is labelled desirable.
        kl_policy: ℓ_θ(y′ | x) on mismatched pairs (x, y′) used for the KL baseline z₀.
        kl_ref: ℓ_ref(y′ | x) on the same mismatched pairs.
        tokens: n(y), completion token counts (optional).
    """

    policy: Tensor
    ref: Tensor
    desirable: Tensor
    kl_policy: Tensor
    kl_ref: Tensor
    tokens: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        """The tensors that are present, by field name."""
        return present_tensors(self)


LossKind = Literal[
    "paired",
    "paired_ref_free",
    "unpaired",
    "listwise",
    "scored_pairs",
    "reward",
    "game",
    "aggregate",
    "policy_gradient",
    "value",
]


@dataclass(frozen=True)
class LossSpec:
    """A registry entry: how configs, the CLI and docs refer to one objective.

    Attributes:
        name: the name used in configs and on the command line (``sigmoid``, ``ipo``, ...).
        fn: the pure loss function.
        family: docs page / family (``direct``, ``reward``, ``game``).
        kind: what the function takes (``paired`` takes :class:`PairedLogps` with reference
            log-probs, ``paired_ref_free`` without, ``unpaired`` takes :class:`UnpairedLogps`,
            others take plain tensors documented on the function).
        description: one line.
        paper: short citation (authors, year, arXiv id where known).
        hparams: default keyword-only hyperparameters.
        needs_tokens: True when completion token counts are required.
    """

    name: str
    fn: Callable[..., LossOutput]
    family: str
    kind: LossKind
    description: str
    paper: str
    hparams: dict[str, float | bool | str] = field(default_factory=dict)
    needs_tokens: bool = False


def compute_dtype(t: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input's own floating dtype otherwise."""
    if t.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    if not t.is_floating_point():
        return torch.get_default_dtype()
    return t.dtype


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number > 0."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_in_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the stated interval."""
    # the type is checked first: comparing a str or None with a float raises TypeError
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        lo_ok = value >= low if low_inclusive else value > low
        hi_ok = value <= high if high_inclusive else value < high
        ok = lo_ok and hi_ok
    if not ok:
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def check_dtype(name: str, t: Tensor, *, boolean: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``t`` is a bool tensor (``boolean``) or a
    tensor of real numbers (floating or integer: a bool mask or a complex tensor passed where
    numbers are expected would otherwise be converted silently)."""
    if boolean:
        if t.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got dtype {t.dtype}")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real numbers (float or int), got dtype {t.dtype}")


def check_tensors(
    tensors: dict[str, Tensor | None],
    *,
    positive: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    boolean: tuple[str, ...] = (),
) -> None:
    """Validate loss inputs; every message names the offending argument.

    Checks: each ``required`` name is present; every present tensor is 1-D, all share one
    shape, and is finite (no NaN/inf); names in ``boolean`` are bool tensors and every other
    tensor holds real numbers (not bool, not complex); names in ``positive`` (token counts)
    are > 0.
    """
    for name in required:
        if tensors.get(name) is None:
            raise ValueError(f"{name} is required by this objective but was not given")
    present = {k: v for k, v in tensors.items() if v is not None}
    shape = None
    first = None
    for name, t in present.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_dtype(name, t, boolean=name in boolean)
        if t.dim() != 1:
            raise ValueError(
                f"{name} must be 1-D with one value per example, got shape {tuple(t.shape)}"
            )
        if shape is None:
            shape, first = t.shape, name
        elif t.shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {first} has shape {tuple(shape)}; "
                "all inputs must have one value per example"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf; check the log-prob computation upstream")
    for name in positive:
        t = present.get(name)
        if t is not None and not bool((t > 0).all()):
            raise ValueError(
                f"{name} must be > 0 for every example (a completion with zero tokens?)"
            )
