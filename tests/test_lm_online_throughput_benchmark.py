"""Smoke test of ``benchmarks/lm_online_throughput.py``: its main at the smallest size, one
repeat of one timed iteration per peer, writes a JSON report with the expected keys.

No timing assertion: the numbers are the benchmark's output, not a property to test."""

import json
import math

import pytest

from benchmark_scripts import load_benchmark


def _load_benchmark():
    return load_benchmark("lm_online_throughput")


def test_reward_fn_is_one_function_for_both_peers():
    """TRL passes keywords and extras; unialign's FunctionScoreJudge passes two positionals."""
    bench = _load_benchmark()
    as_trl = bench.reward_fn(
        prompts=["p", "p"], completions=["aaa", "bcd"], completion_ids=[[1], [2]], trainer_state=0
    )
    as_unialign = bench.reward_fn(["p", "p"], ["aaa", "bcd"])
    assert as_trl == as_unialign
    assert as_trl[0] > as_trl[1]


@pytest.mark.integration
def test_main_smallest_size_writes_the_report(tmp_path):
    bench = _load_benchmark()
    out = tmp_path / "report.json"
    argv = ["--sizes", "tiny", "--repeats", "1", "--iterations", "1", "--warmup", "1",
            "--peers", "trl,unialign", "--timeout", "300", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert {"command", "date", "machine", "load", "versions", "sizes"} <= set(report)
    size = report["sizes"]["tiny"]
    assert {"model", "settings", "runs", "medians", "ratios_over_trl", "paired_ratios_over_trl",
            "equivalence", "target_met"} <= set(size)  # fmt: skip
    assert size["settings"]["num_samples"] == 2
    assert [r["peer"] for r in size["runs"]] == ["trl", "unialign"]
    for run in size["runs"]:
        assert run["ok"], run.get("error")
        for key in ("iterations_per_s", "generated_tokens_per_s", "update_tokens_per_s",
                    "cpu_s_per_iteration", "peak_rss_mib"):  # fmt: skip
            assert run[key] > 0 and math.isfinite(run[key])
        assert run["step1_loss"] == pytest.approx(math.log(2), abs=1e-3)
    for peer in ("trl", "unialign"):
        eq = size["equivalence"][peer]
        assert eq["optimizer_steps"] == [2]  # 1 warm-up + 1 timed iteration, one step each
        assert eq["prompts_per_iteration"] == 8
    assert set(size["ratios_over_trl"]["unialign"]) >= {"iterations_per_s", "peak_rss_mib"}
