"""Smoke test of ``benchmarks/lm_rl_throughput.py``: its main at the smallest size, one repeat
of one timed iteration per peer and method, writes a JSON report whose counters show equal
work on both sides.

No timing assertion: the numbers are the benchmark's output, not a property to test."""

import json
import math

import pytest

from benchmark_scripts import load_benchmark


def _load_benchmark():
    return load_benchmark("lm_rl_throughput")


def test_sizes_share_the_models_of_the_online_benchmark():
    """Both LM benchmarks build their models from ``_lm_bench.MODELS``; a GRPO iteration is
    P = 4 prompts × K = 4 completions = 16 sequences on the CPU tier, as online DPO's 8 × 2."""
    bench = _load_benchmark()
    online = bench.MODELS  # _lm_bench's, imported by the script
    for name, spec in bench.SIZES.items():
        assert spec["model"] == online[name]["model"]
    assert bench.SIZES["tiny"]["prompts_per_iteration"] * bench.COMMON["num_samples"] == 16
    assert bench.METHODS["grpo"]["beta"] == 0.04 and bench.METHODS["rloo"]["beta"] == 0.0


@pytest.mark.slow  # four subprocesses (TRL and unialign, GRPO and RLOO): ~40 s at load 2
def test_main_smallest_size_writes_the_report(tmp_path):
    """Both peers and methods, one timed iteration each: every run succeeds, the rates are
    positive and finite, and the counters show the same work (steps, prompts, completions,
    reference model loaded or not)."""
    bench = _load_benchmark()
    out = tmp_path / "report.json"
    argv = ["--sizes", "tiny", "--repeats", "1", "--iterations", "1", "--warmup", "1",
            "--timeout", "300", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert {"command", "date", "machine", "load", "versions", "sizes"} <= set(report)
    size = report["sizes"]["tiny"]
    assert set(size["methods"]) == {"grpo", "rloo"}
    for method, res in size["methods"].items():
        assert {"settings", "runs", "medians", "ratios_over_trl", "paired_ratios_over_trl",
                "equivalence", "target_met"} <= set(res)  # fmt: skip
        assert [r["peer"] for r in res["runs"]] == ["trl", "unialign"]
        for run in res["runs"]:
            assert run["ok"], run.get("error")
            for key in ("iterations_per_s", "generated_tokens_per_s", "update_tokens_per_s",
                        "cpu_s_per_iteration", "peak_rss_mib"):  # fmt: skip
                assert run[key] > 0 and math.isfinite(run[key])
            # GRPO's β = 0.04 loads a frozen reference in both; RLOO (β = 0) in neither
            assert run["reference_model"] is (method == "grpo")
        for peer in ("trl", "unialign"):
            eq = res["equivalence"][peer]
            assert eq["optimizer_steps"] == [2]  # 1 warm-up + 1 timed iteration, one step each
            assert eq["prompts_per_iteration"] == 4 and eq["completions_per_iteration"] == 16
            # 16 completions of at most 32 tokens (EOS included)
            assert 16 <= eq["generated_tokens_per_iteration"] <= 16 * 32
        assert set(res["ratios_over_trl"]["unialign"]) >= {"iterations_per_s", "peak_rss_mib"}
