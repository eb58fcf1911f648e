"""Feedback efficiency of oracle, PEBBLE and A-PARL over seeds, with 95 % intervals.

For each environment of a tier, runs ``oracle`` (SAC on the true reward), ``pebble`` and
``aparl`` for several seeds as one sweep (:mod:`unialign.sweep`: each run a Ray task of the
built-in ``control`` experiment, ``--workers`` CPUs; finished runs in ``--runs-dir`` are kept
and skipped on rerun), then reports per method:

- the normalised return at the budget, ``(R − R_random) / (R_oracle − R_random)`` with
  ``R_oracle`` the oracle's mean final return and ``R_random`` a uniform-random policy's;
- the environment steps and the queries needed to first reach 90 % of the oracle's return
  (normalised ≥ 0.9 at an evaluation), or ``null`` when a run never did;
- means with 95 % t-intervals over seeds.

Writes ``benchmarks/results/control_feedback.json`` (with the command line) and a PNG of the
normalised learning curves; the sweep's own table is in ``--runs-dir``. The CPU tier's sweep
config is committed as ``benchmarks/sweeps/control_feedback_cpu.yaml``
(``--write-config`` prints it), so ``unialign sweep`` runs the same grid. Tiers: ``cpu`` (Pendulum-v1, InvertedPendulum-v5,
Reacher-v5) and ``gpu`` (dmc:walker-walk, metaworld:door-open-v3), sized for
one 10-minute GPU run with seeds in parallel.

    python benchmarks/control_feedback.py --tier cpu --seeds 5 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from unialign.control.demo import PENDULUM_BUDGET
from unialign.sweep import SweepConfig, expand, run_sweep
from unialign.sweep.report import draw_task_curves

# Per-environment budgets. Shared keys apply to every method; feedback keys only to
# pebble/aparl. Sizes follow what fits the tier's time, not the papers' budgets.
# Short-episode MuJoCo tasks share one budget; the Pendulum budget is the demo's.
_MUJOCO_CPU = dict(
    PENDULUM_BUDGET,
    total_steps=15_000,
    max_queries=200,
    queries_per_round=20,
    feedback_interval=1_000,
    eval_every=1_500,
)
# GPU tier: B-Pref-like networks, seeds in parallel, sized for one 10-minute GPU run.
_GPU = dict(
    total_steps=30_000,
    random_steps=2_000,
    unsup_steps=3_000,
    hidden=[256, 256],
    batch_size=256,
    lr=5e-4,
    max_queries=500,
    queries_per_round=50,
    feedback_interval=2_500,
    segment_length=50,
    reward_epochs=20,
    aparl_steps=5,
    eval_every=3_000,
    device="cuda",
)
TIERS: dict[str, dict[str, dict]] = {
    "cpu": {
        "Pendulum-v1": PENDULUM_BUDGET,
        "InvertedPendulum-v5": _MUJOCO_CPU,
        "Reacher-v5": dict(_MUJOCO_CPU, max_queries=300, queries_per_round=30),
    },
    "gpu": {
        "dmc:walker-walk": _GPU,
        "metaworld:door-open-v3": dict(_GPU, lr=3e-4, max_queries=1_000, queries_per_round=100),
    },
}
METHODS = ("oracle", "pebble", "aparl")


def build_config(args: argparse.Namespace) -> SweepConfig:
    """The sweep of a command line: the tier's budgets per environment (after ``--set`` and
    ``--scale``), the oracle without PEBBLE's unsupervised phase, normalised by the random
    policy and the oracle."""
    tier = TIERS[args.tier]
    task_settings = {}
    for env in args.envs or list(tier):
        over = dict(tier[env])
        for item in args.set:
            key, _, value = item.partition("=")
            over[key] = yaml.safe_load(value)
        for k in ("total_steps", "random_steps", "unsup_steps", "feedback_interval", "eval_every"):
            over[k] = max(1, int(over[k] * args.scale))
        task_settings[env] = over
    return SweepConfig(
        name=f"control_feedback_{args.tier}",
        experiment="control",
        out=args.runs_dir or f"runs/sweeps/control_feedback_{args.tier}",
        methods=list(args.methods),
        tasks=list(task_settings),
        seeds=args.seeds,
        base={"eval_episodes": 5},
        task_settings=task_settings,
        method_settings={"oracle": {"unsup_steps": 0}} if "oracle" in args.methods else {},
        normalize={"low": "random", "high": "oracle"} if "oracle" in args.methods else None,
        ray={"num_cpus": args.workers, "cpus_per_cell": 1},
    )


def summarise(table: dict) -> dict:
    """The sweep's table in this benchmark's long-standing result format."""
    result: dict[str, dict] = {}
    for row in table["rows"]:
        env = result.setdefault(
            row["task"],
            {"oracle_return": row.get("high"), "random_return": row.get("low"), "methods": {}},
        )
        oracle = row["method"] == "oracle"
        env["methods"][row["method"]] = {
            "normalized_return_at_budget": row.get("normalized"),
            "env_steps_to_90pct_oracle": row.get("x_to_threshold"),
            "queries_to_90pct_oracle": None
            if oracle
            else row.get("aux_to_threshold", {}).get("queries"),
            "final_true_return": row["score"],
            "seconds_per_run": row["seconds"],
        }
    return result


def runs(results: list[dict]) -> list[dict]:
    """Every finished run: its evaluations as (step, queries, true return), as before."""
    out = []
    for r in results:
        cell = r["cell"]
        queries = dict(map(tuple, r["aux_curves"]["queries"]))
        out.append({
            "env": cell["task"],
            "algo": cell["method"],
            "seed": cell["seed"],
            "curve": [(s, queries.get(s, 0), ret) for s, ret in r["curve"]],
            "summary": r["summary"],
            "seconds": r["seconds"],
        })  # fmt: skip
    return out


def plot(table: dict, results: list[dict], envs: list[str], path: Path) -> None:
    """One panel per environment (the sweep's curves, side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.8), dpi=110, squeeze=False)
    for ax, env in zip(axes[0], envs):
        draw_task_curves(ax, table, results, env)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tier", choices=sorted(TIERS), default="cpu")
    p.add_argument("--envs", nargs="*", help="subset of the tier's environments")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Ray CPUs")
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every step budget (quick looks)"
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override config fields for every run (ablations), e.g. --set aparl_weight=0",
    )
    p.add_argument(
        "--runs-dir",
        default=None,
        help="the sweep's out directory (default: runs/sweeps/control_feedback_<tier>)",
    )
    p.add_argument("--out", default="benchmarks/results/control_feedback.json")
    p.add_argument(
        "--write-config",
        metavar="YAML",
        help="write the sweep config of these arguments to YAML and exit (nothing runs)",
    )
    p.add_argument("--serial", action="store_true", help="run in this process (no Ray)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    if args.write_config:
        command = " ".join(["python benchmarks/control_feedback.py", *(argv or sys.argv[1:])])
        Path(args.write_config).write_text(
            f"# The sweep of `{command}`\n# (written by that command; `unialign sweep` on this file "
            "runs the same grid).\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        return 0
    n = len(expand(cfg))
    print(f"{n} runs on {args.workers} workers (Ray)", file=sys.stderr)
    t0 = time.perf_counter()
    outcome = run_sweep(cfg, serial=args.serial)
    wall = time.perf_counter() - t0
    if outcome.interrupted:
        return 130
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    result = {
        "command": " ".join(
            [
                "python",
                "benchmarks/control_feedback.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "tier": args.tier,
        "seeds": args.seeds,
        "scale": args.scale,
        "device": "cuda" if args.tier == "gpu" else "cpu",
        "torch": torch.__version__,
        "wall_seconds": round(wall, 1),
        "sweep": {
            "out": cfg.out,
            "runs_this_call": outcome.ran,
            "runs_finished_before": outcome.skipped,
            "failed": outcome.failed,
            "ray_start_seconds": outcome.ray_start_s,
        },
        "definitions": {
            "normalized_return": "(R - R_random) / (R_oracle - R_random), R_oracle = oracle's mean final return",
            "to_90pct_oracle": "first evaluation with normalized return >= 0.9; null if never reached",
            "ci95": "half-width of the t-interval over seeds",
            "seconds_per_run": "wall time of a run's Ray task (training, plots, random-policy return)",
        },
        "budgets": {env: TIERS[args.tier][env] for env in cfg.tasks},
        "overrides": args.set,
        "results": summarise(outcome.table),
        "runs": runs(outcome.results),
    }
    out.write_text(json.dumps(result, indent=2))
    plot(outcome.table, outcome.results, cfg.tasks, out.with_suffix(".png"))
    print(json.dumps(result["results"], indent=2))
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
