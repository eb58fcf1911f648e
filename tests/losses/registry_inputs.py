"""Inputs for every objective in the registry, built per kind in one place.

The registry-wide tests (``test_registry.py``, ``test_direct_properties.py``) take every
objective's inputs from here, so a new objective of an existing kind and input layout is covered
without editing any list of names. An objective whose kind, or whose positional arguments, no
layout below describes makes :func:`layout_of` fail with a message saying to add one here.

A :class:`Layout` describes the positional inputs of one family of signatures as named tensors
(container fields are flattened: ``ScoredPairs``' ``logps`` appear under their ``PairedLogps``
names), says what each tensor's values mean (its role), builds ordinary and extreme values
from that, and carries the symmetry / zero-margin invariants that hold for every objective
taking those inputs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest
import torch
from torch import Tensor

from unialign.losses import REGISTRY, LossOutput, LossSpec, PairedLogps, UnpairedLogps
from unialign.losses.game import IterateLogps, SelfPlayLogps
from unialign.losses.listwise import ListwiseLogps, ScoredPairs
from unialign.losses.policy_gradient import ReinforceBatch, RolloutBatch, ValueBatch

BIG = 1e3  # |log-prob| (or |reward|) of the extreme inputs

# Roles: what a tensor's values mean, which decides its ordinary and extreme values.
#   policy  ℓ_θ, any real (extreme: ±1e3, alternating)
#   frozen  ℓ_ref or ℓ_t, any real (extreme: −1e3)
#   nonpos  ℓ_θ ≤ 0 of reference-free objectives (extreme: −1e3 or 0, alternating)
#   tokens  completion token counts > 0
#   prob    a probability or label in [0, 1] (extreme: 0, ½, 1)
#   real    rewards, scores, embeddings (extreme: ±1e3, random signs)
#   bool    a boolean label, or a completion mask (alternating True/False along each row)


@dataclass(frozen=True)
class Field:
    """One input tensor: its argument or container-field name, its role, whether the tests
    differentiate the objective with respect to it, and its shape when it differs from the
    layout's (a per-sequence ``[B]`` field next to per-token ``[B, T]`` fields)."""

    name: str
    role: str
    grad: bool = False
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Layout:
    """The positional inputs shared by the objectives of one kind and signature.

    Attributes:
        name: for messages.
        kinds: registry kinds it serves.
        signature: the objective's positional parameters as ``"name: annotation"``.
        fields: every input tensor, in order.
        shape: the shape of every field.
        out_shape: the shape of the per-example losses (aggregations: of the reward).
        build: named tensors → the objective's positional arguments.
        invariants: ``(spec, layout) → None``, asserts the kind's symmetry / zero-margin
            invariants.
    """

    name: str
    kinds: tuple[str, ...]
    signature: tuple[str, ...]
    fields: tuple[Field, ...]
    shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    build: Callable[[dict[str, Tensor]], tuple]
    invariants: Callable[[LossSpec, Layout], None]

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def make(
    layout: Layout, dtype: torch.dtype = torch.float64, *, extreme: bool = False, seed: int = 0
) -> dict[str, Tensor]:
    """Valid named inputs for ``layout``: ordinary (small random values) or extreme (|ℓ| = 1e3)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for j, f in enumerate(layout.fields):
        shape = f.shape or layout.shape
        index = torch.arange(math.prod(shape)).reshape(shape)
        # ±1 alternating along the flattened tensor, shifted by the field's position: two
        # consecutive policy fields (chosen, rejected) get opposite signs, so the extreme
        # margins are ±2e3 of both signs
        alternating = ((index + j) % 2 == 0).to(torch.float64) * 2 - 1
        # draw every random tensor for every field, so values do not depend on the roles
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        sign = torch.randint(0, 2, shape, generator=g).to(torch.float64) * 2 - 1
        tokens = torch.randint(1, 8, shape, generator=g).to(torch.float64)
        if f.role == "bool":
            out[f.name] = index % 2 == 0
            continue
        if f.role == "tokens":
            value = tokens
        elif extreme:
            value = {
                "policy": BIG * alternating,
                "frozen": torch.full(shape, -BIG, dtype=torch.float64),
                "nonpos": -BIG * (alternating > 0),
                "prob": (index % 3) / 2.0,
                "real": BIG * sign,
            }[f.role]
        else:
            value = {
                "policy": 2 * z,
                "frozen": 2 * z,
                "nonpos": -(u + 0.5) * 3,
                "prob": u,
                "real": z,
            }[f.role]
        out[f.name] = value.to(dtype)
    return out


def call(spec: LossSpec, layout: Layout, tensors: dict[str, Tensor], **hparams):
    """``(losses or aggregated reward, metrics)`` of ``spec`` on named inputs."""
    out = spec.fn(*layout.build(tensors), **{**spec.hparams, **hparams})
    if isinstance(out, LossOutput):
        return out.losses, out.metrics
    return out, {}


def positional_signature(fn: Callable) -> tuple[str, ...]:
    """The positional parameters of ``fn`` as ``"name: annotation"`` (annotations as written)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(
        f"{p.name}: {p.annotation}" for p in inspect.signature(fn).parameters.values()
        if p.kind in kinds
    )  # fmt: skip


