"""Smoke test of ``benchmarks/online_nash.py`` at a tiny size (default tier).

Two methods (online DPO and Nash-MD, one of each judging rule), one seed, two iterations, the
style task's small reference (pretrained into a temporary cache, ~5 s), one eval sample per
held-out prompt, in this process: the JSON has the expected keys, the budgets match across
methods, and the judge was asked for exactly the budgeted comparisons.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_benchmark


def _script():
    return load_benchmark("online_nash")


def test_budgets_are_equal_across_methods():
    bench = _script()
    totals = {m: bench.budget(m, 48, 40) for m in bench.METHODS}
    assert {b["comparisons_total"] for b in totals.values()} == {48 * 40}
    assert totals["sppo"]["prompts_per_iteration"] == 8  # 6 pairs of 4 samples per prompt
    assert totals["nash_md"]["prompts_per_iteration"] == 24  # 2 samples, one pair each


def test_main_writes_the_expected_json(tmp_path):
    bench = _script()
    out = tmp_path / "online_nash.json"
    record = bench.main([
        "--methods", "online_dpo", "nash_md", "--seeds", "0", "--iterations", "2",
        "--comparisons", "6", "--eval-samples", "1", "--window", "1", "--task-size", "small",
        "--cache-dir", str(tmp_path / "cache"), "--workers", "1",
        "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
    ])  # fmt: skip
    data = json.loads(out.read_text())
    assert data["command"] == record["command"]
    for key in ("date", "seeds", "iterations", "budgets", "hyperparameters", "summary",
                "win_rates", "runs", "task", "wall_s"):  # fmt: skip
        assert key in data, key
    assert Path(data["plot"]).is_file()
    assert data["budgets"]["online_dpo"]["comparisons_total"] == 12
    assert data["budgets"]["nash_md"]["comparisons_total"] == 12
    runs = {r["method"]: r for r in data["runs"]}
    assert set(runs) == {"reference", "online_dpo", "nash_md"}
    for m in ("online_dpo", "nash_md"):
        assert runs[m]["comparisons_counted"] == runs[m]["store_queries"] == 12
        assert len(runs[m]["curve_windows"]) == 2
    for m in ("reference", "online_dpo", "nash_md"):
        row = data["summary"][m]
        for key in ("exploitability", "equilibrium_tv", "gold_reward", "style"):
            assert key in row
        assert 0 <= row["exploitability"]["mean"] <= 0.5
    for a, b in (("online_dpo", "reference"), ("nash_md", "online_dpo")):
        wr = data["win_rates"][f"{a}|{b}"]
        assert 0 <= wr["judge"][0] <= 1 and 0 <= wr["game"][0] <= 1
