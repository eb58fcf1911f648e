"""Grid expansion, cell ids, settings precedence and config validation (pure, fast)."""

from pathlib import Path

import pytest
import yaml

from unialign.config import ConfigError
from unialign.sweep import Cell, SweepConfig, cell_id, expand, load_sweep_config, task_slug
from unialign.sweep.experiments import check_result, load_experiment

CELLS = Path(__file__).with_name("cells.py")


def _cfg(**kw) -> SweepConfig:
    data = dict(name="t", experiment=f"{CELLS}:run_cell", out="unused", methods=["m"],
                tasks=["t"], seeds=1)  # fmt: skip
    return SweepConfig.model_validate(data | kw)


def _write(tmp_path: Path, **kw) -> Path:
    data = dict(name="t", out=str(tmp_path / "out"), methods=["oracle"], tasks=["Pendulum-v1"])
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data | kw))
    return path


def test_task_slug_and_cell_id_follow_the_contract():
    """task_slug replaces every character outside [A-Za-z0-9._-] by '_'; the id is
    method__slug__s{seed} then __k=v for grid keys in sorted order (values as str() prints)."""
    assert task_slug("metaworld:door-open-v3") == "metaworld_door-open-v3"
    assert task_slug("a/b c.d_e") == "a_b_c.d_e"
    assert cell_id("aparl", "dmc:walker-walk", 3, {}) == "aparl__dmc_walker-walk__s3"
    grid = {"lr": 0.001, "damping": 1.0}
    assert (
        cell_id("pebble", "Reacher-v5", 0, grid) == "pebble__Reacher-v5__s0__damping=1.0__lr=0.001"
    )


def test_settings_precedence_base_task_method_grid():
    """base → task_settings → method_settings → grid, later wins: x from the task, y from the
    method, z from the grid, w from base."""
    cfg = _cfg(
        base={"x": 0, "y": 0, "z": 0, "w": 0},
        task_settings={"t": {"x": 1, "y": 1, "z": 1}},
        method_settings={"m": {"y": 2, "z": 2}},
        grid={"z": [3]},
    )
    (cell,) = expand(cfg)
    assert cell.params == {"x": 1, "y": 2, "z": 3, "w": 0}
    assert cell.grid == {"z": 3}
    assert cell.cell_id == "m__t__s0__z=3"


def test_expansion_counts_order_and_seeds():
    """2 methods × 2 tasks × 3 seeds × (2 × 3 grid combinations) = 72 cells; an int n means
    seeds 0..n-1, a list is taken as given; cells are ordered task, method, combination, seed."""
    cfg = _cfg(methods=["a", "b"], tasks=["t1", "t2"], seeds=3,
               grid={"p": [1, 2], "q": ["x", "y", "z"]})  # fmt: skip
    cells = expand(cfg)
    assert len(cells) == 72 and len({c.cell_id for c in cells}) == 72
    assert [c.seed for c in cells[:3]] == [0, 1, 2]
    assert cells[0].cell_id == "a__t1__s0__p=1__q=x"
    assert cells[3].grid == {"p": 1, "q": "y"}
    assert cells[-1].cell_id == "b__t2__s2__p=2__q=z"
    assert {c.seed for c in expand(_cfg(seeds=[7, 3]))} == {7, 3}
    assert isinstance(cells[0], Cell) and hash(cells[0]) == hash(expand(cfg)[0])


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"methods": ["oracle", "pebbel"]}, "['pebbel'] are not control algorithms; choose from ['aparl', 'oracle', 'pebble']"),
        ({"base": {"totl_steps": 5}}, "base has unknown control field(s) ['totl_steps']"),
        ({"task_settings": {"Pendulum-v1": {"env": "x"}}}, "task_settings.Pendulum-v1 sets ['env']"),
        ({"task_settings": {"Reacher-v5": {}}}, "task_settings names ['Reacher-v5'], not in tasks"),
        ({"method_settings": {"aparl": {}}}, "method_settings names ['aparl'], not in methods"),
        ({"normalize": {"high": "pebble"}}, "normalize.high is method 'pebble'"),
        ({"normalize": {"low": "zero"}}, "low must be 'random', a number or {task: number}"),
        ({"seeds": 0}, "seeds must be ≥ 1"),
        ({"grid": {"lr": []}}, "grid.lr is an empty list"),
        ({"tasks": ["a:b", "a_b"]}, "two cells share the id oracle__a_b__s0"),
        ({"experiment": "nonsense"}, "experiment must be 'control'"),
        ({"seed": 3}, "unknown field(s) seed"),
        ({"ray": {"cpus_per_cell": 0}}, "field 'ray.cpus_per_cell'"),
        ({"base": {"max_queries": 10, "queries_per_round": 20}},
         "cell oracle__Pendulum-v1__s0: its params do not make a valid control run"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(tmp_path, fields, needle):
    if "base" in fields and "max_queries" in fields["base"]:
        fields["methods"] = ["pebble"]  # the query budget is checked for learners only
        needle = needle.replace("oracle__", "pebble__")
    with pytest.raises(ConfigError) as e:
        load_sweep_config(_write(tmp_path, **fields))
    assert needle in str(e.value), str(e.value)
    assert str(tmp_path / "sweep.yaml") in str(e.value)


def test_ray_false_means_serial_and_experiment_paths_resolve_beside_the_config(tmp_path):
    (tmp_path / "cells.py").write_text(CELLS.read_text())
    cfg = load_sweep_config(_write(tmp_path, experiment="cells.py:run_cell", ray=False))
    assert cfg.ray.enabled is False and cfg.ray.cpus_per_cell == 1
    assert cfg.experiment == f"{tmp_path / 'cells.py'}:run_cell"
    assert load_experiment(cfg.experiment).__name__ == "run_cell"


def test_experiment_loading_errors(tmp_path):
    assert load_experiment("control").__module__ == "unialign.sweep.control"
    with pytest.raises(ValueError, match="no file"):
        load_experiment(f"{tmp_path}/missing.py:run_cell")
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_experiment(f"{CELLS}:nope")
    with pytest.raises(ValueError, match="cannot import 'no_such_pkg.mod'"):
        load_experiment("no_such_pkg.mod:run_cell")
    assert load_experiment("unialign.sweep.control:run_cell").__name__ == "run_cell"


@pytest.mark.parametrize(
    ("result", "needle"),
    [
        ([1], "returned list"),
        ({"curve": []}, "score=None"),
        ({"score": float("nan"), "curve": []}, "score=nan"),
        ({"score": 1.0, "curve": [[0, 1, 2]]}, "[x, y] number pairs"),
        ({"score": 1.0, "curve": [], "metrics": {"q": "many"}}, "metrics['q']='many'"),
        ({"score": 1.0, "curve": [], "low_score": None}, "low_score=None"),
    ],
)
def test_check_result_names_the_broken_key(result, needle):
    with pytest.raises(ValueError) as e:
        check_result(result, "c1")
    assert "cell c1" in str(e.value) and needle in str(e.value)
    assert check_result({"score": 1, "curve": [[0, 1.5]]}, "c1")["score"] == 1
