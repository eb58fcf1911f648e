"""The SQLite feedback store: comparisons of two candidates and their labels, from any source.

One file holds everything a labeller needs, so a labelling UI can render queries from the
database alone. A query compares two candidates of one kind: two control *segments*
(observations, actions and true rewards as float32 blobs with their shapes, the absorbed-step
mask, the replay-buffer indices of their first transitions) or two language-model
*completions* of one prompt (texts or message lists, optional token ids and hidden rewards,
the policy version that generated them). Labels live in their own table so a query can be
skipped (label NULL with a reason), labelled later, or labelled by several labellers —
simulated teachers, judges or humans. Schema (version 2), migration from version 1, rollback
and concurrency: ``docs/preference-rl.md``.

Every write is one ``BEGIN IMMEDIATE`` transaction, and the file is in WAL mode with a 30 s
busy timeout: several processes (the training loop, a labelling app, annotators' scripts) can
write at once; a writer that finds the file locked waits for its turn instead of failing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unialign.feedback import codec, schema
from unialign.feedback.schema import SCHEMA_VERSION, STORE_FORMAT
from unialign.feedback.types import CompletionPairs, LabelledCompletions, SegmentBatch, Text

__all__ = ["FeedbackStore", "FeedbackStoreError", "StoreMark", "STORE_FORMAT", "SCHEMA_VERSION"]

BUSY_TIMEOUT_S = 30.0
QUERY_KINDS = ("segment", "completion")
_CHUNK = 500  # ids per "IN (...)" lookup, well below SQLite's variable limit


class FeedbackStoreError(RuntimeError):
    """The file at the given path cannot be used as a unialign feedback store."""


@dataclass(frozen=True)
class StoreMark:
    """A point in a store's history: the highest query id and label id assigned so far.

    Saved in a training checkpoint (``as_dict()`` is plain JSON / ``torch.save`` data) and
    passed to :meth:`FeedbackStore.rollback` on resume.
    """

    query_id: int
    label_id: int

    def as_dict(self) -> dict[str, int]:
        return {"query_id": self.query_id, "label_id": self.label_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreMark:
        try:
            mark = cls(int(data["query_id"]), int(data["label_id"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"a store mark needs integer 'query_id' and 'label_id', got {data!r}"
            ) from err
        if mark.query_id < 0 or mark.label_id < 0:
            raise ValueError(f"store mark ids must be >= 0, got {mark}")
        return mark


class FeedbackStore:
    """Queries and labels in one SQLite file; reopening an existing store resumes it.

    ``create=False`` refuses to create a missing file (readers such as the exporter use it).
    A version-1 file is migrated to version 2 in place on opening (one transaction). Use as a
    context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise FeedbackStoreError(f"{self.path} is a directory, not a feedback store file")
        if not create and not self.path.exists():
            raise FeedbackStoreError(f"no feedback store at {self.path} (file not found)")
        try:
            # autocommit mode: every write below opens its own BEGIN IMMEDIATE transaction
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise FeedbackStoreError(f"cannot open feedback store {self.path}: {err}") from err
        try:
            self._open()
        except sqlite3.OperationalError as err:  # locked past the timeout, disk I/O, ...
            self._conn.close()
            raise FeedbackStoreError(f"cannot open feedback store {self.path}: {err}") from err
        except sqlite3.DatabaseError as err:  # "file is not a database"
            self._conn.close()
            raise FeedbackStoreError(
                f"{self.path} is not a unialign feedback store: {err}"
            ) from err
        except BaseException:
            self._conn.close()
            raise

    def _tables(self) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows} - {"sqlite_sequence"}

    def _open(self) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if not self._tables():
            self._set_wal()  # an empty file: ours to set up
            with self._write():
                if not self._tables():  # another process may have created it meanwhile
                    for statement in schema.SCHEMA_V2:
                        self._conn.execute(statement)
                    self._conn.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [
                            ("format", STORE_FORMAT),
                            ("schema_version", str(SCHEMA_VERSION)),
                            ("created_at", schema.now()),
                        ],
                    )
        version = self._check_meta()
        if version == "1":
            try:
                with self._write():
                    if self._check_meta() == "1":  # not migrated by another process meanwhile
                        schema.migrate_v1_to_v2(self._conn)
            except sqlite3.Error as err:
                raise FeedbackStoreError(
                    f"cannot migrate {self.path} from feedback-store schema version 1 to "
                    f"{SCHEMA_VERSION} ({err}); the file was left unchanged"
                ) from err
        elif version != str(SCHEMA_VERSION):
            raise FeedbackStoreError(
                f"{self.path} has feedback-store schema version {version}; this unialign reads "
                f"versions 1 (migrated on opening) and {SCHEMA_VERSION}"
            )
        self._set_wal()
        # WAL + NORMAL: a killed process loses nothing committed; only an OS crash or power
        # loss can undo the last transactions (the file stays consistent either way).
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")

    def _set_wal(self) -> None:
        """``PRAGMA journal_mode = WAL``, retried: while another process creates or converts
        the file, the switch fails with "database is locked" at once instead of waiting on
        the busy timeout (seen with several processes opening one new store)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL").fetchall()
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _check_meta(self) -> str | None:
        tables = self._tables()
        meta = dict(self._conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if meta.get("format") != STORE_FORMAT:
            raise FeedbackStoreError(
                f"{self.path} is an SQLite database but not a unialign feedback store "
                f"(tables: {sorted(tables)})"
            )
        return meta.get("schema_version")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; waits up to the busy timeout for other writers."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing queries ---------------------------------------------------------------------

    def _insert_query(
        self, kind: str, created: str, step: int, selection: str, source: str | None
    ) -> int:
        cur = self._conn.execute(
            "INSERT INTO queries (kind, created_at, step, selection, source) "
            "VALUES (?, ?, ?, ?, ?)",
            (kind, created, step, selection, source),
        )
        return int(cur.lastrowid)

    def add_segment_queries(
        self,
        seg1: SegmentBatch,
        seg2: SegmentBatch,
        *,
        step: int,
        selection: str,
        source: dict[str, Any] | None = None,
    ) -> list[int]:
        """Record N segment pairs as queries of kind ``segment``; returns their ids in order.

        ``step`` is the environment step of the feedback round; ``selection`` names how the
        pairs were chosen (``uniform``, ``disagreement``, ...); ``source`` is optional
        JSON-serializable context (env id, seed, run name) for a UI. Tensors are stored as
        float32 (float32 inputs come back bit for bit); each side's absorbed mask is stored
        when the batch has one (``absorbed`` not None) and read back as given.
        """
        n, horizon = len(seg1), seg1.length
        if len(seg2) != n or seg2.length != horizon:
            raise ValueError(
                f"seg1 is {n}×{horizon} segments but seg2 is {len(seg2)}×{seg2.length}; "
                "pass pairs of equally long segments"
            )
        for name, seg in (("seg1", seg1), ("seg2", seg2)):
            if (
                seg.obs.dim() != 3
                or seg.actions.dim() != 3
                or seg.actions.shape[:2] != (n, horizon)
            ):
                raise ValueError(f"{name}: obs must be [N, H, obs_dim] and actions [N, H, act_dim]")
            if seg.true_rewards.shape != (n, horizon) or seg.indices.shape != (n,):
                raise ValueError(f"{name}: true_rewards must be [N, H] and indices [N]")
            if seg.absorbed is not None and seg.absorbed.shape != (n, horizon):
                raise ValueError(f"{name}: absorbed must be [N, H] or None")
        obs_dim, act_dim = int(seg1.obs.shape[2]), int(seg1.actions.shape[2])
        if seg2.obs.shape[2] != obs_dim or seg2.actions.shape[2] != act_dim:
            raise ValueError("seg1 and seg2 have different observation or action sizes")
        head = self._query_head(step, selection, source)

        def side(seg: SegmentBatch, i: int) -> tuple:
            absorbed = None if seg.absorbed is None else codec.mask_blob(seg.absorbed[i])
            return (
                codec.float_blob(seg.obs[i]),
                codec.float_blob(seg.actions[i]),
                codec.float_blob(seg.true_rewards[i]),
                absorbed,
            )

        ids = []
        with self._write():
            for i in range(n):
                qid = self._insert_query("segment", *head)
                self._conn.execute(
                    "INSERT INTO segment_pairs VALUES (" + ", ".join("?" * 14) + ")",
                    (qid, horizon, obs_dim, act_dim, int(seg1.indices[i]), int(seg2.indices[i]),
                     *side(seg1, i), *side(seg2, i)),
                )  # fmt: skip
                ids.append(qid)
        return ids

    add_queries = add_segment_queries  # round-1 name, kept for existing callers

    def add_completion_queries(
        self,
        prompts: Sequence[Text],
        completions_1: Sequence[Text],
        completions_2: Sequence[Text],
        *,
        step: int,
        policy_version: str | int | Sequence[str | int | None] | None = None,
        token_ids_1: Sequence[Sequence[int] | None] | None = None,
        token_ids_2: Sequence[Sequence[int] | None] | None = None,
        rewards_1: Tensor | Sequence[float | None] | None = None,
        rewards_2: Tensor | Sequence[float | None] | None = None,
        selection: str = "online",
        source: dict[str, Any] | None = None,
    ) -> list[int]:
        """Record N comparisons of two completions of one prompt; returns their query ids.

        Prompts and completions are strings, or lists of ``{"role", "content"}`` messages (all
        three of a pair the same; a conversational completion ends with its ``assistant``
        message). ``policy_version`` names the policy that generated the pair (one value for
        all, or one per pair; stored as text). ``token_ids_*`` are the completions' token ids
        (each a list of ints or None); ``rewards_*`` hidden/true rewards per candidate for
        simulated teachers and agreement (None or NaN where unknown). ``step`` is the training
        step or iteration, ``selection`` how the pairs were chosen, ``source`` optional JSON.
        """
        n = len(prompts)
        if policy_version is None or isinstance(policy_version, str | int):
            versions = [policy_version] * n
        else:
            versions = list(policy_version)
            if len(versions) != n:
                raise ValueError(
                    f"policy_version has {len(versions)} entries for {n} pairs; pass one value "
                    "for all pairs or one per pair"
                )
        pairs = CompletionPairs(
            prompts=list(prompts),
            completions_1=list(completions_1),
            completions_2=list(completions_2),
            rewards_1=codec.rewards_tensor(rewards_1, n, "rewards_1"),
            rewards_2=codec.rewards_tensor(rewards_2, n, "rewards_2"),
            token_ids_1=codec.token_id_lists(token_ids_1, n, "token_ids_1"),
            token_ids_2=codec.token_id_lists(token_ids_2, n, "token_ids_2"),
            policy_versions=[None if v is None else str(v) for v in versions],
        )
        return self.add_completion_pairs(pairs, step=step, selection=selection, source=source)

    def add_completion_pairs(
        self,
        pairs: CompletionPairs,
        *,
        step: int,
        selection: str = "online",
        source: dict[str, Any] | None = None,
    ) -> list[int]:
        """:meth:`add_completion_queries` for pairs already in a :class:`CompletionPairs`
        (its ``query_ids`` are ignored: the store assigns new ones)."""
        head = self._query_head(step, selection, source)
        n = len(pairs)
        r1 = codec.rewards_tensor(pairs.rewards_1, n, "rewards_1").tolist()
        r2 = codec.rewards_tensor(pairs.rewards_2, n, "rewards_2").tolist()
        t1 = codec.token_id_lists(pairs.token_ids_1, n, "token_ids_1")
        t2 = codec.token_id_lists(pairs.token_ids_2, n, "token_ids_2")
        rows = []
        for i, fmt in enumerate(pairs.formats):
            texts = (pairs.prompts[i], pairs.completions_1[i], pairs.completions_2[i])
            if fmt == "conversational":
                texts = tuple(codec.dump_json(t, f"the messages of pair {i}") for t in texts)
            version = None if pairs.policy_versions is None else pairs.policy_versions[i]
            rows.append(
                (fmt, *texts,
                 codec.json_or_none(t1[i]), codec.json_or_none(t2[i]),
                 None if version is None else str(version), codec.float_or_none(r1[i]),
                 codec.float_or_none(r2[i]))
            )  # fmt: skip
        ids = []
        with self._write():
            for row in rows:
                qid = self._insert_query("completion", *head)
                self._conn.execute(
                    "INSERT INTO completion_pairs VALUES (" + ", ".join("?" * 10) + ")",
                    (qid, *row),
                )
                ids.append(qid)
        return ids

    @staticmethod
    def _query_head(step: int, selection: str, source: object) -> tuple[str, int, str, str | None]:
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise ValueError(f"step must be an int (training step or iteration), got {step!r}")
        if not isinstance(selection, str) or not selection:
            raise ValueError(f"selection must name how the pairs were chosen, got {selection!r}")
        return schema.now(), int(step), selection, codec.dump_json(source, "source")

    # -- writing labels ----------------------------------------------------------------------

    def add_labels(
        self,
        query_ids: Sequence[int],
        labels: Tensor | Sequence[float],
        *,
        labeler: str,
        keep_mask: Tensor | Sequence[bool] | None = None,
        reason: str = "skipped",
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[int]:
        """Record one label per query by ``labeler``; returns the new label ids.

        ``labeler`` is ``teacher:<kind>``, ``judge:<name>`` or ``human:<annotator>`` (its kind
        goes in its own column). Kept labels must be 1 (first candidate better), 0 (second) or
        ½ (tie). Where ``keep_mask`` is False the label is a skip: stored as NULL with
        ``reason`` (its value in ``labels`` is ignored). ``metadata`` is JSON per label (one
        dict for all, or one dict/None per label): display order, latency, a judge's rationale.
        A labeller labels a query once; all labels of one call are written or none.
        """
        kind = schema.labeler_kind(labeler)
        ids = [int(q) for q in query_ids]
        values = torch.as_tensor(labels, dtype=torch.float64).reshape(-1).tolist()
        keep = (
            [True] * len(values)
            if keep_mask is None
            else torch.as_tensor(keep_mask).reshape(-1).bool().tolist()
        )
        if not (len(ids) == len(values) == len(keep)):
            raise ValueError(
                f"query_ids ({len(ids)}), labels ({len(values)}) and keep_mask ({len(keep)}) "
                "must have the same length"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("query_ids repeats a query; a labeller labels each query once")
        if not isinstance(reason, str) or not reason:
            raise ValueError(
                f"reason must be a non-empty string (why labels were skipped), got {reason!r}"
            )
        if metadata is None or isinstance(metadata, Mapping):
            metas = [codec.dump_json(metadata, "metadata")] * len(ids)
        else:
            metas = [codec.dump_json(m, f"metadata[{j}]") for j, m in enumerate(metadata)]
            if len(metas) != len(ids):
                raise ValueError(
                    f"metadata has {len(metas)} entries for {len(ids)} labels; pass one dict per "
                    "label, or one dict for all"
                )
        created = schema.now()
        rows = []
        for qid, value, kept, meta in zip(ids, values, keep, metas):
            if kept and value not in (0.0, 0.5, 1.0):
                raise ValueError(f"label for query {qid} must be 0, 0.5 or 1, got {value!r}")
            rows.append(
                (
                    qid,
                    value if kept else None,
                    labeler,
                    kind,
                    created,
                    None if kept else reason,
                    meta,
                )
            )
        new_ids = []
        with self._write():
            self._check_new_labels(ids, labeler)
            for row in rows:
                cur = self._conn.execute(
                    "INSERT INTO labels (query_id, label, labeler, labeler_kind, created_at, "
                    "reason, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                new_ids.append(int(cur.lastrowid))
        return new_ids

    def _check_new_labels(self, ids: list[int], labeler: str) -> None:
        known: set[int] = set()
        done: set[int] = set()
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            known.update(
                r[0]
                for r in self._conn.execute(f"SELECT id FROM queries WHERE id IN ({marks})", chunk)
            )
            done.update(
                r[0]
                for r in self._conn.execute(
                    f"SELECT query_id FROM labels WHERE labeler = ? AND query_id IN ({marks})",
                    (labeler, *chunk),
                )
            )
        if missing := [q for q in ids if q not in known]:
            raise ValueError(
                f"cannot add labels to {self.path}: unknown query id(s) {missing[:10]}; "
                "add the queries first (add_segment_queries / add_completion_queries)"
            )
        if done:
            raise ValueError(
                f"cannot add labels to {self.path}: {labeler!r} already labelled "
                f"query id(s) {sorted(done)[:10]}; a labeller labels each query once"
            )

    # -- crash rollback ----------------------------------------------------------------------

    def mark(self) -> StoreMark:
        """The highest query id and label id assigned so far (AUTOINCREMENT counters).

        Save it with a training checkpoint; on resume, :meth:`rollback` to it.
        """
        seqs = schema.sequences(self._conn)
        return StoreMark(seqs.get("queries", 0), seqs.get("labels", 0))

    def rollback(self, mark: StoreMark) -> tuple[int, int]:
        """Undo everything added after ``mark``; returns (queries, labels) deleted.

        In one transaction: deletes every label with id > ``mark.label_id`` (from any
        labeller, including labels of older queries), every query with id > ``mark.query_id``
        with its candidates and labels, and resets the AUTOINCREMENT counters to the mark, so
        that the ids a resumed run assigns are exactly those an uninterrupted run would have.
        """
        if not isinstance(mark, StoreMark):
            raise ValueError(f"mark must be a StoreMark (see mark()), got {type(mark).__name__}")
        with self._write():
            now = self.mark()
            if mark.query_id > now.query_id or mark.label_id > now.label_id:
                raise ValueError(
                    f"cannot roll {self.path} back to {mark}: the store has only reached {now} "
                    "(a mark taken on another store file?)"
                )
            labels = self._conn.execute(
                "DELETE FROM labels WHERE id > ? OR query_id > ?", (mark.label_id, mark.query_id)
            ).rowcount
            for table in ("segment_pairs", "completion_pairs"):
                self._conn.execute(f"DELETE FROM {table} WHERE query_id > ?", (mark.query_id,))
            queries = self._conn.execute(
                "DELETE FROM queries WHERE id > ?", (mark.query_id,)
            ).rowcount
            schema.set_sequence(self._conn, "queries", mark.query_id)
            schema.set_sequence(self._conn, "labels", mark.label_id)
        return int(queries), int(labels)

    # -- reading -----------------------------------------------------------------------------

    def count_queries(self, kind: str | None = None) -> int:
        """Number of queries (only of ``kind``, ``segment`` or ``completion``, if given)."""
        if kind is None:
            return int(self._conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0])
        _check_kind(kind)
        sql = "SELECT COUNT(*) FROM queries WHERE kind = ?"
        return int(self._conn.execute(sql, (kind,)).fetchone()[0])

    def count_labels(
        self, *, include_skipped: bool = False, labeler: str | None = None, kind: str | None = None
    ) -> int:
        """Number of labels (skipped ones only with ``include_skipped``), optionally only
        ``labeler``'s and only on queries of ``kind``."""
        sql = "SELECT COUNT(*) FROM labels l JOIN queries q ON q.id = l.query_id WHERE 1"
        args: list[Any] = []
        if not include_skipped:
            sql += " AND l.label IS NOT NULL"
        if labeler is not None:
            sql, args = sql + " AND l.labeler = ?", [*args, labeler]
        if kind is not None:
            _check_kind(kind)
            sql, args = sql + " AND q.kind = ?", [*args, kind]
        return int(self._conn.execute(sql, args).fetchone()[0])

    def unlabelled_query_ids(
        self, *, labeler: str | None = None, kind: str | None = None
    ) -> list[int]:
        """Ids of queries with no label row at all (or none from ``labeler``), oldest first,
        optionally only of ``kind``."""
        sql, args = "SELECT id FROM queries WHERE id NOT IN (SELECT query_id FROM labels", []
        if labeler is not None:
            sql, args = sql + " WHERE labeler = ?", [labeler]
        sql += ")"
        if kind is not None:
            _check_kind(kind)
            sql, args = sql + " AND kind = ?", [*args, kind]
        return [int(r[0]) for r in self._conn.execute(sql + " ORDER BY id", args)]

    def query_labels(
        self, query_ids: Sequence[int], *, labeler_kind: str | None = None
    ) -> dict[int, list[float | None]]:
        """Every label of each given query (optionally only by labellers of ``labeler_kind``:
        ``teacher``, ``judge``, ``human``), oldest first; None for a skip. Queries without a
        label map to an empty list."""
        ids = [int(q) for q in query_ids]
        out: dict[int, list[float | None]] = {q: [] for q in ids}
        if not ids:
            return out
        sql = f"SELECT query_id, label FROM labels WHERE query_id IN ({', '.join('?' * len(ids))})"
        args: list[Any] = list(ids)
        if labeler_kind is not None:
            sql, args = sql + " AND labeler_kind = ?", [*args, labeler_kind]
        for qid, label in self._conn.execute(sql + " ORDER BY id", args):
            out[int(qid)].append(None if label is None else float(label))
        return out

    def find_segment_queries(
        self, step: int, index_1: Sequence[int], index_2: Sequence[int]
    ) -> list[int | None]:
        """For each pair of replay indices, the id of the oldest segment query asked at
        ``step`` with exactly these first-transition indices, or None. Lets a run that replays
        steps (after a crash) find the queries it already posted instead of posting them
        twice."""
        if len(index_1) != len(index_2):
            raise ValueError(f"index_1 has {len(index_1)} entries but index_2 has {len(index_2)}")
        found: list[int | None] = []
        for i1, i2 in zip(index_1, index_2):
            row = self._conn.execute(
                "SELECT q.id FROM queries q JOIN segment_pairs p ON p.query_id = q.id "
                "WHERE q.step = ? AND p.index_1 = ? AND p.index_2 = ? ORDER BY q.id LIMIT 1",
                (int(step), int(i1), int(i2)),
            ).fetchone()
            found.append(None if row is None else int(row[0]))
        return found

    def query_kind(self, query_id: int) -> str:
        """``segment`` or ``completion``; ``KeyError`` for an unknown id."""
        row = self._conn.execute(
            "SELECT kind FROM queries WHERE id = ?", (int(query_id),)
        ).fetchone()
        if row is None:
            raise KeyError(f"no query with id {query_id} in {self.path}")
        return str(row[0])

    def segments(self, query_ids: Sequence[int]) -> tuple[SegmentBatch, SegmentBatch]:
        """The two segments of each query, in the order given (all must be ``segment`` queries)."""
        by_id = self._fetch_by_id(
            query_ids, "segment", f"SELECT q.id, {codec.SEGMENT_COLUMNS} FROM queries q "
            "JOIN segment_pairs p ON p.query_id = q.id WHERE q.id IN ({})",
        )  # fmt: skip
        return codec.segments_from_rows([by_id[int(q)][1:] for q in query_ids], self.path)

    def completions(self, query_ids: Sequence[int]) -> CompletionPairs:
        """The completion pairs of the given ``completion`` queries, in the order given."""
        by_id = self._fetch_by_id(
            query_ids, "completion", f"SELECT {codec.COMPLETION_COLUMNS} FROM queries q "
            "JOIN completion_pairs p ON p.query_id = q.id WHERE q.id IN ({})",
        )  # fmt: skip
        return codec.completions_from_rows([by_id[int(q)] for q in query_ids])

    def _fetch_by_id(self, query_ids: Sequence[int], kind: str, sql: str) -> dict[int, tuple]:
        ids = [int(q) for q in query_ids]
        by_id: dict[int, tuple] = {}
        for chunk in _chunks(ids):
            rows = self._conn.execute(sql.format(", ".join("?" * len(chunk))), chunk)
            by_id.update((int(r[0]), r) for r in rows)
        for q in ids:
            if q not in by_id:
                other = self.query_kind(q)  # KeyError when unknown
                raise ValueError(
                    f"query {q} in {self.path} compares {other}s, not {kind}s; read it with "
                    + ("segments()" if other == "segment" else "completions()")
                )
        return by_id

    def labelled_segment_pairs(
        self, *, labeler: str | None = None
    ) -> tuple[SegmentBatch, SegmentBatch, Tensor]:
        """Every non-skipped label on a segment query (optionally only ``labeler``'s) with its
        two segments.

        Ordered by query id, then label id; a query labelled by two labellers appears twice.
        Returns ``(seg1, seg2, labels [M] float32)``.
        """
        sql = (
            f"SELECT {codec.SEGMENT_COLUMNS}, l.label FROM labels l "
            "JOIN queries q ON q.id = l.query_id JOIN segment_pairs p ON p.query_id = q.id WHERE l.label IS NOT NULL"
        )
        args: tuple[str, ...] = ()
        if labeler is not None:
            sql, args = sql + " AND l.labeler = ?", (labeler,)
        rows = self._conn.execute(sql + " ORDER BY q.id, l.id", args).fetchall()
        seg1, seg2 = codec.segments_from_rows([r[:-1] for r in rows], self.path)
        return seg1, seg2, torch.tensor([r[-1] for r in rows], dtype=torch.float32)

    labelled_pairs = labelled_segment_pairs  # round-1 name, kept for existing callers

    def labelled_completion_pairs(self, *, labeler: str | None = None) -> LabelledCompletions:
        """Every non-skipped label on a completion query (optionally only ``labeler``'s), with
        its pair; ordered by query id, then label id (a query labelled twice appears twice)."""
        sql = (
            f"SELECT {codec.COMPLETION_COLUMNS}, l.label, l.labeler FROM labels l JOIN queries q "
            "ON q.id = l.query_id JOIN completion_pairs p ON p.query_id = q.id "
            "WHERE l.label IS NOT NULL"
        )
        args: tuple[str, ...] = ()
        if labeler is not None:
            sql, args = sql + " AND l.labeler = ?", (labeler,)
        rows = self._conn.execute(sql + " ORDER BY q.id, l.id", args).fetchall()
        return LabelledCompletions(
            codec.completions_from_rows([r[:-2] for r in rows]),
            torch.tensor([r[-2] for r in rows], dtype=torch.float32),
            [str(r[-1]) for r in rows],
        )


# -- helpers -----------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in QUERY_KINDS:
        raise ValueError(f"kind must be one of {QUERY_KINDS}, got {kind!r}")


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
