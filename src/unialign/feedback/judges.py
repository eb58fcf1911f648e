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

The judges themselves live in sibling modules; :func:`build_judge` makes any of them from a
small typed config (:data:`JudgeConfig`, one model per ``kind``), which an online loop's config
embeds:

=======================  ======================================  =============================
``kind``                 judge                                   module
=======================  ======================================  =============================
``reward_function``      ``(prompts, completions) -> scores``    :mod:`~.python_judges`
``reward_model``         local reward model(s), an ensemble      :mod:`~.reward_models`
``preference_function``  ``(prompts, a, b) -> P(a ≻ b)``         :mod:`~.python_judges`
``teacher``              B-Pref teacher over a score judge       :mod:`~.teacher_judge`
``human``                annotators through the feedback store   :mod:`~.human`
=======================  ======================================  =============================

A config that cannot be used raises :class:`JudgeConfigError` naming the field (or the spec)
and what to do. ``docs/judges.md`` has a config snippet per kind.

This module imports nothing from the engines (``lm/``, ``control/``, ``bilevel/``); it imports
its sibling judge modules only inside :func:`build_judge` (they import this module, and the
reward-model judge imports ``transformers``, which a loop with a Python judge need not load).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from unialign.config import ConfigError
from unialign.feedback.types import Text

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "JUDGE_KINDS",
    "HumanJudgeConfig",
    "JudgeConfig",
    "JudgeConfigError",
    "JudgeError",
    "PairJudge",
    "PreferenceFunctionJudgeConfig",
    "RewardFunctionJudgeConfig",
    "RewardModelJudgeConfig",
    "ScoreJudge",
    "ScoreJudgeConfig",
    "TeacherJudgeConfig",
    "build_judge",
    "checked_preferences",
    "checked_scores",
    "parse_judge_config",
]


class JudgeError(RuntimeError):
    """A judge failed or answered out of contract; the message names the judge and sample."""


class JudgeConfigError(ConfigError):
    """A judge cannot be built from its config or spec; the message names the field or spec
    and says what to do."""


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


def _batch(prompts: Sequence[Text], what: str) -> str:
    first = f", the first prompt {_preview(prompts[0])!r}" if len(prompts) else ""
    return f"(on a batch of {len(prompts)} {what}{first})"


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
        raise JudgeError(
            f"judge {judge.name!r} raised {type(err).__name__}: {err} "
            f"{_batch(prompts, 'completions')}"
        ) from err
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
        raise JudgeError(
            f"judge {judge.name!r} raised {type(err).__name__}: {err} {_batch(prompts, 'pairs')}"
        ) from err
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


# -- configs and the factory ---------------------------------------------------------------------


class _JudgeConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RewardFunctionJudgeConfig(_JudgeConfigBase):
    """A Python reward function ``(prompts, completions) -> list[float]`` (a score judge)."""

    kind: Literal["reward_function"] = "reward_function"
    path: str = Field(
        description="the function: 'module:function' (imported from sys.path) or "
        "'path/to/file.py:function' (relative to the working directory)"
    )
    name: str | None = Field(None, description="labeller name judge:<name>; default: function")


class RewardModelJudgeConfig(_JudgeConfigBase):
    """One reward model or an ensemble, loaded from local directories (a score judge)."""

    kind: Literal["reward_model"] = "reward_model"
    paths: list[str] = Field(
        min_length=1,
        description="local model directories (AutoModelForSequenceClassification with "
        "num_labels 1, and its tokenizer); several make an ensemble",
    )
    aggregate: Literal["mean", "min", "uwo"] = Field(
        "mean", description="how an ensemble's scores combine: mean, min, uwo (mean − λ·var)"
    )
    uwo_coef: float = Field(0.1, ge=0, description="λ of aggregate uwo (population variance)")
    batch_size: int = Field(8, ge=1, description="samples per forward pass")
    max_length: int = Field(
        1024, ge=2, description="tokens per sample; longer texts lose their start"
    )
    append_eos: bool = Field(True, description="add EOS to standard-format texts (as TRL trains)")
    device: str | None = Field(None, description="cuda, cpu, cuda:1, …; default: cuda if present")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="weights' dtype; default: as saved"
    )
    name: str | None = Field(None, description="labeller name judge:<name>; default from paths")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class PreferenceFunctionJudgeConfig(_JudgeConfigBase):
    """A Python pairwise preference function ``(prompts, a, b) -> P(a ≻ b)`` (a pair judge)."""

    kind: Literal["preference_function"] = "preference_function"
    path: str = Field(description="'module:function' or 'path/to/file.py:function'")
    name: str | None = Field(None, description="labeller name judge:<name>; default: function")


