"""The vocabulary of the data layer: errors, tokenized examples and the loaded dataset.

:class:`Problem` is one thing wrong with a data source (file, 0-based row, field, what to do) and
:class:`DataError` collects every problem found; :class:`TokenizedPair` and
:class:`TokenizedUnpaired` are the token ids of one example, :class:`PreferenceData` a whole
validated, tokenized dataset with its :class:`DataStats`. The constants shared by the other
submodules (accepted roles, formats, file suffixes, column aliases) live here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

DataFormat = Literal["standard", "conversational", "unpaired"]
Truncation = Literal["keep_start", "keep_end", "error"]
PrefixMismatch = Literal["error", "trim"]

#: A :class:`DataError` lists at most this many problems, then says how many more there are.
MAX_REPORTED_PROBLEMS = 20
#: Message roles accepted in conversational data.
ALLOWED_ROLES = ("system", "developer", "user", "assistant", "tool")

_FORMATS = ("standard", "conversational", "unpaired")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
# Column names people use for the fields we need; used only to hint in error messages.
_ALIASES = {
    "prompt": ("question", "instruction", "input", "query", "context", "messages"),
    "chosen": ("preferred", "winner", "response_chosen", "chosen_response", "better"),
    "rejected": ("dispreferred", "loser", "response_rejected", "rejected_response", "worse"),
    "completion": ("response", "output", "answer", "generation"),
    "label": ("labels", "desirable", "is_good", "kto_label", "score"),
}
_CHUNK = 512  # rows per batched tokenizer call


# ---------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data source. ``row`` is 0-based; ``None`` for file-level problems."""

    source: str
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.row is not None:
            where += f": row {self.row} (0-based)"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


class DataError(ValueError):
    """Preference data that cannot be used, with every problem found (see :attr:`problems`).

    The message names the file, the row (0-based) and the field of each problem and says what
    to do about it; at most :data:`MAX_REPORTED_PROBLEMS` are spelled out.
    """

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        super().__init__(message)
        self.problems: list[Problem] = list(problems)

    @property
    def rows(self) -> list[int]:
        """The (0-based) rows with problems, sorted, without repeats."""
        return sorted({p.row for p in self.problems if p.row is not None})

    @classmethod
    def from_problems(cls, source: str, problems: Sequence[Problem], what: str = "") -> DataError:
        problems = sorted(problems, key=lambda p: -1 if p.row is None else p.row)
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} in {source}"
        if what:
            head += f" ({what})"
        head += "; rows are numbered from 0:"
        lines = [f"  - {p}" for p in problems[:MAX_REPORTED_PROBLEMS]]
        if n > MAX_REPORTED_PROBLEMS:
            rest = problems[MAX_REPORTED_PROBLEMS:]
            rows = sorted({p.row for p in rest if p.row is not None})
            shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
            lines.append(
                f"  ... and {n - MAX_REPORTED_PROBLEMS} more problems"
                + (f" (rows {shown})" if rows else "")
            )
        return cls("\n".join([head, *lines]), problems)


def _raise_if(problems: list[Problem], source: str, what: str = "") -> None:
    if problems:
        raise DataError.from_problems(source, problems, what)


def _describe(value: Any) -> str:
    """A short description of a wrong value for an error message."""
    if value is None:
        return "null (missing value)"
    if isinstance(value, bool):
        return f"bool {value}"
    if isinstance(value, list):
        if value and all(isinstance(m, dict) for m in value):
            return f"a list of {len(value)} message(s)"
        return f"a list of {len(value)} item(s)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


# ---------------------------------------------------------------------------------------------
# Tokenized examples and the loaded dataset


@dataclass(frozen=True)
class TokenizedPair:
    """One preference pair as token ids. ``chosen_ids``/``rejected_ids`` exclude the prompt:
    the sequences the model scores are ``prompt_ids + chosen_ids`` and ``prompt_ids + rejected_ids``.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass(frozen=True)
class TokenizedUnpaired:
    """One unpaired (KTO-style) example. ``completion_ids`` exclude the prompt."""

    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool


@dataclass(frozen=True)
class DataStats:
    """Token counts after truncation. ``truncated_rows``/``dropped_rows`` are 0-based source rows."""

    n_examples: int
    mean_prompt_tokens: float
    mean_completion_tokens: float  # over every completion (chosen and rejected for pairs)
    max_sequence_tokens: int  # longest prompt+completion
    truncated_rows: tuple[int, ...] = ()
    dropped_rows: tuple[int, ...] = ()
    prefix_trimmed_rows: tuple[int, ...] = ()  # prefix_mismatch="trim" only
    n_desirable: int | None = None  # unpaired only
    n_undesirable: int | None = None

    @property
    def n_truncated(self) -> int:
        return len(self.truncated_rows)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped_rows)


@dataclass(frozen=True)
class PreferenceData:
    """Validated, tokenized preference data.

    Exactly one of ``pairs`` (standard/conversational) and ``unpaired`` is non-empty.
    ``row_ids[i]`` is the 0-based source row of example ``i``; ``n_rows`` counts source rows
    (including dropped ones).
    """

    fmt: DataFormat
    source: str
    n_rows: int
    stats: DataStats
    pairs: list[TokenizedPair] = field(default_factory=list)
    unpaired: list[TokenizedUnpaired] = field(default_factory=list)
    row_ids: tuple[int, ...] = ()
    conversational: bool = False  # rendered with the chat template

    @property
    def examples(self) -> list[TokenizedPair] | list[TokenizedUnpaired]:
        return self.unpaired if self.fmt == "unpaired" else self.pairs

    def __len__(self) -> int:
        return len(self.examples)
