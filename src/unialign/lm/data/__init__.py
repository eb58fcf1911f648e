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

The pipeline, one submodule per step (this module re-exports their public names and holds the
whole-pipeline functions :func:`load_preference_data`, :func:`build_preference_data` and
:func:`split_heldout`):

* :mod:`~unialign.lm.data.types`: :class:`Problem`, :class:`DataError`, the tokenized examples,
  :class:`PreferenceData` and the shared constants;
* :mod:`~unialign.lm.data.loading`: :func:`load_records` and the per-format file readers;
* :mod:`~unialign.lm.data.validation`: :func:`detect_format` and :func:`validate_records`;
* :mod:`~unialign.lm.data.tokenization`: :func:`tokenize_pairs` and :func:`tokenize_unpaired`,
  which reproduce TRL 1.16's DPO/KTO preprocessing (details in that module).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from .loading import _split_path, load_records
from .tokenization import _pairs_impl, _unpaired_impl, tokenize_pairs, tokenize_unpaired
from .types import (
    _FORMATS,
    ALLOWED_ROLES,
    MAX_REPORTED_PROBLEMS,
    DataError,
    DataFormat,
    DataStats,
    PreferenceData,
    PrefixMismatch,
    Problem,
    TokenizedPair,
    TokenizedUnpaired,
    Truncation,
)
from .validation import detect_format, validate_records

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