#: The judges a teacher can label over: the score judges.
ScoreJudgeConfig = Annotated[
    RewardFunctionJudgeConfig | RewardModelJudgeConfig, Field(discriminator="kind")
]


class TeacherJudgeConfig(_JudgeConfigBase):
    """A simulated B-Pref teacher labelling pairs from a score judge's scores (a pair judge)."""

    kind: Literal["teacher"] = "teacher"
    teacher: str = Field(
        "oracle",
        description="oracle, stochastic, myopic, mistake, skip, equal, or several joined by + "
        "(docs/preference-rl.md)",
    )
    beta: float = Field(1.0, description="stochastic: rationality β ≥ 0 (.inf: deterministic)")
    gamma: float = Field(0.9, description="myopic: discount γ ∈ (0, 1] (no effect on H = 1)")
    eps_mistake: float = Field(0.1, description="mistake: flip probability")
    eps_skip: float = Field(0.1, description="skip: skip when max score ≤ eps_skip · R̄")
    eps_equal: float = Field(0.1, description="equal: ½ when |score gap| < eps_equal · R̄")
    seed: int = Field(0, description="seeds the teacher's random draws")
    mean_score: float | None = Field(
        None, description="a fixed R̄ for skip/equal; default: running mean of scores seen"
    )
    over: ScoreJudgeConfig = Field(
        description="the hidden reward: a reward_function or reward_model config, or a "
        "'module:function' string"
    )

    @field_validator("over", mode="before")
    @classmethod
    def _function_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"kind": "reward_function", "path": value}
        return value

    @field_validator("teacher", "beta", "gamma", "eps_mistake", "eps_skip", "eps_equal")
    @classmethod
    def _valid_teacher_parameter(cls, value: Any, info: ValidationInfo) -> Any:
        from unialign.feedback.teachers import TeacherConfig

        # TeacherConfig's own checks, one field at a time, so that the error names the field
        TeacherConfig(**{"kind" if info.field_name == "teacher" else info.field_name: value})
        return value

    def teacher_config(self) -> Any:
        """The :class:`~unialign.feedback.teachers.TeacherConfig` these fields describe."""
        from unialign.feedback.teachers import TeacherConfig

        return TeacherConfig(
            kind=self.teacher,
            beta=self.beta,
            gamma=self.gamma,
            eps_mistake=self.eps_mistake,
            eps_skip=self.eps_skip,
            eps_equal=self.eps_equal,
        )


class HumanJudgeConfig(_JudgeConfigBase):
    """People labelling in the feedback store (a pair judge)."""

    kind: Literal["human"] = "human"
    store: str = Field(description="the feedback store file the annotators label in")
    timeout_s: float = Field(
        ge=0, description="longest wait per batch of pairs (.inf: no limit); missing → NaN"
    )
    poll_s: float = Field(2.0, gt=0, description="seconds between two reads of the store")
    annotators: list[str] | None = Field(
        None, description="accept labels only from these (ada or human:ada); default: anyone"
    )


#: Any judge's config, told apart by ``kind``; embed it in a loop's config as a field type.
JudgeConfig = Annotated[
    RewardFunctionJudgeConfig
    | RewardModelJudgeConfig
    | PreferenceFunctionJudgeConfig
    | TeacherJudgeConfig
    | HumanJudgeConfig,
    Field(discriminator="kind"),
]

_CONFIGS: dict[str, type[_JudgeConfigBase]] = {
    "reward_function": RewardFunctionJudgeConfig,
    "reward_model": RewardModelJudgeConfig,
    "preference_function": PreferenceFunctionJudgeConfig,
    "teacher": TeacherJudgeConfig,
    "human": HumanJudgeConfig,
}
#: The judge kinds :func:`build_judge` knows.
JUDGE_KINDS = tuple(_CONFIGS)


def _field_errors(err: ValidationError, source: str) -> JudgeConfigError:
    lines = []
    for e in err.errors():
        # drop the union tag pydantic puts after a discriminated field ("over.reward_model.x")
        loc = [str(p) for p in e["loc"]]
        loc = [p for j, p in enumerate(loc) if not (j and loc[j - 1] == "over" and p in _CONFIGS)]
        msg = e["msg"].removeprefix("Value error, ")
        field = ".".join(loc)
        lines.append(f"  field '{field}': {msg} (got {e.get('input')!r:.120})" if field else msg)
    return JudgeConfigError(f"{source}: invalid judge config\n" + "\n".join(lines))


