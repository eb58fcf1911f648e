"""The SQLite feedback store: segment-pair queries and their labels, simulated or human.

One file holds everything a labeller needs, so a labelling UI can render queries from the
database alone: each query row carries both segments' observations, actions and true rewards
as float32 blobs (C order, little-endian) with their shapes, plus the replay-buffer indices of
their first transitions. Labels live in their own table so a query can be skipped (label NULL
with a reason), labelled later, or labelled by several labellers. Schema: ``docs/preference-rl.md``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unialign.feedback.types import SegmentBatch

__all__ = ["FeedbackStore", "FeedbackStoreError", "STORE_FORMAT", "SCHEMA_VERSION"]

STORE_FORMAT = "unialign-feedback"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE queries (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at     TEXT    NOT NULL,
    step           INTEGER NOT NULL,
    segment_length INTEGER NOT NULL,
    obs_dim        INTEGER NOT NULL,
    act_dim        INTEGER NOT NULL,
    selection      TEXT    NOT NULL,
    source         TEXT,
    index_1        INTEGER NOT NULL,
    index_2        INTEGER NOT NULL,
    obs_1          BLOB    NOT NULL,
    actions_1      BLOB    NOT NULL,
    rewards_1      BLOB    NOT NULL,
    obs_2          BLOB    NOT NULL,
    actions_2      BLOB    NOT NULL,
    rewards_2      BLOB    NOT NULL
);
CREATE TABLE labels (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id   INTEGER NOT NULL REFERENCES queries(id),
    label      REAL CHECK (label IS NULL OR label IN (0.0, 0.5, 1.0)),
    labeler    TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    reason     TEXT,
    CHECK (label IS NOT NULL OR reason IS NOT NULL),
    UNIQUE (query_id, labeler)
);
CREATE INDEX labels_query ON labels(query_id);
"""

_SEGMENT_COLUMNS = ("obs_1", "actions_1", "rewards_1", "obs_2", "actions_2", "rewards_2")


