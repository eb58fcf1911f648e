"""Feedback efficiency of oracle, PEBBLE and A-PARL over seeds, with 95 % intervals.

For each environment of a tier, runs ``oracle`` (SAC on the true reward), ``pebble`` and
``aparl`` for several seeds (in parallel processes) through ``unialign.control.train``, then
reports per method:

- the normalised return at the budget, ``(R − R_random) / (R_oracle − R_random)`` with
  ``R_oracle`` the oracle's mean final return and ``R_random`` a uniform-random policy's;
- the environment steps and the queries needed to first reach 90 % of the oracle's return
  (normalised ≥ 0.9 at an evaluation), or ``null`` when a run never did;
- means with 95 % t-intervals over seeds.

Writes ``benchmarks/results/control_feedback.json`` (with the command line) and a PNG of the
normalised learning curves. Tiers: ``cpu`` (Pendulum-v1, InvertedPendulum-v5,
Reacher-v5) and ``gpu`` (dmc:walker-walk, metaworld:door-open-v3), sized for
one 10-minute GPU run with seeds in parallel.

    python benchmarks/control_feedback.py --tier cpu --seeds 5 --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from unialign.control.demo import PENDULUM_BUDGET

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


def _one_run(args: tuple[str, str, int, dict, str]) -> dict:
    """Run one (env, method, seed) in its own process; returns its evaluation curve."""
    env, algo, seed, overrides, out_root = args
    import torch

    torch.set_num_threads(1)
    from unialign.control.config import ControlConfig
    from unialign.control.report import read_metrics
    from unialign.control.train import train_control

    out = Path(out_root) / env.replace(":", "_") / f"{algo}-s{seed}"
    fields = {k: v for k, v in overrides.items() if k in ControlConfig.model_fields}
    if algo == "oracle":
        fields["unsup_steps"] = 0
    cfg = ControlConfig(
        env=env,
        algo=algo,
        seed=seed,
        output_dir=str(out),
        progress=False,
        eval_episodes=5,
        **fields,
    )
    for stale in ("checkpoint.pt", "summary.json"):
        (out / stale).unlink(missing_ok=True)
    t0 = time.perf_counter()
    summary = train_control(cfg)
    curve = [
        (r["step"], r.get("feedback/queries", 0), r["eval/true_return"])
        for r in read_metrics(out / "metrics.jsonl")
        if "eval/true_return" in r
    ]
    return {
        "env": env,
        "algo": algo,
        "seed": seed,
        "curve": curve,
        "summary": summary,
        "seconds": time.perf_counter() - t0,
    }


def _random_return(env: str, episodes: int = 10) -> float:
    from unialign.control.envs import make_env

    e = make_env(env)
    rng = np.random.default_rng(0)
    total = []
    for i in range(episodes):
        e.reset(seed=1_000 + i)
        ret, done = 0.0, False
        while not done:
            _, r, te, tr, _ = e.step(
                rng.uniform(-1, 1, size=e.action_space.shape).astype(np.float32)
            )
            ret += float(r)
            done = te or tr
        total.append(ret)
    return float(np.mean(total))


def _ci95(xs: list[float]) -> dict:
    """Mean and 95 % t-interval half-width (null entries excluded, counted separately)."""
    vals = [x for x in xs if x is not None]
    out = {"n": len(vals), "missing": len(xs) - len(vals)}
    if not vals:
        return out | {"mean": None, "ci95": None}
    from scipy import stats

    mean = float(np.mean(vals))
    half = (
        float(stats.t.ppf(0.975, len(vals) - 1) * np.std(vals, ddof=1) / math.sqrt(len(vals)))
        if len(vals) > 1
        else None
    )
    return out | {"mean": mean, "ci95": half}


def summarise(runs: list[dict], random_returns: dict[str, float]) -> dict:
    result: dict[str, dict] = {}
    for env in sorted({r["env"] for r in runs}):
        env_runs = [r for r in runs if r["env"] == env]
        oracle_final = [r["curve"][-1][2] for r in env_runs if r["algo"] == "oracle"]
        r_oracle, r_rand = float(np.mean(oracle_final)), random_returns[env]
        span = r_oracle - r_rand if abs(r_oracle - r_rand) > 1e-9 else 1.0
        per_method = {}
        for algo in METHODS:
            rs = [r for r in env_runs if r["algo"] == algo]
            if not rs:
                continue
            norm_final, steps90, queries90 = [], [], []
            for r in rs:
                norm = [(s, q, (ret - r_rand) / span) for s, q, ret in r["curve"]]
                norm_final.append(norm[-1][2])
                hit = next(((s, q) for s, q, n in norm if n >= 0.9), None)
                steps90.append(hit[0] if hit else None)
                queries90.append(hit[1] if hit and algo != "oracle" else None)
            per_method[algo] = {
                "normalized_return_at_budget": _ci95(norm_final),
                "env_steps_to_90pct_oracle": _ci95(steps90),
                "queries_to_90pct_oracle": _ci95(queries90) if algo != "oracle" else None,
                "final_true_return": _ci95([r["curve"][-1][2] for r in rs]),
                "seconds_per_run": _ci95([r["seconds"] for r in rs]),
            }
        result[env] = {"oracle_return": r_oracle, "random_return": r_rand, "methods": per_method}
    return result


def plot(runs: list[dict], random_returns: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in runs})
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.8), dpi=110, squeeze=False)
    for ax, env in zip(axes[0], envs):
        env_runs = [r for r in runs if r["env"] == env]
        r_oracle = float(np.mean([r["curve"][-1][2] for r in env_runs if r["algo"] == "oracle"]))
        span = (r_oracle - random_returns[env]) or 1.0
        for algo in METHODS:
            curves = [r["curve"] for r in env_runs if r["algo"] == algo]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            vals = np.array(
                [[(c[i][2] - random_returns[env]) / span for i in range(n)] for c in curves]
            )
            mean, sd = vals.mean(0), vals.std(0)
            ax.plot(steps, mean, label=algo)
            ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
        ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("normalised return")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tier", choices=sorted(TIERS), default="cpu")
    p.add_argument("--envs", nargs="*", help="subset of the tier's environments")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
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
    p.add_argument("--runs-dir", default="runs/bench_control")
    p.add_argument("--out", default="benchmarks/results/control_feedback.json")
    args = p.parse_args(argv)

    tier = TIERS[args.tier]
    envs = args.envs or list(tier)
    jobs = []
    for env in envs:
        over = dict(tier[env])
        for item in args.set:
            key, _, value = item.partition("=")
            over[key] = yaml.safe_load(value)
        for k in ("total_steps", "random_steps", "unsup_steps", "feedback_interval", "eval_every"):
            over[k] = max(1, int(over[k] * args.scale))
        for algo in args.methods:
            for seed in range(args.seeds):
                jobs.append((env, algo, seed, over, args.runs_dir))
    print(f"{len(jobs)} runs on {args.workers} workers", file=sys.stderr)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = []
        for i, r in enumerate(pool.map(_one_run, jobs), 1):
            runs.append(r)
            print(
                f"[{i}/{len(jobs)}] {r['env']} {r['algo']} seed {r['seed']}: final return {r['curve'][-1][2]:.1f} ({r['seconds']:.0f} s)",
                file=sys.stderr,
            )
    random_returns = {env: _random_return(env) for env in envs}
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
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "definitions": {
            "normalized_return": "(R - R_random) / (R_oracle - R_random), R_oracle = oracle's mean final return",
            "to_90pct_oracle": "first evaluation with normalized return >= 0.9; null if never reached",
            "ci95": "half-width of the t-interval over seeds",
        },
        "budgets": {env: tier[env] for env in envs},
        "overrides": args.set,
        "results": summarise(runs, random_returns),
        "runs": runs,
    }
    out.write_text(json.dumps(result, indent=2))
    plot(runs, random_returns, out.with_suffix(".png"))
    print(json.dumps(result["results"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
