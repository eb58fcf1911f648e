"""The labelling app's routes: login, the labelling pages, media, agreement, export, JSON API.

Each route reads the shared :class:`~unialign.label.app.LabelApp` from ``request.app.state``.
Blocking work (SQLite, scrypt, drawing) runs in the thread pool: sync routes are run there by
FastAPI, async routes (which must read a form or JSON body) hand it over explicitly.
"""

from __future__ import annotations

import hmac
import secrets
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from unialign.feedback.export import export_preference_jsonl
from unialign.label.agreement import agreement_report
from unialign.label.app import LOGIN_COOKIE, SESSION_COOKIE, HTTPError, LabelApp

__all__ = ["router"]

router = APIRouter()


def _state(request: Request) -> LabelApp:
    return request.app.state.label


async def json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPError(415, "send JSON (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError:
        raise HTTPError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return body


# -- login -------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request) -> Response:
    state = _state(request)
    nonce = secrets.token_urlsafe(24)
    response = state.page(request, "login.html", None, login_csrf=nonce)
    response.set_cookie(
        LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
        secure=state.secure_cookies, path="/login",
    )  # fmt: skip
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    state = _state(request)
    form = await request.form()
    cookie, sent = request.cookies.get(LOGIN_COOKIE), form.get("login_csrf")
    if not (cookie and isinstance(sent, str) and hmac.compare_digest(cookie, sent)):
        raise HTTPError(403, "the login form expired or was not sent from this site: reload")
    token = form.get("token")
    result = await run_in_threadpool(
        state.annotators.login, token if isinstance(token, str) else ""
    )
    if result is None:
        response = await run_in_threadpool(
            state.page, request, "login.html", None, login_csrf=sent,
            error="unknown token", status=401,
        )  # fmt: skip
        return response
    response = RedirectResponse("/", status_code=303)
    state.set_session_cookie(response, result[0])
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    state = _state(request)
    session = await run_in_threadpool(state.require, request)
    form = await request.form()
    state.check_csrf(session, form.get("csrf_token"))
    await run_in_threadpool(state.annotators.logout, request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- pages -------------------------------------------------------------------------------


@router.get("/")
def next_query(request: Request) -> Response:
    state = _state(request)
    session = state.require(request)
    query_id = state.store.next_pending(session.labeler)
    if query_id is None:
        return state.page(request, "done.html", session)
    head = state.store.head(query_id)
    assert head is not None
    return state.page(request, "query.html", session, **state.query_context(session, head))


@router.get("/query/{query_id}")
def show_query(request: Request, query_id: str) -> Response:
    state = _state(request)
    session = state.require(request)
    head = state.head_or_404(query_id)
    return state.page(request, "query.html", session, **state.query_context(session, head))


@router.post("/query/{query_id}/label")
async def label_form(request: Request, query_id: str) -> Response:
    state = _state(request)
    session = await run_in_threadpool(state.require, request)
    form = dict(await request.form())
    state.check_csrf(session, form.get("csrf_token"))
    form["query_id"] = query_id
    await run_in_threadpool(state.submit, session, form)
    return RedirectResponse("/", status_code=303)  # auto-advance


@router.post("/undo")
async def undo_form(request: Request) -> Response:
    state = _state(request)
    session = await run_in_threadpool(state.require, request)
    form = await request.form()
    state.check_csrf(session, form.get("csrf_token"))
    row = await run_in_threadpool(state.store.undo_last, session.labeler)
    if row is None:
        raise HTTPError(409, "nothing to undo: you have no label in this store")
    return RedirectResponse(f"/query/{row.query_id}", status_code=303)


@router.get("/media/{query_id}/{candidate}")
def media(request: Request, query_id: str, candidate: str) -> Response:
    state = _state(request)
    state.require(request)
    head = state.head_or_404(query_id)
    if head.kind != "segment" or candidate not in ("1", "2"):
        raise HTTPError(404, f"query {head.id} has no picture {candidate[:8]!r}")
    path = state.media.picture(state.store.segment(head), int(candidate))
    kind = "image/gif" if path.suffix == ".gif" else "image/png"
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "private, max-age=600"})


