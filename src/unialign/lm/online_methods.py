"""Methods of the online LM loop: how training examples are built from K judged samples, and
which objective and typed batch they feed.

A method is a row of :data:`METHODS`, not a trainer: the loop (:mod:`unialign.lm.online`)
samples, judges, calls the method's ``build`` on the :class:`Judgements`, computes log-probs of
the samples the :class:`Examples` point at, and hands them to the method's ``batch`` and
objective. Adding a method costs a ``build`` rule (usually one of the functions below), a
``batch`` constructor and a docs entry (``docs/lm-online.md``).

Notation: an iteration has P prompts with K samples each; sample ``k`` of prompt ``p`` is
``p·K + k``. P̂[p, i, j] is the judge's P(y_i ≻ y_j | x_p). A ScoreJudge's scores r become
preferences by one rule, the Bradley–Terry link P̂(y_i ≻ y_j) = σ((r_i − r_j)/τ) with
τ = ``score_temperature``; where the method ranks samples it uses the scores themselves (the
same order: the win rate below is increasing in r_i).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unialign.losses import REGISTRY, LossOutput, LossSpec, PairedLogps
from unialign.losses._core import check_in_range, check_tensors, compute_dtype, present_tensors
from unialign.losses.game import IterateLogps, SelfPlayLogps, dno_filter_pairs
from unialign.losses.policy_gradient import ReinforceBatch, RolloutBatch

__all__ = [
    "Judgements",
    "Examples",
    "ExampleLogps",
    "MixtureLogps",
    "OnlineMethod",
    "METHODS",
    "NASH_MD_SPEC",
    "preferences_from_scores",
    "win_rates",
    "best_worst_pairs",
    "all_pairs",
    "self_play_samples",
    "large_margin_pairs",
    "mixture_samples",
    "nash_md_pg",
    "RolloutRule",
    "scored_samples",
]


# ---------------------------------------------------------------------------------------------
# what the judge said, and what the update trains on
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Judgements:
    """The judge's verdicts on one iteration's samples.

    Attributes:
        preference: ``[P, K, K]`` float64, P̂(y_i ≻ y_j | x_p); NaN on the diagonal, where a
            pair was not compared and where the judge skipped it; ``P̂[j,i] = 1 − P̂[i,j]``.
        scores: ``[P, K]`` float64 scores of a ScoreJudge, else ``None``.
        versus: ``[P, K]`` float64, P(y_k ≻ y′_k) of each sample against its mixture sample
            (Nash-MD), NaN where skipped; ``None`` for the other methods.
    """

    preference: Tensor
    scores: Tensor | None = None
    versus: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, K)``."""
        p, k = self.preference.shape[:2]
        return int(p), int(k)


@dataclass(frozen=True)
class Examples:
    """The M training examples of one iteration; indices point into its ``N = P·K`` samples.

    Attributes:
        chosen: ``[M]`` long, y_w of a pair, or the sample itself (per-sample methods).
        rejected: ``[M]`` long, y_l of a pair; ``None`` for per-sample methods.
        target: ``[M]`` float64. Pairs: the judge's margin of y_w over y_l (score gap for a
            ScoreJudge, P̂(y_w ≻ y_l) − ½ for a PairJudge). Per sample: the win rate
            P̂(y ≻ π_t) (SPPO) or P(y ≻ y′) against the mixture sample (Nash-MD).
        dropped: candidates left out (ties, skipped comparisons, filtered pairs).
    """

    chosen: Tensor
    rejected: Tensor | None
    target: Tensor
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.chosen.numel())

    @property
    def paired(self) -> bool:
        return self.rejected is not None

    def samples(self) -> list[int]:
        """The distinct sample indices the examples use, ascending."""
        ids = self.chosen.tolist() + ([] if self.rejected is None else self.rejected.tolist())
        return sorted(set(ids))

    def take(self, idx: list[int]) -> Examples:
        """The examples at positions ``idx``, in that order."""
        i = torch.as_tensor(idx, dtype=torch.long)
        rej = None if self.rejected is None else self.rejected[i]
        return Examples(self.chosen[i], rej, self.target[i], 0)


def _empty(paired: bool, dropped: int) -> Examples:
    z = torch.zeros(0, dtype=torch.long)
    return Examples(z, z.clone() if paired else None, torch.zeros(0, dtype=torch.float64), dropped)


