"""What running the control benchmark through ``unialign sweep`` (Ray) costs against the old
script (a ``ProcessPoolExecutor``), on the same reduced grid, interleaved A B A B.

Both run ``Pendulum-v1 × oracle/pebble/aparl × seeds`` at a fraction of the CPU tier's budget
with the same number of workers, each in a fresh runs directory (nothing is resumed). Every
command's wall time is taken around the whole process (interpreter start to exit) with
``/proc/loadavg`` before and after, because the machine is shared. Also measured: Ray's
start-up alone — a sweep of no-op cells on a fresh local instance (``ray.init``, worker start,
``ray.shutdown``) — against the same cells in-process.

    python benchmarks/sweep_overhead.py --old /tmp/old_control_feedback.py --scale 0.25

where the old script is ``git show 858f0b2:benchmarks/control_feedback.py``. Results go to
``benchmarks/results/sweep_overhead.json`` after every command (partial results survive).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOOP = """
def run_cell(cell, out_dir):
    return {"score": float(cell.seed), "curve": [[0, float(cell.seed)]]}
"""


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _timed(cmd: list[str], log: Path) -> dict:
    before = _load()
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    return {
        "wall_s": round(time.perf_counter() - t0, 2),
        "rc": rc,
        "loadavg_before": before,
        "loadavg_after": _load(),
    }


def _noop_sweep(tmp: Path, cells: int, workers: int, serial: bool) -> dict:
    """A sweep of ``cells`` no-op cells in a fresh process: Ray's fixed cost when not serial."""
    (tmp / "noop.py").write_text(NOOP)
    cfg = {
        "name": "noop", "experiment": f"{tmp / 'noop.py'}:run_cell",
        "out": str(tmp / f"noop_{'serial' if serial else 'ray'}_{time.time_ns()}"),
        "methods": ["m"], "tasks": ["t"], "seeds": cells, "ray": {"num_cpus": workers},
    }  # fmt: skip
    path = tmp / "noop.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    cmd = [sys.executable, "-m", "unialign", "sweep", str(path)] + (["--serial"] * serial)
    row = _timed(cmd, tmp / "noop.log")
    table = json.loads((Path(cfg["out"]) / "table.json").read_text())
    return row | {"finished": table["finished"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the old control_feedback.py (git show 858f0b2:…)")
    p.add_argument("--scale", type=float, default=0.25)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/sweep_overhead.json")
    args = p.parse_args(argv)

    grid = ["--envs", "Pendulum-v1", "--seeds", str(args.seeds), "--workers", str(args.workers),
            "--scale", str(args.scale)]  # fmt: skip
    result = {
        "command": " ".join(["python", "benchmarks/sweep_overhead.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "grid": "Pendulum-v1 x oracle/pebble/aparl x seeds, CPU-tier budget x scale",
        "args": vars(args),
        "runs": [],
        "noop": [],
    }
    out = Path(args.out)

    def save() -> None:
        for name in ("old", "sweep"):
            walls = [r["wall_s"] for r in result["runs"] if r["which"] == name and r["rc"] == 0]
            result[f"{name}_median_wall_s"] = statistics.median(walls) if walls else None
        if result["old_median_wall_s"] and result["sweep_median_wall_s"]:
            result["ratio_sweep_over_old"] = round(
                result["sweep_median_wall_s"] / result["old_median_wall_s"], 3
            )
        out.write_text(json.dumps(result, indent=2))

    with tempfile.TemporaryDirectory(prefix="sweep_overhead_") as tmp_name:
        tmp = Path(tmp_name)
        for rep in range(args.repeats):
            for which in ("old", "sweep"):  # A B A B: both see the same drift in load
                runs_dir, res = tmp / f"{which}{rep}", tmp / f"{which}{rep}.json"
                script = (
                    args.old if which == "old" else str(ROOT / "benchmarks/control_feedback.py")
                )
                cmd = [
                    sys.executable,
                    script,
                    *grid,
                    "--runs-dir",
                    str(runs_dir),
                    "--out",
                    str(res),
                ]
                row = _timed(cmd, tmp / f"{which}{rep}.log")
                row |= {"which": which, "repeat": rep}
                if row["rc"] == 0:
                    data = json.loads(res.read_text())
                    row["runs"] = len(data["runs"])
                    row["sum_run_seconds"] = round(sum(r["seconds"] for r in data["runs"]), 1)
                    row["ray_start_s"] = data.get("sweep", {}).get("ray_start_seconds")
                else:
                    row["log_tail"] = (tmp / f"{which}{rep}.log").read_text()[-2000:]
                result["runs"].append(row)
                print(json.dumps(row), file=sys.stderr)
                save()
        for rep in range(args.repeats):
            for serial in (True, False):
                row = _noop_sweep(tmp, 6, args.workers, serial) | {
                    "executor": "serial" if serial else "ray",
                    "repeat": rep,
                }
                result["noop"].append(row)
                print(json.dumps(row), file=sys.stderr)
                save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
