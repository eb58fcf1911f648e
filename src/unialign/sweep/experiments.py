"""Finding a sweep's cell function from its ``experiment`` string, and checking what it returns.

``control`` is the built-in :func:`unialign.sweep.control.run_cell`; ``path/to/file.py:fn``
loads ``fn`` from that file (a path relative to the current directory; the config loader also
tries the config file's directory); ``package.module:fn`` imports it. The function's signature
is ``run_cell(cell: Cell, out_dir: pathlib.Path) -> dict`` (``docs/sweep.md``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CellFunction", "check_result", "load_experiment"]

CellFunction = Callable[..., dict]


def load_experiment(spec: str) -> CellFunction:
    """The cell function named by ``spec`` (``control``, ``file.py:fn`` or ``module:fn``)."""
    if spec == "control":
        from unialign.sweep.control import run_cell

        return run_cell
    target, _, name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise ValueError(f"experiment {spec!r}: no file {path}; give a path to a .py file")
        # one module per file path, so two files named run.py do not clash
        mod_name = f"unialign_sweep_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module  # dataclasses and pickling look modules up here
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]
                raise
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise ValueError(
                f"experiment {spec!r}: cannot import {target!r} ({e}); install the package or "
                "give a file path"
            ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"experiment {spec!r}: {target} has no function {name!r}")
    return fn


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def check_result(result: Any, cell_id: str) -> dict:
    """Raise ``ValueError`` naming the key when a cell function's result breaks the contract:
    a dict with a finite ``score``, ``curve`` a list of ``[x, y]`` number pairs, optional
    ``metrics`` {name: number or null} and ``low_score`` (number)."""
    where = f"cell {cell_id}: run_cell returned"
    if not isinstance(result, dict):
        raise ValueError(f"{where} {type(result).__name__}; return a dict with score and curve")
    if not _finite(result.get("score")):
        raise ValueError(f"{where} score={result.get('score')!r}; score must be a finite number")
    curve = result.get("curve")
    if not isinstance(curve, list | tuple) or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(_finite(v) for v in p) for p in curve
    ):
        raise ValueError(f"{where} a curve that is not a list of [x, y] number pairs")
    for name, value in (result.get("metrics") or {}).items():
        if value is not None and not _finite(value):
            raise ValueError(f"{where} metrics[{name!r}]={value!r}; give a number or null")
    if "low_score" in result and not _finite(result["low_score"]):
        raise ValueError(f"{where} low_score={result['low_score']!r}; give a finite number")
    return result