# ---------------------------------------------------------------------------------------------
# build rules (pure functions of the judgements; hand-worked tests in tests/lm/test_online_methods)
# ---------------------------------------------------------------------------------------------
def preferences_from_scores(scores: Tensor, temperature: float) -> Tensor:
    """``[P, K] → [P, K, K]``: P̂(y_i ≻ y_j) = σ((r_i − r_j)/τ) for i < j, its complement
    1 − P̂ below the diagonal (so the two always add to exactly 1), NaN on the diagonal."""
    s = scores.to(torch.float64)
    p = torch.sigmoid((s[:, :, None] - s[:, None, :]) / temperature)
    k = s.shape[1]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    p = torch.where(upper, p, 1.0 - p.transpose(1, 2))
    return p.masked_fill(torch.eye(k, dtype=torch.bool), math.nan)


def win_rates(preference: Tensor) -> Tensor:
    """``[P, K]`` P̂(y_i ≻ π_t | x) = the mean of P̂(y_i ≻ y_j) over the other samples j of the
    same prompt that were compared with y_i (SPPO's estimate from K samples); NaN where y_i was
    compared with none."""
    valid = ~torch.isnan(preference)
    total = torch.where(valid, preference, 0.0).sum(-1)
    count = valid.sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), math.nan)


def _ranking(j: Judgements) -> Tensor:
    """Scores where the judge scores, win rates otherwise (the same order for scores)."""
    return j.scores.to(torch.float64) if j.scores is not None else win_rates(j.preference)


def _margin(j: Judgements, p: int, w: int, lo: int) -> float:
    if j.scores is not None:
        return float(j.scores[p, w] - j.scores[p, lo])
    return float(j.preference[p, w, lo]) - 0.5


def best_worst_pairs(j: Judgements) -> Examples:
    """One pair per prompt: the best and the worst of its K samples.

    Ranked by score (ScoreJudge) or by win rate against the other samples (PairJudge, all
    pairs compared); the first index wins among equal best, the last among equal worst. A
    prompt is dropped when fewer than two samples have a rank or best and worst tie.
    """
    rank = _ranking(j)
    P, K = j.shape
    chosen, rejected, margin, dropped = [], [], [], 0
    for p in range(P):
        ok = [k for k in range(K) if not math.isnan(float(rank[p, k]))]
        if len(ok) < 2:
            dropped += 1
            continue
        values = [float(rank[p, k]) for k in ok]
        hi, lo = max(values), min(values)
        if hi == lo:
            dropped += 1
            continue
        w = ok[values.index(hi)]
        lo_k = ok[len(values) - 1 - values[::-1].index(lo)]
        chosen.append(p * K + w)
        rejected.append(p * K + lo_k)
        margin.append(_margin(j, p, w, lo_k))
    if not chosen:
        return _empty(True, dropped)
    return Examples(
        torch.tensor(chosen), torch.tensor(rejected), torch.tensor(margin, dtype=torch.float64),
        dropped,
    )  # fmt: skip


def all_pairs(j: Judgements) -> Examples:
    """Every compared pair i < j of a prompt, oriented by the judge's direct verdict
    (P̂(y_i ≻ y_j) > ½: (i, j); < ½: (j, i)); exact ties and skipped pairs are dropped."""
    P, K = j.shape
    chosen, rejected, margin, dropped = [], [], [], 0
    for p in range(P):
        for a in range(K):
            for b in range(a + 1, K):
                v = float(j.preference[p, a, b])
                if j.scores is not None:
                    gap = float(j.scores[p, a] - j.scores[p, b])
                    v = 0.5 if gap == 0 else (1.0 if gap > 0 else 0.0)
                if math.isnan(v) or v == 0.5:
                    dropped += 1
                    continue
                w, lo = (a, b) if v > 0.5 else (b, a)
                chosen.append(p * K + w)
                rejected.append(p * K + lo)
                margin.append(_margin(j, p, w, lo))
    if not chosen:
        return _empty(True, dropped)
    return Examples(
        torch.tensor(chosen), torch.tensor(rejected), torch.tensor(margin, dtype=torch.float64),
        dropped,
    )  # fmt: skip


def self_play_samples(j: Judgements) -> Examples:
    """SPPO: every sample with its win rate P̂(y ≻ π_t) against the other K − 1 samples of its
    prompt (:func:`win_rates`); samples compared with none are dropped."""
    w = win_rates(j.preference).reshape(-1)
    keep = ~torch.isnan(w)
    idx = torch.nonzero(keep).reshape(-1)
    return Examples(idx, None, w[keep], int((~keep).sum()))


