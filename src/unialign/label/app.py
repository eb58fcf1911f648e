"""The labelling web app: its shared state and the FastAPI factory (routes: ``routes.py``).

Server-rendered pages (Jinja2) plus a JSON API for scripts. Every page and every write needs
a session (``annotators.py``); every POST also needs the session's CSRF token — a form field
``csrf_token`` for forms, the ``X-CSRF-Token`` header for JSON. Checks run in the order
session (401) → CSRF (403) → query exists (404) → input (400) → not labelled yet (409), and
nothing is written unless all pass.

A label press names a *side* (``left``, ``right``, ``tie``, ``skip``); the server maps it to the
stored candidates through the same left/right order it used to draw the page
(:meth:`Annotators.left_candidate`), so the stored label is always about the stored
candidates: ``left`` with candidate 2 on the left is label 0. The label's metadata records
``{"left": 1 or 2, "choice": ..., "latency_ms": ...}``.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from unialign.label.annotators import Annotators, Session
from unialign.label.media import MediaCache
from unialign.label.queries import LabelRow, QueryHead, StoreAccess
from unialign.label.render import text_blocks

__all__ = ["CHOICES", "create_app", "label_value"]

SESSION_COOKIE = "unialign_session"
LOGIN_COOKIE = "unialign_login"
CHOICES = ("left", "right", "tie", "skip")
MAX_REASON = 500
MAX_LATENCY_MS = 7 * 24 * 3600 * 1000
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class HTTPError(Exception):
    """A 4xx answer with a message for the annotator (HTML page or JSON ``detail``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def label_value(choice: str, left: int) -> float | None:
    """The stored label for a press on the page: ``left``/``right`` name the side shown, and
    ``left`` is the stored candidate (1 or 2) drawn on the left. 1 = candidate 1 better."""
    if choice == "tie":
        return 0.5
    if choice == "skip":
        return None
    first_better = (choice == "left") == (left == 1)
    return 1.0 if first_better else 0.0


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _label_text(value: float | None) -> str:
    return {1.0: "candidate 1 better", 0.0: "candidate 2 better", 0.5: "equally good"}.get(
        value, "skipped"
    )


class LabelApp:
    """The state the routes share: the store, the annotators' sidecar, the media cache."""

    def __init__(
        self,
        store_path: str | Path,
        *,
        show_reward: bool = True,
        secure_cookies: bool = False,
        session_ttl_s: float | None = None,
    ) -> None:
        self.store = StoreAccess(store_path)
        kwargs = {} if session_ttl_s is None else {"session_ttl_s": session_ttl_s}
        self.annotators = Annotators(store_path, **kwargs)
        self.media = MediaCache(store_path, show_reward=show_reward)
        self.secure_cookies = secure_cookies
        self.prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-media")
        self.templates = Jinja2Templates(directory=str(_package_dir("templates")))
        self.templates.env.filters["fmt"] = _fmt
        self.templates.env.filters["label_text"] = _label_text

    # -- sessions ----------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.annotators.session(request.cookies.get(SESSION_COOKIE))

    def require(self, request: Request) -> Session:
        session = self.session(request)
        if session is None:
            raise HTTPError(401, "not logged in (or the session expired): log in with your token")
        return session

    @staticmethod
    def check_csrf(session: Session, sent: str | None) -> None:
        if not sent:
            raise HTTPError(403, "missing CSRF token: reload the page and try again")
        if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise HTTPError(403, "wrong CSRF token: reload the page and try again")

    def set_session_cookie(self, response: Response, sid: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            sid,
            max_age=math.ceil(self.annotators.session_ttl_s),
            httponly=True,
            samesite="strict",
            secure=self.secure_cookies,
            path="/",
        )

    # -- labelling ---------------------------------------------------------------------------

    def head_or_404(self, raw: Any) -> QueryHead:
        try:
            query_id = int(str(raw))
        except ValueError:
            raise HTTPError(404, f"unknown query id {str(raw)[:40]!r}") from None
        head = self.store.head(query_id)
        if head is None:
            raise HTTPError(404, f"unknown query id {query_id}")
        return head

    def submit(self, session: Session, fields: dict[str, Any]) -> tuple[int, LabelRow]:
        """Validate one label press and store it; returns (query id, the stored row)."""
        head = self.head_or_404(fields.get("query_id"))
        choice = fields.get("choice")
        if choice not in CHOICES:
            raise HTTPError(
                400, f"choice must be one of {', '.join(CHOICES)}, got {str(choice)[:40]!r}"
            )
        reason = fields.get("reason")
        reason = reason.strip() if isinstance(reason, str) else ""
        if choice == "skip" and not reason:
            raise HTTPError(400, "a skip needs a reason (why can't you compare these two?)")
        if len(reason) > MAX_REASON:
            raise HTTPError(400, f"the reason is longer than {MAX_REASON} characters")
        latency = fields.get("latency_ms")
        if latency in (None, ""):
            latency = None
        else:
            try:
                latency = int(float(latency))
            except (TypeError, ValueError):
                raise HTTPError(400, f"latency_ms must be a number, got {latency!r:.40}") from None
            if not 0 <= latency <= MAX_LATENCY_MS:
                raise HTTPError(400, f"latency_ms must be in [0, {MAX_LATENCY_MS}]")
        labeler = session.labeler
        if self.store.label_of(labeler, head.id) is not None:
            raise HTTPError(409, f"you already labelled query {head.id}; press u to undo it")
        left = self.annotators.left_candidate(labeler, head.id)
        value = label_value(choice, left)
        meta = {"left": left, "choice": choice, "latency_ms": latency, "app": "unialign-label"}
        try:
            self.store.add_label(
                head.id, value, labeler=labeler, reason=reason or None, metadata=meta
            )
        except ValueError as err:  # labelled meanwhile (another tab): the store refused
            raise HTTPError(409, str(err)) from err
        row = self.store.label_of(labeler, head.id)
        assert row is not None
        return head.id, row

    def query_context(self, session: Session, head: QueryHead) -> dict[str, Any]:
        labeler = session.labeler
        left = self.annotators.left_candidate(labeler, head.id)
        order = (left, 3 - left)
        ctx: dict[str, Any] = {
            "head": head,
            "order": order,
            "existing": self.store.label_of(labeler, head.id),
        }
        if head.kind == "completion":
            q = self.store.completion(head)
            ctx["prompt"] = text_blocks(q.prompt)
            ctx["candidates"] = [text_blocks(q.completions[c - 1]) for c in order]
            ctx["policy_version"] = q.policy_version
        else:
            ctx["media"] = [f"/media/{head.id}/{c}" for c in order]
            ctx["horizon"] = self.store.segment(head).obs.shape[1]
            ctx["env"] = head.source.get("env", head.source.get("env_id"))
            # this query's pictures first (the page's <img> requests wait on them), then the
            # next pending one's, so that it is ready when the annotator gets there
            nxt = self.store.next_pending(labeler, after=head.id)
            self.prefetch.submit(self._draw_quietly, [head.id] + ([] if nxt is None else [nxt]))
        return ctx

    def _draw_quietly(self, query_ids: list[int]) -> None:
        for query_id in query_ids:
            head = self.store.head(query_id)
            if head is not None and head.kind == "segment":
                q = self.store.segment(head)
                for c in (1, 2):
                    self.media.picture(q, c)

    def page(self, request: Request, name: str, session: Session | None, **ctx: Any) -> Response:
        status = ctx.pop("status", 200)
        if session is not None:
            done, pending = self.store.progress(session.labeler)
            ctx.update(session=session, done=done, pending=pending)
        response = self.templates.TemplateResponse(request, name, ctx, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        return response


def _package_dir(name: str) -> Path:
    return Path(str(resources.files("unialign.label") / name))


def create_app(
    store_path: str | Path,
    *,
    show_reward: bool = True,
    secure_cookies: bool = False,
    session_ttl_s: float | None = None,
) -> FastAPI:
    """The app for the feedback store at ``store_path`` (which must exist).

    ``show_reward=False`` leaves the true reward out of segment plots; ``secure_cookies`` marks
    the session cookie ``Secure`` (serve over HTTPS, e.g. behind a TLS proxy).
    """
    state = LabelApp(
        store_path,
        show_reward=show_reward,
        secure_cookies=secure_cookies,
        session_ttl_s=session_ttl_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.prefetch.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="unialign labelling",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.label = state
    app.mount("/static", StaticFiles(directory=str(_package_dir("static"))), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        for key, value in _HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, err: HTTPError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": err.message}, status_code=err.status)
        if err.status == 401 and request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        session = await run_in_threadpool(state.session, request)
        return await run_in_threadpool(
            state.page, request, "error.html", session, message=err.message, status=err.status
        )

    from unialign.label.routes import router  # routes import this module's names

    app.include_router(router)
    return app
