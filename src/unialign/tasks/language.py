"""A synthetic question-answer language whose answers come in recognisable *styles*.

A prompt asks about one topic ("describe the otter ."); an answer names a topic and lists
descriptors ("calm", "wet", ...) in one of several styles, each a small grammar with its own
markers, so that a style can be read back from text without a model:

==========  ====================================================================
``list``      ``items about otter : calm , wet , small .``
``story``     ``once there was a otter that was calm and wet . the end .``
``question``  ``is the otter calm ? is it wet ? is it small ?``
``exclaim``   ``wow , the otter ! calm ! wet !``
``report``    ``report on otter : calm ; wet ; small . end of report .``
==========  ====================================================================

An answer that none of the grammars parses (a truncated sample, a stray word) has the style
:data:`INVALID`. The corpus draws the style independently of the prompt (with the weights of
:class:`LanguageConfig`), the number of descriptors from a truncated geometric law (so long
answers are rare), the descriptors mostly from a set that *fits* the prompt's topic (fixed by
the seed), and names the prompt's topic most of the time. Those draws are what the gold reward
(:mod:`unialign.tasks.gold`) scores, and what a tiny LM pretrained on the corpus reproduces.

Prompt formats: a *raw* prompt is the question itself; the *plain* prompt the models see is
``"Q: <raw>\\nA:"`` and its completion starts with a space (``" items about ..."``); the
*conversational* prompt is ``[{"role": "user", "content": <raw>}]``, which the tokenizer's chat
template renders to the same text, so one pretrained model serves both formats.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "STYLES",
    "INVALID",
    "TOPICS",
    "DESCRIPTORS",
    "PROMPT_TEMPLATES",
    "LanguageConfig",
    "ParsedAnswer",
    "SyntheticLanguage",
    "Example",
    "parse_answer",
    "topic_of",
    "classify_style",
    "format_prompt",
    "raw_prompt",
    "completion_text",
]

INVALID = "invalid"

# fmt: off
TOPICS: tuple[str, ...] = (
    "otter", "lamp", "river", "castle", "garden", "robot", "violin", "comet", "forest", "kettle",
    "dragon", "harbor", "meadow", "pencil", "tiger", "window", "glacier", "lantern", "parrot",
    "bridge", "candle", "desert", "engine", "falcon", "island", "jacket", "ladder", "mirror",
    "orchard", "pirate", "rocket", "tunnel",
)

DESCRIPTORS: tuple[str, ...] = (
    "bright", "calm", "cold", "dark", "deep", "dry", "fast", "gentle", "golden", "heavy",
    "hollow", "huge", "loud", "narrow", "noisy", "old", "pale", "proud", "quiet", "rough",
    "round", "rusty", "sharp", "shiny", "silent", "slow", "small", "smooth", "soft", "steep",
    "strange", "sweet", "tall", "tiny", "warm", "wet", "wide", "wild", "wise", "young",
)
# fmt: on

PROMPT_TEMPLATES = (
    "tell me about the {topic} .",
    "describe the {topic} .",
    "what is the {topic} like ?",
    "say something about the {topic} .",
    "write about a {topic} .",
    "i want to hear about the {topic} .",
)

_W = "[a-z]+"


@dataclass(frozen=True)
class _Style:
    """One answer grammar: how to write it and the regex that reads it back.

    The regex's group 1 is the topic; the descriptors are the words of group 2 that are not
    the separators (``sep`` splits the group into items).
    """

    name: str
    head: str  # format string with {topic}, {first}
    tail: str
    sep: str
    pattern: re.Pattern[str]

    def render(self, topic: str, items: Sequence[str]) -> str:
        body = self.head.format(topic=topic, first=items[0])
        return body + "".join(self.sep.format(item=w) for w in items[1:]) + self.tail


def _style(name: str, head: str, sep: str, tail: str, regex: str) -> _Style:
    return _Style(name, head, tail, sep, re.compile(regex))


# Each grammar starts with its own first word, so at most one of them parses a string.
_STYLES = {
    s.name: s
    for s in (
        _style(
            "list",
            "items about {topic} : {first}",
            " , {item}",
            " .",
            rf"items about ({_W}) : ({_W}(?: , {_W})*) \.",
        ),
        _style(
            "story",
            "once there was a {topic} that was {first}",
            " and {item}",
            " . the end .",
            rf"once there was a ({_W}) that was ({_W}(?: and {_W})*) \. the end \.",
        ),
        _style(
            "question",
            "is the {topic} {first} ?",
            " is it {item} ?",
            "",
            rf"is the ({_W}) ({_W} \?(?: is it {_W} \?)*)",
        ),
        _style(
            "exclaim",
            "wow , the {topic} ! {first} !",
            " {item} !",
            "",
            rf"wow , the ({_W}) ! ({_W} !(?: {_W} !)*)",
        ),
        _style(
            "report",
            "report on {topic} : {first}",
            " ; {item}",
            " . end of report .",
            rf"report on ({_W}) : ({_W}(?: ; {_W})*) \. end of report \.",
        ),
    )
}
STYLES: tuple[str, ...] = tuple(_STYLES)
# Words of a style's body that separate descriptors rather than being one.
_SEPARATORS = {",", "and", "?", "is", "it", "!", ";"}


@dataclass(frozen=True)
class ParsedAnswer:
    """What the grammars read from one answer.

    Attributes:
        style: one of :data:`STYLES`, or :data:`INVALID` when no grammar parses the text (then
            ``topic`` is ``""`` and ``items`` is empty).
        topic: the topic word the answer names.
        items: the descriptor words in order (any lowercase words, repeats kept).
    """

    style: str
    topic: str = ""
    items: tuple[str, ...] = ()


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The answer text of a completion: a string, or the last message of a conversational
    completion; surrounding whitespace and a trailing ``</s>`` are dropped."""
    if not isinstance(completion, str):
        completion = completion[-1]["content"] if len(completion) else ""
    text = completion.strip()
    return text.removesuffix("</s>").strip()


