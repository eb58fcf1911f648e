"""The control loop end to end at tiny scale: outputs, config errors, exact resume."""

import json

import pytest
import torch

from unialign.cli import main
from unialign.config import ConfigError, load_config
from unialign.control.config import ControlConfig
from unialign.control.demo import demo_config
from unialign.control.train import ExperimentalWarning, train_control

pytestmark = pytest.mark.integration


def _tiny(tmp_path, name, **kw):
    cfg = demo_config(tmp_path / name, quick=True)
    return cfg.model_copy(update=dict(progress=False, **kw))


@pytest.mark.parametrize("algo", ["oracle", "pebble", "aparl"])
def test_each_algorithm_writes_its_outputs(tmp_path, algo):
    cfg = _tiny(tmp_path, algo, algo=algo)
    summary = train_control(cfg)
    out = tmp_path / algo
    for name in (
        "metrics.jsonl",
        "summary.json",
        "learning_curve.png",
        "checkpoint.pt",
        "config.yaml",
    ):
        assert (out / name).exists(), name
    assert summary["env_steps"] == cfg.total_steps
    assert summary["eval/true_return"] is not None
    if algo == "oracle":
        assert summary["queries_used"] == 0
    else:
        assert (out / "feedback.sqlite").exists()
        # schedule: rounds at 300 (= random 200 + unsup 100) and 500, 10 queries each, budget 20
        assert summary["queries_used"] == 20
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == cfg.total_steps and "eval/true_return" in rows[-1]


def test_interrupted_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    full = _tiny(tmp_path, "full")
    train_control(full)
    part = _tiny(tmp_path, "part")
    assert train_control(part, stop_after=450)["interrupted"]
    train_control(part, resume=True)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["run"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["run"]
    assert a["step"] == b["step"] == full.total_steps
    for (ka, va), (kb, vb) in zip(a["agent"]["actor"].items(), b["agent"]["actor"].items()):
        assert ka == kb and torch.equal(va, vb), ka
    ra, rb = a["learner"]["model"], b["learner"]["model"]
    for (ka, va), (_kb, vb) in zip(ra.items(), rb.items()):
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), ka
    la = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert la == lb


def test_experimental_algorithms_say_so(tmp_path):
    with pytest.warns(ExperimentalWarning, match="aparl.*docs/aparl.md"):
        train_control(_tiny(tmp_path, "exp", total_steps=400, unsup_steps=50), stop_after=1)


def test_existing_run_directory_needs_resume(tmp_path):
    cfg = _tiny(tmp_path, "x")
    train_control(cfg, stop_after=250)
    with pytest.raises(ValueError, match="--resume"):
        train_control(cfg)


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: Pendulum-v1\nalgo: ppo\n")
    with pytest.raises(ConfigError, match="algo"):
        load_config(ControlConfig, bad)
    bad.write_text("env: Pendulum-v1\nmax_querys: 3\n")
    with pytest.raises(ConfigError, match="max_querys"):
        load_config(ControlConfig, bad)
    with pytest.raises(ConfigError, match="queries_per_round"):
        load_config(ControlConfig, None, {"max_queries": 5, "queries_per_round": 10})
    assert main(["train", "control", "--config", str(bad)]) == 2


def test_cli_flags_override_the_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("env: Pendulum-v1\nalgo: pebble\nseed: 1\n")
    cfg = load_config(ControlConfig, cfg_file, {"seed": 7, "hidden": "[8, 8]"})
    assert cfg.algo == "pebble" and cfg.seed == 7 and cfg.hidden == [8, 8]


def test_demo_command_quick(tmp_path):
    """`unialign demo --quick`: the main job's code path end to end, with the oracle run."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "aparl" and summary["queries_used"] == 20
    assert isinstance(summary["oracle/true_return"], float)
    for name in ("metrics.jsonl", "learning_curve.png", "feedback.sqlite", "checkpoint.pt"):
        assert (out / name).exists(), name
    # running it again starts a fresh run rather than failing on the finished one
    assert main(["demo", "--quick", "--out", str(out), "--no-oracle"]) == 0


def test_parallel_environments(tmp_path):
    """Two environments stepped together: steps count both, and the feedback schedule holds."""
    cfg = _tiny(tmp_path, "vec", algo="pebble", num_envs=2)
    summary = train_control(cfg)
    assert summary["env_steps"] == cfg.total_steps and summary["queries_used"] == 20
