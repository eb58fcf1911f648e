"""The table of a sweep: per task × method (× grid combination), means and 95 % t-intervals of
the score, the normalised score, every metric, and how far along x (and any auxiliary curve)
a run was when its normalised curve first reached the threshold; plus normalised curve PNGs.

Normalisation (per task and grid combination)::

    normalised = (score − low) / (high − low)

with ``low`` the mean ``low_score`` of the task's cells (``low: random``) or a given number, and
``high`` the mean score of the ``high`` method on the task — over its cells with the same grid
combination when there are any, else over all of them — or a given number. The report covers
the finished cells only and shows their number ``n`` next to the number of cells in the grid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unialign.runlog import atomic_file
from unialign.sweep.config import SweepConfig
from unialign.sweep.grid import Cell, task_slug
from unialign.sweep.stats import mean_ci95, normalize

__all__ = [
    "build_table",
    "draw_task_curves",
    "first_reach",
    "format_stat",
    "plot_curves",
    "table_markdown",
    "write_report",
]


def _combo_key(grid: dict) -> str:
    return json.dumps(grid, sort_keys=True)


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _reference(spec: Any, task: str, pick: list[float], fallback: list[float]) -> float | None:
    if isinstance(spec, dict):
        return float(spec[task])
    if isinstance(spec, int | float):
        return float(spec)
    return _mean(pick) if pick else _mean(fallback)


def references(cfg: SweepConfig, results: list[dict], task: str, grid: dict) -> tuple:
    """(low, high) for ``task`` and grid combination ``grid`` (None when not yet known)."""
    n = cfg.normalize
    if n is None:
        return None, None
    on_task = [r for r in results if r["cell"]["task"] == task]
    lows = [r["low_score"] for r in on_task if "low_score" in r]
    same = [r for r in on_task if _combo_key(r["cell"]["grid"]) == _combo_key(grid)]
    lows_same = [r["low_score"] for r in same if "low_score" in r]
    low = _reference(n.low, task, lows_same, lows)
    highs = [r["score"] for r in on_task if r["cell"]["method"] == n.high]
    highs_same = [r["score"] for r in same if r["cell"]["method"] == n.high]
    high = _reference(n.high, task, highs_same, highs)
    return low, high


def first_reach(
    curve: list, aux: dict[str, list], low: float, high: float, threshold: float
) -> tuple[float | None, dict[str, float | None]]:
    """x of the first curve point whose normalised y ≥ ``threshold``, and each auxiliary curve's
    value at that x (its last point at or before it); ``None`` when the curve never gets there."""
    hit = next((x for x, y in curve if normalize(y, low, high) >= threshold), None)
    out: dict[str, float | None] = {}
    for name, points in aux.items():
        before = [v for x, v in points if hit is not None and x <= hit]
        out[name] = before[-1] if before else None
    return hit, out


def build_table(cfg: SweepConfig, results: list[dict], cells: list[Cell], failed=()) -> dict:
    """The table over finished ``results`` (``result.json`` contents) of the grid ``cells``."""
    threshold = cfg.normalize.threshold if cfg.normalize else None
    rows = []
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.task, c.method, _combo_key(c.grid)), []).append(c)
    for (task, method, _), group in groups.items():
        ids = {c.cell_id for c in group}
        rs = [r for r in results if r["cell"]["cell_id"] in ids]
        grid = group[0].grid
        low, high = references(cfg, results, task, grid)
        row: dict[str, Any] = {
            "task": task,
            "method": method,
            "grid": grid,
            "n": len(rs),
            "n_cells": len(group),
            "failed": sorted(ids & set(failed)),
            "score": mean_ci95([r["score"] for r in rs]),
            "metrics": {
                name: mean_ci95([(r.get("metrics") or {}).get(name) for r in rs])
                for name in sorted({k for r in rs for k in (r.get("metrics") or {})})
            },
            "seconds": mean_ci95([r.get("seconds") for r in rs]),
        }
        if low is not None and high is not None:
            row["low"], row["high"] = low, high
            row["normalized"] = mean_ci95([normalize(r["score"], low, high) for r in rs])
            reach = [
                first_reach(r["curve"], r.get("aux_curves") or {}, low, high, threshold) for r in rs
            ]
            row["x_to_threshold"] = mean_ci95([x for x, _ in reach])
            aux_names = sorted({k for r in rs for k in (r.get("aux_curves") or {})})
            row["aux_to_threshold"] = {
                name: mean_ci95([a.get(name) for _, a in reach]) for name in aux_names
            }
        rows.append(row)
    labels = next((r for r in results if "x_label" in r), {})
    return {
        "name": cfg.name,
        "experiment": cfg.experiment,
        "cells": len(cells),
        "finished": len({r["cell"]["cell_id"] for r in results}),
        "failed": sorted(failed),
        "normalize": cfg.normalize.model_dump() if cfg.normalize else None,
        "x_label": labels.get("x_label", "x"),
        "y_label": next((r["y_label"] for r in results if "y_label" in r), "score"),
        "definitions": {
            "ci95": "half-width of the 95 % t-interval over finished cells (null for n < 2)",
            "normalized": "(score - low) / (high - low) per task and grid combination",
            "x_to_threshold": "x of the first curve point with normalised y >= threshold; "
            "runs that never reach it are counted in 'missing'",
        },
        "rows": rows,
    }


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 10 else f"{x:#.3g}"


def format_stat(s: dict | None, digits: int | None = None) -> str:
    """``mean ± ci95`` (``(k/n)`` when some cells have no value; ``never (0/n)``)."""
    if s is None:
        return "—"
    total = s["n"] + s["missing"]
    if s["mean"] is None:
        return f"never (0/{total})" if total else "—"
    fmt = (lambda v: f"{v:.{digits}f}") if digits is not None else _num
    text = fmt(s["mean"]) + (f" ± {fmt(s['ci95'])}" if s["ci95"] is not None else "")
    return text + (f" ({s['n']}/{total})" if s["missing"] else "")


def _columns(table: dict) -> list[tuple[str, Any]]:
    cols: list[tuple[str, Any]] = [
        ("task", lambda r: r["task"]),
        ("method", lambda r: r["method"] + "".join(f" {k}={v}" for k, v in r["grid"].items())),
        ("n", lambda r: f"{r['n']}/{r['n_cells']}" + (f" ({len(r['failed'])} failed)" if r["failed"] else "")),
        ("score", lambda r: format_stat(r["score"])),
    ]  # fmt: skip
    if table["normalize"]:
        thr = f"{table['normalize']['threshold']:g}"
        cols.append(("normalised", lambda r: format_stat(r.get("normalized"), 2)))
        cols.append(
            (f"{table['x_label']} to {thr}", lambda r: format_stat(r.get("x_to_threshold")))
        )
        for name in sorted({k for r in table["rows"] for k in r.get("aux_to_threshold", {})}):
            cols.append((f"{name} to {thr}", lambda r, k=name: format_stat(r.get("aux_to_threshold", {}).get(k))))  # fmt: skip
    for name in sorted({k for r in table["rows"] for k in r["metrics"]}):
        cols.append((name, lambda r, k=name: format_stat(r["metrics"].get(k))))
    return cols


def table_markdown(table: dict) -> str:
    """``table.md``: the rows as a Markdown table, with the counts and the definitions."""
    cols = _columns(table)
    lines = [
        f"# Sweep {table['name']}",
        "",
        f"{table['finished']}/{table['cells']} cells finished"
        + (f"; failed: {', '.join(table['failed'])}" if table["failed"] else "")
        + ". Means ± 95 % t-interval half-widths over finished cells.",
        "",
        "| " + " | ".join(name for name, _ in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(f(r) for _, f in cols) + " |" for r in table["rows"]]
    lines += ["", *(f"- {k}: {v}" for k, v in table["definitions"].items()), ""]
    return "\n".join(lines)


def print_table(table: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = _columns(table)
    t = Table(title=f"{table['name']}: {table['finished']}/{table['cells']} cells finished")
    for name, _ in cols:
        t.add_column(name, overflow="fold")
    for r in table["rows"]:
        t.add_row(*(f(r) for _, f in cols))
    Console().print(t)


def _mean_curve(curves: list[list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curves interpolated onto the union of their x values within their common x range;
    returns x, mean and standard deviation over curves."""
    start = max(c[0][0] for c in curves)
    stop = min(c[-1][0] for c in curves)
    xs = np.array(sorted({x for c in curves for x, _ in c if start <= x <= stop}), dtype=float)
    if not len(xs):
        return xs, xs, xs
    ys = np.array([np.interp(xs, [p[0] for p in c], [p[1] for p in c]) for c in curves])
    return xs, ys.mean(0), ys.std(0)


