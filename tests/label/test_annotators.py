"""Annotator tokens, sessions and the display order (the sidecar file)."""

import sqlite3
import stat
import time

import pytest

from unialign.label.annotators import AnnotatorError, Annotators, sidecar_path


def test_token_is_shown_once_and_only_its_hash_is_kept(store_path):
    annotators = Annotators(store_path)
    token = annotators.add("ada")
    key_id, secret = token.split(".")
    path = sidecar_path(store_path)
    assert path.name == "feedback.sqlite.annotators.sqlite"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes() + (path.with_name(path.name + "-wal").read_bytes()
                               if path.with_name(path.name + "-wal").exists() else b"")  # fmt: skip
    assert secret.encode() not in raw
    conn = sqlite3.connect(path)
    (row,) = conn.execute("SELECT name, key_id, length(salt), length(token_hash) FROM annotators")
    conn.close()
    assert row == ("ada", key_id, 16, 32)


def test_login_with_good_and_bad_tokens(store_path):
    annotators = Annotators(store_path)
    token = annotators.add("human:ada")  # the prefix is optional
    sid, session = annotators.login(token)
    assert session.annotator == "ada" and session.labeler == "human:ada"
    assert annotators.session(sid) == session
    key_id, secret = token.split(".")
    for bad in ("", "nonsense", f"{key_id}.", f"{key_id}.{secret}x", f"000000000000.{secret}"):
        assert annotators.login(bad) is None
    assert annotators.session("not-a-session") is None
    assert annotators.session(None) is None
    annotators.logout(sid)
    assert annotators.session(sid) is None


def test_sessions_are_stored_hashed_and_expire(store_path):
    annotators = Annotators(store_path, session_ttl_s=0.2)
    sid, _ = annotators.login(annotators.add("ada"))
    conn = sqlite3.connect(sidecar_path(store_path))
    hashes = [r[0] for r in conn.execute("SELECT sid_hash FROM sessions")]
    conn.close()
    assert len(hashes) == 1 and sid not in hashes
    assert annotators.session(sid) is not None
    time.sleep(0.3)
    assert annotators.session(sid) is None


def test_reset_issues_a_new_token_and_ends_sessions(store_path):
    annotators = Annotators(store_path)
    old = annotators.add("ada")
    sid, _ = annotators.login(old)
    with pytest.raises(AnnotatorError, match="already exists"):
        annotators.add("ada")
    new = annotators.add("ada", reset=True)
    assert annotators.login(old) is None
    assert annotators.session(sid) is None
    assert annotators.login(new) is not None
    assert annotators.names() == ["ada"]


@pytest.mark.parametrize("name", ["", "a b", "<script>", "x" * 65, "-lead", "human:", "a:b"])
def test_bad_names(store_path, name):
    with pytest.raises(AnnotatorError, match="annotator name"):
        Annotators(store_path).add(name)


def test_display_order_is_stable_and_random(store_path):
    a = Annotators(store_path)
    orders = {(who, q): a.left_candidate(who, q) for who in ("human:ada", "human:bob")
              for q in range(1, 33)}  # fmt: skip
    assert set(orders.values()) == {1, 2}
    again = Annotators(store_path)  # the key is kept in the sidecar: same order after a restart
    assert all(again.left_candidate(w, q) == v for (w, q), v in orders.items())
