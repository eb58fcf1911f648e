"""Bias and variance of A-PARL's shipped SAC estimator against the exact hypergradient.

On the soft linear-quadratic problem of ``unialign.bilevel.lq`` (θ*(ν) and ∇G exact), runs
``unialign.control.aparl.aparl_reward_gradient`` (or its solve/cross half with an exact score
gradient) many times per variant and compares with ∇G (``unialign.control.aparl_diagnosis``):

- A: upper sample — replay segments from older policies vs fresh on-policy rollouts;
  importance weights (plain, self-normalised, clipped); staleness of the replay;
- B: pairs per estimate (the score term's variance);
- C: the one-step cross term vs the full Q_ν, over the discount γ (exact score gradient);
- D: damping λ and CG iterations, α, an over-parameterised actor (exact score gradient);
- E: curvature — Fisher vs the actor-loss Hessian (exact Q critic, or Q ≈ r);
- F: an actor that lags θ*; windows that start mid-episode (burn-in);
- G: the sampled estimator at γ = 0, where the implicit term is most of ∇G;
- H: segments of 50 steps (the control benchmark's length) instead of 10.

Writes ``benchmarks/results/aparl_diagnosis.json`` (the command line, every variant's fields
and figures, each problem's exact gradients with their Monte-Carlo errors) after every
variant, so an interrupted run resumes with ``--resume``; and a PNG of sections A–B and D.

    python benchmarks/aparl_diagnosis.py                 # ≈ 10 CPU-minutes, 1 thread
    python benchmarks/aparl_diagnosis.py --quick         # smoke test, ≈ 1 minute

``--pendulum SEED ...`` instead runs ``algo: aparl`` on Pendulum-v1 with the control benchmark's
CPU-tier budget (``unialign.control.demo.PENDULUM_BUDGET``, today's A-PARL defaults) and
writes the logged ``aparl/*`` diagnostics (size of the correction against PEBBLE's gradient,
their cosine, CG residual, SAC's α) to ``aparl_diagnosis_pendulum.json``: what the estimator
does in the loop, where the exact term is unknown. ≈ 3 CPU-minutes a seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.progress import Progress

from unialign.bilevel.lq import SoftLQ
from unialign.control.aparl_diagnosis import EstimatorVariant as V
from unialign.control.aparl_diagnosis import estimator_draws, summarise

DT = torch.float64
NU = torch.tensor([0.5, 0.2, 0.0, 1.0, 0.1, 0.4], dtype=DT)  # the current reward estimate


def problem(**settings) -> SoftLQ:
    """``SoftLQ.example``: 2-D state, 1-D action, teacher r* = −½(s₁² + ½ s₂² + 0.2 a²);
    the current estimate ν ≠ ν* is ``NU``."""
    return SoftLQ.example(**settings)


PROBLEMS = {
    "main": {},  # γ = 0.99, α = 0.1
    "gamma0": {"gamma": 0.0},
    "gamma0.5": {"gamma": 0.5},
    "gamma0.9": {"gamma": 0.9},
    "alpha0.01": {"alpha": 0.01},
    "burnin20": {"burn_in": 20},
    "h50": {"horizon": 50},  # the control benchmark's segment length
}

EX = {"score": "exact", "sample": "on_policy"}  # isolate the solve and the cross term


def grid(reps: int) -> list[tuple[str, str, V, int]]:
    """(section, problem, variant, replicates)."""
    r_ex = max(3, reps // 10)
    g: list[tuple[str, str, V, int]] = []
    for v in (
        V("shipped: replay, no weights"),
        V("replay staleness 0.25", staleness=0.25),
        V("replay staleness 0.5", staleness=0.5),
        V("replay + IS weights", weights="is"),
        V("replay + SNIS weights", weights="snis"),
        V("replay + clipped SNIS", weights="snis_clip"),
        V("on-policy", sample="on_policy"),
        V("on-policy + full Q", sample="on_policy", cross="full_q"),
    ):
        g.append(("A upper sample", "main", v, reps))
    for n in (512, 2048, 8192):
        g.append(
            ("B pairs", "main", V(f"on-policy, N={n}", sample="on_policy", pairs=n), reps // 4)
        )
        g.append(
            ("B pairs", "main", V(f"replay + SNIS, N={n}", weights="snis", pairs=n), reps // 4)
        )
    for v in (  # where the term is large (79 % of ∇G at γ = 0, 10 % at γ = 0.99)
        V("shipped: replay, no weights"),
        V("replay + SNIS weights", weights="snis"),
        V("on-policy", sample="on_policy"),
    ):
        g.append(("G sampled, γ = 0", "gamma0", v, reps))
    for n in (2048, 8192):
        v = V(f"on-policy, N={n}", sample="on_policy", pairs=n)
        g.append(("G sampled, γ = 0", "gamma0", v, reps // 4))
    for v in (
        V("shipped: replay, no weights"),
        V("replay + SNIS weights", weights="snis"),
        V("on-policy", sample="on_policy"),
    ):
        g.append(("H segments of 50 steps", "h50", v, reps))
    v = V("on-policy, N=2048", sample="on_policy", pairs=2048)
    g.append(("H segments of 50 steps", "h50", v, reps // 4))
    for name in ("gamma0", "gamma0.5", "gamma0.9", "main"):
        for cross in ("one_step", "full_q"):
            g.append(("C cross term", name, V(f"exact score, {cross}", cross=cross, **EX), r_ex))
    for lam in (0.0, 1e-3, 1e-2, 1e-1, 1.0):
        for name in ("main", "alpha0.01"):
            v = V(f"damping {lam:g}", cross="full_q", damping=lam, **EX)
            g.append(("D damping/CG", name, v, r_ex))
        v = V(f"deep actor, damping {lam:g}", cross="full_q", damping=lam, hidden=8, **EX)
        g.append(("D damping/CG", "main", v, r_ex))
    for k in (1, 2, 3, 5):
        g.append(("D damping/CG", "main", V(f"CG {k}", cross="full_q", cg_iters=k, **EX), r_ex))
    for curv in ("fisher", "hessian_q", "hessian_r"):
        g.append(("E curvature", "main", V(f"{curv}", cross="full_q", curvature=curv, **EX), r_ex))
    for lag in (0.1, 0.3):
        v = V(f"actor lag {lag}", cross="full_q", actor_lag=lag, **EX)
        g.append(("F lower level / windows", "main", v, r_ex))
    g.append(
        (
            "F lower level / windows",
            "burnin20",
            V("burn-in 20: exact score", cross="full_q", **EX),
            r_ex,
        )
    )
    v = V(
        "burn-in 20: sampled window score, N=8192", sample="on_policy", cross="full_q", pairs=8192
    )
    g.append(("F lower level / windows", "burnin20", v, reps // 4))
    return g


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=100, help="replicates of a sampled variant")
    p.add_argument("--exact-pairs", type=int, default=200_000, help="pairs behind each ∇G")
    p.add_argument("--quick", action="store_true", help="smoke test: few replicates and pairs")
    p.add_argument("--resume", action="store_true", help="keep variants already in --out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/aparl_diagnosis.json")
    p.add_argument("--pendulum", type=int, nargs="*", metavar="SEED", help="see the docstring")
    p.add_argument("--runs-dir", default="runs/aparl_diagnosis_pendulum")
    args = p.parse_args(argv)
    if args.pendulum:
        return pendulum(args, argv)
    if args.quick:
        args.reps, args.exact_pairs = 8, 20_000
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result = {
        "command": "python "
        + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nu": NU.tolist(),
        "problems": {},
        "variants": [],
    }
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        result["problems"], result["variants"] = old["problems"], old["variants"]
        result["runs"] = [*old.get("runs", [old["command"]]), result["command"]]
        result["command"] = old["command"]
        result["previous_cpu_minutes"] = old.get("cpu_minutes", 0.0)
    done = {(r["section"], r["problem"], r["variant"]["name"]) for r in result["variants"]}
    jobs = grid(args.reps)
    exact = {}
    t0 = time.process_time()
    with Progress() as bar:
        task = bar.add_task("variants", total=len(jobs))
        for section, name, variant, reps in jobs:
            bar.update(task, description=f"{section}: {variant.name}")
            prob = problem(**PROBLEMS[name])
            if name not in exact:
                gen = torch.Generator().manual_seed(1)
                exact[name] = prob.hypergradient(NU, pairs=args.exact_pairs, generator=gen)
                e = exact[name]
                result["problems"][name] = {
                    "settings": {k: v for k, v in asdict(prob).items() if not torch.is_tensor(v)},
                    **{k: getattr(e, k).tolist() for k in ("total", "direct", "implicit")},
                    **{
                        f"{k}_se": getattr(e, f"{k}_se").tolist()
                        for k in ("total", "direct", "implicit")
                    },
                    "pairs": e.pairs,
                    "implicit_over_total": float(e.implicit.norm() / e.total.norm()),
                }
            if (section, name, variant.name) not in done:
                if args.quick and variant.pairs > 512:
                    variant = replace(variant, pairs=512)
                t = time.process_time()
                draws = estimator_draws(prob, NU, variant, replicates=reps, seed=0)
                result["variants"].append(
                    {
                        "section": section,
                        "problem": name,
                        "variant": asdict(variant),
                        "replicates": reps,
                        "cpu_s": round(time.process_time() - t, 2),
                        "mean_implicit": draws["implicit"].mean(0).tolist(),
                        **summarise(draws, exact[name]),
                    }
                )
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1))
            bar.advance(task)
    spent = (time.process_time() - t0) / 60 + result.get("previous_cpu_minutes", 0.0)
    result["cpu_minutes"] = round(spent, 2)  # over every run that filled this file
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    table(result)


def pendulum(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Run (or reuse finished) A-PARL Pendulum-v1 runs and collect their aparl/* metrics."""
    import numpy as np

    from unialign.control.config import ControlConfig
    from unialign.control.demo import PENDULUM_BUDGET
    from unialign.control.report import read_metrics
    from unialign.control.train import train_control

    torch.set_num_threads(args.threads)
    keys = ("correction_norm", "bt_grad_norm", "cosine", "cg_residual", "negative_curvature")
    out = {
        "command": "python "
        + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "budget": PENDULUM_BUDGET,
        "runs": {},
    }
    for seed in args.pendulum:
        run = Path(args.runs_dir) / f"s{seed}"
        if not (run / "summary.json").exists():
            cfg = ControlConfig(
                env="Pendulum-v1", algo="aparl", seed=seed, output_dir=str(run),
                progress=False, eval_episodes=5, log_every=250, **PENDULUM_BUDGET,
            )  # fmt: skip
            train_control(cfg)
        rows = [m for m in read_metrics(run / "metrics.jsonl") if "aparl/correction_norm" in m]
        seen, points = set(), []
        for m in rows:  # the metrics of one fit repeat until the next: keep each fit once
            sig = tuple(m[f"aparl/{k}"] for k in keys)
            if sig not in seen:
                seen.add(sig)
                points.append({"step": m.get("step"), "sac/alpha": m.get("sac/alpha"),
                               **{k: m[f"aparl/{k}"] for k in keys}})  # fmt: skip
        ratio = [p["correction_norm"] / max(p["bt_grad_norm"], 1e-12) for p in points]
        out["runs"][str(seed)] = {
            "summary": json.loads((run / "summary.json").read_text()),
            "fits": points,
            "correction_over_bt_median": float(np.median(ratio)),
            "correction_over_bt_range": [float(min(ratio)), float(max(ratio))],
            "cosine_range": [min(p["cosine"] for p in points), max(p["cosine"] for p in points)],
            "cg_residual_median": float(np.median([p["cg_residual"] for p in points])),
        }
        print(seed, {k: v for k, v in out["runs"][str(seed)].items() if k != "fits"})
    path = Path(args.out).with_name("aparl_diagnosis_pendulum.json")
    path.write_text(json.dumps(out, indent=1))


