"""Load test of the labelling app on localhost: N concurrent annotators × M labels each.

The real command (``unialign label STORE --port P``) serves a fresh store of M language-model
queries in a subprocess; N client threads (httpx) log in through the JSON API, wait at a
barrier, then each labels all M queries as fast as it can (``GET /api/next`` → ``POST
/api/labels``, a seeded random side), and finally re-posts its first label, which must be
refused (409). Afterwards the store is read directly: every label must be stored exactly once
(N·M rows, each (query, annotator) once) with the value the client's press means through the
left/right order the server reported, and no response may be a 5xx.

Reported: latency percentiles of the label POST, of the next-query GET and of the whole round
(next + label), and throughput (labels stored per second of the labelling phase).

    python benchmarks/label_load.py --annotators 20 --labels 50
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from unialign.feedback.store import FeedbackStore
from unialign.label.annotators import Annotators

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "label_load.json"
REQUEST_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def pct(p: float) -> float:  # nearest rank
        return v[min(len(v) - 1, max(0, round(p / 100 * len(v) + 0.5) - 1))]

    return {
        "n": len(v),
        "p50_ms": round(pct(50), 2),
        "p95_ms": round(pct(95), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(v[-1], 2),
        "mean_ms": round(sum(v) / len(v), 2),
    }


class Client(threading.Thread):
    """One annotator: log in, label every pending query, re-post the first label."""

    def __init__(self, base: str, token: str, seed: int, barrier: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.barrier = base, token, barrier
        self.rng = random.Random(seed)
        self.sent: dict[int, float] = {}  # query id → the label the press means
        self.label_ms: list[float] = []
        self.next_ms: list[float] = []
        self.round_ms: list[float] = []
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.duplicate_status: int | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # reported, never raised in the thread
            self.errors.append(f"{type(e).__name__}: {e}")
            self.barrier.abort()

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=REQUEST_TIMEOUT_S) as http:
            r = http.post("/api/login", json={"token": self.token})
            self.statuses.append(r.status_code)
            r.raise_for_status()
            headers = {"X-CSRF-Token": r.json()["csrf_token"]}
            self.barrier.wait(timeout=60)
            first = None
            while True:
                t0 = time.perf_counter()
                r = http.get("/api/next")
                t1 = time.perf_counter()
                self.statuses.append(r.status_code)
                self.next_ms.append((t1 - t0) * 1000)
                r.raise_for_status()
                nxt = r.json()
                if nxt["query_id"] is None:
                    break
                q, left = nxt["query_id"], nxt["left"]
                choice = self.rng.choice(["left", "right", "tie"])
                r = http.post(
                    "/api/labels",
                    json={"query_id": q, "choice": choice, "latency_ms": 1},
                    headers=headers,
                )
                t2 = time.perf_counter()
                self.statuses.append(r.status_code)
                self.label_ms.append((t2 - t1) * 1000)
                self.round_ms.append((t2 - t0) * 1000)
                if r.status_code != 201:
                    self.errors.append(f"label {q}: {r.status_code} {r.text[:200]}")
                    continue
                self.sent[q] = 0.5 if choice == "tie" else float((choice == "left") == (left == 1))
                first = q if first is None else first
            if first is not None:
                r = http.post(
                    "/api/labels", json={"query_id": first, "choice": "tie"}, headers=headers
                )
                self.statuses.append(r.status_code)
                self.duplicate_status = r.status_code


def run_load(annotators: int, labels: int, *, seed: int = 0, workdir: Path | None = None) -> dict:
    """Serve a fresh store, run the clients, check the store; returns the report dict."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = Path(tmp) / "feedback.sqlite"
        with FeedbackStore(store) as fs:
            fs.add_completion_queries(
                [f"Prompt {i}: say something." for i in range(labels)],
                [f"first answer {i}" for i in range(labels)],
                [f"second answer {i}" for i in range(labels)],
                step=0,
                selection="load-test",
            )
        book = Annotators(store)
        tokens = {f"a{k:02d}": book.add(f"a{k:02d}") for k in range(annotators)}
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "unialign.cli", "label", str(store), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for(base, server)
            barrier = threading.Barrier(annotators + 1)
            clients = [
                Client(base, token, seed * 1000 + k, barrier)
                for k, token in enumerate(tokens.values())
            ]
            for c in clients:
                c.start()
            barrier.wait(timeout=120)
            start = time.perf_counter()
            for c in clients:
                c.join(timeout=600)
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            try:
                _, server_err = server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                _, server_err = server.communicate()
        rows = _rows(store)
    return _report(annotators, labels, clients, rows, wall, server_err)


def _wait_for(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/login", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()}")
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not answer within 60 s")
        time.sleep(0.2)


def _rows(store: Path) -> list[tuple[int, str, float]]:
    conn = sqlite3.connect(store)
    try:
        return conn.execute("SELECT query_id, labeler, label FROM labels ORDER BY id").fetchall()
    finally:
        conn.close()


def _report(annotators, labels, clients, rows, wall, server_err) -> dict:
    statuses = [s for c in clients for s in c.statuses]
    stored: dict[tuple[int, str], list[float]] = {}
    for q, who, value in rows:
        stored.setdefault((q, who), []).append(value)
    expected = {(q, f"human:a{k:02d}"): v for k, c in enumerate(clients) for q, v in c.sent.items()}
    mismatched = sum(1 for key, v in expected.items() if stored.get(key) != [v])
    n_labels = sum(len(c.label_ms) for c in clients)
    return {
        "annotators": annotators,
        "labels_each": labels,
        "labels_expected": annotators * labels,
        "labels_stored": len(rows),
        "stored_exactly_once": (
            len(rows) == annotators * labels
            and len(stored) == len(rows)
            and not mismatched
            and len(expected) == annotators * labels
        ),
        "mismatched_labels": mismatched,
        "duplicate_reposts_refused": sum(c.duplicate_status == 409 for c in clients),
        "responses": len(statuses),
        "responses_5xx": sum(s >= 500 for s in statuses),
        "client_errors": [e for c in clients for e in c.errors][:20],
        "wall_s": round(wall, 3),
        "throughput_labels_per_s": round(n_labels / wall, 1) if wall > 0 else None,
        "latency": {
            "label_post": _percentiles([x for c in clients for x in c.label_ms]),
            "next_get": _percentiles([x for c in clients for x in c.next_ms]),
            "round": _percentiles([x for c in clients for x in c.round_ms]),
        },
        "server_stderr_tail": (server_err or "")[-2000:],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--labels", type=int, default=50, help="labels per annotator (= queries)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULT, help=f"JSON result (default: {RESULT})")
    args = p.parse_args()
    report = run_load(args.annotators, args.labels, seed=args.seed)
    report = {
        "benchmark": "label_load",
        "command": "python benchmarks/label_load.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "server": "unialign label (uvicorn, one process) on 127.0.0.1; clients: httpx threads",
        **report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lat = report["latency"]["label_post"]
    print(
        f"{report['labels_stored']}/{report['labels_expected']} labels stored, exactly once: "
        f"{report['stored_exactly_once']}; 5xx: {report['responses_5xx']}; label POST p50 "
        f"{lat.get('p50_ms')} ms, p95 {lat.get('p95_ms')} ms; "
        f"{report['throughput_labels_per_s']} labels/s; wrote {args.out}"
    )
    ok = report["stored_exactly_once"] and not report["responses_5xx"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