def keyword_defaults(fn: Callable) -> dict[str, object]:
    """Keyword-only parameters of ``fn`` that have defaults, with those defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


# ---------------------------------------------------------------------------------------------
# Invariants per kind (symmetry and zero margin)
# ---------------------------------------------------------------------------------------------


def _close(actual: Tensor, expected, what: str) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype).expand_as(actual)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10, msg=what)


def _zero_margin(metrics: dict[str, Tensor], what: str) -> None:
    """Nothing distinguishes the two sides: no margin, and no pair counts as ordered."""
    for key in ("rewards/margins", "rewards/accuracies"):
        assert key in metrics, f"{what}: the objective logs no {key}"
        _close(metrics[key], 0.0, f"{what}: {key}")


def _paired_invariants(spec: LossSpec, layout: Layout) -> None:
    t = make(layout)
    # π_θ = π_ref: r_w = r_l = 0.
    first = {**t, "ref_chosen": t["policy_chosen"], "ref_rejected": t["policy_rejected"]}
    _zero_margin(call(spec, layout, first)[1], "π_θ = π_ref")
    # Reference-based objectives log the implicit rewards β·r (docs/losses-direct.md).
    assert "beta" in spec.hparams, "a reference-based objective logs β·r, so it needs beta"
    _, metrics = call(spec, layout, t)
    beta = spec.hparams["beta"]
    _close(metrics["rewards/chosen"], beta * (t["policy_chosen"] - t["ref_chosen"]), "β·r_w")
    _close(metrics["rewards/rejected"], beta * (t["policy_rejected"] - t["ref_rejected"]), "β·r_l")


def _ref_free_invariants(spec: LossSpec, layout: Layout) -> None:
    t = make(layout)
    same = {**t, "policy_rejected": t["policy_chosen"], "rejected_tokens": t["chosen_tokens"]}
    _zero_margin(call(spec, layout, same)[1], "identical chosen and rejected")


def _unpaired_invariants(spec: LossSpec, layout: Layout) -> None:
    """π_θ = π_ref on the examples and on the KL pairs: only the label can matter."""
    t = make(layout)
    first = {**t, "ref": t["policy"], "kl_ref": t["kl_policy"]}
    losses, _ = call(spec, layout, first)
    for label in (True, False):
        group = losses[t["desirable"] == label]
        _close(group, group[0], f"π_θ = π_ref: equal losses for desirable={label}")


def _listwise_invariants(spec: LossSpec, layout: Layout) -> None:
    t = make(layout)
    perm = torch.tensor([2, 0, 3, 1])
    losses, metrics = call(spec, layout, t)
    p_losses, p_metrics = call(spec, layout, {k: v[:, perm] for k, v in t.items()})
    _close(p_losses, losses, "responses permuted within each list")
    for key, value in metrics.items():
        _close(p_metrics[key], value, f"responses permuted: {key}")
    _zero_margin(call(spec, layout, {**t, "ref": t["policy"]})[1], "π_θ = π_ref")


_SIDES = ("policy_{}", "ref_{}", "{}_tokens", "reward_{}", "previous_{}")


def _swapped(t: dict[str, Tensor]) -> dict[str, Tensor]:
    """Chosen and rejected exchanged in every paired field."""
    out = dict(t)
    for pattern in _SIDES:
        c, r = pattern.format("chosen"), pattern.format("rejected")
        if c in t:
            out[c], out[r] = t[r], t[c]
    return out


def _scored_pairs_invariants(spec: LossSpec, layout: Layout) -> None:
    """Two unranked samples: exchanging them changes nothing but the sign of the margin."""
    t = make(layout)
    losses, metrics = call(spec, layout, t)
    s_losses, s_metrics = call(spec, layout, _swapped(t))
    _close(s_losses, losses, "the two samples exchanged")
    _close(s_metrics["rewards/margins"], -metrics["rewards/margins"], "exchanged: margins")
    first = {**t, "ref_chosen": t["policy_chosen"], "ref_rejected": t["policy_rejected"]}
    _zero_margin(call(spec, layout, first)[1], "π_θ = π_ref")


def _soft_label_invariants(spec: LossSpec, layout: Layout) -> None:
    """Exchanging the items and flipping the label (y → 1 − y) describes the same preference;
    equal returns predict ½, so the loss cannot depend on the label."""
    t = make(layout)
    losses, _ = call(spec, layout, t)
    flipped = {"returns_1": t["returns_2"], "returns_2": t["returns_1"], "labels": 1 - t["labels"]}
    _close(call(spec, layout, flipped)[0], losses, "items exchanged, labels flipped")
    tie, _ = call(spec, layout, {**t, "returns_2": t["returns_1"]})
    _close(tie, tie[0], "equal returns: the loss does not depend on the label")


def _preference_invariants(first: str, second: str) -> Callable[[LossSpec, Layout], None]:
    """L = −log P(first ≻ second): P(a ≻ b) + P(b ≻ a) = 1, and P(a ≻ a) = ½."""

    def check(spec: LossSpec, layout: Layout) -> None:
        t = make(layout)
        p = torch.exp(-call(spec, layout, t)[0])
        p_swapped = torch.exp(-call(spec, layout, {**t, first: t[second], second: t[first]})[0])
        _close(p + p_swapped, 1.0, "P(a ≻ b) + P(b ≻ a)")
        tie, metrics = call(spec, layout, {**t, second: t[first]})
        _close(tie, math.log(2.0), "P(a ≻ a) = ½")

    return check


def _self_play_invariants(spec: LossSpec, layout: Layout) -> None:
    """π_θ = π_t with win rate ½ is the fixed point of the update: zero loss."""
    t = make(layout)
    fixed = {**t, "previous": t["policy"], "win_rate": torch.full_like(t["win_rate"], 0.5)}
    _close(call(spec, layout, fixed)[0], 0.0, "π_θ = π_t, P̂ = ½")


def _iterate_invariants(spec: LossSpec, layout: Layout) -> None:
    t = make(layout)
    first = {
        **t,
        **{f"{who}_{side}": t[f"policy_{side}"] for who in ("previous", "ref")
           for side in ("chosen", "rejected")},
    }  # fmt: skip
    _zero_margin(call(spec, layout, first)[1], "π_θ = π_t = π_ref")


def _heads_invariants(spec: LossSpec, layout: Layout) -> None:
    """An aggregate over K heads: the order of the heads does not matter, and K identical heads
    aggregate to that head."""
    t = make(layout)
    out, _ = call(spec, layout, t)
    perm = torch.tensor([2, 0, 3, 1])
    _close(call(spec, layout, {"rewards": t["rewards"][perm]})[0], out, "heads permuted")
    same = t["rewards"][:1].expand_as(t["rewards"])
    _close(call(spec, layout, {"rewards": same})[0], t["rewards"][0], "identical heads")


def _transform_invariants(spec: LossSpec, layout: Layout) -> None:
    """A reward at its reference's value transforms the same way for every example; stacked
    properties may come in any order."""
    t = make(layout)
    out, _ = call(spec, layout, t)
    if t["rewards"].dim() > 1:
        perm = torch.tensor([2, 0, 3, 1])
        _close(call(spec, layout, {k: v[perm] for k, v in t.items()})[0], out, "rows permuted")
    tie, _ = call(spec, layout, {**t, "reference_rewards": t["rewards"]})
    _close(tie, tie.flatten()[0], "reward = reference reward")


def _padding_changes_nothing(spec: LossSpec, layout: Layout, t: dict[str, Tensor]) -> None:
    """Other finite values at the positions the mask leaves out change no loss and no metric."""
    mask = t["mask"]
    padded = {
        k: torch.where(mask, v, v + 7.0) if k != "mask" and v.shape == mask.shape else v
        for k, v in t.items()
    }
    losses, metrics = call(spec, layout, t)
    p_losses, p_metrics = call(spec, layout, padded)
    _close(p_losses, losses, "padding changed")
    for key, value in metrics.items():
        _close(p_metrics[key], value, f"padding changed: {key}")


def _rollout_invariants(spec: LossSpec, layout: Layout) -> None:
    """Padding is inert; at π_θ = π_old = π_ref every ratio is 1, nothing is clipped, the KL is
    0, so the per-token loss is −A and negating the advantages negates the loss."""
    t = make(layout)
    _padding_changes_nothing(spec, layout, t)
    same = {**t, "old_logps": t["logps"], "ref_logps": t["logps"]}
    losses, metrics = call(spec, layout, same)
    _close(metrics["pg/clip_fraction"], 0.0, "π_θ = π_old: clip fraction")
    _close(metrics["pg/ratio_mean"], 1.0, "π_θ = π_old: ratio")
    if "pg/kl" in metrics:
        _close(metrics["pg/kl"], 0.0, "π_θ = π_ref: KL")
    negated, _ = call(spec, layout, {**same, "advantages": -same["advantages"]})
    _close(negated, -losses, "π_θ = π_old: advantages negated")


def _reinforce_invariants(spec: LossSpec, layout: Layout) -> None:
    """Padding is inert; a constant added to every reward and to the baseline changes nothing."""
    t = make(layout)
    _padding_changes_nothing(spec, layout, t)
    losses, _ = call(spec, layout, t)
    shifted = {**t, "rewards": t["rewards"] + 5.0, "baseline": t["baseline"] + 5.0}
    _close(call(spec, layout, shifted)[0], losses, "rewards and baseline shifted")


def _value_invariants(spec: LossSpec, layout: Layout) -> None:
    """Padding is inert; V = V_old = R gives zero loss."""
    t = make(layout)
    _padding_changes_nothing(spec, layout, t)
    exact = {**t, "old_values": t["values"], "returns": t["values"]}
    _close(call(spec, layout, exact)[0], 0.0, "V = V_old = R")


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


def _container(cls) -> Callable[[dict[str, Tensor]], tuple]:
    return lambda t: (cls(**t),)


def _plain(*names: str) -> Callable[[dict[str, Tensor]], tuple]:
    return lambda t: tuple(t[n] for n in names)


_PAIRED_NAMES = tuple(f.format(s) for f in _SIDES[:3] for s in ("chosen", "rejected"))


def _scored_pairs(t: dict[str, Tensor]) -> tuple:
    logps = PairedLogps(**{n: t[n] for n in _PAIRED_NAMES})
    return (ScoredPairs(logps, t["reward_chosen"], t["reward_rejected"]),)


_TOKENS = (Field("chosen_tokens", "tokens"), Field("rejected_tokens", "tokens"))
_POLICY_PAIR = (Field("policy_chosen", "policy", True), Field("policy_rejected", "policy", True))
_REF_PAIR = (Field("ref_chosen", "frozen", True), Field("ref_rejected", "frozen", True))
_PREVIOUS_PAIR = (
    Field("previous_chosen", "frozen", True),
    Field("previous_rejected", "frozen", True),
)
_B = (3,)  # batch of 3
_LIST = (2, 4)  # B = 2 lists of K = 4 responses
_STACK = (4, 3)  # K = 4 heads (or properties) over B = 3 examples
_TOKENS_BT = (3, 4)  # B = 3 completions of T = 4 token positions
_ROLLOUT_TOKENS = (
    Field("logps", "policy", True),
    Field("mask", "bool"),
    Field("old_logps", "frozen"),  # detached by the objectives: not differentiated
    Field("ref_logps", "frozen"),
)

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "PairedLogps with reference",
        ("paired",),
        ("batch: PairedLogps",),
        _POLICY_PAIR + _REF_PAIR + _TOKENS,
        _B,
        _B,
        _container(PairedLogps),
        _paired_invariants,
    ),
    Layout(
        "PairedLogps without reference",
        ("paired_ref_free",),
        ("batch: PairedLogps",),
        (Field("policy_chosen", "nonpos", True), Field("policy_rejected", "nonpos", True))
        + _TOKENS,
        _B,
        _B,
        _container(PairedLogps),
        _ref_free_invariants,
    ),
    Layout(
        "UnpairedLogps",
        ("unpaired",),
        ("batch: UnpairedLogps",),
        (
            Field("policy", "policy", True),
            Field("ref", "frozen", True),
            Field("desirable", "bool"),
            Field("kl_policy", "policy"),  # z₀ is detached: not differentiated
            Field("kl_ref", "frozen"),
        ),
        (4,),
        (4,),
        _container(UnpairedLogps),
        _unpaired_invariants,
    ),
    Layout(
        "ListwiseLogps",
        ("listwise",),
        ("batch: ListwiseLogps",),
        (Field("policy", "policy", True), Field("ref", "frozen", True), Field("scores", "prob")),
        _LIST,
        _LIST[:1],
        _container(ListwiseLogps),
        _listwise_invariants,
    ),
    Layout(
        "ScoredPairs",
        ("scored_pairs",),
        ("batch: ScoredPairs",),
        _POLICY_PAIR
        + _REF_PAIR
        + _TOKENS
        + (Field("reward_chosen", "real", True), Field("reward_rejected", "real", True)),
        _B,
        _B,
        _scored_pairs,
        _scored_pairs_invariants,
    ),
    Layout(
        "returns of two items with soft labels",
        ("reward",),
        ("returns_1: Tensor", "returns_2: Tensor", "labels: Tensor"),
        (
            Field("returns_1", "real", True),
            Field("returns_2", "real", True),
            Field("labels", "prob"),
        ),
        _B,
        _B,
        _plain("returns_1", "returns_2", "labels"),
        _soft_label_invariants,
    ),
    Layout(
        "chosen and rejected rewards",
        ("reward",),
        ("chosen_rewards: Tensor", "rejected_rewards: Tensor"),
        (Field("chosen_rewards", "real", True), Field("rejected_rewards", "real", True)),
        _B,
        _B,
        _plain("chosen_rewards", "rejected_rewards"),
        _preference_invariants("chosen_rewards", "rejected_rewards"),
    ),
    Layout(
        "chosen and rejected preference embeddings [B, 2k]",
        ("reward",),
        ("chosen_embeddings: Tensor", "rejected_embeddings: Tensor"),
        (Field("chosen_embeddings", "real", True), Field("rejected_embeddings", "real", True)),
        (3, 4),
        _B,
        _plain("chosen_embeddings", "rejected_embeddings"),
        _preference_invariants("chosen_embeddings", "rejected_embeddings"),
    ),
    Layout(
        "SelfPlayLogps",
        ("game",),
        ("batch: SelfPlayLogps",),
        (
            Field("policy", "policy", True),
            Field("previous", "frozen", True),
            Field("win_rate", "prob"),
        ),
        _B,
        _B,
        _container(SelfPlayLogps),
        _self_play_invariants,
    ),
    Layout(
        "IterateLogps",
        ("game",),
        ("batch: IterateLogps",),
        _POLICY_PAIR + _PREVIOUS_PAIR + _REF_PAIR,
        _B,
        _B,
        _container(IterateLogps),
        _iterate_invariants,
    ),
    Layout(
        "K reward heads [K, B]",
        ("aggregate",),
        ("rewards: Tensor",),
        (Field("rewards", "real", True),),
        _STACK,
        _STACK[1:],
        _plain("rewards"),
        _heads_invariants,
    ),
    # Two layouts share this signature; layout_of takes the first the objective accepts.
    Layout(
        "rewards and reference rewards [B]",
        ("aggregate",),
        ("rewards: Tensor", "reference_rewards: Tensor"),
        (Field("rewards", "real", True), Field("reference_rewards", "real", True)),
        _B,
        _B,
        _plain("rewards", "reference_rewards"),
        _transform_invariants,
    ),
    Layout(
        "rewards and reference rewards of P properties [P, B]",
        ("aggregate",),
        ("rewards: Tensor", "reference_rewards: Tensor"),
        (Field("rewards", "real", True), Field("reference_rewards", "real", True)),
        _STACK,
        _STACK[1:],
        _plain("rewards", "reference_rewards"),
        _transform_invariants,
    ),
    # Per-token inputs [B, T] = [3, 4] of the policy-gradient family; the mask alternates
    # True/False along each row (2 completion tokens per row, padding between them).
    # Two layouts share this signature: per-token advantages first, per-sequence advantages
    # (GSPO requires them) second.
    Layout(
        "RolloutBatch with per-token advantages [B, T]",
        ("policy_gradient",),
        ("batch: RolloutBatch",),
        _ROLLOUT_TOKENS[:2] + (Field("advantages", "real"),) + _ROLLOUT_TOKENS[2:],
        _TOKENS_BT,
        _TOKENS_BT[:1],
        _container(RolloutBatch),
        _rollout_invariants,
    ),
    Layout(
        "RolloutBatch with per-sequence advantages [B]",
        ("policy_gradient",),
        ("batch: RolloutBatch",),
        _ROLLOUT_TOKENS[:2]
        + (Field("advantages", "real", shape=_TOKENS_BT[:1]),)
        + _ROLLOUT_TOKENS[2:],
        _TOKENS_BT,
        _TOKENS_BT[:1],
        _container(RolloutBatch),
        _rollout_invariants,
    ),
    Layout(
        "ReinforceBatch",
        ("policy_gradient",),
        ("batch: ReinforceBatch",),
        _ROLLOUT_TOKENS[:2]
        + (
            Field("rewards", "real", shape=_TOKENS_BT[:1]),
            Field("baseline", "real", shape=_TOKENS_BT[:1]),
        ),
        _TOKENS_BT,
        _TOKENS_BT[:1],
        _container(ReinforceBatch),
        _reinforce_invariants,
    ),
    Layout(
        "ValueBatch",
        ("value",),
        ("batch: ValueBatch",),
        (
            Field("values", "real", True),
            Field("old_values", "real"),
            Field("returns", "real"),
            Field("mask", "bool"),
        ),
        _TOKENS_BT,
        _TOKENS_BT[:1],
        _container(ValueBatch),
        _value_invariants,
    ),
)


def _accepts(spec: LossSpec, layout: Layout) -> bool:
    try:
        call(spec, layout, make(layout))
    except ValueError:
        return False
    return True


def resolve_layout(spec: LossSpec, layouts: tuple[Layout, ...] = LAYOUTS) -> Layout:
    """The layout that builds ``spec``'s inputs; fails the test, saying what to add, if none."""
    of_kind = [lay for lay in layouts if spec.kind in lay.kinds]
    if not of_kind:
        pytest.fail(
            f"objective {spec.name!r} has kind {spec.kind!r}, which no input builder knows: add a "
            "Layout for it to LAYOUTS in tests/losses/registry_inputs.py (its fields, their roles "
            "and its invariants), so the registry-wide tests cover it",
            pytrace=False,
        )
    signature = positional_signature(spec.fn)
    matching = [lay for lay in of_kind if lay.signature == signature]
    if not matching:
        known = "; ".join(f"{lay.name}: ({', '.join(lay.signature)})" for lay in of_kind)
        pytest.fail(
            f"objective {spec.name!r} (kind {spec.kind!r}) takes ({', '.join(signature)}), which "
            f"no input builder of that kind builds ({known}): add a Layout to LAYOUTS in "
            "tests/losses/registry_inputs.py",
            pytrace=False,
        )
    for layout in matching:
        if _accepts(spec, layout):
            return layout
    pytest.fail(
        f"objective {spec.name!r} rejects the ordinary inputs of every layout for its signature "
        f"({', '.join(lay.name for lay in matching)}): fix the objective or add a Layout to "
        "LAYOUTS in tests/losses/registry_inputs.py",
        pytrace=False,
    )


@cache
def layout_of(name: str) -> Layout:
    """:func:`resolve_layout` of a registry entry, by name (cached)."""
    return resolve_layout(REGISTRY[name])


def batch_of(name: str, dtype: torch.dtype = torch.float64, *, extreme: bool = False):
    """The positional arguments of registry entry ``name`` on valid inputs."""
    layout = layout_of(name)
    return layout.build(make(layout, dtype, extreme=extreme))
