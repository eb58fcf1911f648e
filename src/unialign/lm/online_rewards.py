"""Several rewards as one judge: ``judges: [...]`` with ``reward_combination`` in the online loop.

:class:`CombinedScoreJudge` is a ScoreJudge over J score judges; the loop sees one score per
sample and every method (the policy-gradient ones, and online DPO, DNO, ... through the
Bradley–Terry link) trains on it unchanged:

- ``weighted``: ``r(x, y) = Σ_p w_p r_p(x, y)`` (weights default to 1 each);
- ``log_sigmoid``: ``u(x, y) = Σ_p log σ(r_p(x, y) − r_ref,p(x))`` with
  :func:`unialign.losses.reward.combine_transformed` — Wang et al. 2024, "Transforming and
  Combining Rewards for Aligning Large Language Models" (arXiv 2402.00742): under
  Bradley–Terry, log σ(r_p − r_ref,p) is the log-probability that y beats the reference
  response on property p, so the sum is the log-probability that it beats it on every property
  at once (a logical AND); each term saturates at 0 once y is clearly better than the
  reference, so no single reward can be pushed far at the expense of the others.

The reference reward r_ref,p(x) is the judge's reward of a **reference completion** of x: the
greedy completion of the reference policy (the initial policy π_ref). It is computed once per
prompt and cached for the run (:class:`ReferenceRewards`). Prompts are processed in fixed
chunks of the prompt source (prompt i belongs to chunk ⌊i / C⌋, C = ``generation_batch_size``)
so the reference completions and their rewards do not depend on the order in which prompts
come up: a resumed run recomputes exactly the same numbers. (The paper prefers a reference
of "good enough" quality, e.g. a quantile of the base policy's rewards; the greedy reference
completion is the deterministic single-sample stand-in, with no extra hyperparameter.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from unialign.config import ConfigError
from unialign.feedback.judges import checked_scores
from unialign.losses.reward import combine_transformed

__all__ = [
    "SCORE_KINDS",
    "COMBINATIONS",
    "CombinedScoreJudge",
    "ReferenceRewards",
    "combine_rewards",
    "is_score_judge",
    "resolve_judges",
    "greedy_completions",
]

#: Judge config kinds that score (``feedback.judges``); the rest compare pairs.
SCORE_KINDS = ("reward_function", "reward_model")
#: ``reward_combination`` values.
COMBINATIONS = ("weighted", "log_sigmoid")


def is_score_judge(judge: Any) -> bool:
    """A judge with ``score`` (a judge with both methods scores, as the loop treats it)."""
    return callable(getattr(judge, "score", None))


def combine_rewards(
    rewards: torch.Tensor,
    *,
    combination: str,
    weights: Sequence[float] | None = None,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[J, B] → [B]``: Σ_p w_p r_p (``weighted``) or Σ_p log σ(r_p − r_ref,p) (``log_sigmoid``,
    ``reference [J, B]`` required)."""
    if combination == "weighted":
        w = torch.ones(rewards.shape[0], dtype=rewards.dtype) if weights is None else (
            torch.as_tensor(list(weights), dtype=rewards.dtype))  # fmt: skip
        return (w[:, None] * rewards).sum(0)
    if combination == "log_sigmoid":
        if reference is None:
            raise ValueError("log_sigmoid needs the reference rewards r_ref,p(x) [J, B]")
        return combine_transformed(rewards, reference)
    raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}, got {combination!r}")


def _key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True)


