"""Every route of the labelling app through FastAPI's TestClient: auth, CSRF, input checks,
the left/right mapping, undo, media, agreement and export."""

import json
import re

import pytest
from fastapi.testclient import TestClient

from unialign.feedback.store import FeedbackStore
from unialign.label.annotators import Annotators
from unialign.label.app import create_app, label_value

from .helpers import LM_FIRST, LM_SECOND, label_rows, login, make_store

N_LM, N_SEG = 4, 2


@pytest.fixture
def app(store_path):
    return create_app(store_path)


@pytest.fixture
def tokens(store_path):
    annotators = Annotators(store_path)
    return {name: annotators.add(name) for name in ("ada", "bob")}


@pytest.fixture
def ada(app, tokens):
    client = TestClient(app)
    client.csrf = login(client, tokens["ada"])
    return client


def left_text(page: str) -> str:
    return re.search(r'id="left">.*?<div class="text">(.*?)</div>\s*</article>', page, re.S)[1]


def api_label(client, query_id, choice, **extra):
    return client.post(
        "/api/labels",
        json={"query_id": query_id, "choice": choice, **extra},
        headers={"X-CSRF-Token": client.csrf},
    )


# -- the mapping through the display order ------------------------------------------------------


def test_label_value_mapping():
    assert label_value("left", 1) == 1.0 and label_value("right", 1) == 0.0
    assert label_value("left", 2) == 0.0 and label_value("right", 2) == 1.0
    assert label_value("tie", 1) == label_value("tie", 2) == 0.5
    assert label_value("skip", 2) is None


def test_form_labels_map_through_the_shown_order(ada, store_path):
    """For each LM query: read which completion the page shows on the left, press a side, and
    check the stored label is about the stored candidates and records the order shown."""
    seen_orders = set()
    for q in range(1, N_LM + 1):
        page = ada.get("/").text  # auto-advance: / shows the next pending query
        assert f'data-query-id="{q}"' in page
        shown = left_text(page)
        left = 1 if LM_FIRST[q - 1].split()[0] in shown else 2
        assert (LM_SECOND[q - 1].split()[0] in shown) == (left == 2)
        seen_orders.add(left)
        choice = "left" if q % 2 else "right"
        r = ada.post(
            f"/query/{q}/label",
            data={"csrf_token": ada.csrf, "choice": choice, "latency_ms": "1234"},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == "/"
        (row,) = label_rows(store_path, "human:ada")[-1:]
        meta = json.loads(row[4])
        assert row[0] == q and meta["left"] == left and meta["latency_ms"] == 1234
        assert row[2] == (1.0 if (choice == "left") == (left == 1) else 0.0)
    assert len(label_rows(store_path)) == N_LM
    # the next page is a segment query; both orders are likely but not certain over 4 queries
    assert 'data-kind="segment"' in ada.get("/").text
    assert seen_orders <= {1, 2}


def test_api_labels_cover_tie_and_skip(ada, store_path):
    r = api_label(ada, 1, "tie", latency_ms=10)
    assert r.status_code == 201 and r.json()["label"] == 0.5
    r = api_label(ada, 2, "skip", reason="  both unreadable ")
    assert r.status_code == 201 and r.json()["label"] is None
    rows = label_rows(store_path)
    assert [(q, v, why) for q, _, v, why, _ in rows] == [
        (1, 0.5, None),
        (2, None, "both unreadable"),
    ]
    assert ada.get("/api/next").json()["query_id"] == 3
    assert ada.get("/api/session").json()["labelled"] == 2


# -- auth --------------------------------------------------------------------------------------

GETS = ["/", "/query/1", "/media/5/1", "/agreement", "/export.jsonl"]
API_GETS = ["/api/session", "/api/next"]
POSTS = [
    ("/query/1/label", {"data": {"choice": "left"}}),
    ("/undo", {"data": {}}),
    ("/logout", {"data": {}}),
    ("/api/labels", {"json": {"query_id": 1, "choice": "left"}}),
    ("/api/undo", {"json": {}}),
]


def test_no_session(app, store_path):
    client = TestClient(app)
    for path in GETS:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in API_GETS:
        assert client.get(path).status_code == 401, path
    for path, body in POSTS:
        r = client.post(path, follow_redirects=False, **body)
        assert r.status_code == 401, path
    client.cookies.set("unialign_session", "forged")
    assert client.get("/api/next").status_code == 401
    assert api_label_raw(client, "x").status_code == 401
    assert label_rows(store_path) == []


def api_label_raw(client, csrf):
    return client.post(
        "/api/labels", json={"query_id": 1, "choice": "left"}, headers={"X-CSRF-Token": csrf}
    )


def test_login_page_and_bad_token(app, tokens):
    client = TestClient(app)
    page = client.get("/login")
    assert page.status_code == 200 and "set-cookie" in page.headers
    nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text)[1]
    r = client.post("/login", data={"token": "nope.nope", "login_csrf": nonce})
    assert r.status_code == 401 and "unknown token" in r.text
    assert "unialign_session" not in client.cookies
    # no login nonce (a cross-site form): refused before the token is even checked
    fresh = TestClient(app)
    r = fresh.post("/login", data={"token": tokens["ada"]}, follow_redirects=False)
    assert r.status_code == 403 and "unialign_session" not in fresh.cookies
    r = fresh.post("/api/login", json={"token": "nope"})
    assert r.status_code == 401
    r = fresh.post("/api/login", data={"token": tokens["ada"]})  # a form post to the JSON login
    assert r.status_code == 415 and "unialign_session" not in fresh.cookies


