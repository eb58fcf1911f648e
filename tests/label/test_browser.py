"""A real browser session: headless Debian chromium (driven by Playwright, pointed at the system
browser) against the app served by uvicorn on a free localhost port.

It logs in, labels five queries with the keyboard (1, →, =, s + reason, ←), undoes the last
one with u, labels it again with 2, and checks the store holds exactly the expected labels: each
one worked out from what the page showed on the left (the completion's text, the segment
picture's candidate number), so the randomized left/right order is checked end to end. It also
takes screenshots of each view: into the test's temporary directory, or, with
``UNIALIGN_DOCS_SCREENSHOTS=1``, into ``docs/img/labelling-*.png`` (the docs' pictures), so a
plain test run leaves the work tree untouched.

The browser comes from Debian (``scripts/bootstrap.sh`` installs it with apt-get when run as
root). Without it the test is skipped when it could not have been installed (not root), and
fails otherwise, so CI cannot pass by skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from unialign.feedback.store import FeedbackStore
from unialign.label.annotators import Annotators
from unialign.label.app import create_app

from .helpers import label_rows, pendulum_segments

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
PROMPTS = [
    "Summarize in one sentence why the sky is blue.",
    "Write a Python function that reverses a string.",
    "Give two tips for a first marathon.",
    "What is the capital of Australia?",
]
FIRST = [
    "Sunlight scatters off air molecules, and **blue light scatters most** because of its "
    "short wavelength (Rayleigh scattering).",
    "```python\ndef reverse(s: str) -> str:\n    return s[::-1]\n```",
    "1. Start slower than you think.\n2. Eat and drink *before* you feel you need to.",
    "Sydney.",
]
SECOND = [
    "Because the ocean reflects onto it.",
    "Use a loop:\n\n```python\ndef reverse(s):\n    out = ''\n    for c in s:\n        out = c + out\n"
    "    return out\n```",
    "- Train well.\n- Have fun!",
    "Canberra.",
]
# a phrase that only the first / only the second completion shows
MARKERS = [("Rayleigh", "ocean"), ("s[::-1]", "for c in s"), ("Start slower", "Have fun"),
           ("Sydney", "Canberra")]  # fmt: skip


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    why = "Debian's chromium is not installed (scripts/bootstrap.sh installs it as root)"
    if os.geteuid() == 0:
        pytest.fail(f"{why}: run `bash scripts/bootstrap.sh` (apt-get install chromium)")
    pytest.skip(f"{why}; not root here, so it cannot be installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    import uvicorn

    store = tmp_path / "feedback.sqlite"
    with FeedbackStore(store) as fs:
        fs.add_completion_queries(
            PROMPTS, FIRST, SECOND, step=2, policy_version="iter-2", selection="human",
            rewards_1=[1.0, 1.0, 1.0, 0.0], rewards_2=[0.0, 0.5, 0.0, 1.0],
        )  # fmt: skip
        fs.add_segment_queries(
            pendulum_segments(2, 40, 1), pendulum_segments(2, 40, 2), step=4000,
            selection="disagreement", source={"env": "Pendulum-v1", "seed": 0},
        )  # fmt: skip
    token = Annotators(store).add("ada")
    port = _free_port()
    config = uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store, token
    srv.should_exit = True
    thread.join(timeout=10)


def _left_candidate(page, query_id: int) -> int:
    """Which stored candidate the page shows on the left, read from the page itself."""
    kind = page.get_attribute("body", "data-kind")
    if kind == "segment":
        src = page.get_attribute("#left img.segment", "src")
        assert src.startswith(f"/media/{query_id}/")
        return int(src.rsplit("/", 1)[1])
    left = page.inner_text("#left .text")
    first, second = MARKERS[query_id - 1]
    assert (first in left) != (second in left), left
    return 1 if first in left else 2


def _images_loaded(page) -> None:
    page.wait_for_function(
        "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )


def test_label_five_queries_with_the_keyboard(server, tmp_path):
    executable = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is a dev dependency (pip install -e .[dev])"
    )
    base, store, token = server
    shots = DOCS_IMG if os.environ.get("UNIALIGN_DOCS_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        try:
            page.goto(base + "/")
            assert page.url.endswith("/login")
            page.screenshot(path=str(shots / "labelling-login.png"))
            page.fill("#token", "not-a-token")
            with page.expect_navigation():
                page.press("#token", "Enter")
            assert "unknown token" in page.inner_text("main")
            page.fill("#token", token)
            with page.expect_navigation():
                page.press("#token", "Enter")

            # (query, key, side it means) — side None is the skip
            plan = [(1, "1", "left"), (2, "ArrowRight", "right"), (3, "=", "tie"),
                    (4, "s", "skip"), (5, "ArrowLeft", "left")]  # fmt: skip
            expected = {}
            for query_id, key, side in plan:
                assert page.get_attribute("body", "data-query-id") == str(query_id)
                left = _left_candidate(page, query_id)
                if query_id == 1:
                    page.screenshot(path=str(shots / "labelling-lm.png"))
                if query_id == 5:
                    _images_loaded(page)
                    page.screenshot(path=str(shots / "labelling-control.png"))
                if side == "skip":
                    page.keyboard.press("s")
                    assert page.is_visible("#skip-form")
                    # hotkeys are ignored while typing: "1", "u" and "s" land in the reason
                    page.keyboard.type("unsure: 1 is cut off, u see?")
                    with page.expect_navigation():
                        page.keyboard.press("Enter")
                    expected[query_id] = (None, "unsure: 1 is cut off, u see?", left)
                else:
                    with page.expect_navigation():
                        page.keyboard.press(key)
                    value = {"tie": 0.5, "left": float(left == 1), "right": float(left == 2)}[side]
                    expected[query_id] = (value, None, left)

            # u: undo the last label (query 5); the page goes back to it
            with page.expect_navigation():
                page.keyboard.press("u")
            assert page.url.endswith("/query/5")
            rows = label_rows(store, "human:ada")
            assert [r[0] for r in rows] == [1, 2, 3, 4]
            left = _left_candidate(page, 5)
            assert left == expected[5][2]  # the same order after a reload
            with page.expect_navigation():
                page.keyboard.press("2")  # right better this time
            expected[5] = (float(left == 2), None, left)
            assert page.get_attribute("body", "data-query-id") == "6"
            assert "5 labelled by you · 1 pending" in page.inner_text("#progress")

            rows = label_rows(store, "human:ada")
            assert len(label_rows(store)) == 5  # nobody else wrote
            got = {}
            for query_id, _who, value, reason, meta in rows:
                meta = json.loads(meta)
                assert isinstance(meta["latency_ms"], int) and meta["latency_ms"] > 0
                got[query_id] = (value, reason, meta["left"])
            assert got == expected

            # a second annotator's labels (written directly), then the agreement page
            with FeedbackStore(store) as fs:
                fs.add_labels([1, 2, 3, 5, 6], [1.0, 0.0, 1.0, 0.0, 1.0], labeler="human:bob",
                              metadata={"left": 1, "latency_ms": 2000})  # fmt: skip
                fs.add_labels([1, 2, 3, 4], [1.0, 1.0, 0.5, 0.0], labeler="human:cy",
                              metadata={"left": 2, "latency_ms": 3000})  # fmt: skip
            page.click("text=Agreement & export")
            page.wait_for_selector("#pairs")
            assert "human:bob" in page.inner_text("#pairs")
            page.screenshot(path=str(shots / "labelling-agreement.png"), full_page=True)
        finally:
            browser.close()
    for name in ("login", "lm", "control", "agreement"):
        assert (shots / f"labelling-{name}.png").stat().st_size > 5_000
