"""``benchmarks/parl_tasks.py``: the seed-paired A-PARL − PEBBLE comparison and its verdicts.

Numbers worked by hand. With low = 0 and high = 10 a score s normalises to s / 10.

- walker: PEBBLE scores 5, 6, 7 and A-PARL 6, 8, 10 on seeds 0, 1, 2 → paired differences
  0.1, 0.2, 0.3: mean 0.2, sample sd 0.1, half-width t₀.₉₇₅(2) · 0.1 / √3 = 4.3027 · 0.057735
  = 0.24841 > 0.2, so the interval covers 0: "not resolved".
- cheetah: PEBBLE 5, 6, 7 and A-PARL 2, 4, 4.5 → differences −0.3, −0.2, −0.25: mean −0.25,
  sd 0.05, half-width 4.3027 · 0.028868 = 0.12421 < 0.25: "pebble higher".
- An A-PARL cell without a PEBBLE partner (seed 3) is left out of the pairs.
"""

import pytest

from benchmark_scripts import load_benchmark


def _load_benchmark():
    return load_benchmark("parl_tasks")


def _result(method: str, task: str, seed: int, score: float) -> dict:
    return {"cell": {"method": method, "task": task, "seed": seed}, "score": score}


def _table() -> dict:
    rows = [
        {"task": t, "method": m, "low": 0.0, "high": 10.0}
        for t in ("walker", "cheetah")
        for m in ("oracle", "pebble", "aparl")
    ]
    return {"rows": rows}


def test_compare_pairs_seeds_and_reads_the_interval():
    bench = _load_benchmark()
    results = [
        *(_result("pebble", "walker", s, x) for s, x in enumerate([5, 6, 7])),
        *(_result("aparl", "walker", s, x) for s, x in enumerate([6, 8, 10])),
        *(_result("pebble", "cheetah", s, x) for s, x in enumerate([5, 6, 7])),
        *(_result("aparl", "cheetah", s, x) for s, x in enumerate([2, 4, 4.5])),
        _result("aparl", "cheetah", 3, 100.0),  # no PEBBLE partner: ignored
    ]
    out = bench.compare(_table(), results)

    walker = out["walker"]["aparl_minus_pebble"]
    assert out["walker"]["seeds"] == [0, 1, 2]
    assert walker["mean"] == pytest.approx(0.2, abs=1e-12)
    assert walker["ci95"] == pytest.approx(0.24841, abs=1e-4)
    assert out["walker"]["verdict"].startswith("not resolved")

    cheetah = out["cheetah"]["aparl_minus_pebble"]
    assert out["cheetah"]["seeds"] == [0, 1, 2]
    assert cheetah["mean"] == pytest.approx(-0.25, abs=1e-12)
    assert cheetah["ci95"] == pytest.approx(0.12421, abs=1e-4)
    assert out["cheetah"]["verdict"] == "pebble higher"


def test_markdown_counts_tasks_where_aparl_is_resolved_higher():
    bench = _load_benchmark()
    comparison = {
        "a": {"aparl_minus_pebble": {"n": 3, "missing": 0, "mean": 0.3, "ci95": 0.1},
              "verdict": "aparl higher"},
        "b": {"aparl_minus_pebble": {"n": 3, "missing": 0, "mean": 0.1, "ci95": 0.5},
              "verdict": "not resolved (interval covers 0)"},
    }  # fmt: skip
    table = {"name": "t", "finished": 0, "cells": 0, "normalize": None, "rows": []}
    text = bench.markdown(table, comparison, "python benchmarks/parl_tasks.py")
    assert "| a | 0.30 ± 0.10 | aparl higher |" in text
    assert "A-PARL resolved higher than PEBBLE on 1 of 2 tasks." in text