def parse_judge_config(spec: str | Mapping[str, Any] | BaseModel, *, source: str = "judge") -> Any:
    """Validate a judge spec into its config model (one of :data:`JudgeConfig`).

    ``spec`` is a mapping with a ``kind`` (see :data:`JUDGE_KINDS`), an already validated
    config, or a string — shorthand for ``{"kind": "reward_function", "path": spec}``.
    ``source`` names the spec in errors (e.g. ``"run.yaml: judge"``). Raises
    :class:`JudgeConfigError` naming every bad field.
    """
    if isinstance(spec, _JudgeConfigBase):
        return spec
    if isinstance(spec, str):
        spec = {"kind": "reward_function", "path": spec}
    if not isinstance(spec, Mapping):
        raise JudgeConfigError(
            f"{source}: a judge config is a mapping with a 'kind' field (or a 'module:function' "
            f"string), got {type(spec).__name__}"
        )
    kind = spec.get("kind")
    if kind not in _CONFIGS:
        got = "no 'kind' field" if "kind" not in spec else f"got {kind!r}"
        raise JudgeConfigError(
            f"{source}: field 'kind' must be one of {', '.join(JUDGE_KINDS)} ({got})"
        )
    model = _CONFIGS[kind]
    unknown = sorted(set(spec) - set(model.model_fields))
    if unknown:
        raise JudgeConfigError(
            f"{source}: unknown field(s) {', '.join(map(str, unknown))} for a {kind} judge; its "
            f"fields are {', '.join(model.model_fields)}"
        )
    try:
        return model.model_validate(dict(spec))
    except ValidationError as err:
        raise _field_errors(err, source) from None


def build_judge(
    spec: str | Mapping[str, Any] | BaseModel,
    *,
    policy_version: str | int | Callable[[], str | int | None] | None = None,
    step_fn: Callable[[], int] | None = None,
    stop_fn: Callable[[], bool] | None = None,
    console: Console | None = None,
    source: str = "judge",
) -> ScoreJudge | PairJudge:
    """The judge a config describes (see :func:`parse_judge_config` for ``spec``).

    Score judges (``reward_function``, ``reward_model``) have ``.score``; pair judges
    (``preference_function``, ``teacher``, ``human``) have ``.compare``: tell them apart with
    ``isinstance(judge, ScoreJudge)``. ``policy_version``, ``step_fn``, ``stop_fn`` and
    ``console`` are the run-time hooks of a ``human`` judge (see
    :class:`unialign.feedback.human.HumanJudge`); other kinds ignore them. Raises
    :class:`JudgeConfigError` for a bad config, a missing function, file or model directory.
    """
    cfg = parse_judge_config(spec, source=source)
    if isinstance(cfg, RewardFunctionJudgeConfig):
        from unialign.feedback.python_judges import load_reward_function

        return load_reward_function(cfg.path, name=cfg.name)
    if isinstance(cfg, PreferenceFunctionJudgeConfig):
        from unialign.feedback.python_judges import load_preference_function

        return load_preference_function(cfg.path, name=cfg.name)
    if isinstance(cfg, RewardModelJudgeConfig):
        from unialign.feedback.reward_models import RewardModelJudge

        return RewardModelJudge(
            cfg.paths,
            aggregate=cfg.aggregate,
            uwo_coef=cfg.uwo_coef,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            append_eos=cfg.append_eos,
            device=cfg.device,
            dtype=cfg.dtype,
            name=cfg.name,
        )
    if isinstance(cfg, TeacherJudgeConfig):
        from unialign.feedback.teacher_judge import TeacherJudge

        over = build_judge(cfg.over, source=f"{source}.over")
        return TeacherJudge(over, cfg.teacher_config(), cfg.seed, mean_score=cfg.mean_score)
    from unialign.feedback.human import HumanJudge

    return HumanJudge(
        cfg.store,
        timeout_s=cfg.timeout_s,
        poll_s=cfg.poll_s,
        annotators=cfg.annotators,
        policy_version=policy_version,
        step_fn=step_fn,
        stop_fn=stop_fn,
        console=console,
    )
