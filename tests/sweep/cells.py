"""A tiny deterministic cell function for the sweep tests (loaded as ``cells.py:run_cell``).

score = level + offset + step · seed, with ``level`` from method_settings, ``offset`` from
task_settings and ``step`` from base; the curve rises from ``low`` to the score in three
points, ``low_score`` is ``params["low"]``. Each call drops a marker file in
``params["marker_dir"]`` (so tests count calls); the cell ``params["fail_cell"]`` raises while
the file ``params["fail_flag"]`` exists; ``params["interrupt_cell"]`` then raises
KeyboardInterrupt (as Ctrl-C would).
"""

from __future__ import annotations

import uuid
from pathlib import Path


def run_cell(cell, out_dir: Path) -> dict:
    p = cell.params
    (Path(p["marker_dir"]) / f"{cell.cell_id}.{uuid.uuid4().hex}").touch()
    if cell.cell_id == p.get("fail_cell") and Path(p["fail_flag"]).exists():
        raise RuntimeError(f"boom in {cell.cell_id}")
    if cell.cell_id == p.get("interrupt_cell") and Path(p["fail_flag"]).exists():
        raise KeyboardInterrupt
    score = p["level"] + p["offset"] + p["step"] * cell.seed
    low = p["low"]
    (out_dir / "artifact.txt").write_text(str(score))
    return {
        "score": score,
        "curve": [[0, low], [10, low + 0.95 * (score - low)], [20, score]],
        "aux_curves": {"calls": [[0, 0], [10, 5], [20, 9]]},
        "metrics": {"double": 2 * score},
        "low_score": low,
        "x_label": "steps",
    }
