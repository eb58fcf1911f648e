"""The judge phase of the online loop: ask the judge, record every verdict in the feedback store.

What is asked (per prompt with K samples):

- a :class:`~unialign.feedback.judges.ScoreJudge` scores every sample once; the scores give
  P̂(y_i ≻ y_j) = σ((r_i − r_j)/τ) (:func:`~unialign.lm.online_methods.preferences_from_scores`);
- a :class:`~unialign.feedback.judges.PairJudge` compares every pair i < j once
  (K(K − 1)/2 comparisons per prompt), P̂(y_j ≻ y_i) = 1 − P̂(y_i ≻ y_j); NaN is a skip;
- Nash-MD asks about each sample against its mixture sample instead (K comparisons, or 2K
  scores).

What is stored (``output_dir/feedback.sqlite``): one completion query per judged pair (every
pair i < j of a prompt, the Nash-MD pairs (y, y′)), with token ids, ``step`` = the iteration,
``policy_version`` = t (the iterate π_t that sampled), the scores as rewards when the judge
scores; and one label by the judge (``judge:<name>``, or its own ``teacher:``/``human:`` name):
1 when P̂(first ≻ second) > ½, 0 when < ½, ½ on a tie, a skip (reason ``judge skipped``) on NaN,
with ``{"p": P̂}`` as metadata. Prompts are judged ``chunk`` at a time and each chunk is stored
as soon as it is judged, so a judge that fails leaves the chunks before it in the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from unialign.feedback.judges import (
    JudgeError,
    PairJudge,
    ScoreJudge,
    checked_preferences,
    checked_scores,
)
from unialign.feedback.store import FeedbackStore
from unialign.lm.online_methods import Judgements, preferences_from_scores

__all__ = [
    "labeller_name",
    "judge_samples",
    "judge_against_mixture",
    "as_completion",
    "FunctionScoreJudge",
    "FunctionPairJudge",
]

_KINDS = ("judge:", "teacher:", "human:")


def labeller_name(judge: Any) -> str:
    """The feedback store's labeller for ``judge``: its name if it already says its kind
    (``judge:``, ``teacher:``, ``human:``), else ``judge:<name>``."""
    name = str(getattr(judge, "name", "") or type(judge).__name__)
    return name if name.startswith(_KINDS) else f"judge:{name}"


def as_completion(prompt: Any, text: str) -> Any:
    """A completion in its prompt's format: the text, or ``[{"role": "assistant", ...}]``
    for a conversational prompt (what judges and the store take)."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


class FunctionScoreJudge:
    """A :class:`ScoreJudge` around ``fn(prompts, completions) -> list[float]``."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def score(self, prompts, completions) -> list[float]:
        return list(self.fn(prompts, completions))


class FunctionPairJudge:
    """A :class:`PairJudge` around ``fn(prompts, a, b) -> list[P(a ≻ b)]``."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def compare(self, prompts, completions_a, completions_b) -> list[float]:
        return list(self.fn(prompts, completions_a, completions_b))


def _label(p: float) -> float:
    return 0.5 if p == 0.5 else (1.0 if p > 0.5 else 0.0)


def _store(store: FeedbackStore | None, rows: list[dict], *, labeller: str, **query_kw) -> None:
    """Record judged pairs: queries first, then their labels (one transaction each)."""
    if store is None or not rows:
        return
    scored = rows[0].get("r1") is not None
    qids = store.add_completion_queries(
        [r["prompt"] for r in rows], [r["a"] for r in rows], [r["b"] for r in rows],
        token_ids_1=[r["ids1"] for r in rows], token_ids_2=[r["ids2"] for r in rows],
        rewards_1=[r["r1"] for r in rows] if scored else None,
        rewards_2=[r["r2"] for r in rows] if scored else None,
        **query_kw,
    )  # fmt: skip
    probs = [r["p"] for r in rows]
    store.add_labels(
        qids, [0.0 if math.isnan(p) else _label(p) for p in probs], labeler=labeller,
        keep_mask=[not math.isnan(p) for p in probs], reason="judge skipped",
        metadata=[None if math.isnan(p) else {"p": p} for p in probs],
    )  # fmt: skip


