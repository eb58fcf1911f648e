"""Tests of ``benchmarks/overoptimization.py``: its pure pieces by hand (default tier, well under
a second) and the whole script at a tiny size (slow tier: the small task reference is
pretrained into a temporary cache, two reward models are trained, four 2-iteration runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark


def _script():
    return load_benchmark("overoptimization")


RAW = torch.tensor([[3.0, 1.0], [0.0, 2.0]])  # [K = 2 members, N = 2 samples]


@pytest.mark.parametrize(
    ("objective", "expected"),
    [("single", [1.0, 0.0]), ("mean", [0.0, 0.5]), ("min", [-1.0, 0.0]), ("uwo", [-2.0, 0.0])],
)
def test_proxy_judge_standardizes_then_aggregates(objective, expected):
    """Raw member scores (3, 1) and (0, 2) with μ = (1, 1), σ = (2, 1) standardize to
    z_1 = ((3−1)/2, (1−1)/2) = (1, 0) and z_2 = (0−1, 2−1) = (−1, 1). Per sample:
    single = z_1 = (1, 0); mean = (0, 0.5); min = (−1, 0); uwo with λ = 2: sample 1 has mean 0
    and population variance ((1−0)² + (−1−0)²)/2 = 1 → 0 − 2·1 = −2, sample 2 has mean 0.5 and
    variance ((0−0.5)² + (1−0.5)²)/2 = 0.25 → 0.5 − 2·0.25 = 0. The call record holds the
    members' means (0.5, 0), the ensemble mean 0.25 and the mean member std (1 + 0.5)/2 = 0.75.
    Every value is a short binary fraction, so the float32 results are exact."""
    bench = _script()
    judge = bench.ProxyJudge(lambda p, c: RAW.clone(), [1.0, 1.0], [2.0, 1.0], objective, 2.0)
    assert judge.score(["x", "y"], ["a", "b"]) == expected
    call = judge.calls[0]
    assert call["members"] == [0.5, 0.0]
    assert call["ensemble_mean"] == 0.25 and call["member_std"] == 0.75 and call["n"] == 2
    assert call["objective"] == sum(expected) / 2
    with pytest.raises(ValueError, match="objective must be one of"):
        bench.ProxyJudge(lambda p, c: RAW, [0, 0], [1, 1], "max", 0.0)


def _row(it: int, gold: float, kl: float, n: int = 4) -> dict:
    return {"iteration": it, "n": n, "rl/kl": kl, "eval/gold_reward": gold, "objective": it,
            "ensemble_mean": 0.0, "members": [it], "online/completion_tokens": 10.0,
            "eval/style/invalid": 0.0}  # fmt: skip


def test_windows_pool_iterations_weighted_by_samples():
    """Window of size 2 over iterations 1–5: the fifth (incomplete window) is dropped. Window 1
    has golds (0.2, 0.5) on 4 and 12 samples: (4·0.2 + 12·0.5)/16 = 6.8/16 = 0.425; KL (1, 3)
    → (4 + 36)/16 = 2.5; objective (1, 2) → (4 + 24)/16 = 1.75. Window 2 has equal weights:
    gold (0.6 + 0.4)/2 = 0.5, KL (5 + 7)/2 = 6."""
    bench = _script()
    curve = [_row(1, 0.2, 1.0), _row(2, 0.5, 3.0, n=12), _row(3, 0.6, 5.0), _row(4, 0.4, 7.0),
             _row(5, 0.9, 9.0)]  # fmt: skip
    w = bench.windows(curve, 2)
    assert [x["iteration"] for x in w] == [2, 4]
    assert w[0]["gold"] == pytest.approx(0.425, abs=1e-12)
    assert w[0]["kl"] == pytest.approx(2.5, abs=1e-12)
    assert w[0]["proxy"] == pytest.approx(1.75, abs=1e-12)
    assert w[1]["gold"] == pytest.approx(0.5, abs=1e-12) and w[1]["kl"] == pytest.approx(6.0)


def test_summarize_finds_each_seeds_peak_and_final():
    """Two seeds, window 1. Seed 0: gold (0.4, 0.7, 0.1) at KL (0, 2, 9): peak 0.7 at KL 2,
    final 0.1, drop 0.6. Seed 1: gold (0.5, 0.6, 0.3) at KL (0, 4, 8): peak 0.6 at KL 4,
    final 0.3, drop 0.3. Means over seeds: peak 0.65, KL at peak 3, final 0.2, drop 0.45.
    Reference gold 0.35 for seed 0: after its peak the gold first falls below it at iteration 3
    (0.1, KL 9); reference 0.2 for seed 1: 0.3 never falls below, so the fall is None and the
    mean KL of the fall counts seed 0 alone (9, n = 1)."""
    bench = _script()
    runs = [
        {"objective": "min", "seed": 0,
         "curve": [_row(1, 0.4, 0.0), _row(2, 0.7, 2.0), _row(3, 0.1, 9.0)]},
        {"objective": "min", "seed": 1,
         "curve": [_row(1, 0.5, 0.0), _row(2, 0.6, 4.0), _row(3, 0.3, 8.0)]},
    ]  # fmt: skip
    s = bench.summarize(runs, 1, {0: 0.35, 1: 0.2})["min"]
    assert s["seeds"] == [0, 1]
    assert s["peak_gold"]["mean"] == pytest.approx(0.65)
    assert s["kl_at_peak"]["mean"] == pytest.approx(3.0)
    assert s["final_gold"]["mean"] == pytest.approx(0.2)
    assert s["drop_from_peak"]["mean"] == pytest.approx(0.45)
    assert [c["gold"]["mean"] for c in s["curve"]] == pytest.approx([0.45, 0.65, 0.2])
    assert [r["iteration_below_reference"] for r in s["per_seed"]] == [3, None]
    assert s["kl_below_reference"]["mean"] == 9.0 and s["kl_below_reference"]["n"] == 1


@pytest.mark.slow
def test_main_end_to_end_at_a_tiny_size(tmp_path):
    """Seed 0, K = 2 members on 24 labels, every objective for 2 iterations of 2 × 2 samples on
    the small task: the JSON holds one run per objective with 2 curve points, the proxies'
    held-out accuracy, a summary per objective, and the plot; a second call skips everything."""
    bench = _script()
    out = tmp_path / "oo.json"
    argv = ["--seeds", "0", "--members", "2", "--labels", "24", "--eval-pairs", "16",
            "--iterations", "2", "--prompts", "2", "--samples", "2", "--max-new-tokens", "24",
            "--window", "1", "--task-size", "small", "--cache-dir", str(tmp_path / "cache"),
            "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]  # fmt: skip
    record = bench.main(argv)
    data = json.loads(out.read_text())
    assert data["command"] == record["command"]
    assert {r["objective"] for r in data["runs"]} == set(bench.OBJECTIVES)
    for r in data["runs"]:
        assert len(r["curve"]) == 2 and all(c["n"] == 4 for c in r["curve"])
    members = data["proxies"]["0"]["members"]
    assert len(members) == 2 and all("eval/accuracy" in m["eval"] for m in members)
    assert set(data["summary"]) == set(bench.OBJECTIVES)
    assert Path(data["plot"]).is_file()
    again = bench.main(argv)  # resumable: finished proxies and runs are read back
    assert [r["curve"] for r in again["runs"]] == [r["curve"] for r in data["runs"]]
