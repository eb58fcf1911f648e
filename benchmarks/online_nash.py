"""The Nash experiment: online DPO, SPPO, INPO, DNO and Nash-MD on the intransitive style task.

Every method trains the style task's pretrained reference policy with the online loop
(:func:`unialign.lm.online.train_lm_online`) against the task's pairwise judge
(``task:preference``: a 3-cycle over answer styles plus a within-style quality term, whose
style game has the known mixed equilibrium π* = (2/9, 1/3, 4/9)), for several seeds, in
parallel worker processes, under **equal judge-query budgets**:

- online DPO, SPPO, INPO and DNO judge every pair of the K samples of a prompt,
  K(K − 1)/2 comparisons per prompt (online DPO and DNO need them to rank by win rate);
- Nash-MD judges each policy sample against its own mixture sample: K comparisons per prompt.

``--comparisons`` C per iteration fixes the prompts per iteration for each method
(P = C / (K(K − 1)/2), resp. C / K), so every method gets the same number of iterations,
optimizer steps and judge comparisons. A counting wrapper around the judge records the
comparisons each run actually asked for (and the run's feedback store its queries).

After training, each final policy (and the reference) samples ``--eval-samples`` completions
for each of the task's 48 held-out eval prompts (same sampling seed for every policy of a
seed). From those samples: the style distribution, its total-variation distance to π*, its
exploitability max_s P(s ≻ π) − ½ (the style game, invalid answers always lose), the gold
reward, and win rates against the reference and against every other method's final policy of
the same seed, computed two ways: by the judge on index-matched samples (mean P(a ≻ b), quality
term included) and by ``StyleGame.win_rate`` on the two style distributions (styles only).
Means with 95 % t-intervals over seeds. The curves over iterations are the style distribution
of each window of ``--window`` iterations' training samples (the current iterate on train
prompts), pooled and then scored.

Writes ``benchmarks/results/online_nash.json`` (command line, date, seeds, budgets,
hyperparameters, per-run numbers, summaries) and ``online_nash.png``; each run in its own
directory under ``--runs-dir``.

    # the tuning grid on a seed outside the reported ones (no reported seeds: grid only)
    python benchmarks/online_nash.py --tune --tune-seed 100 --seeds --workers 2 \
        --runs-dir runs/bench_online_nash/tune --out runs/bench_online_nash/tuning.json
    # the reported seeds with its picks (the tuning record is copied into the result)
    python benchmarks/online_nash.py --params runs/bench_online_nash/tuning.json \
        --seeds 0 1 2 3 4 --workers 2

(``--tune`` with seeds does both in one call.) Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("online_dpo", "sppo", "inpo", "dno", "nash_md")
REFERENCE = "reference"

#: Samples per prompt. The pair methods compare all K(K-1)/2 pairs; Nash-MD one per sample.
NUM_SAMPLES = {"online_dpo": 4, "sppo": 4, "inpo": 4, "dno": 4, "nash_md": 2}

#: Settings shared by every run (the loop's fields).
COMMON: dict[str, Any] = dict(
    task="style",
    judge="task:preference",
    max_new_tokens=64,
    micro_batch_size=16,
    generation_batch_size=64,
    save_every=0,
)

#: Starting point: the defaults of docs/lm-online.md (its style-task examples for lr and
#: SPPO's η); ``--set`` and ``--tune`` change them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "online_dpo": dict(lr=1e-3, beta=0.1, pairs="best_worst"),
    "sppo": dict(lr=1e-3, loss_params={"eta": 10.0}),
    "inpo": dict(lr=1e-3, pairs="best_worst", loss_params={"eta": 5.0, "tau": 0.1}),
    "dno": dict(lr=1e-3, beta=0.1, margin_threshold=0.0),
    "nash_md": dict(lr=1e-3, mixture_coef=0.5, loss_params={"kl_coef": 0.1}),
}

#: The tuning grid (one seed outside the reported ones): the docs' settings, a smaller learning
#: rate, and one method knob. With one optimizer step per iteration the iterate-based methods
#: (SPPO, INPO, DNO) start each step at ℓ_θ = ℓ_t, where Adam normalizes η's scale away; more
#: steps per iteration (update_epochs) let them approach each iteration's target.
TUNE_GRID: dict[str, list[dict[str, Any]]] = {
    "online_dpo": [{}, {"lr": 3e-4}, {"pairs": "all"}],
    "sppo": [{}, {"lr": 3e-4}, {"update_epochs": 4}],
    "inpo": [{}, {"lr": 3e-4}, {"update_epochs": 4}],
    "dno": [{}, {"lr": 3e-4}, {"update_epochs": 4}],
    "nash_md": [{}, {"lr": 3e-4}, {"loss_params": {"kl_coef": 0.5}}],
}


# ---------------------------------------------------------------------------------------------
# budgets
# ---------------------------------------------------------------------------------------------
def comparisons_per_prompt(method: str, k: int) -> int:
    """Judge comparisons one prompt costs: all pairs of its K samples, or K for Nash-MD."""
    return k if method == "nash_md" else k * (k - 1) // 2


def budget(method: str, comparisons: int, iterations: int) -> dict[str, int]:
    """Prompts per iteration and the total comparisons of one run of ``method``."""
    k = NUM_SAMPLES[method]
    per_prompt = comparisons_per_prompt(method, k)
    if comparisons % per_prompt:
        raise SystemExit(
            f"--comparisons {comparisons} is not a multiple of {method}'s {per_prompt} "
            f"comparisons per prompt (K = {k}); use a multiple of 6"
        )
    p = comparisons // per_prompt
    return dict(num_samples=k, prompts_per_iteration=p, comparisons_per_prompt=per_prompt,
                comparisons_per_iteration=p * per_prompt,
                comparisons_total=p * per_prompt * iterations)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# one run (a worker process)
# ---------------------------------------------------------------------------------------------
class CountingPairJudge:
    """The task's pairwise judge, counting the comparisons it is asked for."""

    def __init__(self, fn, name: str = "style-task-preference"):
        self.fn, self.name, self.count = fn, name, 0

    def compare(self, prompts, completions_a, completions_b) -> list[float]:
        self.count += len(prompts)
        return list(self.fn(prompts, completions_a, completions_b))


