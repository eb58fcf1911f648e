"""Loading the scripts under ``benchmarks/`` in tests: they are files, not a package."""

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """A fresh module of ``benchmarks/<name>.py`` (its own imports of ``_lm_bench`` and the
    like work as when it runs as a script: the script puts its folder on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
