"""The pairwise judge of the style task and the noisy labellers built on the same gold signals.

For two answers a, b to one prompt, of styles i, j (:func:`classify_style`) and gold rewards
q_a, q_b ∈ [0, 1] (:class:`GoldReward`, the within-style quality):

    P(a ≻ b) = M[i, j] + η · (q_a − q_b) · min(M[i, j], 1 − M[i, j])        η ∈ [0, 1]

An invalid answer loses surely to a valid one (P = 0 or 1) and ties with another (½). Since
M[j, i] = 1 − M[i, j], the formula gives P(b ≻ a) = 1 − P(a ≻ b), stays in [0, 1], and leaves
dominance (M = 0 or 1) untouched; between styles that tie (M = ½, e.g. a style with itself)
the better answer wins with probability ½ + η(q_a − q_b)/2. With equal qualities it is the
style game of :class:`StyleGame`, whose equilibrium and exploitability are exact; because P
grows with q_a whatever the styles, a policy that maximises quality too faces exactly that
game.

Floating point: the judge evaluates the formula for the pair in a canonical order and returns
``1 − p`` for the other order, so P(a ≻ b) + P(b ≻ a) == 1 exactly.

Labellers: :meth:`PreferenceJudge.sample_labels` draws y ~ Bernoulli(P(a ≻ b));
:func:`teacher_labels` hands the gold rewards to a B-Pref :class:`Teacher`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unialign.feedback.teachers import Teacher, TeacherOutput
from unialign.tasks.game import StyleGame
from unialign.tasks.gold import GoldReward
from unialign.tasks.language import classify_style, completion_text

__all__ = ["PreferenceJudge", "teacher_labels", "win_rate"]

Prompt = str | Sequence[dict[str, Any]]
Completion = str | Sequence[dict[str, Any]]


@dataclass(frozen=True)
class PreferenceJudge:
    """``(prompts, completions_a, completions_b) -> list[float]`` of P(a ≻ b).

    Args:
        game: the style matrix M (its style names must be the language's styles).
        gold: the gold reward that serves as the quality term.
        quality_weight: η ∈ [0, 1]; 0 makes P depend on the styles alone.
    """

    game: StyleGame
    gold: GoldReward
    quality_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.quality_weight <= 1:
            raise ValueError(f"quality_weight must lie in [0, 1], got {self.quality_weight!r}")

    def _key(self, prompt: Prompt, completion: Completion) -> tuple[int, float, str]:
        style = self.game.index(classify_style(completion))
        quality = self.gold([prompt], [completion])[0]
        return style, quality, completion_text(completion)

    def _forward(self, a: tuple[int, float, str], b: tuple[int, float, str]) -> float:
        invalid = self.game.n_styles
        if a[0] == invalid or b[0] == invalid:
            return 0.5 if a[0] == b[0] else float(b[0] == invalid)
        m = self.game.matrix[a[0], b[0]]
        return float(m + self.quality_weight * (a[1] - b[1]) * min(m, 1.0 - m))

    def probabilities(
        self,
        prompts: Sequence[Prompt],
        completions_a: Sequence[Completion],
        completions_b: Sequence[Completion],
    ) -> list[float]:
        """P(a_n ≻ b_n | prompt_n) for each of the N pairs."""
        if not len(prompts) == len(completions_a) == len(completions_b):
            raise ValueError(
                f"got {len(prompts)} prompts, {len(completions_a)} completions_a and "
                f"{len(completions_b)} completions_b"
            )
        out = []
        for prompt, a, b in zip(prompts, completions_a, completions_b):
            ka, kb = self._key(prompt, a), self._key(prompt, b)
            out.append(self._forward(ka, kb) if ka <= kb else 1.0 - self._forward(kb, ka))
        return out

    __call__ = probabilities

    def sample_labels(
        self,
        prompts: Sequence[Prompt],
        completions_a: Sequence[Completion],
        completions_b: Sequence[Completion],
        rng: np.random.Generator,
    ) -> list[float]:
        """Noisy pairwise labels: 1.0 (a preferred) with probability P(a ≻ b), else 0.0."""
        probs = np.asarray(self.probabilities(prompts, completions_a, completions_b))
        return (rng.random(probs.size) < probs).astype(np.float64).tolist()


def win_rate(
    judge: PreferenceJudge,
    prompts: Sequence[Prompt],
    completions_a: Sequence[Completion],
    completions_b: Sequence[Completion],
) -> float:
    """Mean P(a_n ≻ b_n) over index-matched pairs: the expected win rate of the samples
    ``completions_a`` (e.g. a trained policy's) against ``completions_b`` (e.g. the
    reference's) for the same prompts."""
    probs = judge.probabilities(prompts, completions_a, completions_b)
    if not probs:
        raise ValueError("no pairs to compare")
    return float(np.mean(probs))


def teacher_labels(
    teacher: Teacher,
    gold: GoldReward,
    prompts: Sequence[Prompt],
    completions_a: Sequence[Completion],
    completions_b: Sequence[Completion],
    rng: np.random.Generator,
) -> TeacherOutput:
    """Label N pairs with a simulated B-Pref teacher over the gold reward (scalar returns).

    A teacher with a skip or equal rule needs ``teacher.update_mean_return(...)`` first (e.g.
    the mean gold reward of recent samples).
    """
    r_a = torch.tensor(gold(prompts, completions_a), dtype=torch.float64)
    r_b = torch.tensor(gold(prompts, completions_b), dtype=torch.float64)
    return teacher.label_returns(r_a, r_b, rng)
