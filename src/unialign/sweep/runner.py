"""Running a sweep's cells: as Ray tasks (local instance or a cluster), or serially in-process.

The driver (this process) expands the grid, skips cells whose ``out/cells/<id>/result.json``
exists (after checking it was made with the same params), submits the rest — one Ray task per
cell, reserving ``ray.cpus_per_cell`` CPUs — and, as each finishes, writes its ``result.json``
atomically (the returned dict, the cell, seconds, host). A cell that raises gets its traceback
in ``out/cells/<id>/error.txt``, is reported, and does not stop the others; it runs again on
the next invocation. Ctrl-C cancels the running cells and keeps the finished ones. Ray is shut
down at the end when this function started it (an instance the caller started is left up).
The report covers the finished cells.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from unialign.runlog import atomic_file, progress_bar
from unialign.sweep.config import SweepConfig
from unialign.sweep.experiments import check_result, load_experiment
from unialign.sweep.grid import Cell, expand
from unialign.sweep.report import write_report

__all__ = ["SweepOutcome", "execute_cell", "run_sweep"]


@dataclass
class SweepOutcome:
    """What a call of :func:`run_sweep` did."""

    cells: int
    skipped: int  # finished before this call
    ran: int  # finished in this call
    failed: dict[str, str] = field(default_factory=dict)  # cell id → last line of the error
    interrupted: bool = False
    ray_start_s: float | None = None  # ray.init, when this call started Ray
    wall_s: float = 0.0
    table: dict = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)  # every finished cell's result.json


def execute_cell(spec: str, cell: Cell, out_dir: str, cpus: float, cwd: str) -> dict:
    """Run one cell where it lands (a Ray worker or this process) and return either
    ``{"ok": result, "seconds": s, "host": h}`` or ``{"error": traceback, ...}``.

    Torch gets ``int(cpus)`` threads (at least 1) for the cell; the process's previous setting
    is restored afterwards, so a serial sweep leaves its caller as it was."""
    if cwd not in sys.path:  # `package.module:fn` experiments import as from the driver's cwd
        sys.path.insert(0, cwd)
    threads = max(1, int(cpus))
    old_env = os.environ.get("OMP_NUM_THREADS")
    old_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by torch when the cell imports it
    t0 = time.perf_counter()
    try:
        fn = load_experiment(spec)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        result = check_result(fn(cell, path), cell.cell_id)
        json.dumps(result)  # not JSON-serialisable: the cell's error, not the driver's
        out = {"ok": result}
    except Exception:
        out = {"error": traceback.format_exc()}
    finally:
        if old_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_env
        if old_threads is not None:
            sys.modules["torch"].set_num_threads(old_threads)
    return out | {"seconds": round(time.perf_counter() - t0, 3), "host": socket.gethostname()}


def _same_params(saved: dict, cell: Cell) -> bool:
    dump = lambda d: json.dumps(d, sort_keys=True, default=str)  # noqa: E731
    return dump(saved.get("params")) == dump(json.loads(dump(cell.params)))


def _load_finished(out: Path, cells: list[Cell]) -> dict[str, dict]:
    finished = {}
    for cell in cells:
        path = out / "cells" / cell.cell_id / "result.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        if not _same_params(result.get("cell", {}), cell):
            raise ValueError(
                f"{path} was made with other params than cell {cell.cell_id} has now "
                f"({result.get('cell', {}).get('params')} vs {cell.params}); give the sweep "
                "another `out`, or delete that cell's directory to run it again"
            )
        finished[cell.cell_id] = result
    return finished


class _Recorder:
    """Writes each outcome as it arrives and advances the progress bar."""

    def __init__(self, out: Path, progress, task) -> None:
        self.out, self.progress, self.task = out, progress, task
        self.results: dict[str, dict] = {}
        self.failed: dict[str, str] = {}

    def record(self, cell: Cell, outcome: dict) -> None:
        cell_dir = self.out / "cells" / cell.cell_id
        cell_dir.mkdir(parents=True, exist_ok=True)
        if "ok" in outcome:
            result = dict(outcome["ok"], cell=cell.as_dict())
            result |= {"seconds": outcome["seconds"], "host": outcome["host"]}
            with atomic_file(cell_dir / "result.json") as tmp:
                tmp.write_text(json.dumps(result, indent=1))
            (cell_dir / "error.txt").unlink(missing_ok=True)
            self.results[cell.cell_id] = result
        else:
            (cell_dir / "error.txt").write_text(outcome["error"])
            last = outcome["error"].strip().splitlines()[-1]
            self.failed[cell.cell_id] = last
            self.progress.console.print(  # above the live progress bar
                f"[red]cell {cell.cell_id} failed[/red]: {last} (traceback: {cell_dir}/error.txt)"
            )
        self.progress.update(self.task, advance=1, failed=len(self.failed))


def _run_serial(cfg: SweepConfig, todo: list[Cell], rec: _Recorder) -> None:
    for cell in todo:
        out_dir = str(Path(cfg.out).resolve() / "cells" / cell.cell_id)
        rec.record(
            cell, execute_cell(cfg.experiment, cell, out_dir, cfg.ray.cpus_per_cell, os.getcwd())
        )


def _run_ray(cfg: SweepConfig, todo: list[Cell], rec: _Recorder) -> None:
    import ray

    task = ray.remote(execute_cell).options(
        num_cpus=cfg.ray.cpus_per_cell, num_gpus=cfg.ray.gpus_per_cell, name="unialign-sweep-cell"
    )
    out, cwd = Path(cfg.out).resolve(), os.getcwd()
    pending = {
        task.remote(
            cfg.experiment, c, str(out / "cells" / c.cell_id), cfg.ray.cpus_per_cell, cwd
        ): c
        for c in todo
    }
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died (OOM, segfault, node lost)
                    outcome = {"error": f"{type(e).__name__}: {e}", "seconds": None, "host": None}
                rec.record(cell, outcome)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _start_ray(address: str | None, num_cpus: int | None) -> float:
    """Connect to the cluster at ``address``, or start a local instance; returns the seconds."""
    import ray

    t0 = time.perf_counter()
    kwargs = dict(log_to_driver=False, logging_level="WARNING")
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a fresh instance even when RAY_ADDRESS is set or `ray start` ran on
            # this machine (--address auto connects to that one)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    except ConnectionError as e:
        raise ValueError(
            f"ray: could not connect to a Ray cluster at {address!r} ({e}); start one with "
            "`ray start --head` there, or check ray.address / --address"
        ) from None
    return round(time.perf_counter() - t0, 2)


def run_sweep(
    cfg: SweepConfig,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    serial: bool = False,
    report_only: bool = False,
    show: bool = True,
) -> SweepOutcome:
    """Run the unfinished cells of ``cfg`` and write the report (see the module docstring).

    ``address``/``num_cpus`` override ``cfg.ray``; ``serial`` (or ``ray: false``) runs the cells
    one after another in this process; ``report_only`` runs nothing and reports what finished.
    """
    from rich.console import Console

    console = Console(stderr=True)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    cells = expand(cfg)
    done = _load_finished(out, cells)
    todo = [] if report_only else [c for c in cells if c.cell_id not in done]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "sweep.yaml") as tmp:  # the config this report belongs to
        tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    outcome = SweepOutcome(cells=len(cells), skipped=len(done), ran=0)
    if todo:
        console.print(f"sweep {cfg.name}: {len(todo)} cells to run, {len(done)} finished before")
    progress = progress_bar(
        f"sweep {cfg.name}", enabled=show and bool(todo), fields="failed {task.fields[failed]}"
    )
    bar = progress.add_task("cells", total=len(cells), completed=len(done), failed=0)
    rec = _Recorder(out, progress, bar)
    started_ray = False
    try:
        with progress:
            if todo and (serial or not cfg.ray.enabled):
                _run_serial(cfg, todo, rec)
            elif todo:
                import ray

                if not ray.is_initialized():
                    outcome.ray_start_s = _start_ray(
                        address or cfg.ray.address, num_cpus or cfg.ray.num_cpus
                    )
                    started_ray = True
                _run_ray(cfg, todo, rec)
    except KeyboardInterrupt:
        outcome.interrupted = True
        console.print(f"sweep {cfg.name}: interrupted; finished cells are kept, rerun to continue")
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    outcome.ran, outcome.failed = len(rec.results), dict(rec.failed)
    results = [done.get(c.cell_id) or rec.results.get(c.cell_id) for c in cells]
    finished = [r for r in results if r is not None]
    failed = [  # this call's failures, and earlier ones not run again (--report-only, Ctrl-C)
        c.cell_id
        for c, r in zip(cells, results)
        if r is None and (out / "cells" / c.cell_id / "error.txt").exists()
    ]
    outcome.table = write_report(cfg, finished, cells, failed, show=show)
    outcome.results = finished
    outcome.wall_s = round(time.perf_counter() - t0, 2)
    if rec.failed:
        console.print(f"[red]{len(rec.failed)} cell(s) failed[/red]: {', '.join(rec.failed)}")
    return outcome
