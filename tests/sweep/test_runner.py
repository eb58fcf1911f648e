"""Running a sweep of the deterministic toy cell (``cells.py``): a 2 × 2 × 2 grid on local Ray
with the table checked by hand, resume, a failing cell, Ctrl-C, and the serial executor.

The grid (methods a, b × tasks t1, t:2 × seeds 0, 1): score = level + offset + 2 · seed with
level a = 10, b = 4 and offset t1 = 0, t:2 = 100; low_score t1 = 0, t:2 = 99; high = method a.

- t1/a: scores 10, 12 → mean 11; two values d = 2 apart have s = d/√2, so the 95 % half-width
  is t(1) · s/√2 = 12.706 · d/2 = 12.706. t1/b: 4, 6 → 5 ± 12.706. t:2/a: 111 ± 12.706.
- normalised t1: high = 11, low = 0 → a: 10/11, 12/11 → 1 ± 12.706 · (2/11)/2 = 1.1551;
  b: 4/11, 6/11 → 0.4545 ± 1.1551. t:2: high 111, low 99, span 12 → a: 1 ± 12.706/12 = 1.0588;
  b: 5/12, 7/12 → 0.5 ± 1.0588.
- the curve is (0, low), (10, low + 0.95 (score − low)), (20, score). t1/a seed 0: normalised
  0.95 · 10/11 = 0.864 at 10, 10/11 = 0.909 at 20 → reaches 0.9 at 20; seed 1: 0.95 · 12/11 =
  1.036 at 10 → 10. Mean 15 ± 12.706 · 10/2 = 63.53; the aux curve 'calls' (0, 0), (10, 5),
  (20, 9) gives 9 and 5 → 7 ± 25.41. t1/b never reaches 0.9 (6/11 < 0.9): 0 of 2.
- metric double = 2 · score: t1/a 22 ± 25.41.
"""

from pathlib import Path

import pytest

from unialign.cli import main
from unialign.sweep import SweepConfig, run_sweep

ray = pytest.importorskip("ray")

CELLS = Path(__file__).with_name("cells.py")
T = 12.706204736174696  # t₀.₉₇₅ with 1 degree of freedom = tan(0.475 π)


def _config(tmp_path: Path, **kw) -> SweepConfig:
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    data = dict(
        name="toy",
        experiment=f"{CELLS}:run_cell",
        out=str(tmp_path / "out"),
        methods=["a", "b"],
        tasks=["t1", "t:2"],
        seeds=2,
        base={"step": 2, "low": 0, "marker_dir": str(markers), "fail_flag": str(tmp_path / "flag")},
        task_settings={"t1": {"offset": 0}, "t:2": {"offset": 100, "low": 99}},
        method_settings={"a": {"level": 10}, "b": {"level": 4}},
        normalize={"low": "random", "high": "a"},
        ray={"num_cpus": 2},
    )
    return SweepConfig.model_validate(data | kw)


def _calls(tmp_path: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (tmp_path / "markers").iterdir())


def _row(table: dict, task: str, method: str) -> dict:
    return next(r for r in table["rows"] if r["task"] == task and r["method"] == method)


def _check_table(table: dict, complete: bool = True) -> None:
    """The module docstring's values; abs 1e-9 is far above float rounding of these sums.
    ``complete=False``: one t:2/b cell failed, so that row is left out."""
    a1, b1, a2, b2 = (_row(table, t, m) for t in ("t1", "t:2") for m in ("a", "b"))
    assert table["finished"] == (8 if complete else 7) and table["cells"] == 8
    scores = [(a1, 11), (b1, 5), (a2, 111)] + [(b2, 105)] * complete
    for row, mean in scores:
        assert row["n"] == 2 and row["score"]["mean"] == pytest.approx(mean, abs=1e-9)
        assert row["score"]["ci95"] == pytest.approx(T, rel=1e-9)
    normalised = [(a1, 1, T / 11), (b1, 5 / 11, T / 11), (a2, 1, T / 12)]
    for row, mean, half in normalised + [(b2, 0.5, T / 12)] * complete:
        assert row["normalized"]["mean"] == pytest.approx(mean, abs=1e-9)
        assert row["normalized"]["ci95"] == pytest.approx(half, rel=1e-9)
    assert a1["x_to_threshold"]["mean"] == 15 and a1["x_to_threshold"]["ci95"] == pytest.approx(
        5 * T
    )
    assert a1["aux_to_threshold"]["calls"]["mean"] == 7
    assert a1["aux_to_threshold"]["calls"]["ci95"] == pytest.approx(2 * T)
    assert b1["x_to_threshold"] == {"n": 0, "missing": 2, "mean": None, "ci95": None}
    assert a1["metrics"]["double"]["mean"] == 22 and a1["metrics"]["double"][
        "ci95"
    ] == pytest.approx(2 * T)
    assert (a1["low"], a1["high"], a2["low"], a2["high"]) == (0, 11, 99, 111)