def _task(task_size: str, cache_dir: str | None):
    from unialign.tasks import ReferenceConfig, style_task

    ref = ReferenceConfig.small() if task_size == "small" else ReferenceConfig()
    return style_task(ref, cache_dir=cache_dir, progress=False)


def _eval_samples(model_dir: str, task, n_samples: int, seed: int, max_new_tokens: int) -> dict:
    """``n_samples`` completions for every held-out eval prompt and their task metrics."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unialign.tasks import sample_completions

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = task.prompts("eval")
    samples = sample_completions(model, tok, prompts, num_samples=n_samples,
                                 seed=10_000 + seed, max_new_tokens=max_new_tokens)  # fmt: skip
    flat_p = [p for p, s in zip(prompts, samples) for _ in s]
    flat_c = [c for s in samples for c in s]
    return {"prompts": flat_p, "completions": flat_c, "metrics": task.evaluate(flat_p, flat_c)}


def _one_run(job: dict) -> dict:
    """Train one (method, seed) — or only sample the reference — and evaluate it."""
    import torch

    torch.set_num_threads(1)
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    if job.get("redirect"):  # a pool worker: its progress bars go to the run's log
        log = open(out / "worker.log", "w")  # noqa: SIM115 - held for the process's life
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    t0 = time.perf_counter()
    task = _task(job["task_size"], job["cache_dir"])
    result: dict[str, Any] = {k: job[k] for k in ("method", "seed", "tag", "params")}
    if job["method"] == REFERENCE:
        model_dir = str(task.reference.path)
    else:
        from unialign.lm.online import train_lm_online
        from unialign.lm.online_config import LMOnlineConfig

        for stale in ("feedback.sqlite", "feedback.sqlite-wal", "feedback.sqlite-shm",
                      "metrics.jsonl"):  # fmt: skip
            (out / stale).unlink(missing_ok=True)
        cfg = LMOnlineConfig(**COMMON, **job["params"], method=job["method"], seed=job["seed"],
                             iterations=job["iterations"], task_size=job["task_size"],
                             task_cache_dir=job["cache_dir"], output_dir=str(out),
                             num_samples=job["budget"]["num_samples"],
                             prompts_per_iteration=job["budget"]["prompts_per_iteration"])  # fmt: skip
        judge = CountingPairJudge(task.judge.probabilities)
        summary = train_lm_online(cfg, judge=judge)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
        result["comparisons_counted"] = judge.count
        result["store_queries"] = summary["feedback"]["queries"]
        result["train_wall_s"] = summary["wall_s"]
        result["curve"] = [
            {k: r[k] for k in r if k == "step" or k.startswith(("eval/", "online/", "judge/"))}
            for r in rows
        ]
        model_dir = summary["outputs"]["model"]
    ev = _eval_samples(model_dir, task, job["eval_samples"], job["seed"], COMMON["max_new_tokens"])
    (out / "eval_samples.json").write_text(json.dumps(ev))
    result["final"] = ev["metrics"]
    result["samples_file"] = str(out / "eval_samples.json")
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    return result


# ---------------------------------------------------------------------------------------------
# statistics and the report
# ---------------------------------------------------------------------------------------------
def mean_ci(values) -> dict[str, float | int]:
    """Mean and the half-width of its 95 % t-interval (NaNs left out)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": math.nan, "ci95": math.nan, "n": 0}
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)) if (
        x.size > 1) else math.nan  # fmt: skip
    return {"mean": float(x.mean()), "ci95": half, "n": int(x.size)}


