"""Simulated B-Pref teachers over a score judge: noisy pairwise labels from hidden scores.

:class:`TeacherJudge` scores both completions of each pair with a :class:`ScoreJudge` (a
reward function or reward model playing the hidden "true" reward) and labels the pair with
:meth:`unialign.feedback.teachers.Teacher.label_returns` on the two scores (scalar returns,
H = 1): 1 (a better), 0 (b better), ½ (equal) or NaN (skipped).

The skip and equal rules need R̄, the typical score of one candidate (their thresholds are
ε·R̄). Here R̄ is the **running mean of every score this judge has seen**, the current batch
included (both sides of every pair, over all calls), updated before the batch is labelled, so
the first batch already has thresholds. Pass ``mean_score`` to fix R̄ instead: B-Pref's rules
assume a reward whose zero means "nothing achieved" and whose mean is positive; with a reward
model's scores (arbitrary offset, often negative) a running R̄ may make the thresholds
meaningless (a negative θ_equal never fires), so shift the reward or fix R̄.

Labels are deterministic given ``seed`` and the sequence of calls (one NumPy generator,
advanced by each call); :meth:`TeacherJudge.state_dict` saves the generator and the running
mean for a checkpoint.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unialign.feedback.judges import JudgeConfigError, ScoreJudge, checked_scores
from unialign.feedback.teachers import Teacher, TeacherConfig
from unialign.feedback.types import Text

__all__ = ["TeacherJudge"]


class TeacherJudge:
    """A :class:`PairJudge` named ``teacher:<kind>``; see the module docstring.

    Args:
        score_judge: the hidden reward each completion is scored with.
        config: which B-Pref teacher (``TeacherConfig(kind="stochastic", beta=…)``).
        seed: seeds the teacher's random draws (stochastic and mistake rules).
        mean_score: a fixed R̄ for the skip/equal thresholds instead of the running mean.
    """

    def __init__(
        self,
        score_judge: ScoreJudge,
        config: TeacherConfig | None = None,
        seed: int = 0,
        *,
        mean_score: float | None = None,
    ) -> None:
        if not isinstance(score_judge, ScoreJudge):
            raise JudgeConfigError(
                f"a teacher judge labels from scores: 'over' must be a score judge (with a "
                f".score method), got {type(score_judge).__name__}"
            )
        if mean_score is not None and not math.isfinite(mean_score):
            raise JudgeConfigError(f"teacher mean_score must be finite, got {mean_score!r}")
        self.score_judge = score_judge
        self.teacher = Teacher(config or TeacherConfig())
        self.mean_score = mean_score
        self.rng = np.random.default_rng(seed)
        self.scores_seen = 0
        self.score_total = 0.0

    @property
    def name(self) -> str:
        return self.teacher.name

    @property
    def running_mean(self) -> float | None:
        """Mean of every score seen so far (None before the first call)."""
        return self.score_total / self.scores_seen if self.scores_seen else None

    def compare(
        self,
        prompts: Sequence[Text],
        completions_a: Sequence[Text],
        completions_b: Sequence[Text],
    ) -> list[float]:
        """Teacher labels of the pairs from the score judge's scores (NaN where skipped)."""
        if len(prompts) == 0:
            return []
        scores_a = checked_scores(self.score_judge, prompts, completions_a)
        scores_b = checked_scores(self.score_judge, prompts, completions_b)
        self.scores_seen += len(scores_a) + len(scores_b)
        self.score_total += math.fsum(scores_a) + math.fsum(scores_b)
        r_bar = self.mean_score if self.mean_score is not None else self.running_mean
        self.teacher.update_mean_return(r_bar)
        out = self.teacher.label_returns(
            torch.tensor(scores_a, dtype=torch.float64),
            torch.tensor(scores_b, dtype=torch.float64),
            self.rng,
        )
        return out.labels.tolist()

    def state_dict(self) -> dict[str, Any]:
        """The generator state and the running mean (plain data for a checkpoint)."""
        return {
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "scores_seen": self.scores_seen,
            "score_total": self.score_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output: later labels continue the saved sequence."""
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.scores_seen = int(state["scores_seen"])
        self.score_total = float(state["score_total"])