def large_margin_pairs(j: Judgements, threshold: float) -> Examples:
    """DNO: best vs worst (:func:`best_worst_pairs`), kept only where the judge's margin
    exceeds ``threshold`` (:func:`~unialign.losses.game.dno_filter_pairs`); a pair whose direct
    comparison the judge skipped (NaN margin) is dropped too."""
    pairs = best_worst_pairs(j)
    finite = ~torch.isnan(pairs.target)
    keep = finite.clone()
    if bool(finite.any()):
        keep[finite] = dno_filter_pairs(pairs.target[finite], threshold)
    dropped = pairs.dropped + int((~keep).sum())
    if not bool(keep.any()):
        return _empty(True, dropped)
    return Examples(pairs.chosen[keep], pairs.rejected[keep], pairs.target[keep], dropped)


def mixture_samples(j: Judgements) -> Examples:
    """Nash-MD: every policy sample with P(y ≻ y′), y′ its mixture sample; skipped dropped."""
    if j.versus is None:
        raise ValueError("Nash-MD needs the judgements of each sample against its mixture sample")
    v = j.versus.reshape(-1).to(torch.float64)
    keep = ~torch.isnan(v)
    return Examples(torch.nonzero(keep).reshape(-1), None, v[keep], int((~keep).sum()))


# ---------------------------------------------------------------------------------------------
# Nash-MD's objective (a policy gradient; see docs/lm-online.md for its derivation)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MixtureLogps:
    """Per-sample Nash-MD inputs, all ``[B]``; y ~ π_t (the policy that sampled), y′ ~ π_mix.

    Attributes:
        policy: ℓ_θ(y|x), differentiable.
        preference: P(y ≻ y′ | x) ∈ [0, 1], the judge's verdict against the mixture sample.
        ref: ℓ_ref(y|x) (no grad); needed when ``kl_coef > 0``.
    """

    policy: Tensor
    preference: Tensor
    ref: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        return present_tensors(self)


def nash_md_pg(batch: MixtureLogps, *, kl_coef: float = 0.1) -> LossOutput:
    """Nash-MD-PG: ``L = −[(P(y ≻ y′) − ½) − τ·sg(ℓ_θ(y) − ℓ_ref(y))] · ℓ_θ(y)`` per sample.

    A REINFORCE surrogate whose expected gradient over y ~ π_θ, y′ ~ π_mix is
    ``−∇θ [P(π_θ ≻ π_mix) − τ KL(π_θ ‖ π_ref)]`` with the mixture held fixed: ½ is the
    baseline (the win rate of π_mix against itself), and E[(ℓ_θ − ℓ_ref)∇ℓ_θ] = ∇KL because
    E[∇ℓ_θ] = 0. Munos et al. 2023, "Nash Learning from Human Feedback" (arXiv 2312.00886),
    Nash-MD-PG; π_mix ∝ π_θ^{1−β} π_ref^β is sampled token-wise by
    :func:`unialign.lm.online_mixture.sample_mixture`. τ = ``kl_coef`` ≥ 0. The loss value is a
    surrogate (its gradient is the point); watch the metrics instead.

    Metrics: ``nash_md/preference`` (P(y ≻ y′)), ``nash_md/kl`` (ℓ_θ − ℓ_ref, a one-sample
    KL(π_θ ‖ π_ref) estimate), ``nash_md/advantage`` ((P − ½) − τ·kl).
    """
    check_in_range("kl_coef", kl_coef, 0.0, math.inf)
    required = ("policy", "preference") + (("ref",) if kl_coef > 0 else ())
    check_tensors(batch.tensors(), required=required)
    if bool(((batch.preference < 0) | (batch.preference > 1)).any()):
        raise ValueError("preference must lie in [0, 1] for every sample (it is P(y ≻ y′))")
    dt = compute_dtype(batch.policy)
    policy = batch.policy.to(dt)
    kl = torch.zeros_like(policy) if batch.ref is None else (policy - batch.ref.to(dt)).detach()
    advantage = (batch.preference.to(dt) - 0.5) - kl_coef * kl
    losses = -advantage * policy
    return LossOutput(
        losses,
        {"nash_md/preference": batch.preference.to(dt).detach(), "nash_md/kl": kl,
         "nash_md/advantage": advantage.detach()},
    )  # fmt: skip


#: Nash-MD's objective as a registry-style entry (it lives here until ``losses/game.py`` has it).
NASH_MD_SPEC = LossSpec(
    name="nash_md",
    fn=nash_md_pg,
    family="game",
    kind="game",
    description="−[(P(y ≻ y′) − ½) − τ·sg(ℓ_θ − ℓ_ref)]·ℓ_θ(y), y ~ π_θ, y′ ~ π_θ^(1−β)·π_ref^β",
    paper="Munos et al. 2023, arXiv 2312.00886",
    hparams={"kl_coef": 0.1},
)