def _style_dist(metrics: dict, styles) -> np.ndarray:
    return np.array([metrics[f"eval/style/{s}"] for s in (*styles, "invalid")])


def window_curve(curve: list[dict], game, styles, window: int) -> list[dict]:
    """Pool each window's training samples and score their style distribution."""
    out = []
    for start in range(0, len(curve), window):
        rows = curve[start : start + window]
        if len(rows) < window:
            break
        n = np.array([r["online/samples"] for r in rows], dtype=np.float64)
        dists = np.stack([_style_dist(r, styles) for r in rows])
        pooled = (n[:, None] * dists).sum(0) / n.sum()
        out.append({"iteration": rows[-1]["step"], "exploitability": game.exploitability(pooled),
                    "equilibrium_tv": game.distance(pooled)})  # fmt: skip
    return out


def cross_win_rates(runs: list[dict], task, policies: list[str]) -> dict:
    """Per seed, every ordered pair of final policies: judge win rate on index-matched eval
    samples and the style game's win rate on their style distributions."""
    from unialign.tasks import win_rate

    styles = task.language.styles
    by = {(r["method"], r["seed"]): r for r in runs}
    samples = {key: json.loads(Path(r["samples_file"]).read_text()) for key, r in by.items()}
    seeds = sorted({r["seed"] for r in runs})
    out: dict[str, dict] = {}
    for a, b in itertools.product(policies, policies):
        if a == b:
            continue
        judge_wr, game_wr = [], []
        for s in seeds:
            if (a, s) not in samples or (b, s) not in samples:
                continue
            sa, sb = samples[(a, s)], samples[(b, s)]
            judge_wr.append(win_rate(task.judge, sa["prompts"], sa["completions"],
                                     sb["completions"]))  # fmt: skip
            game_wr.append(task.game.win_rate(_style_dist(sa["metrics"], styles),
                                              _style_dist(sb["metrics"], styles)))  # fmt: skip
        out[f"{a}|{b}"] = {"judge": judge_wr, "game": game_wr,
                           "judge_summary": mean_ci(judge_wr), "game_summary": mean_ci(game_wr)}  # fmt: skip
    return out


