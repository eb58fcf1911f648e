"""Hub-free language-model tasks: a synthetic language, gold signals, intransitive preferences.

The style task (``docs/tasks.md``): prompts ask about a topic, answers come in several styles;
a hidden gold reward scores answers on several features (one humped, for over-optimisation
experiments); a skew-symmetric style matrix plus a quality term defines intransitive pairwise
preferences whose Nash equilibrium over styles is known (a linear program).
"""

from __future__ import annotations

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
    "StyleGame",
    "SyntheticLanguage",
    "classify_style",
    "cyclic_matrix",
    "format_prompt",
    "hump",
    "parse_answer",
    "raw_prompt",
    "style_distribution",
    "teacher_labels",
    "topic_of",
    "total_variation",
    "win_rate",
]
