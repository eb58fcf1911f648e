"""Annotators, login tokens and sessions of the labelling app, in a sidecar SQLite file.

The sidecar ``<store>.annotators.sqlite`` sits next to the feedback store (never inside it: a
store is copied and shared as data, and must not carry credentials). Tables:

- ``annotators(name, key_id, salt, token_hash, created_at)``: a login token is
  ``<key_id>.<secret>``; ``key_id`` (12 hex digits, public) finds the row, and only the
  scrypt hash of ``secret`` is kept (n=2¹⁴, r=8, p=1, 16-byte salt).
- ``sessions(sid_hash, annotator, csrf_token, created_at, expires_at)``: a session id is 32
  random bytes in an HttpOnly cookie; the file keeps its SHA-256, so reading the sidecar gives
  no live session. Each session has its own CSRF token, checked on every write.
- ``secret(key, value)``: a random key for the per-annotator left/right order (HMAC).

The file is created with mode 0600 (its WAL files inherit it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AnnotatorError",
    "Annotators",
    "Session",
    "sidecar_path",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
SESSION_TTL_S = 12 * 3600.0

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS annotators (
    name       TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL UNIQUE,
    salt       BLOB NOT NULL,
    token_hash BLOB NOT NULL,
    created_at REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS sessions (
    sid_hash   TEXT PRIMARY KEY,
    annotator  TEXT NOT NULL REFERENCES annotators(name),
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
)""",
    "CREATE TABLE IF NOT EXISTS secret (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
]


class AnnotatorError(ValueError):
    """A bad annotator name, an existing annotator, or an unknown one."""


@dataclass(frozen=True)
class Session:
    """A logged-in annotator: ``labeler`` is the store's labeller name ``human:<annotator>``."""

    annotator: str
    csrf_token: str

    @property
    def labeler(self) -> str:
        return f"human:{self.annotator}"


def sidecar_path(store_path: str | Path) -> Path:
    """``<store>.annotators.sqlite`` next to the store file."""
    p = Path(store_path)
    return p.with_name(p.name + ".annotators.sqlite")


def _hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class Annotators:
    """The sidecar file of one store: create annotators, log in, look sessions up.

    Opens a short-lived connection per call, so one object serves every request thread.
    """

    def __init__(self, store_path: str | Path, *, session_ttl_s: float = SESSION_TTL_S) -> None:
        self.path = sidecar_path(store_path)
        self.session_ttl_s = float(session_ttl_s)
        if not self.path.exists():  # created private before SQLite writes anything to it
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode = WAL")  # -wal/-shm files get the same mode
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            if conn.execute("SELECT 1 FROM secret WHERE key = 'order'").fetchone() is None:
                conn.execute("INSERT INTO secret VALUES ('order', ?)", (secrets.token_bytes(32),))
            conn.execute("COMMIT")
        with self._connect() as conn:
            self._order_key = bytes(
                conn.execute("SELECT value FROM secret WHERE key = 'order'").fetchone()[0]
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            yield conn
        finally:
            conn.close()

    # -- annotators --------------------------------------------------------------------------

    def add(self, name: str, *, reset: bool = False) -> str:
        """Create annotator ``name`` (or give an existing one a new token with ``reset``,
        ending its sessions); returns the login token, which is not stored anywhere."""
        name = name.removeprefix("human:")
        if not NAME_RE.match(name):
            raise AnnotatorError(
                f"annotator name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        row = (key_id, salt, _hash_secret(secret, salt), time.time(), name)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                exists = conn.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone()
                if exists and not reset:
                    raise AnnotatorError(
                        f"annotator {name!r} already exists in {self.path}; pass --reset to "
                        "issue a new token (the old one and its sessions stop working)"
                    )
                if exists:
                    conn.execute(
                        "UPDATE annotators SET key_id = ?, salt = ?, token_hash = ?, "
                        "created_at = ? WHERE name = ?",
                        row,
                    )
                    conn.execute("DELETE FROM sessions WHERE annotator = ?", (name,))
                else:
                    conn.execute(
                        "INSERT INTO annotators (key_id, salt, token_hash, created_at, name) "
                        "VALUES (?, ?, ?, ?, ?)",
                        row,
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return f"{key_id}.{secret}"

    def names(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM annotators ORDER BY name")]

    # -- sessions ----------------------------------------------------------------------------

    def login(self, token: str) -> tuple[str, Session] | None:
        """A new session for the annotator whose token this is: ``(session id, session)``;
        None for a wrong or malformed token."""
        key_id, _, secret = token.strip().partition(".")
        with self._connect() as conn:
            row = conn.execute(
                "SELECT name, salt, token_hash FROM annotators WHERE key_id = ?", (key_id,)
            ).fetchone()
        # hash even for an unknown key id, so the answer takes as long either way
        salt = bytes(row[1]) if row else b"\0" * 16
        ok = hmac.compare_digest(_hash_secret(secret, salt), bytes(row[2]) if row else b"")
        if not (row and ok and secret):
            return None
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            conn.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                (_sid_hash(sid), row[0], csrf, now, now + self.session_ttl_s),
            )
            conn.execute("COMMIT")
        return sid, Session(row[0], csrf)

    def session(self, sid: str | None) -> Session | None:
        """The live session with this id, or None (missing, unknown or expired)."""
        if not sid:
            return None
        with self._connect() as conn:
            row = conn.execute(
                "SELECT annotator, csrf_token FROM sessions WHERE sid_hash = ? AND expires_at > ?",
                (_sid_hash(sid), time.time()),
            ).fetchone()
        return Session(row[0], row[1]) if row else None

    def logout(self, sid: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM sessions WHERE sid_hash = ?", (_sid_hash(sid),))

    # -- display order -----------------------------------------------------------------------

    def left_candidate(self, labeler: str, query_id: int) -> int:
        """Which stored candidate (1 or 2) this labeller sees on the left for this query.

        A keyed hash of (labeller, query): random across queries and annotators, but the same
        on every reload, so the order on the page and the order the server maps a key press
        through can never differ.
        """
        digest = hmac.new(self._order_key, f"{labeler}\0{query_id}".encode(), "sha256").digest()
        return 1 + (digest[0] & 1)
