"""The typed configuration of a sweep (``unialign sweep CONFIG``), validated before any run.

Fields follow the shared contract (``docs/sweep.md``). Every error names the field and says
what to do. For the built-in ``control`` experiment the config is also checked against
:class:`unialign.control.config.ControlConfig`: methods must be algorithms of
:data:`unialign.control.algorithms.ALGORITHMS`, params must be its fields, and every cell's
merged params must make a valid run configuration — so a typo fails here, not an hour in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unialign.config import load_config
from unialign.sweep.grid import Cell, expand

__all__ = ["NormalizeOptions", "RayOptions", "SweepConfig", "load_sweep_config"]

#: ControlConfig fields the sweep sets itself from the cell (not allowed in params).
CONTROL_RESERVED = ("env", "algo", "seed", "output_dir", "progress")


class RayOptions(BaseModel):
    """Where the cells run. ``ray: false`` in the YAML runs them in-process, one after another."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: run cells serially in this process")
    address: str | None = Field(
        None, description="a running cluster's address (HOST:6379 or 'auto'); null: local Ray"
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray instance (null: all); ignored with address"
    )
    cpus_per_cell: float = Field(1.0, gt=0, description="CPUs Ray reserves for each cell")
    gpus_per_cell: float = Field(0.0, ge=0, description="GPUs Ray reserves for each cell")


