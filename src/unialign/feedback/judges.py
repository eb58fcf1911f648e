"""Judges: where an online loop's feedback on language-model completions comes from.

Two interfaces cover every source of judgement an online loop asks:

- a :class:`ScoreJudge` scores each completion on its own, ``(prompts, completions) ->
  list[float]`` — a Python reward function, a reward model (or an ensemble of them);
- a :class:`PairJudge` compares two completions of one prompt, ``(prompts, completions_a,
  completions_b) -> list[float]``, each value P(a ≻ b) ∈ [0, 1] (1: a is better, 0: b, ½: tie)
  or NaN where the judge skipped the pair — a pairwise preference function (which may be
  intransitive), a simulated B-Pref teacher over hidden rewards, or people labelling in the
  feedback store.

A prompt or a completion is a string or a list of ``{"role", "content"}`` messages
(:data:`unialign.feedback.types.Text`). Every judge has a ``name`` (recorded as the labeller
in the feedback store: ``judge:<name>``, ``teacher:<kind>``, ``human:<annotator>``). A judge
that raises, returns the wrong number of values, or returns NaN where it may not stops the run
with a :class:`JudgeError` naming the judge and the sample (:func:`checked_scores`,
:func:`checked_preferences`).

This module imports nothing from the engines (``lm/``, ``control/``, ``bilevel/``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from unialign.feedback.types import Text

__all__ = [
    "JudgeError",
    "ScoreJudge",
    "PairJudge",
    "checked_scores",
    "checked_preferences",
]


class JudgeError(RuntimeError):
    """A judge failed or answered out of contract; the message names the judge and sample."""


@runtime_checkable
class ScoreJudge(Protocol):
    """Scores completions one by one (higher is better)."""

    @property
    def name(self) -> str: ...

    def score(self, prompts: Sequence[Text], completions: Sequence[Text]) -> list[float]:
        """One finite float per (prompt, completion)."""
        ...


@runtime_checkable
class PairJudge(Protocol):
    """Compares two completions of one prompt."""

    @property
    def name(self) -> str: ...

    def compare(
        self,
        prompts: Sequence[Text],
        completions_a: Sequence[Text],
        completions_b: Sequence[Text],
    ) -> list[float]:
        """P(a ≻ b) ∈ [0, 1] per pair, or NaN where the judge skipped it."""
        ...


def _preview(x: object, width: int = 60) -> str:
    text = x if isinstance(x, str) else repr(x)
    return text if len(text) <= width else text[: width - 1] + "…"


def checked_scores(
    judge: ScoreJudge, prompts: Sequence[Text], completions: Sequence[Text]
) -> list[float]:
    """``judge.score(...)`` with its contract enforced: errors become :class:`JudgeError`
    naming the judge (and the sample, for a non-finite value)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    try:
        values = list(judge.score(prompts, completions))
    except JudgeError:
        raise
    except Exception as err:
        raise JudgeError(f"judge {judge.name!r} raised {type(err).__name__}: {err}") from err
    if len(values) != len(completions):
        raise JudgeError(
            f"judge {judge.name!r} returned {len(values)} scores for {len(completions)} "
            "completions; it must return one per completion"
        )
    out = []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            raise JudgeError(
                f"judge {judge.name!r} returned {v!r} for sample {i} (prompt "
                f"{_preview(prompts[i])!r}, completion {_preview(completions[i])!r}); "
                "scores must be finite numbers"
            )
        out.append(f)
    return out


def checked_preferences(
    judge: PairJudge,
    prompts: Sequence[Text],
    completions_a: Sequence[Text],
    completions_b: Sequence[Text],
    *,
    allow_skip: bool = True,
) -> list[float]:
    """``judge.compare(...)`` with its contract enforced: values in [0, 1], NaN (a skip) only
    with ``allow_skip``; errors become :class:`JudgeError` naming the judge and the pair."""
    n = len(prompts)
    if not (len(completions_a) == len(completions_b) == n):
        raise ValueError(
            f"{n} prompts, {len(completions_a)} completions_a and {len(completions_b)} "
            "completions_b: one pair per prompt"
        )
    try:
        values = list(judge.compare(prompts, completions_a, completions_b))
    except JudgeError:
        raise
    except Exception as err:
        raise JudgeError(f"judge {judge.name!r} raised {type(err).__name__}: {err}") from err
    if len(values) != n:
        raise JudgeError(
            f"judge {judge.name!r} returned {len(values)} preferences for {n} pairs; it must "
            "return one per pair"
        )
    out = []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = -1.0
        skipped = math.isnan(f)
        if (skipped and not allow_skip) or (not skipped and not 0.0 <= f <= 1.0):
            raise JudgeError(
                f"judge {judge.name!r} returned {v!r} for pair {i} (prompt "
                f"{_preview(prompts[i])!r}); a preference must be a probability in [0, 1]"
                + ("" if allow_skip else " (this judge may not skip)")
            )
        out.append(f)
    return out