def summarize(runs: list[dict], task, policies: list[str], window: int) -> dict:
    styles = task.language.styles
    game = task.game
    summary: dict[str, Any] = {}
    for m in policies:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        fin = [r["final"] for r in rs]
        row = {
            "seeds": [r["seed"] for r in rs],
            "exploitability": mean_ci([f["eval/exploitability"] for f in fin]),
            "equilibrium_tv": mean_ci([f["eval/equilibrium_tv"] for f in fin]),
            "gold_reward": mean_ci([f["eval/gold_reward"] for f in fin]),
            "style": {
                s: mean_ci([f[f"eval/style/{s}"] for f in fin]) for s in (*styles, "invalid")
            },
        }
        if m != REFERENCE:
            curves = [window_curve(r["curve"], game, styles, window) for r in rs]
            n = min(len(c) for c in curves)
            row["curve"] = [
                {"iteration": curves[0][i]["iteration"],
                 "exploitability": mean_ci([c[i]["exploitability"] for c in curves]),
                 "equilibrium_tv": mean_ci([c[i]["equilibrium_tv"] for c in curves])}
                for i in range(n)
            ]  # fmt: skip
            row["comparisons_counted"] = sorted({r["comparisons_counted"] for r in rs})
            row["store_queries"] = sorted({r["store_queries"] for r in rs})
            row["train_wall_s"] = mean_ci([r["train_wall_s"] for r in rs])
        summary[m] = row
    return summary