# ---------------------------------------------------------------------------------------------
# policy-gradient (RLHF) methods: scored samples; the rollout and update are lm/online_rl.py's
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutRule:
    """What makes a method a policy-gradient one (:mod:`unialign.lm.online_rl`).

    Attributes:
        advantage: ``mean_baseline`` (REINFORCE, baseline = the iteration's mean reward),
            ``rloo`` (leave-one-out baseline in the prompt's group), ``group`` (GRPO's
            group-normalized advantage) or ``gae`` (PPO: per-token GAE with a value head).
        losses: the objectives the ``loss`` field may select (the first is the default).
        value_head: trains a scalar value head on the policy trunk (PPO).
    """

    advantage: str
    losses: tuple[str, ...]
    value_head: bool = False


def scored_samples(j: Judgements) -> Examples:
    """Every sample with its judge score as the target (policy-gradient methods); the
    advantages come later, from the scores and the rollout's log-probs (``lm/online_rl.py``)."""
    if j.scores is None:
        raise ValueError("judge: a policy-gradient method needs a ScoreJudge (one reward per "
                         "sample); a PairJudge only compares pairs")  # fmt: skip
    s = j.scores.reshape(-1).to(torch.float64)
    return Examples(torch.arange(s.numel()), None, s, 0)


def _one_token(b: ExampleLogps) -> Any:
    """A ``[B, 1]`` view of per-sample log-probs (validates clipped-surrogate hyperparameters)."""
    col = lambda t: None if t is None else t[:, None]  # noqa: E731
    return RolloutBatch(col(b.policy_chosen), torch.ones(len(b.target), 1, dtype=torch.bool),
                        b.target, col(b.previous_chosen), col(b.ref_chosen))  # fmt: skip


def _one_token_reinforce(b: ExampleLogps) -> Any:
    return ReinforceBatch(b.policy_chosen[:, None], torch.ones(len(b.target), 1, dtype=torch.bool),
                          b.target, torch.zeros_like(b.target))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExampleLogps:
    """Log-probs of one micro-batch of examples, all ``[B]`` (``*_rejected`` only for pairs).

    ``policy_*`` are differentiable (the model being trained); ``previous_*`` are under π_t,
    the policy that sampled (no grad); ``ref_*`` under the initial policy (no grad), ``None``
    when the method does not use it; ``*_tokens`` are completion token counts; ``target`` is
    :attr:`Examples.target`."""

    policy_chosen: Tensor
    chosen_tokens: Tensor
    target: Tensor
    policy_rejected: Tensor | None = None
    rejected_tokens: Tensor | None = None
    previous_chosen: Tensor | None = None
    previous_rejected: Tensor | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None


@dataclass(frozen=True)
class OnlineMethod:
    """One method of the online loop.

    Attributes:
        name: the ``method`` config value.
        paper: short citation.
        objective: its objective's :class:`LossSpec`; ``None`` for ``online_dpo``, which
            takes any paired objective of the library (the ``loss`` config field).
        build: ``(judgements, options) → Examples``; ``options`` holds ``margin_threshold``.
        batch: ``ExampleLogps → typed batch`` for the objective.
        uses_previous: the objective needs ℓ_t (π_t's log-probs, computed before the update).
        uses_reference: ``(spec, params) → bool``, whether ℓ_ref is needed.
        mixture: samples a second completion per sample from π_θ^{1−β} π_ref^β (Nash-MD).
        pair_rule: builds pairs with the ``pairs`` config field (best_worst / all).
        rollout: a policy-gradient method (:class:`RolloutRule`): phases 5–6 are
            :mod:`unialign.lm.online_rl`'s per-token rollout and update; ``batch`` then only
            maps a one-token view for hyperparameter validation.
    """

    name: str
    paper: str
    objective: LossSpec | None
    build: Callable[[Judgements, dict[str, Any]], Examples]
    batch: Callable[[ExampleLogps], Any]
    uses_previous: bool
    uses_reference: Callable[[LossSpec, dict[str, Any]], bool]
    mixture: bool = False
    pair_rule: bool = False
    rollout: RolloutRule | None = None


def _pairs(j: Judgements, opts: dict[str, Any]) -> Examples:
    return all_pairs(j) if opts.get("pairs") == "all" else best_worst_pairs(j)


