"""Export labelled completion comparisons as the preference JSONL that ``unialign train lm`` reads.

Each kept label becomes one row ``{"prompt", "chosen", "rejected", "query_id", "labeler"}``:
label 1 → ``chosen`` is the first completion, label 0 → the second. Standard pairs are written
as strings, conversational pairs as message lists (the two formats of ``docs/lm-data.md``;
the extra ``query_id``/``labeler`` fields are ignored by the loader). Ties and skips carry no
preference direction and are left out, as are pairs the LM loader would reject (an empty
prompt or completion, or two identical completions); the :class:`ExportReport` counts each.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from unialign.feedback.store import FeedbackStore
from unialign.feedback.types import Text

__all__ = ["ExportReport", "export_preference_jsonl"]


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_preference_jsonl` wrote and what it left out.

    Attributes:
        path: the JSONL file written.
        rows: preference rows written (one per kept, non-tie label).
        fmt: ``standard`` or ``conversational``; ``None`` when no row was written.
        ties: labels of ½, left out.
        skipped: skipped labels (NULL with a reason), left out.
        unusable: labels on pairs the LM loader rejects (empty prompt or completion, or two
            identical completions), left out.
        other_format: labels on pairs of the format not chosen with ``fmt``, left out.
        labelers: the labellers whose labels were written, sorted.
    """

    path: Path
    rows: int
    fmt: str | None
    ties: int
    skipped: int
    unusable: int
    other_format: int
    labelers: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"wrote {self.rows} preference rows ({self.fmt or 'none'}) to {self.path}; left out "
            f"{self.ties} ties, {self.skipped} skipped, {self.unusable} unusable and "
            f"{self.other_format} other-format labels"
        )


def export_preference_jsonl(
    store_or_path: FeedbackStore | str | Path,
    out_path: str | Path,
    *,
    labeler: str | None = None,
    fmt: Literal["standard", "conversational"] | None = None,
) -> ExportReport:
    """Write the store's labelled completion comparisons (only ``labeler``'s, if given) to
    ``out_path`` as preference JSONL; returns what was written and left out.

    A query labelled by several labellers yields one row per label (pass ``labeler`` to use
    one). The LM loader reads one format per file: when the labels cover both standard and
    conversational pairs, choose one with ``fmt`` (otherwise ``ValueError``). The file is
    written to a temporary name and renamed, so a failed export leaves no partial file.
    A path is opened with ``create=False`` (a missing store is a ``FeedbackStoreError``).
    """
    if fmt not in (None, "standard", "conversational"):
        raise ValueError(f"fmt must be 'standard', 'conversational' or None, got {fmt!r}")
    if isinstance(store_or_path, FeedbackStore):
        return _export(store_or_path, Path(out_path), labeler, fmt)
    with FeedbackStore(store_or_path, create=False) as store:
        return _export(store, Path(out_path), labeler, fmt)


def _export(store: FeedbackStore, out: Path, labeler: str | None, fmt: str | None) -> ExportReport:
    pairs, labels, labelers = store.labelled_completion_pairs(labeler=labeler)
    every = store.count_labels(include_skipped=True, labeler=labeler, kind="completion")
    skipped = every - len(labels)
    formats = pairs.formats
    present = sorted({f for f, y in zip(formats, labels.tolist()) if y != 0.5})
    if fmt is None and len(present) > 1:
        counts = {f: formats.count(f) for f in present}
        raise ValueError(
            f"{store.path}: the labelled comparisons mix standard and conversational pairs "
            f"({counts}); the LM loader reads one format per file, so choose one with "
            "fmt='standard' or fmt='conversational' (CLI: --format)"
        )
    fmt = fmt or (present[0] if present else None)
    rows, ties, unusable, other_format, used = [], 0, 0, 0, set()
    for i, y in enumerate(labels.tolist()):
        if y == 0.5:
            ties += 1
            continue
        if formats[i] != fmt:
            other_format += 1
            continue
        first, second = pairs.completions_1[i], pairs.completions_2[i]
        if not _usable(pairs.prompts[i], first, second):
            unusable += 1
            continue
        chosen, rejected = (first, second) if y == 1.0 else (second, first)
        query_id = int(pairs.query_ids[i]) if pairs.query_ids is not None else None
        rows.append(
            {
                "prompt": pairs.prompts[i],
                "chosen": chosen,
                "rejected": rejected,
                "query_id": query_id,
                "labeler": labelers[i],
            }
        )
        used.add(labelers[i])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return ExportReport(
        path=out,
        rows=len(rows),
        fmt=fmt if rows else None,
        ties=ties,
        skipped=skipped,
        unusable=unusable,
        other_format=other_format,
        labelers=tuple(sorted(used)),
    )


def _usable(prompt: Text, first: Text, second: Text) -> bool:
    """What the LM loader requires of a pair (docs/lm-data.md, Validation)."""
    if first == second:
        return False
    if isinstance(prompt, str):
        return all(isinstance(t, str) and t.strip() for t in (prompt, first, second))
    # conversational: completions end with an assistant message (checked when stored)
    return all(c[-1]["content"].strip() for c in (first, second))