class NormalizeOptions(BaseModel):
    """Normalised score = (score − low) / (high − low), per task."""

    model_config = ConfigDict(extra="forbid")

    low: str | float | dict[str, float] = Field(
        "random",
        description="'random': the mean low_score the task's cells return; a number; "
        "or {task: number}",
    )
    high: str | float | dict[str, float] = Field(
        "oracle",
        description="a method: its mean score on the task; a number; or {task: number}",
    )
    threshold: float = Field(
        0.9, description="the report counts x (and aux curves) until the normalised curve first "
        "reaches this value",
    )  # fmt: skip

    @field_validator("low")
    @classmethod
    def _low(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "random":
            raise ValueError("low must be 'random', a number or {task: number}")
        return v


class SweepConfig(BaseModel):
    """A grid of cells (methods × tasks × seeds × grid combinations) and where to run them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="the sweep's name (table titles)")
    experiment: str = Field(
        "control",
        description="'control' (each cell one `train control` run), 'path/to/file.py:function' "
        "or 'package.module:function'",
    )
    out: str = Field(..., min_length=1, description="output directory (cells/, table.*, PNGs)")
    methods: list[str] = Field(..., min_length=1, description="methods crossed with tasks")
    tasks: list[str] = Field(..., min_length=1, description="tasks (environment ids for control)")
    seeds: int | list[int] = Field(3, description="n: seeds 0..n-1; or an explicit list")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="param overrides crossed as a cartesian product"
    )
    base: dict[str, Any] = Field(default_factory=dict, description="params of every cell")
    task_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="{task: {param: value}}"
    )
    method_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="{method: {param: value}}"
    )
    normalize: NormalizeOptions | None = Field(None, description="normalised scores and curves")
    ray: RayOptions = Field(default_factory=RayOptions, description="where cells run")

    @field_validator("ray", mode="before")
    @classmethod
    def _ray_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # `ray: false` = serial in-process runs
            return {"enabled": v}
        return {} if v is None else v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("seeds must be ≥ 1 (n means seeds 0..n-1) or a list of seeds")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("an explicit seeds list must be non-empty without repeats")
        return v

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, v: str) -> str:
        if v != "control":
            left, sep, right = v.rpartition(":")
            if not sep or not left or not right.isidentifier():
                raise ValueError(
                    "experiment must be 'control', 'path/to/file.py:function' or "
                    "'package.module:function'"
                )
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        for field in ("methods", "tasks"):
            values = getattr(self, field)
            dup = sorted({x for x in values if values.count(x) > 1})
            if dup:
                raise ValueError(f"{field} lists {dup} more than once; list each once")
        for field, known in (("task_settings", self.tasks), ("method_settings", self.methods)):
            extra = sorted(set(getattr(self, field)) - set(known))
            if extra:
                what = field.split("_")[0] + "s"
                raise ValueError(
                    f"{field} names {extra}, not in {what} {known}; add them to {what} or "
                    f"remove them from {field}"
                )
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} is an empty list; give at least one value")
        n = self.normalize
        if n is not None and isinstance(n.high, str) and n.high not in self.methods:
            raise ValueError(
                f"normalize.high is method {n.high!r}, which is not in methods {self.methods}; "
                "add it to methods or give high as a number"
            )
        for field in ("low", "high"):
            ref = getattr(n, field) if n is not None else None
            if isinstance(ref, dict) and sorted(ref) != sorted(self.tasks):
                raise ValueError(
                    f"normalize.{field} gives values for {sorted(ref)}; give one for each task "
                    f"{sorted(self.tasks)}"
                )
        cells = expand(self)
        ids = [c.cell_id for c in cells]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(
                f"two cells share the id {dup[0]} (tasks that differ only in characters outside "
                "[A-Za-z0-9._-], or grid values that print the same); rename them"
            )
        if self.experiment == "control":
            check_control_cells(self, cells)
        return self


def check_control_cells(cfg: SweepConfig, cells: list[Cell]) -> None:
    """Methods are control algorithms; params are ControlConfig fields; each cell validates."""
    from pydantic import ValidationError

    from unialign.control.algorithms import ALGORITHMS
    from unialign.control.config import ControlConfig
    from unialign.sweep.control import control_config

    unknown = [m for m in cfg.methods if m not in ALGORITHMS]
    if unknown:
        raise ValueError(
            f"methods {unknown} are not control algorithms; choose from {sorted(ALGORITHMS)} "
            "(experiment: control)"
        )
    fields = set(ControlConfig.model_fields) - set(CONTROL_RESERVED)
    sources = {"base": cfg.base, "grid": cfg.grid}
    sources |= {f"task_settings.{t}": s for t, s in cfg.task_settings.items()}
    sources |= {f"method_settings.{m}": s for m, s in cfg.method_settings.items()}
    for where, params in sources.items():
        reserved = sorted(set(params) & set(CONTROL_RESERVED))
        if reserved:
            raise ValueError(
                f"{where} sets {reserved}; the sweep sets env/algo/seed/output_dir/progress "
                "from each cell (tasks, methods, seeds, out): remove them"
            )
        bad = sorted(set(params) - fields)
        if bad:
            raise ValueError(
                f"{where} has unknown control field(s) {bad}; see `unialign train control "
                "--help` for the valid fields"
            )
    seen: set[str] = set()
    for cell in cells:
        key = repr((cell.method, cell.task, sorted(cell.params.items())))
        if key in seen:  # seeds do not change what is validated
            continue
        seen.add(key)
        try:
            control_config(cell, Path(cfg.out) / "cells" / cell.cell_id)
        except ValidationError as e:
            msg = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'params'}: "
                f"{err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()
            )
            raise ValueError(
                f"cell {cell.cell_id}: its params do not make a valid control run ({msg}); "
                "fix base/task_settings/method_settings/grid"
            ) from None


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML. An experiment file given relative to the config file's
    directory (and not found from the current directory) is made absolute."""
    cfg = load_config(SweepConfig, path)
    left, sep, fn = cfg.experiment.rpartition(":")
    if sep and _is_file_spec(left) and not Path(left).exists():
        beside = Path(path).resolve().parent / left
        if beside.exists():
            cfg = cfg.model_copy(update={"experiment": f"{beside}:{fn}"})
    return cfg


def _is_file_spec(left: str) -> bool:
    return left.endswith(".py") or "/" in left or "\\" in left