def _rollout_method(name: str, paper: str, rule: RolloutRule) -> OnlineMethod:
    """A policy-gradient row: scored samples in, the rule's objective (ℓ_ref for a KL term)."""
    return OnlineMethod(
        name=name,
        paper=paper,
        objective=REGISTRY[rule.losses[0]],
        build=lambda j, opts: scored_samples(j),
        batch=_one_token_reinforce if rule.losses[0] == "reinforce" else _one_token,
        uses_previous=True,
        uses_reference=lambda spec, params: float(params.get("kl_coef", 0.0)) > 0,
        rollout=rule,
    )


METHODS: dict[str, OnlineMethod] = {
    m.name: m
    for m in (
        OnlineMethod(
            name="online_dpo",
            paper="Guo et al. 2024, arXiv 2402.04792 (any paired objective of the library)",
            objective=None,
            build=_pairs,
            batch=lambda b: PairedLogps(
                b.policy_chosen,
                b.policy_rejected,
                b.ref_chosen,
                b.ref_rejected,
                b.chosen_tokens,
                b.rejected_tokens,
            ),  # fmt: skip
            uses_previous=False,
            uses_reference=lambda spec, params: spec.kind == "paired",
            pair_rule=True,
        ),
        OnlineMethod(
            name="sppo",
            paper="Wu et al. 2024, arXiv 2405.00675",
            objective=REGISTRY["sppo"],
            build=lambda j, opts: self_play_samples(j),
            batch=lambda b: SelfPlayLogps(b.policy_chosen, b.previous_chosen, b.target),
            uses_previous=True,
            uses_reference=lambda spec, params: False,
        ),
        OnlineMethod(
            name="inpo",
            paper="Zhang et al. 2024, arXiv 2407.00617",
            objective=REGISTRY["inpo"],
            build=_pairs,
            batch=lambda b: IterateLogps(
                b.policy_chosen,
                b.policy_rejected,
                b.previous_chosen,
                b.previous_rejected,
                b.ref_chosen,
                b.ref_rejected,
            ),  # fmt: skip
            uses_previous=True,
            uses_reference=lambda spec, params: float(params.get("tau", 0.0)) > 0,
            pair_rule=True,
        ),
        OnlineMethod(
            name="dno",
            paper="Rosset et al. 2024, arXiv 2404.03715",
            objective=REGISTRY["dno"],
            build=lambda j, opts: large_margin_pairs(j, float(opts.get("margin_threshold", 0))),
            batch=lambda b: IterateLogps(
                b.policy_chosen, b.policy_rejected, b.previous_chosen, b.previous_rejected
            ),
            uses_previous=True,
            uses_reference=lambda spec, params: False,
        ),
        OnlineMethod(
            name="nash_md",
            paper="Munos et al. 2023, arXiv 2312.00886",
            objective=NASH_MD_SPEC,
            build=lambda j, opts: mixture_samples(j),
            batch=lambda b: MixtureLogps(b.policy_chosen, b.target, b.ref_chosen),
            uses_previous=False,
            uses_reference=lambda spec, params: float(params.get("kl_coef", 0.0)) > 0,
            mixture=True,
        ),
        _rollout_method(
            "reinforce",
            "Williams 1992; Ahmadian et al. 2024, arXiv 2402.14740",
            RolloutRule("mean_baseline", ("reinforce",)),
        ),
        _rollout_method(
            "rloo",
            "Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740",
            RolloutRule("rloo", ("reinforce",)),
        ),
        _rollout_method(
            "grpo",
            "Shao et al. 2024, arXiv 2402.03300 (loss variants: Dr. GRPO, DAPO, BNPO, GSPO)",
            RolloutRule("group", ("grpo", "dr_grpo", "dapo", "bnpo", "gspo")),
        ),
        _rollout_method(
            "ppo",
            "Schulman et al. 2017, arXiv 1707.06347; Ouyang et al. 2022, arXiv 2203.02155",
            RolloutRule("gae", ("ppo_clip",), value_head=True),
        ),
    )
}


def dummy_batch(method: OnlineMethod) -> Any:
    """A two-example batch for ``method``'s objective, used to validate hyperparameters."""
    z = torch.zeros(2, dtype=torch.float64)
    n = torch.full((2,), 3.0, dtype=torch.float64)
    logps = ExampleLogps(
        policy_chosen=z - 1, chosen_tokens=n, target=torch.tensor([0.75, 0.25], dtype=torch.float64),
        policy_rejected=z - 2, rejected_tokens=n, previous_chosen=z - 1, previous_rejected=z - 2,
        ref_chosen=z - 1, ref_rejected=z - 2,
    )  # fmt: skip
    return method.batch(logps)
