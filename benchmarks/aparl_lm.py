"""Classic RLHF against A-PARL on the hub-free style task, at equal label budgets.

Both arms are the same online loop (``train lm-online``): RLOO (8 prompts × 4 samples per
iteration, a k1 KL penalty of coefficient β = 0.05 towards the reference, lr 3e-3) judged by a
reward model that is refit every iteration on a simulated teacher's labels of the policy's own
samples (``refit:``: an MLP head over the frozen reference trunk, 8 oracle labels of the task's
hidden gold reward per iteration, 50 AdamW steps per refit on every label so far). The arms
differ only in ``refit.correction``:

- ``classic``: none — the reward model follows the Bradley–Terry gradient E[∇_ν U];
- ``aparl (β=b)``: aparl — plus A-PARL's implicit term (1/b) E[∇r sᵀ](F + λI)⁻¹E[(U − Ū)(s¹+s²)]
  (docs/aparl-lm.md) with b = 0.05 (the loop's KL coefficient: the lower objective the policy
  actually has), and b = 1 and b = 10 (the same direction, 20× and 200× weaker).

Measured per seed and iteration: the task's gold reward of the policy's samples
(``eval/gold_reward``) against the teacher labels used so far, and the refit diagnostics. The
summary is the mean and 95 % t-interval over seeds of the final gold reward (mean of the last 10
iterations of a seed). Each run is one cell (``run_cell``, the sweep contract's signature);
finished cells are skipped on a rerun, and the results file is rewritten after every cell.

    python benchmarks/aparl_lm.py                       # 5 seeds, all arms
    python benchmarks/aparl_lm.py --seeds 2 --iterations 10 --out /tmp/x.json   # a smoke run
    python benchmarks/aparl_lm.py --bandit              # the exact softmax-bandit study (s)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

ARMS = {
    "classic": {"correction": "none"},
    "aparl (β=0.05)": {"correction": "aparl", "beta": 0.05},
    "aparl (β=1)": {"correction": "aparl", "beta": 1.0},
    "aparl (β=10)": {"correction": "aparl", "beta": 10.0},
}
BASE = dict(
    task="style", method="rloo", kl_penalty="k1", kl_penalty_coef=0.05, prompts_per_iteration=8,
    num_samples=4, max_new_tokens=48, micro_batch_size=16, lr=3e-3,
)  # fmt: skip
REFIT = dict(labels_per_iteration=8, epochs=50, lr=1e-2, head_hidden=64, teacher={"kind": "oracle"})


def run_cell(cell, out_dir: Path) -> dict:
    """One run: ``cell.method`` an arm of :data:`ARMS`, ``cell.params`` the loop's settings
    (``iterations``, ``task_cache_dir``). Returns the sweep contract's dict."""
    import torch

    from unialign.lm.online import train_lm_online
    from unialign.lm.online_config import LMOnlineConfig

    torch.set_num_threads(1)
    p = dict(cell.params)
    cfg = LMOnlineConfig(
        **BASE, iterations=p["iterations"], seed=cell.seed, task_cache_dir=p["task_cache_dir"],
        output_dir=str(out_dir / "run"), refit={**REFIT, **ARMS[cell.method]},
    )  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    train_lm_online(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = [json.loads(x) for x in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    gold = [r["eval/gold_reward"] for r in rows]
    last = rows[-10:]

    def mean_of(key: str) -> float:
        vals = [r[key] for r in last if isinstance(r.get(key), int | float)]
        return statistics.fmean(vals) if vals else None

    return {
        "score": statistics.fmean(gold[-10:]),
        "curve": [[r["refit/labels_used"], r["eval/gold_reward"]] for r in rows],
        "x_label": "teacher labels used", "y_label": "gold reward of the policy's samples",
        "metrics": {
            "gold_first10": statistics.fmean(gold[:10]),
            "rm_gold_corr_last10": mean_of("refit/gold_corr"),
            "rm_new_label_accuracy_last10": mean_of("refit/new_label_accuracy"),
            "rm_train_accuracy_last10": mean_of("refit/train_accuracy"),
            "rm_score_last10": mean_of("judge/score"),
            "implicit_norm_last10": mean_of("refit/implicit_norm"),
            "invalid_share_last10": mean_of("eval/style/invalid"),
            "wall_s": wall, "cpu_s": cpu,
        },
    }  # fmt: skip


def bandit_study(seeds: int = 10, steps: int = 300, lr: float = 0.05) -> dict:
    """The same two gradients with exact expectations: a softmax bandit of 20 arms (the policy
    is π*_ν ∝ π_ref exp(r_ν/β) exactly, the lower level solved in closed form), a reward model
    r_ν = w₂·tanh(W₁φ) on 6 random features per arm, an oracle teacher of a random gold reward.
    ``steps`` Adam steps (lr ``lr``) ascend G(ν) = Σ π*(y¹)π*(y²) ū_ν(y¹, y²) either through
    π* too (A-PARL: the exact hypergradient, direct + implicit term) or with π* held fixed at
    each step (classic: the direct term only). Reports E_{π*}[gold] and G at the end."""
    import torch

    from unialign.lm.refit_aparl import pair_log_likelihood

    def run(beta: float, full: bool, seed: int) -> tuple[float, float, float, float]:
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(20, 6, generator=g, dtype=torch.float64)
        log_ref = torch.log_softmax(torch.randn(20, generator=g, dtype=torch.float64), 0)
        gold = torch.randn(20, generator=g, dtype=torch.float64)
        w1 = (torch.randn(16, 6, generator=g, dtype=torch.float64) / 6**0.5).requires_grad_()
        w2 = (torch.randn(16, generator=g, dtype=torch.float64) / 4).requires_grad_()
        label = (gold[:, None] > gold[None, :]).double() + 0.5 * (gold[:, None] == gold).double()
        opt = torch.optim.Adam([w1, w2], lr=lr)
        for _ in range(steps + 1):
            r = torch.tanh(feats @ w1.T) @ w2
            pi = torch.softmax(log_ref + r / beta, 0)
            u = pair_log_likelihood(r[:, None], r[None, :], label)
            pd = pi.detach()
            weights = pi[:, None] * pi[None, :] if full else pd[:, None] * pd[None, :]
            opt.zero_grad()
            (-(weights * u).sum()).backward()
            opt.step()
        G = float((pd[:, None] * pd[None, :] * u.detach()).sum())
        return float((pd * gold).sum()), G, float(gold.max()), float((log_ref.exp() * gold).sum())

    out = {"settings": {"arms": 20, "features": 6, "hidden": 16, "steps": steps, "lr": lr,
                        "seeds": seeds, "teacher": "oracle"}, "rows": []}  # fmt: skip
    for beta in (0.05, 0.2, 1.0):
        for name, full in (("classic", False), ("aparl", True)):
            res = [run(beta, full, s) for s in range(seeds)]
            out["rows"].append({
                "beta": beta, "arm": name, "gold": interval([x[0] for x in res]),
                "G": interval([x[1] for x in res]), "best_arm_gold": interval([x[2] for x in res]),
                "reference_gold": interval([x[3] for x in res]),
            })  # fmt: skip
            r = out["rows"][-1]
            print(f"bandit β={beta:<5} {name:8s} gold {r['gold']['mean']:+.3f} ± "
                  f"{r['gold']['ci95']:.3f}  G {r['G']['mean']:+.3f} ± {r['G']['ci95']:.3f}")  # fmt: skip
    return out


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _clean(x):
    """NaN and infinities as null, so that the results file is standard JSON."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x if not isinstance(x, float) or math.isfinite(x) else None


def interval(xs: list[float]) -> dict:
    """Mean and 95 % t-interval half-width (the sweep report's), plus the values."""
    from unialign.sweep.stats import mean_ci95

    return {**mean_ci95(xs), "values": xs}


def summarise(cells: dict[str, dict]) -> dict:
    by_arm: dict[str, list[dict]] = {}
    for res in cells.values():
        by_arm.setdefault(res["cell"]["method"], []).append(res)
    table, curves = {}, {}
    for arm, rs in by_arm.items():
        rs = sorted(rs, key=lambda r: r["cell"]["seed"])
        table[arm] = {"final_gold": interval([r["score"] for r in rs])}
        for k in rs[0]["metrics"]:
            vals = [v for r in rs if _finite(v := r["metrics"][k])]
            if vals:
                table[arm][k] = interval(vals)
        n = min(len(r["curve"]) for r in rs)
        curves[arm] = [
            {"labels": rs[0]["curve"][i][0], **interval([r["curve"][i][1] for r in rs])}
            for i in range(n)
        ]
    return {"table": table, "curves": curves}


def plot(summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, pts in summary["curves"].items():
        x = [p["labels"] for p in pts]
        m = [p["mean"] for p in pts]
        h = [p["ci95"] or 0.0 for p in pts]
        ax.plot(x, m, label=f"{arm} (n={pts[0]['n']})")
        ax.fill_between(x, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)], alpha=0.2)
    ax.set_xlabel("teacher labels used")
    ax.set_ylabel("gold reward of the policy's samples")
    ax.set_title("RLOO + refit reward model: classic vs A-PARL (style task)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms of ARMS")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/aparl_lm.json"))
    ap.add_argument("--work", default=str(ROOT / "runs/aparl_lm"), help="cell directories")
    ap.add_argument("--task-cache-dir", default=None)
    ap.add_argument(
        "--bandit",
        action="store_true",
        help="only the exact softmax-bandit study (writes <out stem>_bandit.json)",
    )
    args = ap.parse_args(argv)
    if args.bandit:
        path = Path(args.out).with_name(Path(args.out).stem + "_bandit.json")
        cmd = "python " + " ".join(shlex.quote(x) for x in sys.argv)
        path.write_text(json.dumps({"command": cmd, **bandit_study()}, indent=1))
        return 0
    arms = [a for a in args.arms.split(",") if a]
    for a in arms:
        if a not in ARMS:
            ap.error(f"--arms: unknown arm {a!r}; valid: {', '.join(ARMS)}")
    out, work = Path(args.out), Path(args.work)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {"iterations": args.iterations, "task_cache_dir": args.task_cache_dir}
    cells: dict[str, dict] = {}
    header = {
        "command": "python " + " ".join(shlex.quote(x) for x in sys.argv),
        "settings": {"base": BASE, "refit": REFIT, "arms": {a: ARMS[a] for a in arms},
                     "iterations": args.iterations, "seeds": args.seeds},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": 1},
    }  # fmt: skip
    for seed in range(args.seeds):  # interleaved: every arm of a seed before the next seed
        for arm in arms:
            cid = f"{arm}__s{seed}"
            cdir = work / "cells" / cid.replace(" ", "_").replace("(", "").replace(")", "")
            done = cdir / "result.json"
            if done.is_file():
                cells[cid] = json.loads(done.read_text())
            else:
                cell = SimpleNamespace(method=arm, task="style", seed=seed, params=params,
                                       grid={}, cell_id=cid)  # fmt: skip
                load0 = os.getloadavg()
                res = run_cell(cell, cdir)
                res["cell"] = {"method": arm, "seed": seed, "params": params}
                res["loadavg"] = [load0, os.getloadavg()]
                cdir.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(res))
                cells[cid] = res
                print(f"{cid}: final gold {res['score']:.3f}  cpu {res['metrics']['cpu_s']:.0f} s "
                      f"wall {res['metrics']['wall_s']:.0f} s  load {load0[0]:.1f}", flush=True)  # fmt: skip
            summary = summarise(cells)
            out.write_text(json.dumps(_clean({**header, **summary, "cells": cells}), indent=1))
            plot(summary, out.with_suffix(".png"))
    for arm, row in summary["table"].items():
        fg = row["final_gold"]
        print(f"{arm:16s} final gold {fg['mean']:.3f} ± {fg['ci95'] or math.nan:.3f} (n={fg['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