def judge_samples(
    judge: ScoreJudge | PairJudge,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    token_ids: Sequence[Sequence[int]],
    num_samples: int,
    *,
    score_temperature: float,
    chunk: int | None,
    store: FeedbackStore | None,
    step: int,
    policy_version: int,
    source: dict[str, Any] | None = None,
) -> Judgements:
    """Judge the K samples of every prompt and store each verdict (module docstring).

    Args:
        judge: a ScoreJudge (``score``) or a PairJudge (``compare``).
        prompts: ``P`` prompts as the judge takes them.
        completions: ``N = P·K`` completions (sample k of prompt p at ``p·K + k``), each in its
            prompt's format (:func:`as_completion`).
        token_ids: ``N`` completion token ids (stored with the queries).
        num_samples: K.
        score_temperature: τ of the score → preference link.
        chunk: prompts per judge call (``None``: all at once).
        store: the run's feedback store (``None``: nothing is stored).
        step, policy_version, source: recorded with the queries.

    Raises:
        JudgeError: the judge raised, returned the wrong count, or a value out of contract.
    """
    P, K = len(prompts), num_samples
    if len(completions) != P * K:
        raise ValueError(f"{len(completions)} completions for {P} prompts × {K} samples")
    pref = torch.full((P, K, K), math.nan, dtype=torch.float64)
    scores = torch.zeros((P, K), dtype=torch.float64) if _scores(judge) else None
    labeller = labeller_name(judge)
    kw = dict(step=step, policy_version=policy_version, selection="all_pairs", source=source)
    step_p = chunk or max(P, 1)
    for p0 in range(0, P, step_p):
        ps = range(p0, min(P, p0 + step_p))
        pairs = [(p, i, j) for p in ps for i in range(K) for j in range(i + 1, K)]
        if scores is not None:
            n0, n1 = p0 * K, ps.stop * K
            vals = checked_scores(judge, [prompts[n // K] for n in range(n0, n1)],
                                  list(completions[n0:n1]))  # fmt: skip
            scores[p0 : ps.stop] = torch.tensor(vals, dtype=torch.float64).view(-1, K)
            pref[p0 : ps.stop] = preferences_from_scores(scores[p0 : ps.stop], score_temperature)
        elif pairs:
            vals = checked_preferences(
                judge, [prompts[p] for p, _, _ in pairs],
                [completions[p * K + i] for p, i, _ in pairs],
                [completions[p * K + j] for p, _, j in pairs],
            )  # fmt: skip
            for (p, i, j), v in zip(pairs, vals):
                pref[p, i, j], pref[p, j, i] = v, 1.0 - v
        rows = [
            dict(prompt=prompts[p], a=completions[p * K + i], b=completions[p * K + j],
                 ids1=list(token_ids[p * K + i]), ids2=list(token_ids[p * K + j]),
                 p=float(pref[p, i, j]),
                 r1=None if scores is None else float(scores[p, i]),
                 r2=None if scores is None else float(scores[p, j]))
            for p, i, j in pairs
        ]  # fmt: skip
        _store(store, rows, labeller=labeller, **kw)
    return Judgements(pref, scores)


def judge_against_mixture(
    judge: ScoreJudge | PairJudge,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    mixture_completions: Sequence[Any],
    token_ids: Sequence[Sequence[int]],
    mixture_token_ids: Sequence[Sequence[int]],
    num_samples: int,
    *,
    score_temperature: float,
    chunk: int | None,
    store: FeedbackStore | None,
    step: int,
    policy_version: int,
    source: dict[str, Any] | None = None,
) -> Judgements:
    """Nash-MD: P(y_n ≻ y′_n) for every sample y_n and its mixture sample y′_n (a PairJudge
    compares them; a ScoreJudge scores both and σ((r − r′)/τ) links them); each pair stored."""
    P, K = len(prompts), num_samples
    N = P * K
    versus = torch.full((N,), math.nan, dtype=torch.float64)
    scores = torch.zeros(N, dtype=torch.float64) if _scores(judge) else None
    labeller = labeller_name(judge)
    kw = dict(step=step, policy_version=policy_version, selection="mixture", source=source)
    step_n = (chunk or max(P, 1)) * K
    for n0 in range(0, N, step_n):
        ns = range(n0, min(N, n0 + step_n))
        ps = [prompts[n // K] for n in ns]
        a = [completions[n] for n in ns]
        b = [mixture_completions[n] for n in ns]
        mix_scores = None
        if scores is not None:
            vals = checked_scores(judge, ps + ps, a + b)
            own = torch.tensor(vals[: len(ns)], dtype=torch.float64)
            mix_scores = torch.tensor(vals[len(ns) :], dtype=torch.float64)
            scores[ns.start : ns.stop] = own
            versus[ns.start : ns.stop] = torch.sigmoid((own - mix_scores) / score_temperature)
        else:
            versus[ns.start : ns.stop] = torch.tensor(
                checked_preferences(judge, ps, a, b), dtype=torch.float64
            )
        rows = [
            dict(prompt=ps[i], a=a[i], b=b[i], ids1=list(token_ids[n]),
                 ids2=list(mixture_token_ids[n]), p=float(versus[n]),
                 r1=None if scores is None else float(scores[n]),
                 r2=None if mix_scores is None else float(mix_scores[i]))
            for i, n in enumerate(ns)
        ]  # fmt: skip
        _store(store, rows, labeller=labeller, **kw)
    pref = torch.full((P, K, K), math.nan, dtype=torch.float64)
    return Judgements(pref, None if scores is None else scores.view(P, K), versus.view(P, K))


def _scores(judge: Any) -> bool:
    """True for a ScoreJudge, False for a PairJudge (a judge with both methods scores)."""
    if callable(getattr(judge, "score", None)):
        return True
    if callable(getattr(judge, "compare", None)):
        return False
    raise JudgeError(
        f"judge {getattr(judge, 'name', judge)!r} has neither score(prompts, completions) nor "
        "compare(prompts, completions_a, completions_b)"
    )