class ReferenceRewards:
    """r_ref,p(x) of every judge p for the prompts of a fixed prompt source, cached.

    Args:
        prompts: the run's prompt source (the list the loop draws from).
        complete: ``prompts → completions``, the reference completions (e.g.
            :func:`greedy_completions`), in each prompt's format.
        judges: the J score judges.
        chunk: prompts per chunk (the unit of computation; see the module docstring).
    """

    def __init__(
        self,
        prompts: Sequence[Any],
        complete: Callable[[list[Any]], list[Any]],
        judges: Sequence[Any],
        *,
        chunk: int,
    ):
        self.prompts = list(prompts)
        self.complete, self.judges, self.chunk = complete, list(judges), max(1, int(chunk))
        self.index: dict[str, int] = {}
        for i, p in enumerate(self.prompts):
            self.index.setdefault(_key(p), i)
        self.cache: dict[int, torch.Tensor] = {}  # prompt index → [J]
        self.completions: dict[int, Any] = {}  # prompt index → its reference completion

    def _fill(self, c: int) -> None:
        ids = list(range(c * self.chunk, min(len(self.prompts), (c + 1) * self.chunk)))
        ps = [self.prompts[i] for i in ids]
        comps = self.complete(ps)
        scores = torch.tensor([checked_scores(j, ps, comps) for j in self.judges],
                              dtype=torch.float64)  # fmt: skip
        for k, i in enumerate(ids):
            self.cache[i], self.completions[i] = scores[:, k], comps[k]

    def rewards(self, prompts: Sequence[Any]) -> torch.Tensor:
        """``[J, B]`` reference rewards of ``prompts`` (each must be in the prompt source)."""
        idx = []
        for p in prompts:
            i = self.index.get(_key(p))
            if i is None:
                raise ValueError("log_sigmoid: a prompt outside the run's prompt source has no "
                                 f"reference reward: {str(p)[:60]!r}")  # fmt: skip
            if i not in self.cache:
                self._fill(i // self.chunk)
            idx.append(i)
        if not idx:
            return torch.zeros(len(self.judges), 0, dtype=torch.float64)
        return torch.stack([self.cache[i] for i in idx], dim=1)


class CombinedScoreJudge:
    """A ScoreJudge over several score judges (module docstring).

    Args:
        judges: J objects with ``score(prompts, completions)``.
        combination: ``weighted`` or ``log_sigmoid``.
        weights: J weights (``weighted`` only; default 1 each).

    ``log_sigmoid`` needs :meth:`bind_reference` before the first ``score`` call (the loop
    binds the reference policy's greedy completions once the models are loaded).
    ``last_components`` holds the ``[J, B]`` rewards of the last call.
    """

    def __init__(
        self,
        judges: Sequence[Any],
        *,
        combination: str = "weighted",
        weights: Sequence[float] | None = None,
    ):
        if not judges:
            raise ValueError("judges: give at least one score judge")
        for i, j in enumerate(judges):
            if not is_score_judge(j):
                raise ValueError(f"judges[{i}]: {getattr(j, 'name', j)!r} is not a score judge "
                                 "(it has no score(prompts, completions))")  # fmt: skip
        if combination not in COMBINATIONS:
            raise ValueError(f"reward_combination must be one of {', '.join(COMBINATIONS)}")
        if weights is not None and len(weights) != len(judges):
            raise ValueError(f"reward_weights: {len(weights)} weights for {len(judges)} judges")
        if weights is not None and combination != "weighted":
            raise ValueError("reward_weights: only with reward_combination: weighted")
        self.judges, self.combination = list(judges), combination
        self.weights = None if weights is None else [float(w) for w in weights]
        self.reference: ReferenceRewards | None = None
        self.last_components: torch.Tensor | None = None
        names = "+".join(str(getattr(j, "name", type(j).__name__)) for j in self.judges)
        self.name = f"{combination}({names})"

    @property
    def needs_reference(self) -> bool:
        return self.combination == "log_sigmoid"

    def bind_reference(
        self, prompts: Sequence[Any], complete: Callable[[list[Any]], list[Any]], *, chunk: int
    ) -> None:
        """Use ``complete`` (the reference completions) for r_ref over ``prompts``."""
        self.reference = ReferenceRewards(prompts, complete, self.judges, chunk=chunk)

    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        raw = torch.tensor([checked_scores(j, prompts, completions) for j in self.judges],
                           dtype=torch.float64)  # fmt: skip
        self.last_components = raw
        ref = None
        if self.needs_reference:
            if self.reference is None:
                raise RuntimeError("log_sigmoid: bind_reference() was not called")
            ref = self.reference.rewards(prompts)
        out = combine_rewards(raw, combination=self.combination, weights=self.weights,
                              reference=ref)  # fmt: skip
        return out.tolist()


def resolve_judges(
    specs: Sequence[Any],
    task: Any | None,
    *,
    combination: str,
    weights: Sequence[float] | None,
    resolve: Callable[..., Any],
) -> CombinedScoreJudge:
    """Build each spec with ``resolve`` (the loop's single-judge resolver, e.g.
    :func:`unialign.lm.online_io.resolve_judge`) and combine them; a pair judge is a
    :class:`ConfigError` naming ``judges[i]``."""
    judges = []
    for i, spec in enumerate(specs):
        j = resolve(spec, task)
        if not is_score_judge(j):
            raise ConfigError(f"judges[{i}]: {getattr(j, 'name', spec)!r} compares pairs; "
                              "reward combination needs score judges")  # fmt: skip
        judges.append(j)
    return CombinedScoreJudge(judges, combination=combination, weights=weights)


def greedy_completions(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    max_new_tokens: int,
    max_prompt_length: int | None,
    stop: Sequence[str],
    batch_size: int,
    adapter_off: bool = False,
) -> Callable[[list[Any]], list[Any]]:
    """``prompts → completions``: the greedy completion of ``model`` (with its LoRA adapter
    disabled when ``adapter_off``: the reference of a LoRA policy), tokenized and truncated as
    the loop's samples are, each in its prompt's format."""
    from unialign.lm.generation import SamplingParams, encode_prompts, generate
    from unialign.lm.online_judging import as_completion
    from unialign.lm.refcache import adapter_disabled

    def complete(prompts: list[Any]) -> list[Any]:
        ids = encode_prompts(tokenizer, prompts)
        if max_prompt_length:
            ids = [p[-max_prompt_length:] for p in ids]
        params = SamplingParams(num_samples=1, max_new_tokens=max_new_tokens, temperature=0.0,
                                stop=tuple(stop), seed=0)  # fmt: skip
        if adapter_off:
            with adapter_disabled(model):
                gens = generate(model, tokenizer, ids, params, batch_size=batch_size)
        else:
            gens = generate(model, tokenizer, ids, params, batch_size=batch_size)
        return [as_completion(p, t) for p, t in zip(prompts, gens.texts)]

    return complete