class FeedbackStoreError(RuntimeError):
    """The file at the given path cannot be used as a unialign feedback store."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _blob(t: Tensor) -> bytes:
    return (
        t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
    )


class FeedbackStore:
    """Queries and labels in one SQLite file (WAL mode; reopening an existing store resumes it).

    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(self.path)
        except sqlite3.Error as err:
            raise FeedbackStoreError(f"cannot open feedback store {self.path}: {err}") from err
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        try:
            tables = {
                r[0]
                for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as err:
            raise FeedbackStoreError(
                f"{self.path} is not a unialign feedback store: {err}"
            ) from err
        tables.discard("sqlite_sequence")
        if not tables:
            with self._conn:
                self._conn.executescript(_SCHEMA)
                self._conn.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [
                        ("format", STORE_FORMAT),
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("created_at", _now()),
                    ],
                )
        else:
            meta = (
                dict(self._conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
            )
            if meta.get("format") != STORE_FORMAT:
                raise FeedbackStoreError(
                    f"{self.path} is an SQLite database but not a unialign feedback store "
                    f"(tables: {sorted(tables)})"
                )
            if meta.get("schema_version") != str(SCHEMA_VERSION):
                raise FeedbackStoreError(
                    f"{self.path} has feedback-store schema version {meta.get('schema_version')}; "
                    f"this unialign reads version {SCHEMA_VERSION}"
                )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------

    def add_queries(
        self,
        seg1: SegmentBatch,
        seg2: SegmentBatch,
        *,
        step: int,
        selection: str,
        source: dict[str, Any] | None = None,
    ) -> list[int]:
        """Record N segment pairs; returns their query ids in order.

        ``selection`` names how they were chosen (``uniform``, ``disagreement``, ...);
        ``source`` is optional JSON-serializable context (env id, seed, run name) for a UI.
        Segment tensors are stored as float32 (float32 inputs come back bit for bit).
        """
        n, horizon = len(seg1), seg1.length
        if len(seg2) != n or seg2.length != horizon:
            raise ValueError(
                f"seg1 is {n}×{horizon} segments but seg2 is {len(seg2)}×{seg2.length}"
            )
        for name, seg in (("seg1", seg1), ("seg2", seg2)):
            if seg.true_rewards.shape != (n, horizon) or seg.indices.shape != (n,):
                raise ValueError(f"{name}: true_rewards must be [N, H] and indices [N]")
        obs_dim, act_dim = int(seg1.obs.shape[2]), int(seg1.actions.shape[2])
        if seg2.obs.shape[2] != obs_dim or seg2.actions.shape[2] != act_dim:
            raise ValueError("seg1 and seg2 have different observation or action sizes")
        source_json = json.dumps(source) if source is not None else None
        created = _now()
        ids = []
        with self._conn:
            for i in range(n):
                cur = self._conn.execute(
                    "INSERT INTO queries (created_at, step, segment_length, obs_dim, act_dim, selection,"
                    " source, index_1, index_2, " + ", ".join(_SEGMENT_COLUMNS) + ")"
                    " VALUES (" + ", ".join("?" * 15) + ")",
                    (
                        created, int(step), horizon, obs_dim, act_dim, selection, source_json,
                        int(seg1.indices[i]), int(seg2.indices[i]),
                        _blob(seg1.obs[i]), _blob(seg1.actions[i]), _blob(seg1.true_rewards[i]),
                        _blob(seg2.obs[i]), _blob(seg2.actions[i]), _blob(seg2.true_rewards[i]),
                    ),
                )  # fmt: skip
                ids.append(int(cur.lastrowid))
        return ids

    def add_labels(
        self,
        query_ids: Sequence[int],
        labels: Tensor | Sequence[float],
        *,
        labeler: str,
        keep_mask: Tensor | Sequence[bool] | None = None,
        reason: str = "skipped",
    ) -> None:
        """Record one label per query by ``labeler`` (``teacher:oracle``, ``human:alice``, ...).

        Where ``keep_mask`` is False the label is stored as NULL with ``reason`` (its value in
        ``labels`` is ignored). Kept labels must be 0, ½ or 1. A labeller labels a query once.
        """
        values = torch.as_tensor(labels, dtype=torch.float64).reshape(-1).tolist()
        keep = (
            [True] * len(values)
            if keep_mask is None
            else torch.as_tensor(keep_mask).reshape(-1).bool().tolist()
        )
        if not (len(query_ids) == len(values) == len(keep)):
            raise ValueError(
                f"query_ids ({len(query_ids)}), labels ({len(values)}) and keep_mask ({len(keep)}) "
                "must have the same length"
            )
        rows = []
        created = _now()
        for qid, value, kept in zip(query_ids, values, keep):
            if kept and value not in (0.0, 0.5, 1.0):
                raise ValueError(f"label for query {qid} must be 0, 0.5 or 1, got {value!r}")
            rows.append(
                (int(qid), value if kept else None, labeler, created, None if kept else reason)
            )
        try:
            with self._conn:
                self._conn.executemany(
                    "INSERT INTO labels (query_id, label, labeler, created_at, reason) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.IntegrityError as err:
            raise ValueError(f"cannot add labels to {self.path}: {err} (unknown query id, or "
                             f"{labeler!r} already labelled one of these queries)") from err  # fmt: skip

    # -- reading -----------------------------------------------------------------------------

    def count_queries(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0])

    def count_labels(self, *, include_skipped: bool = False) -> int:
        """Number of labels (skipped ones only with ``include_skipped``)."""
        where = "" if include_skipped else " WHERE label IS NOT NULL"
        return int(self._conn.execute("SELECT COUNT(*) FROM labels" + where).fetchone()[0])

    def unlabelled_query_ids(self, *, labeler: str | None = None) -> list[int]:
        """Ids of queries with no label row at all (or none from ``labeler``), oldest first."""
        if labeler is None:
            sql, args = (
                "SELECT id FROM queries WHERE id NOT IN (SELECT query_id FROM labels) ORDER BY id",
                (),
            )
        else:
            sql = "SELECT id FROM queries WHERE id NOT IN (SELECT query_id FROM labels WHERE labeler = ?) ORDER BY id"
            args = (labeler,)
        return [int(r[0]) for r in self._conn.execute(sql, args)]

    def segments(self, query_ids: Sequence[int]) -> tuple[SegmentBatch, SegmentBatch]:
        """The two segments of each query, in the order given."""
        rows = []
        for qid in query_ids:
            row = self._conn.execute(
                "SELECT segment_length, obs_dim, act_dim, index_1, index_2, "
                + ", ".join(_SEGMENT_COLUMNS) + " FROM queries WHERE id = ?",
                (int(qid),),
            ).fetchone()  # fmt: skip
            if row is None:
                raise KeyError(f"no query with id {qid} in {self.path}")
            rows.append(row)
        return self._stack(rows)

    def labelled_pairs(
        self, *, labeler: str | None = None
    ) -> tuple[SegmentBatch, SegmentBatch, Tensor]:
        """Every non-skipped label (optionally only ``labeler``'s) with its two segments.

        Ordered by query insertion, then label insertion; a query labelled by two labellers
        appears twice. Returns ``(seg1, seg2, labels [M] float32)``.
        """
        sql = (
            "SELECT q.segment_length, q.obs_dim, q.act_dim, q.index_1, q.index_2, "
            + ", ".join("q." + c for c in _SEGMENT_COLUMNS)
            + ", l.label FROM labels l JOIN queries q ON q.id = l.query_id WHERE l.label IS NOT NULL"
        )
        args: tuple[str, ...] = ()
        if labeler is not None:
            sql, args = sql + " AND l.labeler = ?", (labeler,)
        rows = self._conn.execute(sql + " ORDER BY q.id, l.id", args).fetchall()
        seg1, seg2 = self._stack([r[:-1] for r in rows])
        return seg1, seg2, torch.tensor([r[-1] for r in rows], dtype=torch.float32)

    def _stack(self, rows: list[tuple]) -> tuple[SegmentBatch, SegmentBatch]:
        if not rows:
            empty = SegmentBatch(
                torch.zeros(0, 0, 0),
                torch.zeros(0, 0, 0),
                torch.zeros(0, 0),
                torch.zeros(0, dtype=torch.long),
            )
            return empty, empty
        shapes = {tuple(r[:3]) for r in rows}
        if len(shapes) > 1:
            raise ValueError(
                f"{self.path} mixes segment shapes (H, obs_dim, act_dim) {sorted(shapes)}; "
                "they cannot be stacked into one batch"
            )
        horizon, obs_dim, act_dim = shapes.pop()

        def stack(col: int, *shape: int) -> Tensor:
            arr = np.stack([np.frombuffer(r[col], dtype="<f4").reshape(shape) for r in rows])
            return torch.from_numpy(arr.astype(np.float32, copy=False))

        def batch(first: int, index_col: int) -> SegmentBatch:
            return SegmentBatch(
                obs=stack(first, horizon, obs_dim),
                actions=stack(first + 1, horizon, act_dim),
                true_rewards=stack(first + 2, horizon),
                indices=torch.tensor([r[index_col] for r in rows], dtype=torch.long),
            )

        return batch(5, 3), batch(8, 4)
