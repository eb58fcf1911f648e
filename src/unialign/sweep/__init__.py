"""Experiment grids on Ray: ``unialign sweep CONFIG`` (``docs/sweep.md``).

A sweep crosses methods × tasks × seeds × grid combinations; each cell is one call of a cell
function ``run_cell(cell, out_dir) -> dict`` run as a Ray task (or in-process, ``ray: false``).
Finished cells are kept in ``out/cells/<cell_id>/result.json`` and skipped on rerun; the report
(``table.json``, ``table.md``, ``curves_<task>.png``) summarises them with 95 % t-intervals.
"""

from __future__ import annotations

from typing import Any

from unialign.sweep.config import NormalizeOptions, RayOptions, SweepConfig, load_sweep_config
from unialign.sweep.grid import Cell, cell_id, expand, task_slug

__all__ = [
    "Cell",
    "NormalizeOptions",
    "RayOptions",
    "SweepConfig",
    "build_table",
    "cell_id",
    "expand",
    "load_sweep_config",
    "run_sweep",
    "task_slug",
    "write_report",
]


def __getattr__(name: str) -> Any:  # the runner and report import ray/matplotlib: on first use
    if name == "run_sweep":
        from unialign.sweep.runner import run_sweep

        return run_sweep
    if name in ("build_table", "write_report"):
        from unialign.sweep import report

        return getattr(report, name)
    raise AttributeError(name)