def test_grid_on_local_ray_failing_cell_then_resume(tmp_path):
    """run_sweep starts a local Ray (2 CPUs) and runs the 8 cells as tasks. While the flag file
    exists cell b__t_2__s1 raises: the other 7 finish and write result.json, its traceback is
    in error.txt, the table counts 1 of 2 there, and Ray is shut down again. The rerun (serial,
    to spare a second Ray start-up; the skip logic is the executor's caller) finds the 7
    finished cells and runs only the failed one — 9 calls in all — removes error.txt, and the
    complete table has the module docstring's values."""
    (tmp_path / "flag").touch()
    cfg = _config(tmp_path, base=_config(tmp_path).base | {"fail_cell": "b__t_2__s1"})
    first = run_sweep(cfg, show=False)
    assert not ray.is_initialized() and first.ray_start_s is not None
    assert (
        list(first.failed) == ["b__t_2__s1"] and "boom in b__t_2__s1" in first.failed["b__t_2__s1"]
    )
    out = Path(cfg.out)
    err = out / "cells" / "b__t_2__s1" / "error.txt"
    assert "Traceback" in err.read_text() and "RuntimeError: boom" in err.read_text()
    assert first.ran == 7 and len(_calls(tmp_path)) == 8
    assert len(list(out.glob("cells/*/result.json"))) == 7
    assert (out / "cells" / "a__t_2__s1" / "artifact.txt").read_text() == "112"
    assert _row(first.table, "t:2", "b")["n"] == 1
    assert _row(first.table, "t:2", "b")["failed"] == ["b__t_2__s1"]
    _check_table(first.table, complete=False)  # the other three rows are complete already

    (tmp_path / "flag").unlink()
    second = run_sweep(cfg, serial=True, show=False)
    assert (second.skipped, second.ran, second.failed) == (7, 1, {})
    assert _calls(tmp_path).count("b__t_2__s1") == 2 and len(_calls(tmp_path)) == 9
    assert not err.exists()
    _check_table(second.table)
    assert "| t1 | a | 2/2 | 11.0 ± 12.7 | 1.00 ± 1.16 |" in (out / "table.md").read_text()
    assert (out / "curves_t1.png").stat().st_size > 0 and (out / "curves_t_2.png").exists()


def test_serial_interrupt_keeps_finished_cells(tmp_path):
    """Serial order is t1/a s0, s1, t1/b s0, …: while the flag file exists, KeyboardInterrupt
    in t1/b s0 stops the sweep with the two cells before it finished and kept; the rerun runs
    the other 6 (2 + 1 + 6 = 9 calls) and gives the table by hand."""
    (tmp_path / "flag").touch()
    cfg = _config(
        tmp_path, ray=False, base=_config(tmp_path).base | {"interrupt_cell": "b__t1__s0"}
    )
    first = run_sweep(cfg, show=False)
    assert first.interrupted and first.ran == 2 and first.table["finished"] == 2
    assert not (Path(cfg.out) / "cells" / "b__t1__s0" / "error.txt").exists()
    (tmp_path / "flag").unlink()
    second = run_sweep(cfg, show=False)
    assert not second.interrupted and (second.skipped, second.ran) == (2, 6)
    assert len(_calls(tmp_path)) == 9
    _check_table(second.table)


def test_changed_params_of_finished_cells_are_refused(tmp_path):
    cfg = _config(tmp_path, ray=False, seeds=1)
    run_sweep(cfg, show=False)
    changed = cfg.model_copy(update={"base": cfg.base | {"step": 3}})
    with pytest.raises(ValueError, match=r"a__t1__s0/result.json was made with other params"):
        run_sweep(changed, show=False)


def test_cli_serial_and_report_only(tmp_path, capsys):
    """`unialign sweep CONFIG --serial` runs the grid (exit 0) and prints the table;
    --report-only runs nothing (no new marker files); a config error exits 2."""
    import yaml

    cfg = _config(tmp_path)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["sweep", str(path), "--serial"]) == 0
    assert "toy: 8/8 cells finished" in capsys.readouterr().out
    assert main(["sweep", str(path), "--report-only"]) == 0
    assert len(_calls(tmp_path)) == 8
    _check_table(__import__("json").loads((Path(cfg.out) / "table.json").read_text()))
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json") | {"seeds": -1}))
    assert main(["sweep", str(path)]) == 2
