"""The cells of a sweep: methods × tasks × seeds × grid combinations, each with merged params.

A cell's params are built in one order, later wins (``docs/sweep.md``)::

    base  →  task_settings[task]  →  method_settings[method]  →  the grid combination

and its id is ``f"{method}__{task_slug}__s{seed}"`` followed by ``__key=value`` for each grid
key in sorted order, with ``task_slug`` the task with every character outside
``[A-Za-z0-9._-]`` replaced by ``_``. The id names the cell's directory ``out/cells/<id>/``,
so it must not change between runs of the same config: resume depends on it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unialign.sweep.config import SweepConfig

__all__ = ["Cell", "cell_id", "expand", "grid_combinations", "merge_params", "task_slug"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Cell:
    """One run of a sweep.

    Attributes:
        method: e.g. ``"pebble"``.
        task: e.g. ``"dmc:walker-walk"``.
        seed: the run's seed.
        params: base → task_settings → method_settings → grid, merged (later wins).
        grid: just this cell's grid combination (``{}`` when the grid is empty).
        cell_id: the directory name under ``out/cells/``.
    """

    method: str
    task: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    grid: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    cell_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "task": self.task,
            "seed": self.seed,
            "params": dict(self.params),
            "grid": dict(self.grid),
            "cell_id": self.cell_id,
        }


def task_slug(task: str) -> str:
    """``task`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return _UNSAFE.sub("_", task)


def cell_id(method: str, task: str, seed: int, grid: dict[str, Any]) -> str:
    """``{method}__{task_slug}__s{seed}`` + ``__k=v`` per grid key, keys sorted."""
    return f"{method}__{task_slug(task)}__s{seed}" + "".join(
        f"__{k}={v}" for k, v in sorted(grid.items())
    )


def grid_combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid``'s value lists, keys in sorted order
    (``{}`` → one empty combination)."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def merge_params(
    base: dict[str, Any],
    task_settings: dict[str, Any],
    method_settings: dict[str, Any],
    combo: dict[str, Any],
) -> dict[str, Any]:
    """base, then the task's settings, then the method's, then the grid combination."""
    return {**base, **task_settings, **method_settings, **combo}


def expand(cfg: SweepConfig) -> list[Cell]:
    """Every cell of ``cfg``, ordered task, method, grid combination, seed."""
    cells = []
    for task in cfg.tasks:
        for method in cfg.methods:
            for combo in grid_combinations(cfg.grid):
                params = merge_params(
                    cfg.base,
                    cfg.task_settings.get(task, {}),
                    cfg.method_settings.get(method, {}),
                    combo,
                )
                for seed in cfg.seed_list:
                    cid = cell_id(method, task, seed, combo)
                    cells.append(Cell(method, task, seed, params, dict(combo), cid))
    return cells
