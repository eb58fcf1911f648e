"""Crash safety of the control loop: after ``kill -9``, ``--resume`` ends exactly where an
uninterrupted run does — summary, metrics lines (no step twice) and the feedback store (every
query and label once, with the same ids).

The runs are subprocesses of the real CLI. One is killed at a chosen point (by a labeller that
sends SIGKILL to its own process on its second call, i.e. after the first feedback round's
rows were written and before the next checkpoint), the other at whatever moment it has reached
when the test's SIGKILL arrives. All runs use the same code path and thread settings on one
machine, so equality is exact.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unialign.config import dump_config
from unialign.control.demo import demo_config

pytestmark = pytest.mark.integration

KILLER = """
import os, signal, sys
from unialign.config import load_config
from unialign.control import train as T
from unialign.control.config import ControlConfig


class KillOnSecondRound:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    @property
    def name(self):
        return self.inner.name

    def label(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.label(*args, **kwargs)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def build(cfg, run_dir, device):
    parts = T.build_parts(cfg, run_dir, device)
    parts.feedback.labeller = KillOnSecondRound(parts.feedback.labeller)
    return parts


T.train_control(load_config(ControlConfig, sys.argv[1]), build=build)
"""


def _config(tmp_path: Path, name: str) -> Path:
    # feedback rounds at steps 300 and 500; checkpoints at 250, 500 and 600
    cfg = demo_config(tmp_path / name, quick=True).model_copy(
        update={"progress": False, "checkpoint_every": 250}
    )
    path = tmp_path / f"{name}.yaml"
    dump_config(cfg, path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unialign", "train", "control", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _table(db: Path, table: str, key: str = "id") -> list[tuple]:
    """Every row, in key order, without wall-clock columns."""
    con = sqlite3.connect(db)
    try:
        cur = con.execute(f"SELECT * FROM {table} ORDER BY {key}")
        keep = [i for i, d in enumerate(cur.description) if d[0] != "created_at"]
        return [tuple(row[i] for i in keep) for row in cur.fetchall()]
    finally:
        con.close()


def _outputs(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("wall_time_s")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == sorted(set(steps)), f"duplicated or unordered steps in {run}: {steps}"
    db = run / "feedback.sqlite"
    return {
        "summary": summary,
        "metrics": lines,
        "queries": _table(db, "queries"),
        "segments": _table(db, "segment_pairs", key="query_id"),
        "labels": _table(db, "labels"),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("reference")
    done = _cli("--config", str(_config(tmp, "ref")))
    assert done.returncode == 0, done.stderr
    out = _outputs(tmp / "ref")
    assert len(out["queries"]) == len(out["segments"]) == len(out["labels"]) == 20
    return out


def test_sigkill_after_a_feedback_round_then_resume(tmp_path, uninterrupted):
    cfg = _config(tmp_path, "run")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    killed = subprocess.run(
        [sys.executable, str(script), str(cfg)], capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "run"
    con = sqlite3.connect(run / "feedback.sqlite")
    written = con.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
    con.close()
    assert written == 10  # the first round is in the store, past the checkpoint at step 250
    resumed = _cli("--config", str(run / "config.yaml"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _outputs(run) == uninterrupted


def test_sigkill_at_an_arbitrary_moment_then_resume(tmp_path, uninterrupted):
    cfg = _config(tmp_path, "run")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unialign", "train", "control", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300  # only guards against a hang; no timing is asserted
    while not (run / "checkpoint.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _cli("--config", str(run / "config.yaml"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _outputs(run) == uninterrupted
