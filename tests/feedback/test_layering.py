"""Imports point down: the feedback layer and the generic bilevel modules use no engine.

Every ``import`` and ``from ... import`` anywhere in a module (including inside functions and
``if TYPE_CHECKING:`` blocks) is read with ``ast``; relative imports are resolved first.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
FEEDBACK = SRC / "unialign" / "feedback"
# every module of bilevel/ is generic (SAC-specific A-PARL lives in control/): a new one is
# checked without being listed here
GENERIC_BILEVEL = sorted((SRC / "unialign" / "bilevel").glob("*.py"))


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, a module of ``package``.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: drop level − 1 trailing parts of the package
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _package(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1])  # a module's package; for __init__.py, the package itself


def _violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in paths:
        for line, module in imported_modules(path.read_text(encoding="utf-8"), _package(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(SRC)}:{line} imports {module}")
    return bad


def test_feedback_imports_no_engine_and_not_bilevel():
    modules = sorted(FEEDBACK.rglob("*.py"))
    assert FEEDBACK / "store.py" in modules and len(modules) >= 5
    assert _violations(modules, ("unialign.lm", "unialign.control", "unialign.bilevel")) == []


def test_generic_bilevel_modules_import_no_engine():
    modules = [p for p in GENERIC_BILEVEL if p.exists()]
    if not modules:
        pytest.skip("no generic bilevel module present")
    assert _violations(modules, ("unialign.lm", "unialign.control")) == []


def test_the_checker_sees_lazy_relative_and_package_imports():
    source = (
        "import os\n"
        "def f():\n"
        "    from unialign.lm.data import load_records\n"
        "    from ..control import types\n"
        "    from . import store\n"
        "    from unialign import bilevel\n"
        "    import unialign.control.sac as sac\n"
    )
    found = {m for _, m in imported_modules(source, "unialign.feedback")}
    assert {
        "os",
        "unialign.lm.data",
        "unialign.control.types",
        "unialign.feedback.store",
        "unialign.bilevel",
        "unialign.control.sac",
    } <= found