def test_session_cookie_flags_and_logout(app, tokens):
    client = TestClient(app)
    page = client.get("/login")
    nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text)[1]
    r = client.post(
        "/login", data={"token": tokens["ada"], "login_csrf": nonce}, follow_redirects=False
    )
    cookie = r.headers["set-cookie"].lower()
    assert "unialign_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    csrf = client.get("/api/session").json()["csrf_token"]
    sid = client.cookies["unialign_session"]
    assert client.post("/logout", data={"csrf_token": "bad"}).status_code == 403
    r = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    replay = TestClient(app)
    replay.cookies.set("unialign_session", sid)
    assert replay.get("/api/session").status_code == 401  # the session is gone server-side


def test_api_login_and_expiry(store_path, tokens):
    client = TestClient(create_app(store_path, session_ttl_s=0.5))
    r = client.post("/api/login", json={"token": tokens["bob"]})
    assert r.status_code == 200 and r.json()["annotator"] == "bob"
    assert client.get("/api/next").status_code == 200
    import time

    time.sleep(0.6)
    assert client.get("/api/next").status_code == 401


def test_csrf_missing_or_wrong(ada, tokens, store_path, app):
    bob = TestClient(app)
    bob_csrf = login(bob, tokens["bob"])
    for csrf in (None, "", "wrong", bob_csrf):  # another session's token is wrong too
        data = {"choice": "left"} | ({} if csrf is None else {"csrf_token": csrf})
        assert ada.post("/query/1/label", data=data).status_code == 403
        headers = {} if csrf is None else {"X-CSRF-Token": csrf}
        r = ada.post("/api/labels", json={"query_id": 1, "choice": "left"}, headers=headers)
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        assert (
            ada.post("/undo", data={} if csrf is None else {"csrf_token": csrf}).status_code == 403
        )
        assert ada.post("/api/undo", headers=headers).status_code == 403
    # a CSRF token in the form does not count for the JSON API, nor the reverse
    r = ada.post("/api/labels", json={"query_id": 1, "choice": "left", "csrf_token": ada.csrf})
    assert r.status_code == 403
    assert label_rows(store_path) == []


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"query_id": 999, "choice": "left"}, 404, "unknown query id 999"),
        ({"query_id": "abc", "choice": "left"}, 404, "unknown query id"),
        ({"query_id": None, "choice": "left"}, 404, "unknown query id"),
        ({"query_id": 1, "choice": "up"}, 400, "choice must be one of"),
        ({"query_id": 1, "choice": 1}, 400, "choice must be one of"),
        ({"query_id": 1}, 400, "choice must be one of"),
        ({"query_id": 1, "choice": "skip"}, 400, "a skip needs a reason"),
        ({"query_id": 1, "choice": "skip", "reason": "   "}, 400, "a skip needs a reason"),
        ({"query_id": 1, "choice": "skip", "reason": "x" * 501}, 400, "longer than 500"),
        ({"query_id": 1, "choice": "left", "latency_ms": -1}, 400, "latency_ms must be in"),
        ({"query_id": 1, "choice": "left", "latency_ms": "soon"}, 400, "must be a number"),
    ],
)
def test_bad_label_input(ada, store_path, body, status, message):
    r = ada.post("/api/labels", json=body, headers={"X-CSRF-Token": ada.csrf})
    assert r.status_code == status and message in r.json()["detail"]
    assert label_rows(store_path) == []