def plot(path: Path, summary: dict, cross: dict, task, policies: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = task.language.styles
    eq = task.game.equilibrium()
    methods = [m for m in policies if m != REFERENCE and m in summary]
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.4))
    for ax, key, title in ((axes[0], "exploitability", "exploitability of the training samples"),
                           (axes[1], "equilibrium_tv", "TV to π* of the training samples")):  # fmt: skip
        for m in methods:
            c = summary[m]["curve"]
            x = [p["iteration"] for p in c]
            y = np.array([p[key]["mean"] for p in c])
            h = np.nan_to_num(np.array([p[key]["ci95"] for p in c]))
            ax.plot(x, y, color=colors[m], label=m)
            ax.fill_between(x, y - h, y + h, color=colors[m], alpha=0.15)
        if REFERENCE in summary:
            ax.axhline(summary[REFERENCE][key]["mean"], color="k", ls="--", lw=1,
                       label="reference (eval)")  # fmt: skip
        ax.set_title(title + " (windows, 95 % CI)", fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    # final style distributions against π*
    ax = axes[2]
    bars = [m for m in policies if m in summary]
    cats = (*styles, "invalid")
    width = 0.8 / (len(bars) + 1)
    for i, m in enumerate(bars):
        mu = [summary[m]["style"][s]["mean"] for s in cats]
        ci = np.nan_to_num([summary[m]["style"][s]["ci95"] for s in cats])
        ax.bar(np.arange(len(cats)) + i * width, mu, width, yerr=ci, capsize=2,
               color="0.6" if m == REFERENCE else colors[m], label=m)  # fmt: skip
    ax.bar(np.arange(len(cats)) + len(bars) * width, [*eq, 0.0], width, color="k", label="π*")
    ax.set_xticks(np.arange(len(cats)) + 0.4, cats)
    ax.set_title("final style shares on held-out prompts (95 % CI)", fontsize=9)
    ax.legend(fontsize=7)
    # judge win rates, row beats column
    ax = axes[3]
    mat = np.full((len(bars), len(bars)), np.nan)
    for i, a in enumerate(bars):
        for j, b in enumerate(bars):
            if a != b and f"{a}|{b}" in cross:
                mat[i, j] = cross[f"{a}|{b}"]["judge_summary"]["mean"]
    im = ax.imshow(mat, cmap="coolwarm", vmin=0.3, vmax=0.7)
    for i, j in itertools.product(range(len(bars)), range(len(bars))):
        if math.isfinite(mat[i, j]):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(bars)), bars, rotation=45, fontsize=7)
    ax.set_yticks(range(len(bars)), bars, fontsize=7)
    ax.set_title("judge win rate of row vs column (held-out)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def _parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """``method.field=yaml`` overrides (``all.field=...`` for every method)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        method, _, field = key.partition(".")
        if not field or method not in (*METHODS, "all"):
            raise SystemExit(f"--set {item!r}: expected method.field=value")
        for m in METHODS if method == "all" else (method,):
            out.setdefault(m, {})[field] = yaml.safe_load(value)
    return out


def _run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    """Run the jobs in ``workers`` processes (in this process when ``workers`` is 1)."""
    results = []

    def report(r: dict) -> None:
        fe = r["final"]
        print(f"  {r['tag']:<28} exploitability {fe['eval/exploitability']:.3f}  "
              f"TV {fe['eval/equilibrium_tv']:.3f}  {r['wall_s']:.0f} s", flush=True)  # fmt: skip
        results.append(r)

    if workers <= 1:
        for j in jobs:
            report(_one_run(j))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for r in pool.map(_one_run, [dict(j, redirect=True) for j in jobs]):
            report(r)
    return results


def _jobs(args, methods, seeds, params, tag_extra="") -> list[dict]:
    jobs = []
    for seed in seeds:
        if REFERENCE in methods:
            jobs.append(dict(method=REFERENCE, seed=seed, params={}, tag=f"reference-s{seed}",
                             out=str(Path(args.runs_dir) / f"reference-s{seed}")))  # fmt: skip
        for m in methods:
            if m == REFERENCE:
                continue
            tag = f"{m}{tag_extra}-s{seed}"
            jobs.append(dict(method=m, seed=seed, params=params[m], tag=tag,
                             out=str(Path(args.runs_dir) / tag),
                             budget=budget(m, args.comparisons, args.iterations)))  # fmt: skip
    for j in jobs:
        j.update(iterations=args.iterations, task_size=args.task_size, cache_dir=args.cache_dir,
                 eval_samples=args.eval_samples)  # fmt: skip
    # longest first: Nash-MD samples twice per judged pair
    return sorted(jobs, key=lambda j: (j["method"] != "nash_md", j["method"] == REFERENCE))


def tune(args, methods, base) -> dict:
    """Each method's grid on the tuning seed; pick the lowest final exploitability."""
    jobs = []
    for m in methods:
        for i, change in enumerate(TUNE_GRID[m]):
            jobs += _jobs(args, [m], [args.tune_seed], {m: {**base[m], **change}},
                          tag_extra=f"-tune{i}")  # fmt: skip
    results = _run_jobs(jobs, args.workers)
    picks, table = {}, []
    for m in methods:
        rows = [r for r in results if r["method"] == m]
        for r in rows:
            fe = r["final"]
            table.append({"method": m, "params": r["params"],
                          "exploitability": fe["eval/exploitability"],
                          "equilibrium_tv": fe["eval/equilibrium_tv"],
                          "style": {k[11:]: v for k, v in fe.items()
                                    if k.startswith("eval/style/")},
                          "train_wall_s": r["train_wall_s"]})  # fmt: skip
        picks[m] = min(rows, key=lambda r: r["final"]["eval/exploitability"])["params"]
    return {"seed": args.tune_seed, "iterations": args.iterations, "grid": TUNE_GRID,
            "criterion": "lowest final exploitability on held-out prompts (one seed)",
            "results": table, "picks": picks}  # fmt: skip


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument(
        "--seeds",
        nargs="*",
        type=int,
        default=[0, 1, 2, 3, 4],
        help="reported seeds (none with --tune: only the tuning grid)",
    )
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument(
        "--comparisons",
        type=int,
        default=48,
        help="judge comparisons per iteration for every method (a multiple of 6)",
    )
    ap.add_argument("--eval-samples", type=int, default=16, help="samples per eval prompt")
    ap.add_argument("--window", type=int, default=5, help="iterations pooled per curve point")
    ap.add_argument("--task-size", choices=("small", "default"), default="default")
    ap.add_argument("--cache-dir", default=None, help="task reference cache (default: the task's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs-dir", default="runs/bench_online_nash")
    ap.add_argument("--out", default="benchmarks/results/online_nash.json")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="hyperparameter overrides, e.g. sppo.lr=3e-3 'nash_md.loss_params={kl_coef: 0.02}'",
    )
    ap.add_argument(
        "--params",
        default=None,
        help="hyperparameters: a JSON file {method: {field: value}}, or the output "
        "of a --tune run (its picks are used and its tuning record is copied)",
    )
    ap.add_argument(
        "--tune",
        action="store_true",
        help="first run TUNE_GRID on --tune-seed, then the seeds with the picks",
    )
    ap.add_argument("--tune-seed", type=int, default=100)
    args = ap.parse_args(argv)
    if args.tune and args.tune_seed in args.seeds:
        raise SystemExit("--tune-seed must not be one of the reported --seeds")
    t_start = time.perf_counter()
    methods = list(args.methods)
    params = {m: dict(DEFAULTS[m]) for m in METHODS}
    tuning = None
    if args.params:
        loaded = json.loads(Path(args.params).read_text())
        if loaded.get("tuning"):
            tuning = dict(loaded["tuning"], command=loaded["command"], date=loaded["date"],
                          wall_s=loaded["wall_s"])  # fmt: skip
            loaded = loaded["tuning"]["picks"]
        for m, p in loaded.items():
            params[m] = dict(p)
    for m, p in _parse_set(args.set).items():
        params[m].update(p)
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    task = _task(args.task_size, args.cache_dir)  # pretrain once, before the workers
    budgets = {m: budget(m, args.comparisons, args.iterations) for m in methods}

    if args.tune:
        print(f"tuning on seed {args.tune_seed}", flush=True)
        tuning = tune(args, methods, params)
        params.update(tuning["picks"])
    runs, cross, summary, png = [], {}, {}, None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    policies = [REFERENCE, *methods]
    if args.seeds:
        print(f"runs: {len(methods)} methods × {len(args.seeds)} seeds", flush=True)
        runs = _run_jobs(_jobs(args, policies, args.seeds, params), args.workers)
        cross = cross_win_rates(runs, task, policies)
        summary = summarize(runs, task, policies, args.window)
        for r in runs:  # the curves are summarized; keep per-run numbers compact
            if "curve" in r:
                r["curve_windows"] = window_curve(r.pop("curve"), task.game,
                                                  task.language.styles, args.window)  # fmt: skip
        png = out.with_suffix(".png")
        plot(png, summary, cross, task, policies)
    script = sys.argv[0] if argv is None else "benchmarks/online_nash.py"
    record = {
        "command": "python " + shlex.join([script, *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git_commit(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "seeds": args.seeds,
        "iterations": args.iterations,
        "task": {
            "size": args.task_size,
            "reference": str(task.reference.path),
            "reference_parameters": task.reference.info.get("parameters"),
            "equilibrium": task.game.equilibrium().tolist(),
            "styles": list(task.language.styles),
            "eval_prompts": len(task.prompts("eval")),
            "eval_samples_per_prompt": args.eval_samples,
        },
        "budgets": budgets,
        "common": COMMON,
        "hyperparameters": {m: params[m] for m in methods},
        "tuning": tuning,
        "win_rate_methods": {
            "judge": "mean P(a ≻ b) of the task's judge over index-matched held-out samples "
            "(same prompt and sample index; styles and quality)",
            "game": "StyleGame.win_rate on the two style distributions (styles only; invalid "
            "answers always lose)",
        },
        "summary": summary,
        "win_rates": cross,
        "runs": runs,
        "plot": None if png is None else str(png),
    }
    out.write_text(json.dumps(record, indent=1, default=float))
    print(f"wrote {out} and {png} in {record['wall_s']:.0f} s", flush=True)
    return record


if __name__ == "__main__":
    main()