@router.get("/agreement")
def agreement(request: Request) -> Response:
    state = _state(request)
    session = state.require(request)
    labels = state.store.human_labels()
    returns = state.store.true_returns(sorted({r.query_id for r in labels}))
    report = agreement_report(
        [(r.query_id, r.labeler, r.value, r.metadata) for r in labels], returns
    )
    humans = sorted({r.labeler for r in labels})
    return state.page(request, "agreement.html", session, report=report, humans=humans)


@router.get("/export.jsonl")
def export(request: Request, labeler: str | None = None, format: str | None = None) -> Response:
    state = _state(request)
    state.require(request)
    if format not in (None, "", "standard", "conversational"):
        raise HTTPError(400, f"format must be standard or conversational, got {format!r:.40}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "preferences.jsonl"
        try:
            report = export_preference_jsonl(
                state.store.path, out, labeler=labeler or None, fmt=format or None
            )
        except ValueError as err:
            raise HTTPError(409, str(err)) from err
        data = out.read_bytes()
    name = "preferences" + (f"-{labeler.split(':', 1)[-1]}" if labeler else "") + ".jsonl"
    summary = (
        f"{report.rows} rows; left out {report.ties} ties, {report.skipped} skipped, "
        f"{report.unusable} unusable, {report.other_format} other-format"
    )
    return Response(
        data,
        media_type="application/x-ndjson",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Export-Report": summary,
            "Cache-Control": "no-store",
        },
    )


# -- JSON API ----------------------------------------------------------------------------


@router.post("/api/login")
async def api_login(request: Request) -> Response:
    state = _state(request)
    body = await json_body(request)  # JSON only: a cross-site form cannot send it
    token = body.get("token")
    result = await run_in_threadpool(
        state.annotators.login, token if isinstance(token, str) else ""
    )
    if result is None:
        raise HTTPError(401, "unknown token")
    sid, session = result
    response = JSONResponse({"annotator": session.annotator, "csrf_token": session.csrf_token})
    state.set_session_cookie(response, sid)
    return response


@router.get("/api/session")
def api_session(request: Request) -> Response:
    state = _state(request)
    session = state.require(request)
    done, pending = state.store.progress(session.labeler)
    return JSONResponse(
        {
            "annotator": session.annotator,
            "labeler": session.labeler,
            "csrf_token": session.csrf_token,
            "labelled": done,
            "pending": pending,
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/api/next")
def api_next(request: Request) -> Response:
    state = _state(request)
    session = state.require(request)
    query_id = state.store.next_pending(session.labeler)
    if query_id is None:
        return JSONResponse({"query_id": None})
    head = state.store.head(query_id)
    assert head is not None
    left = state.annotators.left_candidate(session.labeler, query_id)
    return JSONResponse({"query_id": query_id, "kind": head.kind, "left": left})


@router.post("/api/labels")
async def api_label(request: Request) -> Response:
    state = _state(request)
    session = await run_in_threadpool(state.require, request)
    state.check_csrf(session, request.headers.get("x-csrf-token"))
    body = await json_body(request)
    query_id, row = await run_in_threadpool(state.submit, session, body)
    return JSONResponse(
        {"label_id": row.id, "query_id": query_id, "label": row.value, **row.metadata},
        status_code=201,
    )


@router.post("/api/undo")
async def api_undo(request: Request) -> Response:
    state = _state(request)
    session = await run_in_threadpool(state.require, request)
    state.check_csrf(session, request.headers.get("x-csrf-token"))
    row = await run_in_threadpool(state.store.undo_last, session.labeler)
    if row is None:
        raise HTTPError(409, "nothing to undo: you have no label in this store")
    return JSONResponse({"label_id": row.id, "query_id": row.query_id, "label": row.value})
