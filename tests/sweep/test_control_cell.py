"""The built-in ``control`` experiment runs a tiny Pendulum-v1 cell end to end."""

import json

import pytest

from unialign.sweep import SweepConfig, expand, run_sweep
from unialign.sweep.control import random_policy_return, run_cell

TINY = dict(
    total_steps=300, random_steps=100, unsup_steps=50, hidden=[16], batch_size=16,
    reward_hidden=[8], reward_epochs=1, max_queries=4, queries_per_round=2,
    feedback_interval=100, segment_length=5, eval_every=150, eval_episodes=1, log_every=50,
    checkpoint_every=100,
)  # fmt: skip


def test_control_cells_run_and_report(tmp_path):
    """pebble for 300 steps (evaluations at 150 and 300). The score is the run's final
    eval/true_return; it used its budget of 4 queries (2 rounds of 2, at steps 200 and 300
    after 100 random + 50 unsupervised steps). low_score is the random policy's mean return
    over 10 episodes, −1326.8 on Pendulum-v1 — the value the committed control benchmark
    reports. Normalised by itself (high: pebble) the mean is exactly 1. Running the finished
    cell's directory again returns the same result without training (its checkpoint is not
    rewritten)."""
    cfg = SweepConfig(
        name="tiny", out=str(tmp_path / "out"), methods=["pebble"],
        tasks=["Pendulum-v1"], seeds=1, base=TINY,
        normalize={"low": "random", "high": "pebble"}, ray=False,
    )  # fmt: skip
    outcome = run_sweep(cfg, show=False)
    assert outcome.ran == 1 and not outcome.failed
    cell_dir = tmp_path / "out" / "cells" / "pebble__Pendulum-v1__s0"
    result = json.loads((cell_dir / "result.json").read_text())
    summary = json.loads((cell_dir / "summary.json").read_text())
    assert result["score"] == summary["eval/true_return"]
    assert [x for x, _ in result["curve"]] == [150, 300]
    assert result["curve"][-1][1] == result["score"]
    assert result["aux_curves"]["queries"][-1] == [300, 4]
    assert result["metrics"]["queries_used"] == 4 and result["metrics"]["labels_used"] == 4
    assert result["low_score"] == pytest.approx(-1326.8, abs=0.05)
    assert result["cell"]["params"]["unsup_steps"] == 50
    (row,) = outcome.table["rows"]
    assert row["normalized"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert row["metrics"]["queries_used"] == {"n": 1, "missing": 0, "mean": 4.0, "ci95": None}
    assert (tmp_path / "out" / "curves_Pendulum-v1.png").exists()

    ckpt_mtime = (cell_dir / "checkpoint.pt").stat().st_mtime_ns
    (cell,) = expand(cfg)
    again = run_cell(cell, cell_dir)
    assert again["score"] == result["score"] and again["curve"] == result["curve"]
    assert (cell_dir / "checkpoint.pt").stat().st_mtime_ns == ckpt_mtime


def test_random_policy_return_is_deterministic():
    assert random_policy_return("Pendulum-v1", episodes=2) == random_policy_return(
        "Pendulum-v1", episodes=2
    )
