"""What the labelling app reads from and writes to the feedback store.

Reads use a connection of their own over the documented schema (``docs/preference-rl.md``,
version 2), because the store's API has no "next query this annotator has not labelled". Every
label is written by :meth:`FeedbackStore.add_labels` (one transaction; it refuses a second label
by the same labeller). Undo is the one write outside the store's API: it deletes the
annotator's own most recent label row, in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unialign.feedback import codec
from unialign.feedback.store import BUSY_TIMEOUT_S, FeedbackStore
from unialign.feedback.types import Text

__all__ = ["CompletionQuery", "LabelRow", "QueryHead", "SegmentQuery", "StoreAccess"]


@dataclass(frozen=True)
class QueryHead:
    """The ``queries`` row: id, ``segment`` or ``completion``, step, selection, source JSON."""

    id: int
    kind: str
    step: int
    selection: str
    source: dict[str, Any]


@dataclass(frozen=True)
class CompletionQuery:
    """Two completions of one prompt (texts or message lists), hidden rewards NaN if unknown."""

    head: QueryHead
    prompt: Text
    completions: tuple[Text, Text]
    policy_version: str | None
    rewards: tuple[float, float]


@dataclass(frozen=True)
class SegmentQuery:
    """Two segments: ``obs [2, H, obs_dim]``, ``actions [2, H, act_dim]``, ``rewards [2, H]``
    (true rewards) and ``absorbed [2, H]`` bool, candidate 1 first."""

    head: QueryHead
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    absorbed: np.ndarray


@dataclass(frozen=True)
class LabelRow:
    """One label: ``value`` 1 / 0 / 0.5, or None for a skip (with ``reason``)."""

    id: int
    query_id: int
    labeler: str
    value: float | None
    reason: str | None
    metadata: dict[str, Any]


class StoreAccess:
    """Reads for the app's pages and its two writes (label, undo) on one store file."""

    def __init__(self, store_path: str | Path) -> None:
        self.path = Path(store_path)
        with FeedbackStore(self.path, create=False):  # checks (and migrates) the file once
            pass

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            yield conn
        finally:
            conn.close()

    # -- reads -------------------------------------------------------------------------------

    def next_pending(self, labeler: str, *, after: int | None = None) -> int | None:
        """The oldest query without a label by ``labeler`` (with id > ``after`` if given)."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT id FROM queries WHERE id > ? AND id NOT IN "
                "(SELECT query_id FROM labels WHERE labeler = ?) ORDER BY id LIMIT 1",
                (-1 if after is None else after, labeler),
            ).fetchone()
        return None if row is None else int(row[0])

    def progress(self, labeler: str) -> tuple[int, int]:
        """``(labelled by this labeller, pending for them)``; a skip counts as labelled."""
        with self.connect() as conn:
            done = conn.execute("SELECT COUNT(*) FROM labels WHERE labeler = ?", (labeler,))
            done = int(done.fetchone()[0])
            total = int(conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0])
        return done, total - done

    def head(self, query_id: int) -> QueryHead | None:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT id, kind, step, selection, source FROM queries WHERE id = ?", (query_id,)
            ).fetchone()
        return None if row is None else _head(row)

    def label_of(self, labeler: str, query_id: int) -> LabelRow | None:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT id, query_id, labeler, label, reason, metadata FROM labels "
                "WHERE labeler = ? AND query_id = ?",
                (labeler, query_id),
            ).fetchone()
        return None if row is None else _label(row)

    def completion(self, head: QueryHead) -> CompletionQuery:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT format, prompt, completion_1, completion_2, policy_version, reward_1, "
                "reward_2 FROM completion_pairs WHERE query_id = ?",
                (head.id,),
            ).fetchone()
        fmt, prompt, c1, c2, version, r1, r2 = row

        def text(value: str) -> Text:
            return value if fmt == "standard" else json.loads(value)

        return CompletionQuery(
            head, text(prompt), (text(c1), text(c2)), version, (_nan(r1), _nan(r2))
        )

    def segment(self, head: QueryHead) -> SegmentQuery:
        with self.connect() as conn:
            row = conn.execute(
                f"SELECT {codec.SEGMENT_COLUMNS} FROM segment_pairs p WHERE p.query_id = ?",
                (head.id,),
            ).fetchone()
        horizon, obs_dim, act_dim = row[:3]

        def side(first: int) -> tuple[np.ndarray, ...]:
            mask = row[first + 3]
            return (
                codec.blob_floats(row[first], horizon, obs_dim),
                codec.blob_floats(row[first + 1], horizon, act_dim),
                codec.blob_floats(row[first + 2], horizon),
                np.zeros(horizon, bool) if mask is None else codec.blob_mask(mask, horizon),
            )

        a, b = side(5), side(9)
        return SegmentQuery(head, *(np.stack([x, y]) for x, y in zip(a, b)))

    def human_labels(self) -> list[LabelRow]:
        """Every label by a ``human:*`` labeller, skips included, oldest first."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT id, query_id, labeler, label, reason, metadata FROM labels "
                "WHERE labeler_kind = 'human' ORDER BY id"
            ).fetchall()
        return [_label(r) for r in rows]

    def true_returns(self, query_ids: list[int]) -> dict[int, tuple[float, float]]:
        """Per query, the two candidates' true returns where both are known: the sums of a
        segment pair's true rewards, or a completion pair's hidden rewards."""
        out: dict[int, tuple[float, float]] = {}
        with self.connect() as conn:
            for start in range(0, len(query_ids), 500):
                chunk = query_ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT query_id, segment_length, rewards_1, rewards_2 FROM segment_pairs "
                    f"WHERE query_id IN ({marks})",
                    chunk,
                )
                for q, h, b1, b2 in rows:
                    r1 = codec.blob_floats(b1, h).astype(np.float64).sum()
                    r2 = codec.blob_floats(b2, h).astype(np.float64).sum()
                    out[int(q)] = (float(r1), float(r2))
                rows = conn.execute(
                    "SELECT query_id, reward_1, reward_2 FROM completion_pairs WHERE "
                    f"query_id IN ({marks}) AND reward_1 IS NOT NULL AND reward_2 IS NOT NULL",
                    chunk,
                )
                out.update((int(q), (float(r1), float(r2))) for q, r1, r2 in rows)
        return out

    # -- writes ------------------------------------------------------------------------------

    def add_label(
        self,
        query_id: int,
        value: float | None,
        *,
        labeler: str,
        reason: str | None,
        metadata: Mapping[str, Any],
    ) -> int:
        """One label through :meth:`FeedbackStore.add_labels` (``value`` None: a skip with
        ``reason``); ``ValueError`` when the labeller already labelled the query."""
        with FeedbackStore(self.path, create=False) as store:
            kept = value is not None
            (label_id,) = store.add_labels(
                [query_id],
                [value if kept else 0.0],
                labeler=labeler,
                keep_mask=[kept],
                reason=reason or "skipped",
                metadata=dict(metadata),
            )
        return label_id

    def undo_last(self, labeler: str) -> LabelRow | None:
        """Delete ``labeler``'s most recent label (highest label id), in one transaction;
        returns it, or None when the labeller has no label."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT id, query_id, labeler, label, reason, metadata FROM labels "
                    "WHERE labeler = ? ORDER BY id DESC LIMIT 1",
                    (labeler,),
                ).fetchone()
                if row is not None:
                    conn.execute("DELETE FROM labels WHERE id = ?", (row[0],))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return None if row is None else _label(row)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _head(row: tuple) -> QueryHead:
    source = json.loads(row[4]) if row[4] else {}
    return QueryHead(
        int(row[0]),
        str(row[1]),
        int(row[2]),
        str(row[3]),
        source if isinstance(source, dict) else {},
    )


def _label(row: tuple) -> LabelRow:
    meta = json.loads(row[5]) if row[5] else {}
    return LabelRow(
        int(row[0]),
        int(row[1]),
        str(row[2]),
        None if row[3] is None else float(row[3]),
        row[4],
        meta if isinstance(meta, dict) else {},
    )
