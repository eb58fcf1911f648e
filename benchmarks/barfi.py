"""BARFI against its baselines with good and bad auxiliary rewards: a sweep experiment.

Run::

    unialign sweep benchmarks/sweeps/barfi.yaml

Each cell is one ``train barfi`` run (:func:`unialign.control.barfi.train_barfi`):

- ``method`` ∈ {primary, naive, shaping, barfi, barfi_first_order}: the inner learner on r_p
  alone, on r_p + r_aux, on r_p + potential-based shaping with the same heuristic, or BARFI
  learning the blend (Neumann-series hypergradient, or its first-order variant);
- ``task`` = ``ENV/AUX``, e.g. ``gym:CartPole-v1/bad``: the environment and the name of its
  auxiliary reward in :mod:`unialign.control.barfi_aux`;
- ``params``: any :class:`unialign.control.barfi.BarfiConfig` field except env, aux, method,
  variant, seed, output_dir and progress, which the cell sets.

Result (the sweep contract): ``score`` = primary return (undiscounted, of the training
policy's own episodes) averaged over the last ``score_window`` iterations; ``curve`` = that
return per iteration against environment steps; ``low_score`` = the first iteration's return
(the initial policy); ``metrics`` = final φ₃ mean over the last batch's states and final γ_φ.
A cell that crashed leaves its checkpoint: rerunning the sweep resumes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unialign.control.barfi import BarfiConfig, train_barfi

METHODS = {
    "primary": {"method": "primary"},
    "naive": {"method": "naive"},
    "shaping": {"method": "shaping"},
    "barfi": {"method": "barfi", "variant": "neumann"},
    "barfi_first_order": {"method": "barfi", "variant": "first_order"},
}
RESERVED = ("env", "aux", "method", "variant", "seed", "output_dir", "progress")


def cell_config(cell: Any, out_dir: Path) -> BarfiConfig:
    """The run configuration of a cell (errors name the cell and the offending key)."""
    if cell.method not in METHODS:
        raise ValueError(f"cell {cell.cell_id}: method {cell.method!r}; use one of {list(METHODS)}")
    env, sep, aux = cell.task.rpartition("/")
    if not sep:
        raise ValueError(f"cell {cell.cell_id}: task {cell.task!r} must be ENV/AUX")
    reserved = sorted(set(cell.params) & set(RESERVED))
    if reserved:
        raise ValueError(f"cell {cell.cell_id}: params set {reserved}, which the cell sets")
    fields = {"env": env, "aux": aux, "seed": cell.seed, "output_dir": str(out_dir / "run")}
    return BarfiConfig(**cell.params, **METHODS[cell.method], **fields, progress=False)


def run_cell(cell: Any, out_dir: Path) -> dict:
    """One sweep cell (see the module docstring)."""
    cfg = cell_config(cell, Path(out_dir))
    resume = (Path(cfg.output_dir) / "checkpoint.pt").exists()
    summary = train_barfi(cfg, resume=resume)
    if summary["interrupted"]:  # Ctrl-C reached the run's StopOnSignal: not a finished cell
        raise KeyboardInterrupt(f"cell {cell.cell_id} interrupted; its checkpoint resumes it")
    curve = summary["curve"]
    return {
        "score": summary["score"],
        "curve": curve,
        "low_score": curve[0][1],
        "x_label": "environment steps",
        "y_label": "primary return",
        "metrics": {"phi3_mean": summary["phi3_mean"], "discount": summary["discount"]},
    }


SMOOTH = 5


def _moving_average(curve: list, k: int) -> list:
    """[x_i, mean(y_{i−k+1..i})]: a trailing mean over k points (fewer at the start)."""
    ys = [y for _, y in curve]
    return [[x, sum(ys[max(0, i - k + 1) : i + 1]) / (i + 1 - max(0, i - k + 1))]
            for i, (x, _) in enumerate(curve)]  # fmt: skip


def write_results(sweep_out: Path, json_path: Path, png_path: Path, note: str = "") -> dict:
    """``benchmarks/results/barfi.{json,png}`` from a finished sweep directory: the sweep's
    table (mean and 95 % t-interval per method × task), every cell's score and final φ₃/γ, and
    one figure with a panel per task (primary return smoothed over ``SMOOTH`` iterations, mean
    ± one s.d. over seeds)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unialign.sweep.report import draw_task_curves

    table = json.loads((sweep_out / "table.json").read_text())
    results = [
        json.loads(p.read_text()) for p in sorted((sweep_out / "cells").glob("*/result.json"))
    ]
    cells = [
        {
            "method": r["cell"]["method"],
            "task": r["cell"]["task"],
            "seed": r["cell"]["seed"],
            "score": r["score"],
            "low_score": r["low_score"],
            "phi3_mean": r["metrics"]["phi3_mean"],
            "discount": r["metrics"]["discount"],
            "wall_s": r.get("seconds"),
        }
        for r in results
    ]
    out = {
        "command": "unialign sweep benchmarks/sweeps/barfi.yaml; "
        "python benchmarks/barfi.py report runs/sweeps/barfi",
        "note": note,
        "table": table,
        "cells": cells,
    }
    json_path.write_text(json.dumps(out, indent=1))
    raw = dict(table, rows=[{k: v for k, v in r.items() if k != "low"} for r in table["rows"]])
    raw["y_label"] = f"primary return ({SMOOTH}-iteration moving average)"
    smoothed = [dict(r, curve=_moving_average(r["curve"], SMOOTH)) for r in results]
    tasks = list(dict.fromkeys(r["task"] for r in table["rows"]))
    cols = 2
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), dpi=100, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        draw_task_curves(ax, raw, smoothed, task)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return out


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="write benchmarks/results/barfi.{json,png}")
    p.add_argument("action", choices=["report"])
    p.add_argument("sweep_out", type=Path, help="the sweep's out directory")
    p.add_argument("--note", default="", help="a line stored with the results")
    a = p.parse_args()
    res = Path(__file__).resolve().parent / "results"
    write_results(a.sweep_out, res / "barfi.json", res / "barfi.png", a.note)
