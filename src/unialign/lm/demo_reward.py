"""The reward of ``unialign demo lm``: a short answer that still names the question's subject.

A reward function in the form :mod:`unialign.feedback.python_judges` loads by spec
(``unialign.lm.demo_reward:reward``): ``reward(prompts, completions) -> list[float]``, so the
same judge serves the demo, ``unialign train lm-online --config
examples/lm_online_smollm2.yaml`` and any config that names it.

    r(x, y) = 1[y names the subject of x] − 0.1 · max(0, words(y) − 25)

Both terms are visible in the text: the answer either mentions the subject (its word, or the
word with a plural ending ``s``/``es``, case-insensitive, whole words only) or it does not,
and a reader can count the words (whitespace-separated tokens that hold a letter or a digit,
so a stray dash or emoji is no word). A 25-word answer naming the subject scores 1, the best
possible; each word over the budget costs 0.1, so an answer of 35 words that names its subject
scores 0, and one cut off at the sampler's length limit scores low however good its start.

The subject of a prompt is looked up in :data:`QUESTIONS` (the demo's built-in questions);
for any other question it is the question's longest word of at least four letters that is not
a common function word (ties: the first), which is what a reader would guess for "What is a
tornado?" or "How do magnets work?".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BUDGET",
    "OVER_BUDGET_PENALTY",
    "QUESTIONS",
    "TRAIN_QUESTIONS",
    "HELDOUT_QUESTIONS",
    "reward",
    "reward_parts",
    "subject_of",
    "names_subject",
    "count_words",
]

#: The word budget of an answer.
BUDGET = 25
#: Reward lost per word over the budget.
OVER_BUDGET_PENALTY = 0.1

#: (question, subject): the demo's training prompts.
TRAIN_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is a volcano?", "volcano"),
    ("How does photosynthesis work?", "photosynthesis"),
    ("Why is the sky blue?", "sky"),
    ("What causes thunder?", "thunder"),
    ("How do bees make honey?", "honey"),
    ("What is a black hole?", "black hole"),
    ("How does a rainbow form?", "rainbow"),
    ("What is gravity?", "gravity"),
    ("How do vaccines work?", "vaccine"),
    ("What is a glacier?", "glacier"),
    ("Why do we have seasons?", "season"),
    ("What does the heart do?", "heart"),
    ("How do airplanes fly?", "airplane"),
    ("What is an earthquake?", "earthquake"),
    ("What is democracy?", "democracy"),
    ("How does a compass work?", "compass"),
    ("What is inflation in economics?", "inflation"),
    ("Why do cats purr?", "cat"),
    ("What is a tsunami?", "tsunami"),
    ("How do tides work?", "tide"),
    ("What is the internet?", "internet"),
    ("How is chocolate made?", "chocolate"),
    ("What are clouds made of?", "cloud"),
    ("What is a comet?", "comet"),
    ("How do magnets work?", "magnet"),
    ("What is recycling?", "recycling"),
    ("How does a refrigerator keep food cold?", "refrigerator"),
    ("What is an eclipse?", "eclipse"),
    ("Why do birds migrate?", "bird"),
    ("What is a desert?", "desert"),
    ("How do plants grow?", "plant"),
    ("What is electricity?", "electricity"),
    ("What is a coral reef?", "coral"),
    ("How does the moon affect the ocean?", "moon"),
    ("What is a hurricane?", "hurricane"),
    ("How do muscles grow stronger?", "muscle"),
)

#: (question, subject): held out; the demo's before/after evaluation uses only these.
HELDOUT_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is a tornado?", "tornado"),
    ("What is a rainforest?", "rainforest"),
    ("How do fish breathe underwater?", "fish"),
    ("What is a galaxy?", "galaxy"),
    ("Why does ice float on water?", "ice"),
    ("How does a battery work?", "battery"),
    ("How does a telescope work?", "telescope"),
    ("What is oxygen?", "oxygen"),
    ("Why were the pyramids built?", "pyramid"),
    ("How do bats find their way in the dark?", "bat"),
    ("What is a fossil?", "fossil"),
    ("Why is the ocean salty?", "ocean"),
    ("What is a calendar?", "calendar"),
    ("How do trees drink water?", "tree"),
    ("What is a microscope?", "microscope"),
    ("How does snow form?", "snow"),
    ("How does the brain store memories?", "brain"),
    ("What happened to the dinosaurs?", "dinosaur"),
    ("What causes wind?", "wind"),
    ("How do spiders make webs?", "spider"),
    ("What is a planet?", "planet"),
    ("What is a library for?", "library"),
    ("How does soap clean your hands?", "soap"),
    ("What is an island?", "island"),
)

#: Every built-in question's subject.
QUESTIONS: Mapping[str, str] = dict(TRAIN_QUESTIONS + HELDOUT_QUESTIONS)

_FUNCTION_WORDS = frozenset(
    ("about", "after", "also", "because", "before", "being", "could", "does", "doing", "from",
     "have", "into", "make", "made", "many", "much", "their", "there", "these", "they", "this",
     "those", "what", "when", "where", "which", "while", "whom", "whose", "would", "your",
     "work", "works", "happen", "happened")
)  # fmt: skip
_WORD = re.compile(r"[A-Za-z0-9]")


def _text(x: Any) -> str:
    """The text of a prompt or completion: a string, or the last message's content."""
    if isinstance(x, str):
        return x
    if isinstance(x, Sequence) and x and isinstance(x[-1], Mapping):
        return str(x[-1].get("content", ""))
    raise TypeError(f"expected text or a message list, got {type(x).__name__}")


def subject_of(prompt: Any) -> str:
    """The subject word of a question (see the module docstring)."""
    question = _text(prompt).strip()
    if question in QUESTIONS:
        return QUESTIONS[question]
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", question)]
    candidates = [w for w in words if len(w) >= 4 and w not in _FUNCTION_WORDS]
    if not candidates:
        raise ValueError(f"cannot tell the subject of the question {question!r}")
    return max(candidates, key=len)  # max keeps the first of equally long words


def names_subject(text: str, subject: str) -> bool:
    """Whether ``text`` holds ``subject`` as whole words (plural ``s``/``es`` allowed, any
    case; a multi-word subject may be split by any whitespace)."""
    words = [re.escape(w) for w in subject.split()]
    pattern = r"\b" + r"\s+".join(words) + r"(?:s|es)?\b"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def count_words(text: str) -> int:
    """Whitespace-separated tokens holding at least one letter or digit."""
    return sum(1 for tok in text.split() if _WORD.search(tok))


def reward_parts(prompt: Any, completion: Any) -> dict[str, Any]:
    """The reward of one answer with its parts: ``subject``, ``named`` (bool), ``words``,
    ``over`` (words over the budget) and ``reward``."""
    text = _text(completion)
    subject = subject_of(prompt)
    named = names_subject(text, subject)
    words = count_words(text)
    over = max(0, words - BUDGET)
    value = float(named) - OVER_BUDGET_PENALTY * over
    return {"subject": subject, "named": named, "words": words, "over": over, "reward": value}


def reward(prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
    """``r = 1[names the subject] − 0.1 · max(0, words − 25)`` per completion (a reward
    function for :func:`unialign.feedback.python_judges.load_reward_function`)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    return [reward_parts(p, c)["reward"] for p, c in zip(prompts, completions)]
