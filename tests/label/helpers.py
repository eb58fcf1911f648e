"""Stores and logins for the labelling app's tests."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from unialign.feedback.store import FeedbackStore
from unialign.feedback.types import SegmentBatch

LM_PROMPTS = [
    "Write a haiku about **rain**.",
    "Explain <b>bold</b> tags. <script>alert('x')</script>",
    "Name a prime number.",
    "Give one word for happy.",
]
LM_FIRST = ["Rain on the tin roof", "Use `<b>`: <img src=x onerror=alert(1)>", "7", "glad"]
LM_SECOND = ["It is raining.", "[click](javascript:alert(1))", "8", "joyful"]
HIDDEN_1 = [1.0, 0.2, 1.0, 0.5]
HIDDEN_2 = [0.0, 0.4, 0.0, 0.5]


def pendulum_segments(n: int, horizon: int, seed: int) -> SegmentBatch:
    """Pendulum-v1-shaped segments: obs (cos θ, sin θ, θ̇), torque actions, true rewards."""
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.rand(n, 1, generator=g) * 2 * math.pi - math.pi
    thdot = torch.randn(n, horizon, generator=g).cumsum(1) * 0.2
    theta = theta0 + 0.05 * thdot.cumsum(1)
    obs = torch.stack([theta.cos(), theta.sin(), thdot], dim=-1)
    actions = torch.rand(n, horizon, 1, generator=g) * 4 - 2
    angle = torch.atan2(theta.sin(), theta.cos())  # Pendulum's reward: −(θ² + 0.1 θ̇² + 0.001 u²)
    rewards = -(angle**2 + 0.1 * thdot**2 + 0.001 * actions[..., 0] ** 2)
    return SegmentBatch(obs, actions, rewards, torch.arange(n) * horizon)


def make_store(path: Path, *, lm: int = 4, segments: int = 2, horizon: int = 6) -> Path:
    """``lm`` completion queries (ids first), then ``segments`` Pendulum segment queries."""
    with FeedbackStore(path) as store:
        if lm:
            k = len(LM_PROMPTS)
            idx = [i % k for i in range(lm)]
            store.add_completion_queries(
                [LM_PROMPTS[i] + ("" if j < k else f" ({j})") for j, i in enumerate(idx)],
                [LM_FIRST[i] for i in idx],
                [LM_SECOND[i] for i in idx],
                step=0,
                policy_version="iter-0",
                rewards_1=[HIDDEN_1[i] for i in idx],
                rewards_2=[HIDDEN_2[i] for i in idx],
                selection="human",
            )
        if segments:
            store.add_segment_queries(
                pendulum_segments(segments, horizon, 1),
                pendulum_segments(segments, horizon, 2),
                step=100,
                selection="uniform",
                source={"env": "Pendulum-v1", "seed": 0},
            )
    return path


def login(client, token: str) -> str:
    """Log in through the form as a browser would; returns the session's CSRF token."""
    page = client.get("/login")
    nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"token": token, "login_csrf": nonce}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client.get("/api/session").json()["csrf_token"]


def label_rows(path: Path, labeler: str | None = None) -> list[tuple]:
    """(query_id, labeler, label, reason, metadata JSON) rows, in id order."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        sql = "SELECT query_id, labeler, label, reason, metadata FROM labels"
        args: tuple = ()
        if labeler is not None:
            sql, args = sql + " WHERE labeler = ?", (labeler,)
        return conn.execute(sql + " ORDER BY id", args).fetchall()
    finally:
        conn.close()