def table(result: dict) -> None:
    """Markdown rows of the headline figures (docs/benchmarks.md)."""
    print(
        "| section | problem | variant | bias | spread | cos(mean, exact) | A-PARL rmse | PEBBLE rmse |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in result["variants"]:
        print(
            f"| {r['section']} | {r['problem']} | {r['variant']['name']} | "
            f"{r['implicit_bias']:.3g} ± {r['implicit_bias_mc']:.2g} | {r['implicit_std']:.3g} | "
            f"{r['implicit_cos_mean']:.2f} | {r['aparl_rmse']:.3g} | {r['pebble_rmse']:.3g} |"
        )


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    rows = [r for r in result["variants"] if r["section"][0] in "AB" and r["problem"] == "main"]
    y = range(len(rows))
    ax1.barh([i - 0.2 for i in y], [r["implicit_bias"] for r in rows], 0.4, label="bias")
    ax1.barh([i + 0.2 for i in y], [r["implicit_std"] for r in rows], 0.4, label="spread")
    ax1.set_yticks(list(y), [f"{r['variant']['name']}" for r in rows], fontsize=7)
    ax1.set_xscale("log")
    ax1.axvline(1.0, color="k", lw=0.8)
    ax1.set_xlabel("relative to ‖exact implicit term‖ (1 = as large as the term)")
    ax1.set_title("sampled score term (γ = 0.99, α = 0.1)")
    ax1.legend()
    for prob, style in (("main", "o-"), ("alpha0.01", "s--")):
        for deep in (False, True):
            rs = [
                r
                for r in result["variants"]
                if r["section"].startswith("D")
                and r["problem"] == prob
                and r["variant"]["name"].startswith("deep") == deep
                and r["variant"]["name"].split(",")[-1].strip().startswith("damping")
            ]
            if not rs or (deep and prob != "main"):
                continue
            lams = [max(r["variant"]["damping"], 1e-4) for r in rs]
            lab = f"{'deep actor' if deep else 'linear actor'}, {prob}"
            ax2.plot(lams, [r["implicit_rmse"] for r in rs], style, label=lab)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("damping λ (0 drawn at 1e-4)")
    ax2.set_ylabel("relative error of the implicit term")
    ax2.set_title("exact score gradient, full Q: the solve alone")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