def parse_answer(completion: str | Sequence[dict[str, Any]]) -> ParsedAnswer:
    """Parse an answer with every style's grammar (deterministic; see the module docstring)."""
    text = completion_text(completion)
    for name, style in _STYLES.items():
        m = style.pattern.fullmatch(text)
        if m:
            items = tuple(w for w in m.group(2).split() if w not in _SEPARATORS)
            return ParsedAnswer(name, m.group(1), items)
    return ParsedAnswer(INVALID)


def classify_style(completion: str | Sequence[dict[str, Any]]) -> str:
    """The style name of an answer, :data:`INVALID` if no grammar parses it."""
    return parse_answer(completion).style


def format_prompt(raw: str) -> str:
    """The plain prompt string for a raw question: ``"Q: <raw>\\nA:"``."""
    return f"Q: {raw}\nA:"


def raw_prompt(prompt: str | Sequence[dict[str, Any]]) -> str:
    """The raw question inside a plain or conversational prompt (the last user message)."""
    if not isinstance(prompt, str):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return users[-1] if users else ""
    text = prompt.strip()
    if text.startswith("Q:"):
        text = text[2:]
    return text.removesuffix("A:").strip()


@dataclass(frozen=True)
class LanguageConfig:
    """How the corpus is drawn; every field is part of the reference model's fingerprint.

    Attributes:
        styles: the answer styles in use, in the order the preference matrix indexes them
            (a subset of :data:`STYLES`, at least 2).
        style_weights: the corpus share of each style (normalised); unequal by default so
            that the reference is not already at the default game's equilibrium.
        stop_prob: after each descriptor the answer ends with this probability, so the
            number of descriptors is geometric with mean ≈ 1/stop_prob (truncated).
        max_items: the most descriptors an answer of the corpus has.
        fit_size: how many descriptors fit each topic (drawn once from the seed).
        fit_prob: probability that a new descriptor is drawn from the topic's fitting set.
        repeat_prob: probability that a descriptor repeats an earlier one of the answer.
        on_topic_prob: probability that the answer names the prompt's topic (else another).
        eval_fraction: share of the (template, topic) prompts held out for evaluation.
    """

    styles: tuple[str, ...] = ("list", "story", "question")
    style_weights: tuple[float, ...] = (0.45, 0.35, 0.20)
    stop_prob: float = 0.35
    max_items: int = 16
    fit_size: int = 8
    fit_prob: float = 0.75
    repeat_prob: float = 0.1
    on_topic_prob: float = 0.85
    eval_fraction: float = 0.25

    def __post_init__(self) -> None:
        unknown = [s for s in self.styles if s not in STYLES]
        if unknown or len(set(self.styles)) != len(self.styles) or len(self.styles) < 2:
            raise ValueError(f"styles must be >= 2 distinct names from {STYLES}, got {self.styles}")
        if len(self.style_weights) != len(self.styles) or min(self.style_weights) <= 0:
            raise ValueError("style_weights needs one positive weight per style")
        for name in ("stop_prob", "fit_prob", "on_topic_prob"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in (0, 1]")
        if not 0 <= self.repeat_prob < 1 or not 0 < self.eval_fraction < 1:
            raise ValueError("repeat_prob must lie in [0, 1) and eval_fraction in (0, 1)")
        if self.max_items < 1 or not 1 <= self.fit_size < len(DESCRIPTORS):
            raise ValueError("max_items must be >= 1 and fit_size in [1, #descriptors)")


@dataclass(frozen=True)
class Example:
    """One corpus row: a raw prompt, its answer (no leading space) and what was drawn."""

    prompt: str
    answer: str
    style: str
    topic: str


@dataclass
class SyntheticLanguage:
    """The language fixed by a config and a seed: topic → fitting descriptors, prompt splits.

    Args:
        config: the corpus settings.
        seed: fixes the fitting sets, the train/eval prompt split and (with an offset) the
            corpus; the same seed always gives the same language.
    """

    config: LanguageConfig = field(default_factory=LanguageConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(f"unialign.tasks.language:{self.seed}")
        self.fitting: dict[str, frozenset[str]] = {
            t: frozenset(rng.sample(DESCRIPTORS, self.config.fit_size)) for t in TOPICS
        }
        combos = [(i, t) for i in range(len(PROMPT_TEMPLATES)) for t in TOPICS]
        rng.shuffle(combos)
        n_eval = round(self.config.eval_fraction * len(combos))
        render = [PROMPT_TEMPLATES[i].format(topic=t) for i, t in combos]
        self._splits = {"eval": render[:n_eval], "train": render[n_eval:]}

    @property
    def styles(self) -> tuple[str, ...]:
        return self.config.styles

    def prompts(
        self,
        split: str = "train",
        *,
        n: int | None = None,
        seed: int = 0,
        conversational: bool = False,
    ) -> list[str] | list[list[dict[str, str]]]:
        """Prompts of a split (``train``: the pretraining corpus's; ``eval``: held out).

        Without ``n``, every distinct prompt of the split once (a fixed, seeded order); with
        ``n``, ``n`` prompts drawn with replacement by ``seed``. Plain strings
        (``"Q: ...\\nA:"``) or, with ``conversational``, one-message user turns.
        """
        if split not in self._splits:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        pool = self._splits[split]
        if n is not None:
            rng = random.Random(f"unialign.tasks.prompts:{self.seed}:{split}:{seed}")
            pool = [rng.choice(pool) for _ in range(n)]
        if conversational:
            return [[{"role": "user", "content": p}] for p in pool]
        return [format_prompt(p) for p in pool]

    def answer(self, raw: str, rng: random.Random) -> tuple[str, str, str]:
        """Draw one answer to a raw prompt: ``(answer, style, topic named)``."""
        cfg = self.config
        topic = topic_of(raw)
        named = topic
        if rng.random() >= cfg.on_topic_prob:
            named = rng.choice([t for t in TOPICS if t != topic])
        style = rng.choices(cfg.styles, weights=cfg.style_weights)[0]
        fit = sorted(self.fitting[topic])
        rest = [d for d in DESCRIPTORS if d not in self.fitting[topic]]
        items: list[str] = []
        while True:
            if items and rng.random() < cfg.repeat_prob:
                items.append(rng.choice(items))
            else:
                fresh_fit = [d for d in fit if d not in items]
                use_fit = fresh_fit and rng.random() < cfg.fit_prob
                items.append(
                    rng.choice(fresh_fit if use_fit else [d for d in rest if d not in items])
                )
            if len(items) >= cfg.max_items or rng.random() < cfg.stop_prob:
                break
        return _STYLES[style].render(named, items), style, named

    def corpus(self, n: int, *, seed: int = 0) -> list[Example]:
        """``n`` (train prompt, answer) rows; ``seed`` selects one of many corpora of the
        language (the same ``(language seed, seed, n)`` always gives the same rows)."""
        rng = random.Random(f"unialign.tasks.corpus:{self.seed}:{seed}")
        pool = self._splits["train"]
        rows = []
        for _ in range(n):
            raw = rng.choice(pool)
            answer, style, named = self.answer(raw, rng)
            rows.append(Example(raw, answer, style, named))
        return rows


def topic_of(prompt: str | Sequence[dict[str, Any]]) -> str:
    """The topic a prompt asks about: its last word from :data:`TOPICS` (``""`` if none)."""
    words = re.findall(_W, raw_prompt(prompt))
    found = [w for w in words if w in _TOPIC_SET]
    return found[-1] if found else ""


_TOPIC_SET = frozenset(TOPICS)
