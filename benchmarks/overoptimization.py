"""Reward over-optimization on the style task: a single proxy reward model against ensembles.

The synthetic set-up of Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization"
(arXiv 2210.10760), with the ensemble objectives of Coste et al. 2024, "Reward Model Ensembles
Help Mitigate Overoptimization" (arXiv 2310.02743), at the size of the hub-free style task
(``docs/tasks.md``): the task's hidden, humped **gold reward** plays the gold reward model.

Per seed s:

1. **labels** — ``--labels`` N prompts drawn (with replacement) from the task's train prompts,
   two completions each sampled from the reference policy, labelled by the B-Pref *oracle*
   teacher over the gold reward (the higher gold reward wins; exact ties are dropped). A second
   set of pairs on the held-out eval prompts measures the proxies' accuracy.
2. **proxies** — ``--members`` K Bradley–Terry reward models (``unialign train rm``), each the
   reference LM with a scalar head, fine-tuned in full on the same N labels with its own seed
   (head init and data order; no bootstrap: Coste et al. vary the seed only). Each member's
   scores are standardized with the mean and std of its scores on the labelled reference
   completions (as both papers normalize their reward models), so the members share a scale
   and min/variance over members are meaningful.
3. **policies** — the reference policy optimized by RLOO (``train lm-online --method rloo``)
   against one objective per run, all on the same standardized member scores z_1..z_K:

       single   z_1                        (member 1 alone: the same training as every member)
       mean     (1/K) Σ_k z_k
       min      min_k z_k                  (worst-case optimization, WCO)
       uwo      mean_k z_k − λ·Var_k z_k   (uncertainty-weighted optimization, λ = --uwo-coef)

   with a k1 KL penalty of negligible weight (``--kl-coef``, default 1e-3: present only so that
   the loop computes ℓ_ref and logs ``rl/kl``; it does not hold the policy back at this scale).
4. **evaluation** — every iteration samples P·K fresh completions from the current policy
   before updating on them; on those samples the loop logs the gold reward
   (``eval/gold_reward``), the objective (``judge/score``) and the k1 estimate of
   KL(π‖π_ref) summed over tokens (``rl/kl``), and this script's judge wrapper records every
   member's standardized score, so the single-proxy runs are also scored by the members they
   did not optimize. Windows of ``--window`` iterations are pooled; curves are means with 95 %
   t-intervals over seeds, plotted against the seeds' mean KL.

Reported per objective: the peak of the gold curve (per seed, then mean ± CI), the KL at the
peak, the final gold reward and its drop from the peak, and the proxies' held-out accuracy.

    nice -n 5 python benchmarks/overoptimization.py              # resumable: finished parts skip
    # ablation: member k fine-tunes the reference pretrained with seed k (member 1 is the same
    # as above, so its single-proxy runs are the main experiment's)
    nice -n 5 python benchmarks/overoptimization.py --member-trunks pretrain_seeds \
        --seeds 0 1 2 --objectives mean min uwo --runs-dir runs/bench_overopt_trunks \
        --out benchmarks/results/overoptimization_pretrain_seeds.json

Writes ``benchmarks/results/overoptimization.json`` (after every finished run) and
``overoptimization.png``; runs live under ``--runs-dir``. Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from online_nash import _git_commit, _task, mean_ci  # noqa: E402  (shared benchmark helpers)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("single", "mean", "min", "uwo")


# ---------------------------------------------------------------------------------------------
# 1. gold labels on reference samples
# ---------------------------------------------------------------------------------------------
def label_pairs(task, model, tokenizer, split: str, n: int, seed: int, max_new_tokens: int):
    """N preference rows ``{prompt, chosen, rejected}`` on ``split`` prompts: two reference
    samples per prompt, labelled by the oracle teacher over the gold reward (ties and pairs
    with an empty completion dropped)."""
    from unialign.feedback.teachers import Teacher, TeacherConfig
    from unialign.tasks import sample_completions, teacher_labels

    rng = np.random.default_rng(seed)
    pool = task.prompts(split)
    prompts = [pool[i] for i in rng.integers(0, len(pool), n)]
    pairs = sample_completions(model, tokenizer, prompts, num_samples=2, seed=seed,
                               max_new_tokens=max_new_tokens)  # fmt: skip
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    out = teacher_labels(Teacher(TeacherConfig(kind="oracle")), task.gold_reward, prompts, a, b,
                         rng)  # fmt: skip
    rows = []
    for p, x, y, lab in zip(prompts, a, b, out.labels.tolist()):
        if lab in (0.0, 1.0) and x.strip() and y.strip():
            rows.append({"prompt": p, "chosen": x if lab == 1.0 else y,
                         "rejected": y if lab == 1.0 else x})  # fmt: skip
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# 2. the proxies
# ---------------------------------------------------------------------------------------------
def train_proxies(task, seed_dir: Path, seed: int, args, trunks: list[str]) -> dict:
    """Labels, K members (member k fine-tunes ``trunks[k]``) and their standardization for one
    seed; skipped when done."""
    done = seed_dir / "proxies.json"
    if done.is_file():
        return json.loads(done.read_text())
    from unialign.lm.rm import train_rm
    from unialign.lm.rm_config import RMTrainConfig

    seed_dir.mkdir(parents=True, exist_ok=True)
    model, tok = task.reference.load()
    train = label_pairs(task, model, tok, "train", args.labels, 1000 + seed, args.max_new_tokens)
    held = label_pairs(task, model, tok, "eval", args.eval_pairs, 2000 + seed, args.max_new_tokens)
    _write_jsonl(seed_dir / "labels.jsonl", train)
    _write_jsonl(seed_dir / "eval_pairs.jsonl", held)
    members = []
    for k in range(args.members):
        cfg = RMTrainConfig(
            model=trunks[k], train_data=str(seed_dir / "labels.jsonl"),
            eval_data=str(seed_dir / "eval_pairs.jsonl"), lr=args.rm_lr, epochs=args.rm_epochs,
            batch_size=16, schedule="linear", max_length=128, precision="fp32",
            seed=100 * seed + k, output_dir=str(seed_dir / f"rm{k}"),
        )  # fmt: skip
        summary = train_rm(cfg)
        members.append({"path": summary["outputs"]["model"], "seed": cfg.seed, "trunk": trunks[k],
                        "eval": summary["eval"], "wall_s": summary["wall_s"]})  # fmt: skip
    # standardization on the labelled reference completions
    from unialign.feedback.reward_models import RewardModelJudge

    rm = RewardModelJudge([m["path"] for m in members], batch_size=64, max_length=128,
                          device="cpu")  # fmt: skip
    prompts = [r["prompt"] for r in train for _ in (0, 1)]
    texts = [r[c] for r in train for c in ("chosen", "rejected")]
    raw = rm.member_scores(prompts, texts)
    for m, row in zip(members, raw):
        m["mu"], m["sigma"] = float(row.mean()), float(row.std())
    z = (raw - raw.mean(1, keepdim=True)) / raw.std(1, keepdim=True)
    gold = np.asarray(task.gold_reward(prompts, texts))
    info = {
        "train_pairs": len(train), "eval_pairs": len(held), "members": members,
        "member_gold_corr_on_labels": [float(np.corrcoef(zz.numpy(), gold)[0, 1]) for zz in z],
        "member_pairwise_corr": float(np.mean([np.corrcoef(z[i], z[j])[0, 1]
                                               for i in range(len(z)) for j in range(i)])),
        "label_gold_mean": float(gold.mean()),
    }  # fmt: skip
    done.write_text(json.dumps(info, indent=2))
    return info


class ProxyJudge:
    """A ScoreJudge over K standardized reward-model members, aggregated by ``objective``
    (see the module docstring); keeps each call's member means for the report.

    Args:
        member_scores: ``(prompts, completions) -> [K, N]`` raw member scores.
        mu, sigma: ``[K]`` each member's mean and std on the labelled reference completions.
        objective: ``single`` (member 1), ``mean``, ``min`` or ``uwo``.
        uwo_coef: λ of ``uwo`` (mean − λ·population variance over members).
    """

    def __init__(self, member_scores, mu, sigma, objective: str, uwo_coef: float) -> None:
        import torch

        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.member_scores = member_scores
        self.mu = torch.as_tensor(mu, dtype=torch.float32)[:, None]
        self.sigma = torch.as_tensor(sigma, dtype=torch.float32)[:, None]
        self.objective, self.uwo_coef = objective, uwo_coef
        self.calls: list[dict] = []

    @classmethod
    def from_proxies(cls, proxies: dict, objective: str, uwo_coef: float) -> ProxyJudge:
        """The judge over the members :func:`train_proxies` wrote."""
        from unialign.feedback.reward_models import RewardModelJudge

        members = proxies["members"]
        rm = RewardModelJudge([m["path"] for m in members], batch_size=64, max_length=128,
                              device="cpu")  # fmt: skip
        return cls(rm.member_scores, [m["mu"] for m in members], [m["sigma"] for m in members],
                   objective, uwo_coef)  # fmt: skip

    @property
    def name(self) -> str:
        return f"proxy-{self.objective}"

    def standardized(self, prompts, completions):
        """``[K, N]`` standardized member scores z_k."""
        return (self.member_scores(prompts, completions) - self.mu) / self.sigma

    def aggregate(self, z):
        from unialign.losses.reward import ensemble_mean, ensemble_min, ensemble_uwo

        if self.objective == "single":
            return z[0]
        if self.objective == "mean":
            return ensemble_mean(z)
        if self.objective == "min":
            return ensemble_min(z)
        return ensemble_uwo(z, coef=self.uwo_coef)

    def score(self, prompts, completions) -> list[float]:
        z = self.standardized(prompts, completions)
        scores = self.aggregate(z)
        self.calls.append({"members": z.mean(1).tolist(), "ensemble_mean": float(z.mean()),
                           "member_std": float(z.std(0, correction=0).mean()),
                           "objective": float(scores.mean()), "n": z.shape[1]})  # fmt: skip
        return scores.tolist()


# ---------------------------------------------------------------------------------------------
# 3. one policy run
# ---------------------------------------------------------------------------------------------
def run_policy(proxies: dict, objective: str, seed: int, out: Path, args) -> dict:
    """RLOO against one objective; the per-iteration curve. Skipped when ``result.json``
    exists; an unfinished run starts again from scratch."""
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    import shutil

    import torch

    from unialign.lm.online import train_lm_online
    from unialign.lm.online_config import LMOnlineConfig

    torch.set_num_threads(1)
    shutil.rmtree(out, ignore_errors=True)
    cfg = LMOnlineConfig(
        task="style", task_size=args.task_size, task_cache_dir=args.cache_dir, method="rloo",
        iterations=args.iterations, prompts_per_iteration=args.prompts, num_samples=args.samples,
        max_new_tokens=args.max_new_tokens, lr=args.lr, kl_penalty="k1",
        kl_penalty_coef=args.kl_coef, micro_batch_size=32, generation_batch_size=64,
        seed=seed, output_dir=str(out), save_every=0,
    )  # fmt: skip
    judge = ProxyJudge.from_proxies(proxies, objective, args.uwo_coef)
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = train_lm_online(cfg, judge=judge)
    if summary["interrupted"]:  # Ctrl-C or SIGTERM: not a finished run, redone next time
        raise SystemExit(f"interrupted during {out}; run the same command again to go on")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    if len(judge.calls) != len(rows):
        raise RuntimeError(f"{out}: {len(judge.calls)} judge calls for {len(rows)} iterations")
    keys = ("eval/gold_reward", "judge/score", "rl/kl", "online/completion_tokens",
            "online/truncated", "eval/peak_reached", "eval/style/invalid")  # fmt: skip
    curve = [{"iteration": r["step"], **{k: r[k] for k in keys}, **c}
             for r, c in zip(rows, judge.calls)]  # fmt: skip
    result = {"objective": objective, "seed": seed, "curve": curve,
              "wall_s": round(time.perf_counter() - t0, 2), "train_wall_s": summary["wall_s"],
              "cpu_s": round(time.process_time() - cpu0, 2)}  # fmt: skip
    for ckpt in (out / "checkpoints", out / "model"):  # the curve is what is kept
        shutil.rmtree(ckpt, ignore_errors=True)
    done.write_text(json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------
# 4. the report
# ---------------------------------------------------------------------------------------------
def windows(curve: list[dict], size: int) -> list[dict]:
    """Means of gold, objective, ensemble mean, member 1 and KL over windows of ``size``
    iterations (weighted by samples; an incomplete last window is dropped)."""
    out = []
    for start in range(0, len(curve) - size + 1, size):
        rows = curve[start : start + size]
        w = np.array([r["n"] for r in rows], dtype=np.float64)

        def avg(f, rows=rows, w=w):
            return float(np.dot(w, [f(r) for r in rows]) / w.sum())

        out.append({"iteration": rows[-1]["iteration"], "kl": avg(lambda r: r["rl/kl"]),
                    "gold": avg(lambda r: r["eval/gold_reward"]),
                    "proxy": avg(lambda r: r["objective"]),
                    "ensemble_mean": avg(lambda r: r["ensemble_mean"]),
                    "member1": avg(lambda r: r["members"][0]),
                    "length": avg(lambda r: r["online/completion_tokens"]),
                    "invalid": avg(lambda r: r["eval/style/invalid"])})  # fmt: skip
    return out


def summarize(runs: list[dict], window: int, reference_gold: dict | None = None) -> dict:
    """Per objective: curves (mean ± CI over seeds per window) and peak/final statistics.

    ``reference_gold`` (seed → the reference policy's mean gold reward, from its labelled
    samples) adds the first window after the peak whose gold falls below it: the iteration and
    KL of the fall (``None`` for a seed that never falls; the means count the seeds that did).
    """
    out: dict[str, Any] = {}
    for obj in OBJECTIVES:
        mine = sorted((r for r in runs if r["objective"] == obj), key=lambda r: r["seed"])
        if not mine:
            continue
        ws = [windows(r["curve"], window) for r in mine]
        n = min(len(w) for w in ws)
        curve = [{"iteration": ws[0][i]["iteration"],
                  **{k: mean_ci([w[i][k] for w in ws]) for k in ws[0][i] if k != "iteration"}}
                 for i in range(n)]  # fmt: skip
        per_seed = []
        for r, w in zip(mine, ws):
            p = int(np.argmax([x["gold"] for x in w[:n]]))
            row = {"seed": r["seed"], "peak_gold": w[p]["gold"], "kl_at_peak": w[p]["kl"],
                   "iteration_at_peak": w[p]["iteration"], "first_gold": w[0]["gold"],
                   "final_gold": w[n - 1]["gold"], "final_kl": w[n - 1]["kl"],
                   "final_proxy": w[n - 1]["proxy"]}  # fmt: skip
            if reference_gold is not None:
                ref = reference_gold[r["seed"]]
                fall = next((x for x in w[p:n] if x["gold"] < ref), None)
                row["iteration_below_reference"] = fall["iteration"] if fall else None
                row["kl_below_reference"] = fall["kl"] if fall else None
            per_seed.append(row)
        stats = {k: mean_ci([s[k] for s in per_seed]) for k in per_seed[0] if k != "seed"}
        stats["drop_from_peak"] = mean_ci([s["peak_gold"] - s["final_gold"] for s in per_seed])
        out[obj] = {"seeds": [r["seed"] for r in mine], "curve": curve, "per_seed": per_seed,
                    **stats}  # fmt: skip
    return out


def plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = dict(zip(OBJECTIVES, ("tab:red", "tab:blue", "tab:green", "tab:purple")))
    panels = [  # (axis, y key, x: sqrt KL as Gao et al. plot it, or the iteration)
        (axes[0, 0], "gold", "kl"), (axes[0, 1], "proxy", "kl"),
        (axes[1, 0], "gold", "iteration"), (axes[1, 1], "kl", "iteration"),
    ]  # fmt: skip
    for obj, s in summary.items():
        it = np.array([c["iteration"] for c in s["curve"]], dtype=np.float64)
        root_kl = np.sqrt(np.maximum([c["kl"]["mean"] for c in s["curve"]], 0.0))
        for ax, key, x in panels:
            m = np.array([c[key]["mean"] for c in s["curve"]])
            h = np.nan_to_num(np.array([c[key]["ci95"] for c in s["curve"]]))
            xs = root_kl if x == "kl" else it
            ax.plot(xs, m, color=colors[obj], label=f"{obj} (n={len(s['seeds'])})")
            ax.fill_between(xs, m - h, m + h, color=colors[obj], alpha=0.15)
    titles = ("gold reward", "proxy: the objective optimized (standardized)", "gold reward",
              "KL(π ‖ π_ref), nats (k1 estimate)")  # fmt: skip
    for (ax, _, x), title in zip(panels, titles):
        ax.set_xlabel("√KL(π ‖ π_ref) (mean KL over seeds)" if x == "kl" else "iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("Over-optimization on the style task: RLOO against a single proxy and ensembles "
                 "(mean ± 95 % CI over seeds)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def member_trunks(task, args) -> list[str]:
    """The LM each member fine-tunes: the policy's reference for all (``shared``), or the task's
    reference pretrained with seed k for member k (``pretrain_seeds``: the pretraining-seed
    diversity of Eisenstein et al. 2023, arXiv 2312.09244; seed k > 0 also draws its own
    corpus, fitting table and tokenizer — same words and grammar)."""
    if args.member_trunks == "shared":
        return [str(task.reference.path)] * args.members
    from unialign.tasks import ReferenceConfig, reference_policy

    base = ReferenceConfig.small() if args.task_size == "small" else ReferenceConfig()
    return [str(task.reference.path)] + [
        str(reference_policy(replace(base, seed=k), cache_dir=args.cache_dir).path)
        for k in range(1, args.members)
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    ap.add_argument("--labels", type=int, default=512, help="N gold-labelled pairs per seed")
    ap.add_argument("--eval-pairs", type=int, default=256)
    ap.add_argument("--members", type=int, default=4, help="K reward models per ensemble")
    ap.add_argument(
        "--member-trunks",
        default="shared",
        choices=["shared", "pretrain_seeds"],
        help="what each member fine-tunes: the policy's reference (shared) or the "
        "reference pretrained with seed k (member k)",
    )
    ap.add_argument("--rm-lr", type=float, default=1e-3)
    ap.add_argument("--rm-epochs", type=float, default=2.0)
    ap.add_argument("--uwo-coef", type=float, default=5.0, help="λ of uwo")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--kl-coef", type=float, default=1e-3)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--task-size", default="default", choices=["default", "small"])
    ap.add_argument("--cache-dir", default=str(ROOT / "runs/bench_overopt/cache"))
    ap.add_argument("--runs-dir", default=str(ROOT / "runs/bench_overopt"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/overoptimization.json"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    task = _task(args.task_size, args.cache_dir)
    runs_dir = Path(args.runs_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": "python benchmarks/overoptimization.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git_commit(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("runs_dir", "out")},
        "method": "rloo (one update per iteration), k1 KL penalty kl_coef, labels: oracle "
                  "teacher over the gold reward on reference samples, ties dropped",
        "proxies": {}, "runs": [],
    }  # fmt: skip
    trunks = member_trunks(task, args)
    for seed in args.seeds:  # proxies first: every objective of a seed shares them
        record["proxies"][seed] = train_proxies(task, runs_dir / f"seed{seed}", seed, args, trunks)
    for seed in args.seeds:
        for obj in args.objectives:
            run = run_policy(record["proxies"][seed], obj, seed,
                             runs_dir / f"seed{seed}" / obj, args)  # fmt: skip
            record["runs"] = [r for r in record["runs"]
                              if (r["objective"], r["seed"]) != (obj, seed)] + [run]  # fmt: skip
            ref_gold = {s: p["label_gold_mean"] for s, p in record["proxies"].items()}
            record["summary"] = summarize(record["runs"], args.window, ref_gold)
            record["wall_s"] = round(time.perf_counter() - t0, 1)  # this invocation only
            record["runs_wall_s"] = round(sum(r["wall_s"] for r in record["runs"]), 1)
            out.write_text(json.dumps(record, indent=1))  # partial results as they come
            last = run["curve"][-1]
            print(
                f"seed {seed} {obj}: gold {last['eval/gold_reward']:.3f} "
                f"kl {last['rl/kl']:.2f} proxy {last['objective']:.2f}",
                flush=True,
            )
    plot(out.with_suffix(".png"), record["summary"])
    record["plot"] = str(out.with_suffix(".png").relative_to(ROOT)) if out.is_relative_to(
        ROOT) else str(out.with_suffix(".png"))  # fmt: skip
    out.write_text(json.dumps(record, indent=1))
    print("wrote", out)
    return record


if __name__ == "__main__":
    main()
