"""Reward-model ensembles at tiny scale on CPU: what K heads on one trunk, K LoRA adapters over
one frozen base and K independent models cost, and what they buy.

Task: the keyword preference of ``tests/lm/test_rm.py`` (the chosen completion contains
"zebra"), made harder so that members can disagree: ``--train-pairs`` training pairs with
``--noise`` of them flipped (chosen ↔ rejected), ``--eval-pairs`` clean held-out pairs. Every
variant trains ``--steps`` steps of batch 8 with AdamW (lr 1e-3 full, 3e-3 LoRA), seed 0, fp32,
one torch thread, in its own process (so that peak RSS is the variant's).

Per variant: wall seconds per optimizer step, the smallest of the medians (steps 6.. of
``rm/step_s``) of the 80-step run and of ``--timing-rounds`` extra 30-step runs interleaved
across the variants (the machine is shared: the minimum is the least disturbed), parameters
(total, trainable), the training state (weights + gradients + AdamW moments, fp32:
4·total + 12·trainable bytes), peak RSS of the process minus its RSS before the model was
loaded, and the held-out metrics of ``train rm``: accuracy of the mean reward, of the worst
case, the members' mean accuracy, disagreement (fraction of pairs the members rank
differently) and margin std. "independent" trains K single models with seeds 0..K-1 (K runs:
time and state are K × one run) and reads the same metrics from their per-pair scores.

    python benchmarks/rm_ensembles.py          # writes benchmarks/results/rm_ensembles.json
    python benchmarks/rm_ensembles.py --more-timing benchmarks/results/rm_ensembles.json
                                               # more timing rounds for the same file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2),
    "small": dict(hidden_size=256, intermediate_size=512, num_layers=4, num_heads=4,
                  num_kv_heads=2),
}  # fmt: skip


def variants(k: int) -> dict[str, dict]:
    lora = {"finetune": "lora", "lora_r": 8, "lr": 3e-3}
    return {
        "single (full)": {},
        "single (LoRA r8)": dict(lora),
        f"shared trunk K={k} (full)": {"ensemble_size": k},
        f"shared trunk K={k} (LoRA r8)": {"ensemble_size": k, **lora},
        f"LoRA adapters K={k} (r8)": {"ensemble_size": k, "ensemble_kind": "lora_adapters",
                                      **lora},
        "GPM dim 8 (full)": {"head": "gpm", "gpm_dim": 8},
    }  # fmt: skip


def keyword_pairs(n: int, seed: int, noise: float) -> list[dict]:
    rng = random.Random(seed)
    from unialign.lm.tiny import synthetic_words

    words = synthetic_words(300, seed=1)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        good = [rng.choice(words) for _ in range(rng.randint(3, 8))]
        good.insert(rng.randint(0, len(good)), "zebra")
        bad = [rng.choice(words) for _ in range(rng.randint(3, 8))]
        c, r = " " + " ".join(good), " " + " ".join(bad)
        if rng.random() < noise:
            c, r = r, c
        rows.append({"prompt": prompt, "chosen": c, "rejected": r})
    return rows


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec: dict) -> dict:
    """One training run in this process; prints its measurements as JSON."""
    import torch

    torch.set_num_threads(1)
    from unialign.lm.rm import train_rm
    from unialign.lm.rm_config import RMTrainConfig

    before = _rss_mib()
    cfg = RMTrainConfig(**spec["config"])
    t0 = time.perf_counter()
    summary = train_rm(cfg)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(cfg.output_dir)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    step_s = [x["rm/step_s"] for x in lines if "rm/step_s" in x][5:]
    if spec.get("timing_only"):
        return {"step_s": statistics.median(step_s)}
    params = summary["params"]
    return {
        "step_s": statistics.median(step_s),
        "wall_s": wall,
        "params_total": params["total"],
        "params_trainable": params["trainable"],
        "train_state_mib": (4 * params["total"] + 12 * params["trainable"]) / 2**20,
        "rss_before_mib": before,
        "rss_peak_mib": peak,
        "rss_delta_mib": peak - before,
        "eval": summary["eval"],
        "eval_scores": str(out / "eval_scores.jsonl"),
    }


def _run(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _independent_metrics(score_files: list[str]) -> dict:
    """Ensemble metrics of K separately trained single models, from their per-pair scores."""
    import torch

    rows = [[json.loads(x) for x in Path(f).read_text().splitlines()] for f in score_files]
    rw = torch.tensor([[r["chosen"][0] for r in m] for m in rows])  # [K, N]
    rl = torch.tensor([[r["rejected"][0] for r in m] for m in rows])
    wins = rw > rl
    agree = wins.all(0) | (~wins).all(0)
    return {
        "eval/accuracy": float(((rw.mean(0) - rl.mean(0)) > 0).float().mean()),
        "eval/accuracy_min": float((rw.min(0).values > rl.min(0).values).float().mean()),
        "eval/member_accuracy": float(wins.float().mean()),
        "eval/disagreement": float(1 - agree.float().mean()),
        "eval/margin_std": float((rw - rl).std(0, correction=0).mean()),
    }


def _timing_rounds(runs: dict, base: dict, args, tmp: Path, size: str, first: int = 0) -> None:
    """``args.timing_rounds`` short runs per variant, interleaved across the variants in a
    rotated order each round; each variant's ``step_s`` becomes the minimum of all its runs."""
    names = list(variants(args.k))
    for rnd in range(first, first + args.timing_rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            cfg = {**base, **variants(args.k)[name], "eval_data": None,
                   "max_steps": args.timing_steps, "output_dir": str(tmp / "timing")}  # fmt: skip
            runs[name].setdefault("step_s_runs", [runs[name]["step_s"]])
            runs[name]["step_s_runs"].append(_run({"config": cfg, "timing_only": True})["step_s"])
            runs[name]["step_s"] = min(runs[name]["step_s_runs"])
            print(size, name, "timing", runs[name]["step_s_runs"], flush=True)
    single, k = runs["single (full)"], args.k
    for name, run in runs.items():
        if name.startswith("independent"):
            run["step_s"] = k * single["step_s"]  # K runs of the same computation


def _more_timing(args) -> None:
    """Add timing rounds to an existing results file (the training metrics are deterministic
    and stay; only the step times are re-measured)."""
    from unialign.lm.tiny import save_tiny

    doc = json.loads(Path(args.more_timing).read_text())
    tmp = Path(tempfile.mkdtemp(prefix="rm_ens_"))
    st = doc["settings"]
    (tmp / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in keyword_pairs(st["train_pairs"], 0, st["noise"]))
    )
    for size, runs in doc["results"].items():
        save_tiny(tmp / size, **SIZES[size])
        base = dict(model=str(tmp / size), train_data=str(tmp / "train.jsonl"), batch_size=8,
                    lr=1e-3, max_length=96, precision="fp32")  # fmt: skip
        done = max(len(r.get("step_s_runs", [])) for r in runs.values()) - 1
        _timing_rounds(runs, base, args, tmp / size, size, first=done)
    doc.setdefault("more_timing_commands", []).append(
        "python benchmarks/rm_ensembles.py " + " ".join(sys.argv[1:])
    )
    Path(args.more_timing).write_text(json.dumps(doc, indent=2))
    print("updated", args.more_timing)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--train-pairs", type=int, default=128)
    ap.add_argument("--eval-pairs", type=int, default=256)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--timing-rounds", type=int, default=2)
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/rm_ensembles.json"))
    ap.add_argument("--more-timing", metavar="RESULTS_JSON",
                    help="only add --timing-rounds timing rounds to an existing results file")  # fmt: skip
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.more_timing:
        _more_timing(args)
        return

    from unialign.lm.tiny import save_tiny

    tmp = Path(tempfile.mkdtemp(prefix="rm_ens_"))
    (tmp / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in keyword_pairs(args.train_pairs, 0, args.noise))
    )
    (tmp / "eval.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in keyword_pairs(args.eval_pairs, 1, 0.0))
    )
    results: dict = {}
    for size in args.sizes:
        save_tiny(tmp / size, **SIZES[size])
        base = dict(model=str(tmp / size), train_data=str(tmp / "train.jsonl"),
                    eval_data=str(tmp / "eval.jsonl"), batch_size=8, lr=1e-3,
                    max_steps=args.steps, max_length=96, precision="fp32")  # fmt: skip
        runs: dict = {}
        for name, extra in variants(args.k).items():
            cfg = {**base, **extra, "output_dir": str(tmp / size / name.replace(" ", "_"))}
            runs[name] = _run({"config": cfg})
            print(size, name, json.dumps({k: v for k, v in runs[name].items() if k != "eval"}),
                  json.dumps(runs[name]["eval"]), flush=True)  # fmt: skip
        _timing_rounds(runs, base, args, tmp / size, size)
        singles = [runs["single (full)"]] + [
            _run({"config": {**base, "seed": s, "output_dir": str(tmp / size / f"seed{s}")}})
            for s in range(1, args.k)
        ]
        one = runs["single (full)"]
        runs[f"independent K={args.k} (full, seeds 0..{args.k - 1})"] = {
            "step_s": args.k * one["step_s"],  # K runs of the same computation
            "params_total": args.k * one["params_total"],
            "params_trainable": args.k * one["params_trainable"],
            "train_state_mib": args.k * one["train_state_mib"],
            "rss_delta_mib": None,  # K processes; the sum of one run's delta K times if run at once
            "eval": _independent_metrics([r["eval_scores"] for r in singles]),
        }
        results[size] = runs
    doc = {
        "command": "python benchmarks/rm_ensembles.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        "(shared with other jobs), 1 torch thread per run",
        "python": platform.python_version(),
        "settings": vars(args) | {"worker": None},
        "sizes": {k: SIZES[k] for k in args.sizes},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