def test_bad_bodies_and_form_errors(ada, store_path):
    headers = {"X-CSRF-Token": ada.csrf}
    r = ada.post(
        "/api/labels", content=b"{not json", headers=headers | {"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = ada.post("/api/labels", json=[1, "left"], headers=headers)
    assert r.status_code == 400 and "JSON object" in r.json()["detail"]
    r = ada.post("/api/labels", data={"query_id": 1, "choice": "left"}, headers=headers)
    assert r.status_code == 415
    # form errors are pages with the message
    r = ada.post("/query/999/label", data={"csrf_token": ada.csrf, "choice": "left"})
    assert (
        r.status_code == 404
        and "unknown query id 999" in r.text
        and "Nothing was written" in r.text
    )
    r = ada.post("/query/1/label", data={"csrf_token": ada.csrf, "choice": "skip", "reason": ""})
    assert r.status_code == 400 and "a skip needs a reason" in r.text
    assert ada.get("/query/nope").status_code == 404
    assert label_rows(store_path) == []


def test_a_query_labelled_twice_is_rejected(ada, store_path):
    assert api_label(ada, 1, "left").status_code == 201
    for choice in ("right", "tie"):
        r = api_label(ada, 1, choice)
        assert r.status_code == 409 and "already labelled query 1" in r.json()["detail"]
    r = ada.post("/query/1/label", data={"csrf_token": ada.csrf, "choice": "right"})
    assert r.status_code == 409
    assert len(label_rows(store_path)) == 1
    page = ada.get("/query/1").text  # the page says so and offers no label buttons
    assert 'id="existing"' in page and 'id="label-form"' not in page


def test_store_refusal_is_a_409(ada, store_path):
    """A label written behind the app's back (another tab, after the app's own check): the
    store's ValueError becomes a 409 and nothing is added."""
    from unialign.label import app as app_module

    real = app_module.StoreAccess.label_of
    app_module.StoreAccess.label_of = lambda self, who, q: None  # the app's check misses it
    try:
        with FeedbackStore(store_path) as store:
            store.add_labels([1], [1.0], labeler="human:ada")
        r = api_label(ada, 1, "left")
        assert r.status_code == 409 and "already labelled" in r.json()["detail"]
    finally:
        app_module.StoreAccess.label_of = real
    assert len(label_rows(store_path)) == 1


# -- undo --------------------------------------------------------------------------------------


def test_undo_deletes_only_your_last_label(ada, app, tokens, store_path):
    bob = TestClient(app)
    bob.csrf = login(bob, tokens["bob"])
    assert api_label(ada, 1, "left").status_code == 201
    assert api_label(ada, 2, "right").status_code == 201
    assert api_label(bob, 3, "tie").status_code == 201  # a later label by someone else
    r = ada.post("/undo", data={"csrf_token": ada.csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/query/2"
    assert [(q, who) for q, who, *_ in label_rows(store_path)] == [
        (1, "human:ada"),
        (3, "human:bob"),
    ]
    assert ada.get("/api/next").json()["query_id"] == 2  # pending again
    r = ada.post("/api/undo", headers={"X-CSRF-Token": ada.csrf})
    assert r.status_code == 200 and r.json()["query_id"] == 1
    r = ada.post("/api/undo", headers={"X-CSRF-Token": ada.csrf})
    assert r.status_code == 409 and "nothing to undo" in r.json()["detail"]
    assert ada.post("/undo", data={"csrf_token": ada.csrf}).status_code == 409
    assert [(q, who) for q, who, *_ in label_rows(store_path)] == [(3, "human:bob")]
    assert api_label(ada, 1, "right").status_code == 201  # labelled again after the undo


# -- pages -------------------------------------------------------------------------------------


def test_query_pages_escape_html_and_show_progress(ada):
    page = ada.get("/query/2").text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'href="javascript:' not in page
    home = ada.get("/").text
    assert "<b>0</b> labelled by you · <b>6</b> pending" in home
    api_label(ada, 1, "left")
    assert "<b>1</b> labelled by you · <b>5</b> pending" in ada.get("/").text
    assert ada.get("/query/1").status_code == 200


def test_security_headers(ada):
    for path in ("/", "/login", "/agreement", "/api/next", "/static/label.js"):
        r = ada.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert r.headers["x-content-type-options"] == "nosniff"
    assert ada.get("/").headers["cache-control"] == "no-store"


def test_segment_page_and_media(ada, store_path):
    for q in range(1, N_LM + 1):
        api_label(ada, q, "tie")
    page = ada.get("/").text
    assert 'data-kind="segment"' in page and "env Pendulum-v1" in page
    srcs = re.findall(r'<img class="segment" src="(/media/\d+/\d)"', page)
    assert sorted(srcs) == ["/media/5/1", "/media/5/2"]
    for src in srcs:
        r = ada.get(src)
        assert r.status_code == 200 and r.headers["content-type"] in ("image/gif", "image/png")
    assert ada.get("/media/1/1").status_code == 404  # an LM query has no picture
    assert ada.get("/media/5/3").status_code == 404
    assert ada.get("/media/999/1").status_code == 404


def test_done_page(store_path, tmp_path):
    path = make_store(tmp_path / "small.sqlite", lm=1, segments=0)
    client = TestClient(create_app(path))
    client.csrf = login(client, Annotators(path).add("ada"))
    api_label(client, 1, "left")
    page = client.get("/").text
    assert 'data-page="done"' in page and 'http-equiv="refresh"' in page
    assert client.get("/api/next").json() == {"query_id": None}


def test_agreement_page(ada, app, tokens):
    bob = TestClient(app)
    bob.csrf = login(bob, tokens["bob"])
    for q in (1, 2, 3):
        api_label(ada, q, "tie")
        api_label(bob, q, "tie" if q < 3 else "skip", reason="unsure")
    page = ada.get("/agreement").text
    assert "human:ada" in page and "human:bob" in page
    assert re.search(r"<td>human:ada</td><td>human:bob</td><td>2</td><td>1.00</td>", page)
    assert "over 2 queries labelled by two or more people" in page
    assert 'href="/export.jsonl?labeler=human%3Aada"' in page


def test_export(ada, store_path, tmp_path):
    api_label(ada, 1, "left")
    api_label(ada, 3, "tie")
    api_label(ada, 4, "skip", reason="same")
    r = ada.get("/export.jsonl")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert 'filename="preferences.jsonl"' in r.headers["content-disposition"]
    (row,) = [json.loads(line) for line in r.text.splitlines()]
    meta = json.loads(label_rows(store_path)[0][4])
    chosen, rejected = (
        (LM_FIRST[0], LM_SECOND[0]) if meta["left"] == 1 else (LM_SECOND[0], LM_FIRST[0])
    )
    assert (row["chosen"], row["rejected"], row["labeler"]) == (chosen, rejected, "human:ada")
    assert r.headers["x-export-report"].startswith("1 rows; left out 1 ties, 1 skipped")
    r = ada.get("/export.jsonl", params={"labeler": "human:bob"})
    assert r.status_code == 200 and r.text == ""
    assert 'filename="preferences-bob.jsonl"' in r.headers["content-disposition"]
    assert ada.get("/export.jsonl", params={"format": "yaml"}).status_code == 400


def test_export_mixed_formats_is_a_409(tmp_path):
    path = tmp_path / "mixed.sqlite"
    with FeedbackStore(path) as store:
        store.add_completion_queries(["p"], ["a"], ["b"], step=0)
        msg = [{"role": "user", "content": "p"}]
        store.add_completion_queries(
            [msg], [[{"role": "assistant", "content": "a"}]],
            [[{"role": "assistant", "content": "b"}]], step=0,
        )  # fmt: skip
        store.add_labels([1, 2], [1.0, 0.0], labeler="human:ada")
    client = TestClient(create_app(path))
    login(client, Annotators(path).add("ada"))
    r = client.get("/export.jsonl")
    assert r.status_code == 409 and "mix standard and conversational" in r.text
    r = client.get("/export.jsonl", params={"format": "conversational"})
    assert r.status_code == 200 and len(r.text.splitlines()) == 1


def test_conversational_query_page(tmp_path):
    path = tmp_path / "chat.sqlite"
    with FeedbackStore(path) as store:
        store.add_completion_queries(
            [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]],
            [[{"role": "assistant", "content": "Hello!"}]],
            [[{"role": "assistant", "content": "Good day to you."}]],
            step=3,
        )
    client = TestClient(create_app(path))
    login(client, Annotators(path).add("ada"))
    page = client.get("/").text
    assert page.count('<span class="role">') == 4
    assert "Be brief." in page and "Good day to you." in page


def test_create_app_refuses_a_missing_store(tmp_path):
    from unialign.feedback.store import FeedbackStoreError

    with pytest.raises(FeedbackStoreError, match="no feedback store"):
        create_app(tmp_path / "missing.sqlite")
