"""Preference data for the LM engine: load, detect the format, validate, tokenize, split.

Three row formats (see ``docs/lm-data.md``):

* ``standard``: ``{"prompt": str, "chosen": str, "rejected": str}``;
* ``conversational``: the same with lists of ``{"role", "content"}`` messages, rendered with the
  tokenizer's chat template (``chosen``/``rejected`` may also be whole conversations that start
  with the prompt, or the prompt column may be absent: TRL's "implicit prompt");
* ``unpaired``: ``{"prompt", "completion", "label"}`` (KTO-style; strings or messages).

Everything that can be wrong with a file is found *before* training and reported at once: a
:class:`DataError` lists every problem (up to 20, then a count), each naming the file, the row
(0-based) and the field, and saying what to do.

Tokenization reproduces TRL 1.16's ``DPOTrainer``/``KTOTrainer`` preprocessing so that the same
rows give the same token ids (checked against TRL in ``tests/lm/test_data.py``):

* standard rows: ``tokenizer(prompt)`` and ``tokenizer(prompt + completion + eos)`` with the
  tokenizer's default special tokens (so BOS is added if the tokenizer adds it); the EOS *string*
  is appended to the completion unless the completion already ends with it;
* conversational rows: ``apply_chat_template(prompt, add_generation_prompt=True)`` and
  ``apply_chat_template(prompt + completion)``; no EOS is appended (the template ends the turn);
* the completion ids are the prompt+completion ids after the prompt's ids; TRL silently takes
  the longest common prefix when the prompt's ids are not a prefix — here that is an error by
  default (``prefix_mismatch="trim"`` gives TRL's behaviour);
* truncation ``keep_start`` (TRL's default) cuts prompt+completion to its first ``max_length``
  tokens, i.e. cuts the completion's end; rows whose prompt alone fills ``max_length`` are an
  error here (TRL drops them silently; ``drop_long_prompts=True`` does the same).
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DataError",
    "Problem",
    "TokenizedPair",
    "TokenizedUnpaired",
    "DataFormat",
    "Truncation",
    "DataStats",
    "PreferenceData",
    "load_records",
    "detect_format",
    "validate_records",
    "tokenize_pairs",
    "tokenize_unpaired",
    "build_preference_data",
    "load_preference_data",
    "split_heldout",
    "MAX_REPORTED_PROBLEMS",
    "ALLOWED_ROLES",
]

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


# ---------------------------------------------------------------------------------------------
# Loading


def _split_path(path: str | Path, split: str | None) -> tuple[Path, str | None]:
    text = str(path)
    p = Path(text)
    if not p.exists() and ":" in text:
        base, _, suffix = text.rpartition(":")
        if base and suffix and "/" not in suffix and Path(base).exists():
            if split is not None and split != suffix:
                raise DataError(
                    f"{base}: split {suffix!r} in the path and split={split!r} disagree; give one."
                )
            return Path(base), suffix
    return p, split


def load_records(path: str | Path, *, split: str | None = None) -> list[dict]:
    """Read rows from JSONL, JSON (a list of objects), Parquet, CSV, or a directory written by
    ``datasets``' ``save_to_disk``.

    For a ``DatasetDict`` directory the ``"train"`` split is taken unless ``split`` (or a
    ``"path:split"`` suffix) names another; CSV cells holding JSON message lists are decoded and
    ``label`` cells ``true``/``false``/``1``/``0`` become booleans. Raises :class:`DataError`
    for a missing/unknown/unreadable/empty source.
    """
    p, split = _split_path(path, split)
    source = str(p) if split is None else f"{p}:{split}"
    if not p.exists():
        raise DataError(f"{p}: file not found.")
    if p.is_dir():
        records = _load_dataset_dir(p, split, source)
    else:
        if split is not None:
            raise DataError(
                f"{p}: a split ({split!r}) applies only to a directory saved with "
                "datasets' save_to_disk; this is a file."
            )
        kind = _SUFFIXES.get(p.suffix.lower())
        if kind is None:
            raise DataError(
                f"{p}: unknown file type {p.suffix!r}; accepted: "
                + ", ".join(sorted(_SUFFIXES))
                + " or a directory saved with datasets' save_to_disk."
            )
        records = {
            "jsonl": _load_jsonl,
            "json": _load_json,
            "parquet": _load_parquet,
            "csv": _load_csv,
        }[kind](p)
    if not records:
        raise DataError(f"{source}: empty file: no rows. Point to a file with preference rows.")
    bad = [
        Problem(source, i, None, f"expected an object (one row), got {_describe(r)}")
        for i, r in enumerate(records)
        if not isinstance(r, dict)
    ]
    _raise_if(bad, source, "rows must be objects with named fields")
    return records


def _load_jsonl(p: Path) -> list[dict]:
    records: list[Any] = []
    problems: list[Problem] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                problems.append(
                    Problem(
                        str(p),
                        len(records),
                        None,
                        f"line {lineno} (1-based) is not valid JSON ({e.msg} at column {e.colno});"
                        " each line must be one JSON object",
                    )
                )
                records.append(None)
    _raise_if(problems, str(p), "unreadable JSON lines")
    return records


def _load_json(p: Path) -> list[dict]:
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file
            return _load_jsonl(p)
        raise DataError(
            f"{p}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})."
        ) from None
    if isinstance(data, dict):
        raise DataError(
            f"{p}: expected a JSON list of row objects, got an object with keys "
            f"{sorted(data)[:10]}; write a list of rows (or JSON lines, one row per line)."
        )
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of row objects, got {_describe(data)}.")
    return data


def _load_parquet(p: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p).to_pylist()
    except Exception as e:  # noqa: BLE001 - report any reader failure as a data error
        raise DataError(f"{p}: cannot read as Parquet ({type(e).__name__}: {e}).") from e


def _csv_cell(key: str, value: str | None) -> Any:
    if value is None:
        return None
    if key == "label":
        low = value.strip().lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        return value
    stripped = value.strip()
    if stripped.startswith("[") and stripped.endswith("]") and '"role"' in stripped:
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, list) and all(isinstance(m, dict) for m in decoded):
            return decoded
    return value


def _load_csv(p: Path) -> list[dict]:
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return [
            {k: _csv_cell(k, v) for k, v in row.items() if k is not None and k != ""}
            for row in reader
        ]


def _load_dataset_dir(p: Path, split: str | None, source: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001
        raise DataError(
            f"{p}: a directory, but not one written by datasets' save_to_disk "
            f"({type(e).__name__}: {e}). Point to a data file or a saved dataset."
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        splits = sorted(ds)
        name = split if split is not None else "train"
        if name not in ds:
            how = "pass split=... or use 'path:split'"
            raise DataError(
                f"{p}: no split {name!r} in this DatasetDict; available splits: "
                f"{', '.join(splits)}. {how.capitalize()}."
            )
        ds = ds[name]
    elif split is not None:
        raise DataError(
            f"{p}: split {split!r} requested, but this directory holds a single Dataset "
            "(no splits); drop the split."
        )
    return ds.to_list()


# ---------------------------------------------------------------------------------------------
# Format detection and validation


def _columns(records: Sequence[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records[:1000]:
        if isinstance(r, dict):
            seen.update(dict.fromkeys(r))
    return list(seen)


def _hint(name: str, columns: Iterable[str]) -> str:
    cols = {c.lower(): c for c in columns}
    for alias in _ALIASES.get(name, ()):
        if alias in cols:
            return f" Column {cols[alias]!r} may hold it: rename it to {name!r}."
    return ""


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def detect_format(records: list[dict], source: str) -> DataFormat:
    """``"unpaired"`` if rows have ``completion``; else ``"conversational"`` if ``chosen`` holds
    messages, ``"standard"`` if it holds strings. Raises :class:`DataError` when no rule applies.
    """
    if not records:
        raise DataError(f"{source}: empty file: no rows.")
    columns = _columns(records)
    if "chosen" in columns or "rejected" in columns:
        for r in records:
            for key in ("chosen", "rejected"):
                value = r.get(key) if isinstance(r, dict) else None
                if isinstance(value, list):
                    return "conversational"
                if isinstance(value, str):
                    return "standard"
        raise DataError(
            f"{source}: cannot tell the format: no row has a string or a message list in "
            "'chosen'/'rejected'. Standard rows hold strings, conversational rows hold lists of "
            "{'role', 'content'} messages."
        )
    if "completion" in columns or "label" in columns:
        return "unpaired"
    hints = "".join(_hint(n, columns) for n in ("prompt", "chosen", "rejected", "completion"))
    raise DataError(
        f"{source}: cannot tell the format from the columns {columns}. Paired data needs "
        "'prompt', 'chosen' and 'rejected' (strings, or lists of messages); unpaired data needs "
        f"'prompt', 'completion' and 'label'.{hints}"
    )


def _check_messages(
    value: Any,
    field_name: str,
    row: int,
    source: str,
    problems: list[Problem],
) -> bool:
    """Append problems for a malformed message list; True if it is well-formed."""
    if not isinstance(value, list):
        what = "a string" if isinstance(value, str) else _describe(value)
        problems.append(
            Problem(
                source,
                row,
                field_name,
                f"expected a list of {{'role', 'content'}} messages, got {what}"
                + (
                    " (a plain string belongs in standard-format data: pass fmt='standard' or "
                    "make every prompt/completion a message list)"
                    if isinstance(value, str)
                    else ""
                ),
            )
        )
        return False
    if not value:
        problems.append(Problem(source, row, field_name, "empty message list; add the messages"))
        return False
    ok = True
    for j, m in enumerate(value):
        f = f"{field_name}[{j}]"
        if not isinstance(m, dict):
            problems.append(
                Problem(
                    source, row, f, f"expected a {{'role', 'content'}} message, got {_describe(m)}"
                )
            )
            ok = False
            continue
        missing = [k for k in ("role", "content") if k not in m or m[k] is None]
        if missing:
            problems.append(
                Problem(
                    source,
                    row,
                    f,
                    f"message missing {' and '.join(repr(k) for k in missing)} "
                    f"(it has: {', '.join(map(str, m)) or 'nothing'}); every message needs both",
                )
            )
            ok = False
            continue
        if m["role"] not in ALLOWED_ROLES:
            problems.append(
                Problem(
                    source,
                    row,
                    f + ".role",
                    f"unknown role {m['role']!r}; use one of {', '.join(ALLOWED_ROLES)}",
                )
            )
            ok = False
        if not isinstance(m["content"], str):
            problems.append(
                Problem(
                    source,
                    row,
                    f + ".content",
                    f"expected a string, got {_describe(m['content'])} (multimodal or structured "
                    "content is not supported)",
                )
            )
            ok = False
    return ok


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any] | None:
    """TRL's ``extract_prompt``: the longest common prefix of chosen and rejected (messages, or
    characters backed off before a space for strings). None if there is no common prefix."""
    k = _common_prefix(chosen, rejected)
    if isinstance(chosen, str) and 0 < k < len(chosen) and chosen[k - 1] == " ":
        k -= 1
    if k == 0:
        return None
    return chosen[:k], chosen[k:], rejected[k:]


def _pair_view(row: dict, fmt: DataFormat, has_prompt: bool) -> tuple[Any, Any, Any, str]:
    """(prompt, chosen, rejected, how) after implicit-prompt extraction / prompt stripping.
    Assumes the raw types were checked. ``how``: "explicit", "implicit" or "stripped"."""
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt") if has_prompt else None
    if fmt == "conversational":
        if prompt is None or isinstance(prompt, str):
            got = _extract_prompt(chosen, rejected)
            return (*got, "implicit") if got else (None, chosen, rejected, "implicit")
        n = len(prompt)
        if (
            len(chosen) > n
            and len(rejected) > n
            and chosen[:n] == prompt
            and rejected[:n] == prompt
        ):
            return prompt, chosen[n:], rejected[n:], "stripped"
        return prompt, chosen, rejected, "explicit"
    if prompt is None:
        got = _extract_prompt(chosen, rejected)
        return (*got, "implicit") if got else (None, chosen, rejected, "implicit")
    return prompt, chosen, rejected, "explicit"


def _check_label(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))


def _collect_problems(records: list[dict], fmt: DataFormat, source: str) -> list[Problem]:
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {_FORMATS}, got {fmt!r}")
    problems: list[Problem] = []
    if not records:
        return [Problem(source, None, None, "empty file: no rows")]
    columns = _columns(records)
    col_list = ", ".join(columns) or "none"
    required = ("prompt", "completion", "label") if fmt == "unpaired" else ("chosen", "rejected")
    has_prompt = "prompt" in columns
    missing_cols = [c for c in required if c not in columns]
    if fmt == "unpaired" and not has_prompt and "prompt" not in missing_cols:
        missing_cols.insert(0, "prompt")
    for c in missing_cols:
        problems.append(
            Problem(
                source,
                None,
                c,
                f"column {c!r} is missing (available columns: {col_list}); add it"
                + ("" if fmt == "unpaired" else f" for {fmt} data")
                + "."
                + _hint(c, columns),
            )
        )
    if missing_cols:
        return problems
    for c in ("tools", "chat_template_kwargs", "images"):
        used = [i for i, r in enumerate(records) if r.get(c) not in (None, [], {}, "")]
        if used:
            problems.append(
                Problem(
                    source,
                    used[0],
                    c,
                    f"per-row {c!r} is not supported ({len(used)} row(s) set it); TRL would pass "
                    "it to the chat template, so the token ids would differ. Drop the column or "
                    "render those rows yourself",
                )
            )
    needed = ("prompt", *required) if (has_prompt and fmt != "unpaired") else required
    conv_kind: bool | None = None  # unpaired: are rows messages (True) or strings (False)?

    for i, row in enumerate(records):
        absent = [k for k in needed if k not in row or row[k] is None]
        for k in absent:
            problems.append(
                Problem(
                    source,
                    i,
                    k,
                    f"missing or null (the row has: {', '.join(k2 for k2 in row if row[k2] is not None) or 'nothing'}); "
                    "fill it in or remove the row",
                )
            )
        if absent:
            continue
        if fmt == "unpaired":
            kind = isinstance(row["prompt"], list) or isinstance(row["completion"], list)
            if conv_kind is None:
                conv_kind = kind
            elif kind != conv_kind:
                problems.append(
                    Problem(
                        source,
                        i,
                        "prompt",
                        f"this row holds {'messages' if kind else 'strings'} but earlier rows "
                        f"hold {'messages' if conv_kind else 'strings'}; make every row the same "
                        "kind",
                    )
                )
                continue
            _check_unpaired_row(row, i, source, problems)
        else:
            _check_pair_row(row, i, fmt, has_prompt, source, problems)
    return problems


def _check_text(value: Any, name: str, row: int, source: str, problems: list[Problem]) -> bool:
    if isinstance(value, str):
        return True
    extra = ""
    if isinstance(value, list):
        extra = (
            " (message lists belong in conversational data: pass fmt='conversational' or 'auto', "
            "and make every row conversational)"
        )
    problems.append(Problem(source, row, name, f"expected a string, got {_describe(value)}{extra}"))
    return False


def _check_pair_row(
    row: dict, i: int, fmt: DataFormat, has_prompt: bool, source: str, problems: list[Problem]
) -> None:
    before = len(problems)
    if fmt == "standard":
        for k in ("prompt", "chosen", "rejected") if has_prompt else ("chosen", "rejected"):
            if _check_text(row[k], k, i, source, problems) and not row[k].strip():
                what = "prompt; every pair needs a prompt" if k == "prompt" else "completion"
                problems.append(
                    Problem(source, i, k, f"empty {what}; fill it in or remove the row")
                )
    else:
        prompt = row.get("prompt") if has_prompt else None
        if prompt is not None and not isinstance(prompt, str):
            _check_messages(prompt, "prompt", i, source, problems)
        for k in ("chosen", "rejected"):
            _check_messages(row[k], k, i, source, problems)
    if len(problems) > before:
        return
    prompt, chosen, rejected, how = _pair_view(row, fmt, has_prompt)
    if prompt is None:
        problems.append(
            Problem(
                source,
                i,
                "prompt",
                "no prompt column and 'chosen'/'rejected' share no common beginning to take "
                "the prompt from; add a 'prompt' field." + _hint("prompt", row),
            )
        )
        return
    if fmt == "standard":
        if how == "implicit":
            for k, v in (("chosen", chosen), ("rejected", rejected)):
                if not v.strip():
                    problems.append(
                        Problem(
                            source, i, k, "empty completion after the prompt shared with the other"
                        )
                    )
    else:
        for k, msgs in (("chosen", chosen), ("rejected", rejected)):
            if not msgs:
                problems.append(
                    Problem(
                        source,
                        i,
                        k,
                        "empty completion: nothing after the prompt's messages; add the "
                        "assistant's answer",
                    )
                )
                continue
            last = msgs[-1]
            if last["role"] != "assistant":
                problems.append(
                    Problem(
                        source,
                        i,
                        k,
                        f"the completion must end with an 'assistant' message, its last message "
                        f"has role {last['role']!r}"
                        + (
                            "; if this is the whole conversation, the prompt should be its "
                            "beginning"
                            if how == "explicit"
                            else ""
                        ),
                    )
                )
            elif not last["content"].strip():
                problems.append(
                    Problem(source, i, k, "empty completion (the assistant message has no content)")
                )
    if chosen == rejected:
        problems.append(
            Problem(
                source,
                i,
                "rejected",
                "identical to 'chosen'; a pair needs two different completions (fix or remove "
                "the row)",
            )
        )


def _check_unpaired_row(row: dict, i: int, source: str, problems: list[Problem]) -> None:
    prompt, completion, label = row["prompt"], row["completion"], row["label"]
    if not _check_label(label):
        problems.append(
            Problem(
                source,
                i,
                "label",
                f"expected a boolean (true/false, or 0/1), got {_describe(label)}; true marks a "
                "desirable completion",
            )
        )
    if isinstance(prompt, list) or isinstance(completion, list):
        ok = _check_messages(prompt, "prompt", i, source, problems)
        ok = _check_messages(completion, "completion", i, source, problems) and ok
        if ok:
            last = completion[-1]
            if last["role"] != "assistant":
                problems.append(
                    Problem(
                        source,
                        i,
                        "completion",
                        f"the completion must end with an 'assistant' message, got role "
                        f"{last['role']!r}",
                    )
                )
            elif not last["content"].strip():
                problems.append(
                    Problem(source, i, "completion", "empty completion (no assistant content)")
                )
        return
    ok = _check_text(prompt, "prompt", i, source, problems)
    ok = _check_text(completion, "completion", i, source, problems) and ok
    if ok:
        if not prompt.strip():
            problems.append(Problem(source, i, "prompt", "empty prompt"))
        if not completion.strip():
            problems.append(
                Problem(source, i, "completion", "empty completion; remove the row or fill it in")
            )


def validate_records(records: list[dict], fmt: DataFormat, source: str) -> None:
    """Raise :class:`DataError` listing every problem with ``records`` as ``fmt`` data."""
    _raise_if(_collect_problems(records, fmt, source), source, f"as {fmt} preference data")


# ---------------------------------------------------------------------------------------------
# Tokenization


def _check_lengths(max_length: int, max_prompt_length: int | None, truncation: str) -> None:
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    if max_prompt_length is not None and not (
        isinstance(max_prompt_length, int) and 1 <= max_prompt_length < max_length
    ):
        raise ValueError(
            f"max_prompt_length must be None or an integer in [1, max_length={max_length}), "
            f"got {max_prompt_length!r}"
        )
    if truncation not in ("keep_start", "keep_end", "error"):
        raise ValueError(
            f"truncation must be 'keep_start', 'keep_end' or 'error', got {truncation!r}"
        )


def _chunks(n: int) -> Iterable[range]:
    for s in range(0, n, _CHUNK):
        yield range(s, min(n, s + _CHUNK))


def _encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """``tokenizer(text)["input_ids"]`` for each text (TRL's ``_tokenize`` on a string)."""
    out: list[list[int]] = []
    for idx in _chunks(len(texts)):
        out.extend(list(ids) for ids in tokenizer([texts[i] for i in idx])["input_ids"])
    return out


def _encode_chats(
    tokenizer: Any,
    convs: list[list[dict]],
    rows: list[int],
    source: str,
    problems: list[Problem],
    *,
    add_generation_prompt: bool,
    field_name: str,
) -> list[list[int] | None]:
    """``apply_chat_template(conv, tokenize=True)`` for each conversation (batched); rows whose
    template rendering fails become problems (and ``None``)."""
    out: list[list[int] | None] = []
    kw = {"tokenize": True, "return_dict": True, "add_generation_prompt": add_generation_prompt}
    for idx in _chunks(len(convs)):
        batch = [convs[i] for i in idx]
        try:
            out.extend(list(ids) for ids in tokenizer.apply_chat_template(batch, **kw)["input_ids"])
            continue
        except Exception:  # noqa: BLE001 - find the failing rows one by one
            pass
        for i in idx:
            try:
                out.append(list(tokenizer.apply_chat_template(convs[i], **kw)["input_ids"]))
            except Exception as e:  # noqa: BLE001
                problems.append(
                    Problem(
                        source,
                        rows[i],
                        field_name,
                        f"the chat template failed on this row ({type(e).__name__}: {e})",
                    )
                )
                out.append(None)
    return out


def _require_chat_template(tokenizer: Any, source: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{source}: conversational data needs a tokenizer with a chat template, and this "
            "tokenizer has none. Set tokenizer.chat_template (a Jinja string), or convert the "
            "rows to standard format (prompt/chosen/rejected strings)."
        )


def _eos_suffix(tokenizer: Any, add_eos: bool) -> str:
    if not add_eos:
        return ""
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError(
            "the tokenizer has no eos_token, so completions cannot be terminated; set "
            "tokenizer.eos_token or pass add_eos=False"
        )
    return eos


def _tok_repr(tokenizer: Any, ids: Sequence[int], k: int) -> str:
    if k >= len(ids):
        return "end of sequence"
    try:
        text = tokenizer.decode([ids[k]])
    except Exception:  # noqa: BLE001
        text = "?"
    return f"{ids[k]} {text!r}"


@dataclass
class _Tokenized:
    prompt: list[list[int]]
    completions: list[list[list[int]]]  # per row, one list of ids per completion
    rows: list[int]
    truncated: list[int]
    dropped: list[int]
    trimmed: list[int]


def _tokenize_core(
    prompts: list[Any],
    completions: list[list[Any]],
    rows: list[int],
    tokenizer: Any,
    *,
    conversational: bool,
    names: tuple[str, ...],
    max_length: int,
    max_prompt_length: int | None,
    truncation: Truncation,
    source: str,
    add_eos: bool,
    prefix_mismatch: PrefixMismatch,
    drop_long_prompts: bool,
) -> _Tokenized:
    """Tokenize prompt + each completion TRL's way, check the prefix property, truncate."""
    _check_lengths(max_length, max_prompt_length, truncation)
    if prefix_mismatch not in ("error", "trim"):
        raise ValueError(f"prefix_mismatch must be 'error' or 'trim', got {prefix_mismatch!r}")
    problems: list[Problem] = []
    n = len(prompts)
    k = len(names)
    if conversational:
        _require_chat_template(tokenizer, source)
        p_ids = _encode_chats(
            tokenizer,
            prompts,
            rows,
            source,
            problems,
            add_generation_prompt=True,
            field_name="prompt",
        )
        full_ids = [
            _encode_chats(
                tokenizer,
                [prompts[i] + completions[i][j] for i in range(n)],
                rows,
                source,
                problems,
                add_generation_prompt=False,
                field_name=names[j],
            )
            for j in range(k)
        ]
    else:
        eos = _eos_suffix(tokenizer, add_eos)
        p_ids = _encode_texts(tokenizer, prompts)

        def term(c: str) -> str:  # TRL's add_eos: append unless already there
            return c if (not eos or c.endswith(eos)) else c + eos

        full_ids = [
            _encode_texts(tokenizer, [prompts[i] + term(completions[i][j]) for i in range(n)])
            for j in range(k)
        ]

    out = _Tokenized([], [], [], [], [], [])
    for i in range(n):
        row = rows[i]
        p = p_ids[i]
        fulls = [full_ids[j][i] for j in range(k)]
        if p is None or any(f is None for f in fulls):
            continue  # template failure, already reported
        # Prefix property: the prompt's ids must begin every prompt+completion.
        cps = [_common_prefix(p, f) for f in fulls]
        plen = min(cps)
        if plen < len(p):
            if prefix_mismatch == "error":
                j = cps.index(plen)
                why = (
                    "the chat template renders the prompt alone (with the generation prompt) "
                    "differently from the prompt followed by the completion"
                    if conversational
                    else "tokens merge across the prompt/completion boundary (e.g. the prompt "
                    "ends with a space, or the tokenizer adds EOS after every text)"
                )
                problems.append(
                    Problem(
                        source,
                        row,
                        "prompt",
                        f"the tokenized prompt ({len(p)} tokens) is not a prefix of the tokenized "
                        f"prompt+{names[j]}: first difference at token position {plen} (prompt "
                        f"alone: {_tok_repr(tokenizer, p, plen)}; prompt+{names[j]}: "
                        f"{_tok_repr(tokenizer, fulls[j], plen)}); {why}. Fix the template/data "
                        "so that they agree, or pass prefix_mismatch='trim' to start the "
                        "completion where they diverge (TRL's behaviour)",
                    )
                )
                continue
            out.trimmed.append(row)
        prompt_ids = p[:plen]
        comps = [f[plen:] for f in fulls]
        empty = [names[j] for j in range(k) if not comps[j]]
        if empty:
            for name in empty:
                problems.append(
                    Problem(source, row, name, "the completion tokenizes to nothing; fill it in")
                )
            continue
        if not prompt_ids:
            problems.append(
                Problem(
                    source,
                    row,
                    "prompt",
                    "the prompt tokenizes to nothing (empty prompt, and the tokenizer adds no "
                    "BOS), so the first completion token has no context; add a prompt",
                )
            )
            continue
        truncated = False
        # 1. max_prompt_length: a hard cap, cut from the left only with keep_end.
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            if truncation == "keep_end":
                prompt_ids = prompt_ids[-max_prompt_length:]
                truncated = True
            else:
                problems.append(
                    Problem(
                        source,
                        row,
                        "prompt",
                        f"prompt has {len(prompt_ids)} tokens, more than max_prompt_length="
                        f"{max_prompt_length}; raise max_prompt_length, shorten the prompt, or "
                        "pass truncation='keep_end' to keep its last tokens",
                    )
                )
                continue
        longest = max(len(c) for c in comps)
        # 2. keep_end: cut the prompt from the left so the longest completion fits, keeping at
        #    least min(len(prompt), max_length // 2) prompt tokens.
        if truncation == "keep_end" and len(prompt_ids) + longest > max_length:
            keep = max(max_length - longest, min(len(prompt_ids), max_length // 2))
            if keep < len(prompt_ids):
                prompt_ids = prompt_ids[-keep:]
                truncated = True
        # 3. The prompt alone must leave room for a completion token.
        if len(prompt_ids) >= max_length:
            if drop_long_prompts:
                out.dropped.append(row)
                continue
            problems.append(
                Problem(
                    source,
                    row,
                    "prompt",
                    f"prompt has {len(prompt_ids)} tokens, leaving no room for the completion "
                    f"within max_length={max_length}; raise max_length, shorten the prompt, pass "
                    "truncation='keep_end' to cut the prompt from the left, or "
                    "drop_long_prompts=True to skip such rows (TRL drops them silently)",
                )
            )
            continue
        # 4. Completions: cut at their end (keep_start/keep_end) or refuse (error).
        room = max_length - len(prompt_ids)
        if longest > room:
            if truncation == "error":
                for j, c in enumerate(comps):
                    if len(c) > room:
                        problems.append(
                            Problem(
                                source,
                                row,
                                names[j],
                                f"prompt+{names[j]} has {len(prompt_ids) + len(c)} tokens, more "
                                f"than max_length={max_length}; raise max_length, shorten it, or "
                                "pass truncation='keep_start' (cut the completion's end, TRL's "
                                "default) or 'keep_end'",
                            )
                        )
                continue
            comps = [c[:room] for c in comps]
            truncated = True
        if truncated:
            out.truncated.append(row)
        out.prompt.append(prompt_ids)
        out.completions.append(comps)
        out.rows.append(row)
    _raise_if(problems, source, "found while tokenizing")
    return out


def _pair_inputs(
    records: list[dict], fmt: DataFormat
) -> tuple[list[Any], list[list[Any]], list[int]]:
    has_prompt = "prompt" in _columns(records)
    prompts, comps = [], []
    for row in records:
        p, c, r, _ = _pair_view(row, fmt, has_prompt)
        prompts.append(p)
        comps.append([c, r])
    return prompts, comps, list(range(len(records)))


def _unpaired_inputs(records: list[dict]) -> tuple[list[Any], list[list[Any]], list[int], bool]:
    prompts = [r["prompt"] for r in records]
    comps = [[r["completion"]] for r in records]
    conv = [isinstance(p, list) for p in prompts]
    return prompts, comps, list(range(len(records))), any(conv)


def _pairs_impl(
    records: list[dict],
    tokenizer: Any,
    fmt: DataFormat,
    *,
    max_length: int,
    max_prompt_length: int | None,
    source: str,
    truncation: Truncation,
    add_eos: bool,
    prefix_mismatch: PrefixMismatch,
    drop_long_prompts: bool,
    validate: bool,
) -> tuple[list[TokenizedPair], _Tokenized]:
    if fmt not in ("standard", "conversational"):
        raise ValueError(f"tokenize_pairs takes 'standard' or 'conversational' data, got {fmt!r}")
    if validate:
        validate_records(records, fmt, source)
    prompts, comps, rows = _pair_inputs(records, fmt)
    t = _tokenize_core(
        prompts,
        comps,
        rows,
        tokenizer,
        conversational=fmt == "conversational",
        names=("chosen", "rejected"),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation=truncation,
        source=source,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
    )
    pairs = [TokenizedPair(p, c[0], c[1]) for p, c in zip(t.prompt, t.completions)]
    return pairs, t


def tokenize_pairs(
    records: list[dict],
    tokenizer: Any,
    fmt: DataFormat,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    source: str = "<records>",
    truncation: Truncation = "keep_start",
    add_eos: bool = True,
    prefix_mismatch: PrefixMismatch = "error",
    drop_long_prompts: bool = False,
    validate: bool = True,
) -> list[TokenizedPair]:
    """Tokenize standard or conversational pairs the way TRL 1.16's DPOTrainer does.

    ``truncation``: ``"keep_start"`` (TRL's default) cuts each prompt+completion to its first
    ``max_length`` tokens (the completion's end goes); ``"keep_end"`` first cuts the prompt from
    the left (to ``max_prompt_length`` if given, and so the longer completion fits, keeping at
    least ``max_length // 2`` prompt tokens), then cuts completions' ends; ``"error"`` raises
    for any row that does not fit. A prompt that fills ``max_length`` (or exceeds
    ``max_prompt_length`` outside ``keep_end``) is an error unless ``drop_long_prompts``.
    Raises :class:`DataError` listing every bad row.
    """
    pairs, _ = _pairs_impl(
        records,
        tokenizer,
        fmt,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        source=source,
        truncation=truncation,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
        validate=validate,
    )
    return pairs


def _unpaired_impl(
    records: list[dict],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int | None,
    source: str,
    truncation: Truncation,
    add_eos: bool,
    prefix_mismatch: PrefixMismatch,
    drop_long_prompts: bool,
    validate: bool,
) -> tuple[list[TokenizedUnpaired], _Tokenized]:
    if validate:
        validate_records(records, "unpaired", source)
    prompts, comps, rows, conversational = _unpaired_inputs(records)
    t = _tokenize_core(
        prompts,
        comps,
        rows,
        tokenizer,
        conversational=conversational,
        names=("completion",),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation=truncation,
        source=source,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
    )
    examples = [
        TokenizedUnpaired(p, c[0], bool(records[r]["label"]))
        for p, c, r in zip(t.prompt, t.completions, t.rows)
    ]
    return examples, t


def tokenize_unpaired(
    records: list[dict],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    source: str = "<records>",
    truncation: Truncation = "keep_start",
    add_eos: bool = True,
    prefix_mismatch: PrefixMismatch = "error",
    drop_long_prompts: bool = False,
    validate: bool = True,
) -> list[TokenizedUnpaired]:
    """Tokenize unpaired (KTO-style) rows the way TRL 1.16's KTOTrainer does; prompts and
    completions are strings, or message lists rendered with the chat template. Truncation and
    errors as in :func:`tokenize_pairs`."""
    examples, _ = _unpaired_impl(
        records,
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        source=source,
        truncation=truncation,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
        validate=validate,
    )
    return examples


# ---------------------------------------------------------------------------------------------
# The whole pipeline


def _stats(
    examples: Sequence[TokenizedPair] | Sequence[TokenizedUnpaired],
    *,
    truncated: Iterable[int] = (),
    dropped: Iterable[int] = (),
    trimmed: Iterable[int] = (),
) -> DataStats:
    n = len(examples)
    p_tokens, c_lens, longest = 0, [], 0
    n_des = 0
    unpaired = False
    for e in examples:
        p_tokens += len(e.prompt_ids)
        if isinstance(e, TokenizedPair):
            cs = (len(e.chosen_ids), len(e.rejected_ids))
        else:
            unpaired = True
            cs = (len(e.completion_ids),)
            n_des += e.desirable
        c_lens.extend(cs)
        longest = max(longest, len(e.prompt_ids) + max(cs))
    return DataStats(
        n_examples=n,
        mean_prompt_tokens=p_tokens / n if n else math.nan,
        mean_completion_tokens=sum(c_lens) / len(c_lens) if c_lens else math.nan,
        max_sequence_tokens=longest,
        truncated_rows=tuple(sorted(truncated)),
        dropped_rows=tuple(sorted(dropped)),
        prefix_trimmed_rows=tuple(sorted(trimmed)),
        n_desirable=n_des if unpaired else None,
        n_undesirable=(n - n_des) if unpaired else None,
    )


def build_preference_data(
    records: list[dict],
    tokenizer: Any,
    *,
    source: str = "<records>",
    fmt: DataFormat | Literal["auto"] = "auto",
    max_length: int,
    max_prompt_length: int | None = None,
    truncation: Truncation = "keep_start",
    add_eos: bool = True,
    prefix_mismatch: PrefixMismatch = "error",
    drop_long_prompts: bool = False,
) -> PreferenceData:
    """Detect (if ``fmt="auto"``), validate and tokenize in-memory rows."""
    if not records:
        raise DataError(f"{source}: empty: no rows.")
    if fmt == "auto":
        fmt = detect_format(records, source)
    elif fmt not in _FORMATS:
        raise ValueError(f"fmt must be 'auto' or one of {_FORMATS}, got {fmt!r}")
    kw = dict(
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        source=source,
        truncation=truncation,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
        validate=True,
    )
    if fmt == "unpaired":
        examples, t = _unpaired_impl(records, tokenizer, **kw)
        conversational = any(isinstance(r["prompt"], list) for r in records)
        pairs, unpaired = [], examples
    else:
        examples, t = _pairs_impl(records, tokenizer, fmt, **kw)
        conversational = fmt == "conversational"
        pairs, unpaired = examples, []
    if not examples:
        raise DataError(
            f"{source}: no usable rows left ({len(t.dropped)} dropped by drop_long_prompts); "
            f"raise max_length (now {max_length})."
        )
    return PreferenceData(
        fmt=fmt,
        source=source,
        n_rows=len(records),
        stats=_stats(examples, truncated=t.truncated, dropped=t.dropped, trimmed=t.trimmed),
        pairs=pairs,
        unpaired=unpaired,
        row_ids=tuple(t.rows),
        conversational=conversational,
    )


def load_preference_data(
    path: str | Path,
    tokenizer: Any,
    *,
    fmt: DataFormat | Literal["auto"] = "auto",
    max_length: int,
    max_prompt_length: int | None = None,
    truncation: Truncation = "keep_start",
    split: str | None = None,
    add_eos: bool = True,
    prefix_mismatch: PrefixMismatch = "error",
    drop_long_prompts: bool = False,
) -> PreferenceData:
    """Load a file or saved dataset, detect its format, validate every row and tokenize.

    Raises :class:`DataError` (listing every bad row, by file/row/field) before any training.
    """
    p, split = _split_path(path, split)
    records = load_records(p, split=split)
    source = str(p) if split is None else f"{p}:{split}"
    return build_preference_data(
        records,
        tokenizer,
        source=source,
        fmt=fmt,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation=truncation,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
    )


def split_heldout(
    data: PreferenceData, fraction: float, seed: int
) -> tuple[PreferenceData, PreferenceData]:
    """Split into (train, held-out): deterministic for a seed, disjoint, and grouped by prompt
    (examples with the same prompt tokens land on the same side, so held-out prompts are
    unseen). About ``fraction`` of the examples are held out (at least one if ``fraction > 0``);
    each side keeps the source order. ``dropped_rows`` stay with the parent only.
    """
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    examples = data.examples
    n = len(examples)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(tuple(e.prompt_ids), []).append(i)
    target = round(fraction * n)
    if fraction > 0:
        target = max(1, target)
        if len(groups) < 2:
            raise DataError(
                f"{data.source}: cannot hold out {fraction:.0%}: all {n} examples share one "
                "prompt, and a held-out set must not share prompts with the training set."
            )
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    for g in order[:-1]:  # the last group always stays in train
        if len(held) >= target:
            break
        held.update(g)

    def subset(idx: list[int]) -> PreferenceData:
        rows = tuple(data.row_ids[i] for i in idx) if data.row_ids else ()
        row_set = set(rows)
        chosen = [examples[i] for i in idx]
        return PreferenceData(
            fmt=data.fmt,
            source=data.source,
            n_rows=len(idx),
            stats=_stats(
                chosen,
                truncated=[r for r in data.stats.truncated_rows if r in row_set],
                trimmed=[r for r in data.stats.prefix_trimmed_rows if r in row_set],
            ),
            pairs=chosen if data.fmt != "unpaired" else [],
            unpaired=chosen if data.fmt == "unpaired" else [],
            row_ids=rows,
            conversational=data.conversational,
        )

    train_idx = [i for i in range(n) if i not in held]
    held_idx = sorted(held)
    return subset(train_idx), subset(held_idx)
