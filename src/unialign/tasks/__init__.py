"""Hub-free language-model tasks: a synthetic language, a pretrained reference, gold signals.

One task today, the **style task** (``docs/tasks.md``): prompts ask about a topic, answers come
in several styles; a tiny causal LM pretrained in-process on the language is the reference
policy (cached on disk as an ordinary model directory); a hidden gold reward scores answers on
several features (one humped, for over-optimisation experiments); a skew-symmetric style
matrix plus a quality term defines intransitive pairwise preferences whose Nash equilibrium
over styles is known (a linear program). :func:`style_task` wires them together::

    from unialign.tasks import ReferenceConfig, style_task

    task = style_task(ReferenceConfig.small(), cache_dir="/tmp/unialign-cache")
    model, tokenizer = task.reference.load()
    prompts = task.prompts("train", n=8, seed=0)
    ...  # sample completions
    rewards = task.gold_reward(prompts, completions)
    p_win = task.judge(prompts, completions_a, completions_b)
    metrics = task.evaluate(prompts, completions)  # style shares, exploitability, gold
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unialign.tasks.game import (
    DEFAULT_MATRIX,
    StyleGame,
    cyclic_matrix,
    style_distribution,
    total_variation,
)
from unialign.tasks.gold import GoldFeatures, GoldReward, hump
from unialign.tasks.judge import PreferenceJudge, teacher_labels, win_rate
from unialign.tasks.language import (
    DESCRIPTORS,
    INVALID,
    STYLES,
    TOPICS,
    LanguageConfig,
    ParsedAnswer,
    SyntheticLanguage,
    classify_style,
    format_prompt,
    parse_answer,
    raw_prompt,
    topic_of,
)
from unialign.tasks.reference import (
    ReferenceConfig,
    ReferenceModel,
    default_cache_dir,
    fingerprint,
    pretrain,
    reference_policy,
    sample_completions,
    train_tokenizer,
)

__all__ = [
    "DEFAULT_MATRIX",
    "DESCRIPTORS",
    "INVALID",
    "STYLES",
    "TOPICS",
    "GoldFeatures",
    "GoldReward",
    "LanguageConfig",
    "ParsedAnswer",
    "PreferenceJudge",
    "ReferenceConfig",
    "ReferenceModel",
    "StyleGame",
    "StyleTask",
    "SyntheticLanguage",
    "classify_style",
    "cyclic_matrix",
    "default_cache_dir",
    "fingerprint",
    "format_prompt",
    "hump",
    "parse_answer",
    "pretrain",
    "raw_prompt",
    "reference_policy",
    "sample_completions",
    "style_distribution",
    "style_task",
    "teacher_labels",
    "topic_of",
    "total_variation",
    "train_tokenizer",
    "win_rate",
]


@dataclass
class StyleTask:
    """The style task: reference policy, prompts, gold reward, judge and style game.

    Attributes:
        reference: the pretrained reference policy on disk (``reference.load()``).
        language: the synthetic language (styles, prompts, fitting descriptors).
        game: the style matrix and its equilibrium.
        gold_reward: ``(prompts, completions) -> list[float]`` in [0, 1].
        judge: ``(prompts, completions_a, completions_b) -> list[float]`` of P(a ≻ b).
    """

    reference: ReferenceModel
    language: SyntheticLanguage
    game: StyleGame
    gold_reward: GoldReward
    judge: PreferenceJudge

    def prompts(
        self,
        split: str = "train",
        *,
        n: int | None = None,
        seed: int = 0,
        conversational: bool = False,
    ) -> list[Any]:
        """Train or held-out eval prompts (see :meth:`SyntheticLanguage.prompts`)."""
        return self.language.prompts(split, n=n, seed=seed, conversational=conversational)

    def evaluate(self, prompts: Sequence[Any], completions: Sequence[Any]) -> dict[str, float]:
        """Metrics of a policy's samples (one completion per prompt entry; repeat a prompt for
        several samples): ``eval/style/<name>`` shares (and ``eval/style/invalid``),
        ``eval/equilibrium_tv``, ``eval/exploitability``, ``eval/gold_reward`` and
        ``eval/peak_reached`` (share of answers with at least n* distinct descriptors)."""
        dist = style_distribution(completions, self.language.styles)
        feats = [self.gold_reward.features(p, c) for p, c in zip(prompts, completions, strict=True)]
        out = {f"eval/style/{s}": float(x) for s, x in zip((*self.language.styles, INVALID), dist)}
        out["eval/equilibrium_tv"] = self.game.distance(dist)
        out["eval/exploitability"] = self.game.exploitability(dist)
        out["eval/gold_reward"] = float(np.mean([self.gold_reward.score(f) for f in feats]))
        out["eval/peak_reached"] = float(
            np.mean([f.distinct >= self.gold_reward.peak for f in feats])
        )
        return out


def style_task(
    reference: ReferenceConfig | None = None,
    *,
    matrix: Sequence[Sequence[float]] | np.ndarray | None = None,
    quality_weight: float = 1.0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> StyleTask:
    """Build the style task: pretrain (or load from the cache) the reference for ``reference``
    and wire the gold reward, the game (``matrix`` over the language's styles, default
    :data:`DEFAULT_MATRIX`) and the judge (quality weight η)."""
    reference = reference or ReferenceConfig()
    language = SyntheticLanguage(reference.language, reference.seed)
    matrix = DEFAULT_MATRIX if matrix is None else matrix
    game = StyleGame(matrix, language.styles)
    gold = GoldReward(language)
    judge = PreferenceJudge(game, gold, quality_weight)
    ref = reference_policy(reference, cache_dir=cache_dir, progress=progress)
    return StyleTask(ref, language, game, gold, judge)