def draw_task_curves(ax, table: dict, results: list[dict], task: str) -> None:
    """Draw ``task``'s rows on ``ax``: each row's mean curve ± one standard deviation over its
    cells, normalised when the row has references (with the threshold drawn), raw otherwise."""
    normalised = False
    for row in (r for r in table["rows"] if r["task"] == task):
        rs = [
            r for r in results
            if r["cell"]["task"] == task and r["cell"]["method"] == row["method"]
            and r["cell"]["grid"] == row["grid"] and r["curve"]
        ]  # fmt: skip
        if not rs:
            continue
        curves = [[tuple(p) for p in r["curve"]] for r in rs]
        if "low" in row:
            normalised = True
            curves = [[(x, normalize(y, row["low"], row["high"])) for x, y in c] for c in curves]
        xs, mean, sd = _mean_curve(curves)
        if not len(xs):  # the curves share no x range
            continue
        label = row["method"] + "".join(f" {k}={v}" for k, v in row["grid"].items())
        ax.plot(xs, mean, label=f"{label} (n={len(rs)})")
        ax.fill_between(xs, mean - sd, mean + sd, alpha=0.2)
    if normalised:
        ax.axhline(table["normalize"]["threshold"], color="grey", linestyle=":", lw=1)
    ax.set_title(task)
    ax.set_xlabel(table["x_label"])
    ax.set_ylabel(f"normalised {table['y_label']}" if normalised else table["y_label"])
    if ax.lines:
        ax.legend(fontsize=8)


def plot_curves(table: dict, results: list[dict], out: Path) -> list[Path]:
    """``out/curves_<task_slug>.png`` for each task (:func:`draw_task_curves`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task in dict.fromkeys(r["task"] for r in table["rows"]):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        draw_task_curves(ax, table, results, task)
        fig.tight_layout()
        path = out / f"curves_{task_slug(task)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(
    cfg: SweepConfig, results: list[dict], cells: list[Cell], failed=(), *, show: bool = True
) -> dict:
    """Write ``table.json``, ``table.md`` and the curve PNGs under ``cfg.out``; print the table."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(cfg, results, cells, failed)
    with atomic_file(out / "table.json") as tmp:
        tmp.write_text(json.dumps(table, indent=2))
    with atomic_file(out / "table.md") as tmp:
        tmp.write_text(table_markdown(table))
    if results:
        plot_curves(table, results, out)
    if show:
        print_table(table)
    return table
