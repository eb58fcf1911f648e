"""The feedback store's SQLite schema (version 2), its migration from version 1, and codecs.

Version 2 (``docs/preference-rl.md`` has the column tables): ``queries`` holds what every
comparison shares (kind, step, selection, source); ``segment_pairs`` and ``completion_pairs``
hold the two candidates of a ``segment`` or ``completion`` query (one row per query, keyed by
the query id); ``labels`` holds any number of labels per query, one per labeller.

Version 1 (unialign ≤ round 1) had segment columns directly in ``queries`` and no labeller
kind. :func:`migrate_v1_to_v2` rewrites such a file in place; the caller runs it inside one
transaction, so a failure leaves the file as it was.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

STORE_FORMAT = "unialign-feedback"
SCHEMA_VERSION = 2

#: Labeller kinds: the part of a labeller name before the first ``:``. ``other`` only comes
#: from version-1 files, whose labeller names had no required prefix.
LABELER_KINDS = ("teacher", "judge", "human")

_TABLES_V2 = [
    """CREATE TABLE queries (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL CHECK (kind IN ('segment', 'completion')),
    created_at TEXT    NOT NULL,
    step       INTEGER NOT NULL,
    selection  TEXT    NOT NULL,
    source     TEXT
)""",
    """CREATE TABLE segment_pairs (
    query_id       INTEGER PRIMARY KEY REFERENCES queries(id),
    segment_length INTEGER NOT NULL,
    obs_dim        INTEGER NOT NULL,
    act_dim        INTEGER NOT NULL,
    index_1        INTEGER NOT NULL,
    index_2        INTEGER NOT NULL,
    obs_1          BLOB    NOT NULL,
    actions_1      BLOB    NOT NULL,
    rewards_1      BLOB    NOT NULL,
    absorbed_1     BLOB,
    obs_2          BLOB    NOT NULL,
    actions_2      BLOB    NOT NULL,
    rewards_2      BLOB    NOT NULL,
    absorbed_2     BLOB
)""",
    """CREATE TABLE completion_pairs (
    query_id       INTEGER PRIMARY KEY REFERENCES queries(id),
    format         TEXT    NOT NULL CHECK (format IN ('standard', 'conversational')),
    prompt         TEXT    NOT NULL,
    completion_1   TEXT    NOT NULL,
    completion_2   TEXT    NOT NULL,
    token_ids_1    TEXT,
    token_ids_2    TEXT,
    policy_version TEXT,
    reward_1       REAL,
    reward_2       REAL
)""",
    """CREATE TABLE labels (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id     INTEGER NOT NULL REFERENCES queries(id),
    label        REAL CHECK (label IS NULL OR label IN (0.0, 0.5, 1.0)),
    labeler      TEXT    NOT NULL,
    labeler_kind TEXT    NOT NULL CHECK (labeler_kind IN ('teacher', 'judge', 'human', 'other')),
    created_at   TEXT    NOT NULL,
    reason       TEXT,
    metadata     TEXT,
    CHECK (label IS NOT NULL OR reason IS NOT NULL),
    UNIQUE (query_id, labeler)
)""",
    "CREATE INDEX labels_labeler ON labels(labeler, query_id)",
]

#: Every statement that creates an empty version-2 store (``meta`` rows are added separately).
SCHEMA_V2 = ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", *_TABLES_V2]

#: Version 1's DDL, kept to document what :func:`migrate_v1_to_v2` reads (and for its tests).
SCHEMA_V1 = """
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

_SEGMENT_V1_COLUMNS = (
    "segment_length, obs_dim, act_dim, index_1, index_2, "
    "obs_1, actions_1, rewards_1, obs_2, actions_2, rewards_2"
)
# A version-1 labeller name "teacher:oracle" keeps its name and gets kind "teacher"; a name
# without one of the known prefixes (or with nothing after it) gets kind "other".
_KIND_FROM_NAME_SQL = (
    "CASE "
    + " ".join(
        f"WHEN substr(labeler, 1, {len(k) + 1}) = '{k}:' AND length(labeler) > {len(k) + 1} "
        f"THEN '{k}'"
        for k in LABELER_KINDS
    )
    + " ELSE 'other' END"
)


def now() -> str:
    """The current UTC time as ISO-8601 with milliseconds (the ``created_at`` columns)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def labeler_kind(labeler: object) -> str:
    """The kind of a labeller name ``kind:name``; ``ValueError`` unless kind is known."""
    if isinstance(labeler, str):
        kind, sep, name = labeler.partition(":")
        if sep and name and kind in LABELER_KINDS:
            return kind
    raise ValueError(
        "labeler must be 'teacher:<kind>', 'judge:<name>' or 'human:<annotator>' "
        f"(e.g. 'human:ada'), got {labeler!r}"
    )


def sequences(conn: sqlite3.Connection) -> dict[str, int]:
    """The AUTOINCREMENT counters: the highest id ever assigned per table (absent: none yet)."""
    return {
        str(name): int(seq) for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence")
    }


def set_sequence(conn: sqlite3.Connection, table: str, value: int) -> None:
    """Set ``table``'s AUTOINCREMENT counter so that its next id is ``value + 1``."""
    conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
    if value > 0:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))


def migrate_v1_to_v2(conn: sqlite3.Connection) -> None:
    """Rewrite a version-1 store as version 2; call inside a write transaction.

    Queries become kind ``segment`` with no absorbed mask; labels keep their ids, labeller
    names and values and get their kind from the name's prefix (``other`` without one); the
    AUTOINCREMENT counters are carried over, so new ids continue where version 1 left off.
    """
    seqs = sequences(conn)
    conn.execute("DROP INDEX IF EXISTS labels_query")
    conn.execute("ALTER TABLE labels RENAME TO v1_labels")
    conn.execute("ALTER TABLE queries RENAME TO v1_queries")
    for statement in _TABLES_V2:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO queries (id, kind, created_at, step, selection, source) "
        "SELECT id, 'segment', created_at, step, selection, source FROM v1_queries"
    )
    conn.execute(
        f"INSERT INTO segment_pairs (query_id, {_SEGMENT_V1_COLUMNS}) "
        f"SELECT id, {_SEGMENT_V1_COLUMNS} FROM v1_queries"
    )
    conn.execute(
        "INSERT INTO labels (id, query_id, label, labeler, labeler_kind, created_at, reason) "
        f"SELECT id, query_id, label, labeler, {_KIND_FROM_NAME_SQL}, created_at, reason "
        "FROM v1_labels"
    )
    conn.execute("DROP TABLE v1_labels")
    conn.execute("DROP TABLE v1_queries")
    for table in ("queries", "labels"):
        # the counter may exceed the largest id still present (rows deleted by hand)
        kept = max(seqs.get(table, 0), seqs.get(f"v1_{table}", 0))
        present = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
        set_sequence(conn, table, max(kept, int(present)))
    for name in ("v1_queries", "v1_labels"):
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (name,))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('migrated_from_v1_at', ?)", (now(),)
    )
