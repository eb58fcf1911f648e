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
