"""``benchmarks/control_feedback.py`` runs through the sweep: its committed CPU-tier YAML is
the grid the script builds, and (slow) a tiny run writes the long-standing result format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark
from unialign.sweep import expand, load_sweep_config

ROOT = Path(__file__).resolve().parents[2]


def _script():
    return load_benchmark("control_feedback")


def test_committed_cpu_yaml_is_the_scripts_grid():
    """`unialign sweep benchmarks/sweeps/control_feedback_cpu.yaml` runs what
    `--tier cpu --seeds 5 --workers 2` runs: 3 envs × 3 methods × 5 seeds = 45 cells with the
    tier's budgets, the oracle without unsupervised steps, normalised by random and oracle."""
    bench = _script()
    built = bench.build_config(
        bench.parse_args(["--tier", "cpu", "--seeds", "5", "--workers", "2"])
    )
    committed = load_sweep_config(ROOT / "benchmarks" / "sweeps" / "control_feedback_cpu.yaml")
    assert committed.model_dump() == built.model_dump()
    cells = expand(committed)
    assert len(cells) == 45
    pendulum_oracle = next(c for c in cells if c.cell_id == "oracle__Pendulum-v1__s0")
    assert pendulum_oracle.params["unsup_steps"] == 0
    assert pendulum_oracle.params["total_steps"] == 8_000
    reacher = next(c for c in cells if c.cell_id == "aparl__Reacher-v5__s4")
    assert (reacher.params["max_queries"], reacher.params["unsup_steps"]) == (300, 1_000)


@pytest.mark.slow
def test_tiny_run_writes_the_result_format(tmp_path):
    """Pendulum-v1, oracle and pebble, one seed, 5 % of the budget, in-process: the JSON keeps
    the keys its readers (docs/benchmarks.md, docs/aparl.md) use, the oracle normalises to 1."""
    bench = _script()
    out = tmp_path / "cf.json"
    argv = ["--envs", "Pendulum-v1", "--methods", "oracle", "pebble", "--seeds", "1",
            "--scale", "0.05", "--set", "hidden=[16]", "reward_hidden=[8]", "--serial",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    env = result["results"]["Pendulum-v1"]
    assert env["random_return"] == pytest.approx(-1326.8, abs=0.05)
    assert env["methods"]["oracle"]["normalized_return_at_budget"]["mean"] == pytest.approx(1.0)
    assert env["methods"]["oracle"]["queries_to_90pct_oracle"] is None
    assert set(env["methods"]["pebble"]) == {
        "normalized_return_at_budget", "env_steps_to_90pct_oracle", "queries_to_90pct_oracle",
        "final_true_return", "seconds_per_run",
    }  # fmt: skip
    run = next(r for r in result["runs"] if r["algo"] == "pebble")
    assert run["curve"][-1][0] == 400 and run["curve"][-1][2] == run["summary"]["eval/true_return"]
    assert out.with_suffix(".png").exists()
