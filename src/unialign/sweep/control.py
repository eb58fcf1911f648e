"""The built-in ``control`` experiment: each cell is one ``unialign train control`` run.

The cell's ControlConfig is its params with ``env = task``, ``algo = method``, its seed, its
directory as ``output_dir`` and the progress bar off. The cell returns:

- ``score``: the final evaluation's true return (``eval/true_return`` of ``summary.json``);
- ``curve``: ``[step, eval/true_return]`` at every evaluation (``metrics.jsonl``);
- ``aux_curves.queries``: ``[step, feedback/queries]`` at the same evaluations, so the report
  can say how many queries a run had used when it first reached 90 % of the oracle;
- ``metrics``: queries and labels used, wall time (and success rate where the task has one);
- ``low_score``: a uniform-random policy's mean return over 10 episodes on the task, the
  ``normalize.low: random`` reference.

A cell whose directory holds a run of the same config continues it: from its checkpoint when
it was stopped (Ctrl-C, a worker that died), from its ``summary.json`` when it finished but its
result never reached the driver. A run of another config there is replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from unialign.sweep.grid import Cell

__all__ = ["control_config", "random_policy_return", "run_cell"]


def control_config(cell: Cell, out_dir: Path):
    """The :class:`~unialign.control.config.ControlConfig` of ``cell``."""
    from unialign.control.config import ControlConfig

    return ControlConfig(
        **cell.params,
        env=cell.task,
        algo=cell.method,
        seed=cell.seed,
        output_dir=str(out_dir),
        progress=False,
    )


def random_policy_return(env: str, episodes: int = 10, seed: int = 0) -> float:
    """Mean return of actions drawn uniformly from [−1, 1] (the normalised action box) over
    ``episodes`` episodes, reset with seeds 1000, 1001, … — the 0 of normalised returns."""
    from unialign.control.envs import make_env

    # a seeded build: Meta-World draws its goal from the env's own generator, which an unseeded
    # build seeds from entropy (the reference would then differ from cell to cell)
    e = make_env(env, seed=1_000)
    rng = np.random.default_rng(seed)
    returns = []
    try:
        for i in range(episodes):
            e.reset(seed=1_000 + i)
            ret, done = 0.0, False
            while not done:
                action = rng.uniform(-1, 1, size=e.action_space.shape).astype(np.float32)
                _, r, terminated, truncated, _ = e.step(action)
                ret += float(r)
                done = terminated or truncated
            returns.append(ret)
    finally:
        e.close()
    return float(np.mean(returns))


def _previous_run(cfg, out_dir: Path) -> str:
    """What ``out_dir`` holds of this very config: ``"finished"`` (a summary), ``"partial"``
    (a checkpoint to resume) or ``"none"``; files of another config are removed."""
    from unialign.control.train import CHECKPOINT

    ckpt, saved, summary = out_dir / CHECKPOINT, out_dir / "config.yaml", out_dir / "summary.json"
    same = saved.exists() and yaml.safe_load(saved.read_text()) == cfg.model_dump(mode="json")
    if same and summary.exists() and "interrupted" not in json.loads(summary.read_text()):
        return "finished"
    if same and ckpt.exists():
        return "partial"
    for stale in (ckpt, summary):
        stale.unlink(missing_ok=True)
    return "none"


def run_cell(cell: Cell, out_dir: Path) -> dict:
    """One control run for ``cell`` in ``out_dir`` (see the module docstring for the result)."""
    from unialign.control.report import read_metrics
    from unialign.control.train import train_control

    cfg = control_config(cell, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_run(cfg, out_dir)
    if previous == "finished":  # the run ended but its result never reached the driver
        summary = json.loads((out_dir / "summary.json").read_text())
    else:
        summary = train_control(cfg, resume=previous == "partial")
    if summary.get("interrupted"):
        raise KeyboardInterrupt(f"cell {cell.cell_id} stopped at step {summary['step']}")
    evals = [r for r in read_metrics(out_dir / "metrics.jsonl") if "eval/true_return" in r]
    metrics = {
        "queries_used": float(summary["queries_used"]),
        "labels_used": float(summary["labels_used"]),
        "wall_time_s": float(summary["wall_time_s"]),
    }
    if "eval/success_rate" in summary:
        metrics["success_rate"] = float(summary["eval/success_rate"])
    return {
        "score": float(summary["eval/true_return"]),
        "curve": [[r["step"], r["eval/true_return"]] for r in evals],
        "aux_curves": {"queries": [[r["step"], r.get("feedback/queries", 0)] for r in evals]},
        "metrics": metrics,
        "x_label": "environment steps",
        "y_label": "evaluation return (true reward)",
        "low_score": random_policy_return(cell.task),
        "summary": summary,
    }
