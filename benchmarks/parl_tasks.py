"""PEBBLE and A-PARL on PARL's own tasks (DeepMind Control, Meta-World): run the sweep, keep the
table.

Runs ``benchmarks/sweeps/parl_tasks_<tier>.yaml`` through ``unialign sweep`` (finished cells are
reused, so this also resumes) and copies its result into ``benchmarks/results``:

- ``parl_tasks_<tier>.json``: the command, the sweep config, the sweep's table (per task ×
  method: mean and 95 % t-interval of the final true return, normalised score
  ``(R − R_random) / (R_oracle − R_random)``, steps and queries to 90 % of the oracle, queries
  used, Meta-World success rate), every cell's curve, and A-PARL − PEBBLE per task: the
  seed-paired difference of normalised scores (same seed = same random phase and
  pre-training) with its 95 % t-interval, and the promotion check of ``docs/aparl.md``
  (A-PARL higher than PEBBLE at equal queries on at least two tasks);
- ``parl_tasks_<tier>.md``: the same as Markdown tables;
- ``parl_tasks_<tier>.png``: normalised learning curves, one panel per task.

    python benchmarks/parl_tasks.py --tier cpu                 # run (or resume) and report
    python benchmarks/parl_tasks.py --tier cpu --report-only   # report the finished cells
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import yaml

from unialign.sweep import load_sweep_config, run_sweep
from unialign.sweep.report import draw_task_curves, format_stat
from unialign.sweep.stats import mean_ci95, normalize

ROOT = Path(__file__).resolve().parent
PEBBLE, APARL = "pebble", "aparl"


def _load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/result.json"))]


def compare(table: dict, results: list[dict]) -> dict:
    """Per task: A-PARL − PEBBLE normalised score, paired by seed, with a 95 % t-interval."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in table["rows"]):
        row = next(r for r in table["rows"] if r["task"] == task and r["method"] == PEBBLE)
        if "low" not in row:
            continue
        by = {
            (r["cell"]["method"], r["cell"]["seed"]): normalize(r["score"], row["low"], row["high"])
            for r in results
            if r["cell"]["task"] == task
        }
        seeds = sorted(s for m, s in by if m == PEBBLE and (APARL, s) in by)
        diff = mean_ci95([by[(APARL, s)] - by[(PEBBLE, s)] for s in seeds])
        if diff["mean"] is None:
            verdict = "no paired seeds"
        elif diff["ci95"] is None:
            verdict = "not resolved (one paired seed)"
        elif abs(diff["mean"]) > diff["ci95"]:
            verdict = "aparl higher" if diff["mean"] > 0 else "pebble higher"
        else:
            verdict = "not resolved (interval covers 0)"
        out[task] = {"seeds": seeds, "aparl_minus_pebble": diff, "verdict": verdict}
    return out


def markdown(table: dict, comparison: dict, command: str) -> str:
    thr = table["normalize"]["threshold"] if table["normalize"] else 0.9
    lines = [
        f"# {table['name']}",
        "",
        f"`{command}` — {table['finished']}/{table['cells']} cells finished. Means ± 95 % "
        "t-interval half-widths over seeds; normalised = (R − R_random) / (R_oracle − R_random).",
        "",
        f"| task | method | n | final true return | normalised | env steps to {thr:g} | "
        f"queries to {thr:g} | queries used | success rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        m = r["metrics"]
        cells = [
            r["task"],
            r["method"],
            f"{r['n']}/{r['n_cells']}",
            format_stat(r["score"]),
            format_stat(r.get("normalized"), 2),
            format_stat(r.get("x_to_threshold")),
            "—" if r["method"] == "oracle" else format_stat(r.get("aux_to_threshold", {}).get("queries")),
            format_stat(m.get("queries_used")),
            format_stat(m.get("success_rate"), 2) if "success_rate" in m else "—",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "A-PARL − PEBBLE, normalised score, paired by seed:",
        "",
        "| task | difference | verdict |",
        "|---|---|---|",
    ]
    for task, c in comparison.items():
        lines.append(f"| {task} | {format_stat(c['aparl_minus_pebble'], 2)} | {c['verdict']} |")
    wins = sum(c["verdict"] == "aparl higher" for c in comparison.values())
    lines += ["", f"A-PARL resolved higher than PEBBLE on {wins} of {len(comparison)} tasks.", ""]
    return "\n".join(lines)


def plot(table: dict, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in table["rows"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), dpi=110)
    for ax, task in zip(list(axes) if len(tasks) > 1 else [axes], tasks):
        draw_task_curves(ax, table, results, task)
    fig.suptitle(f"{table['name']}: mean ± 1 sd over seeds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tier", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--report-only", action="store_true", help="run nothing; report finished cells")
    p.add_argument("--results-dir", default=str(ROOT / "results"))
    p.add_argument("--note", default="", help="provenance kept in the JSON (code, load, CPU)")
    args = p.parse_args(argv)

    config_path = ROOT / "sweeps" / f"parl_tasks_{args.tier}.yaml"
    cfg = load_sweep_config(config_path)
    outcome = run_sweep(cfg, report_only=args.report_only)
    table = outcome.table or json.loads((Path(cfg.out) / "table.json").read_text())
    results = _load_results(Path(cfg.out))
    comparison = compare(table, results)
    command = f"python benchmarks/parl_tasks.py --tier {args.tier}" + (
        " --report-only" if args.report_only else ""
    )
    cells = [
        {
            "cell_id": r["cell"]["cell_id"],
            "score": r["score"],
            "low_score": r.get("low_score"),
            "curve": r["curve"],
            "queries": (r.get("aux_curves") or {}).get("queries"),
            "metrics": r.get("metrics"),
            "seconds": r.get("seconds"),
        }
        for r in results
    ]
    record = {
        "command": command,
        "sweep_command": f"unialign sweep {config_path.relative_to(ROOT.parent)}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": args.note,
        "config": yaml.safe_load(config_path.read_text()),
        "table": table,
        "aparl_vs_pebble": comparison,
        "cells": cells,
    }
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"parl_tasks_{args.tier}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    stem.with_suffix(".md").write_text(markdown(table, comparison, command))
    if results:
        plot(table, results, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
