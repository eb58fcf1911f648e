"""Interrupt and resume: the resumed run ends where the uninterrupted one does.

A SIGINT (raised from the ``on_step`` hook, so the loop's real signal handler sees it) makes
the loop checkpoint at the step boundary and return; ``resume=True`` restores weights,
optimizer, schedule, RNG states and the data-order position. The data (8 pairs, batch 3)
crosses an epoch boundary, and the LoRA case has dropout, so the RNG state matters. A
``kill -9`` (no handler runs) is continued from the last periodic checkpoint.

Exact comparisons, on purpose: the resumed and the uninterrupted run do the same float
operations in the same order (same batch shapes, same process and thread configuration, same
machine, restored optimizer state and RNG), so their parameters and every metrics line except
the wall-clock ``lm/tokens_per_s`` are bit-identical; any difference is a resume bug, not
rounding. (Runs that differ in batch shape or process count are compared with float32
tolerances instead: ``test_accumulation.py``, ``test_ddp.py``.)
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unialign.lm import train as train_mod
from unialign.lm.checkpoint import latest_checkpoint
from unialign.lm.config import LMTrainConfig
from unialign.lm.tiny import save_tiny, synthetic_preferences
from unialign.lm.train import TIMING_KEYS, train_lm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    save_tiny(d / "model")
    rows = synthetic_preferences(8, prompt_words=(3, 8), completion_words=(3, 12))
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def _cfg(tiny, out, **kw):
    return LMTrainConfig(
        model=str(tiny / "model"), train_data=str(tiny / "data.jsonl"), batch_size=3,
        max_steps=6, lr=1e-3, max_length=64, precision="fp32", eval_fraction=0.25,
        output_dir=str(out), **kw,
    )  # fmt: skip


def _lines(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def _interrupt_at(k):
    def on_step(step, metrics):
        if step == k:
            signal.raise_signal(signal.SIGINT)

    return on_step


@pytest.mark.integration
@pytest.mark.parametrize(
    "extra",
    [{}, {"finetune": "lora", "lora_r": 4, "lora_dropout": 0.2, "precompute_ref": False}],
    ids=["full", "lora_dropout"],
)
def test_resume_matches_uninterrupted(tmp_path, tiny, extra):
    full = _cfg(tiny, tmp_path / "a", **extra)
    assert train_lm(full)["steps"] == 6

    cut = _cfg(tiny, tmp_path / "b", **extra)
    summary = train_lm(cut, on_step=_interrupt_at(3))
    assert summary["interrupted"] and summary["steps"] == 3
    ckpt = tmp_path / "b" / "checkpoints" / "step-000003"
    assert json.loads((ckpt / "state.json").read_text())["examples_seen"] == 9
    assert not (tmp_path / "b" / "model").exists()
    assert train_lm(cut, resume=True)["steps"] == 6

    # exact: identical arithmetic (module docstring)
    assert _lines(tmp_path / "a") == _lines(tmp_path / "b")
    _assert_same_weights(tmp_path / "a", tmp_path / "b")


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name, t in wa.items():
        assert torch.equal(wb[name], t), name


@pytest.mark.integration
def test_killed_during_final_evaluation_or_export_is_finished_by_resume(
    tmp_path, tiny, monkeypatch
):
    """The final checkpoint precedes the final evaluation and export: a run that dies in
    either (an exception leaves what ``kill -9`` there leaves) is finished by ``resume`` with
    the same metrics lines (the final evaluation's once), summary and weights."""
    full = train_lm(_cfg(tiny, tmp_path / "a"))

    def dies(*a, **k):
        raise RuntimeError("killed")

    # eval_every is 0: the final evaluation is the only call of evaluate
    for name, target in (("eval", "evaluate"), ("export", "save_policy")):
        cfg = _cfg(tiny, tmp_path / name)
        monkeypatch.setattr(train_mod, target, dies)
        with pytest.raises(RuntimeError, match="killed"):
            train_lm(cfg)
        monkeypatch.undo()
        assert latest_checkpoint(tmp_path / name).name == "step-000006"
        resumed = train_lm(cfg, resume=True)
        assert _lines(tmp_path / "a") == _lines(tmp_path / name), name
        assert {**resumed, "wall_s": 0, "outputs": 0} == {**full, "wall_s": 0, "outputs": 0}
        _assert_same_weights(tmp_path / "a", tmp_path / name)


def _cli(tmp_path, tiny, name, **fields):
    """The ``unialign train lm`` command of a JSON config, and its environment (the thread
    count of this test session, so that two CLI runs do the same arithmetic)."""
    cfg = tmp_path / f"{name}.yaml"
    base = dict(model=str(tiny / "model"), train_data=str(tiny / "data.jsonl"), batch_size=2,
                max_length=64, output_dir=str(tmp_path / name))  # fmt: skip
    cfg.write_text(json.dumps({**base, **fields}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # fmt: skip
    return [sys.executable, "-m", "unialign", "train", "lm", "--config", str(cfg)], env


def _wait_for(condition, proc, timeout):
    """Poll ``condition()`` until true, the process ends, or ``timeout`` s (bounded: a broken
    run fails the test instead of hanging it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.slow  # two CLI process start-ups (~6 s of imports each on 2 cores)
def test_cli_sigint_checkpoints_and_resumes(tmp_path, tiny):
    """A real SIGINT to a CLI process: it saves at the next step boundary and exits cleanly;
    ``--resume`` continues from that step."""
    cmd, env = _cli(tmp_path, tiny, "run", max_steps=100000, lr=1e-4, schedule="constant")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, proc, 90)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]  # interrupted: checkpointed, exit 130
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    k = summary["steps"]
    assert summary["interrupted"] and k >= 2
    assert len(metrics.read_text().splitlines()) == k
    res = subprocess.run([*cmd, "--resume", "--max-steps", str(k + 2)], env=env,
                         capture_output=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, k + 3))


@pytest.mark.slow  # three CLI process start-ups (~6 s of imports each on 2 cores)
def test_cli_kill_9_then_resume_matches_uninterrupted(tmp_path, tiny):
    """``kill -9`` (no handler, no cleanup) as soon as a periodic checkpoint exists, whatever
    the run is doing then (a step, a metrics line, the next checkpoint); ``--resume`` finishes
    the run, and it ends as the uninterrupted one does: the same final weights, summary
    (without wall time) and metrics lines, each step once. Exact: identical arithmetic
    (module docstring)."""
    fields = dict(max_steps=24, save_every=2, lr=1e-3, eval_fraction=0.25)
    cmd_a, env = _cli(tmp_path, tiny, "a", **fields)
    res = subprocess.run(cmd_a, env=env, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]

    cmd_b, env = _cli(tmp_path, tiny, "b", **fields)
    proc = subprocess.Popen(cmd_b, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    found = _wait_for(lambda: latest_checkpoint(tmp_path / "b") is not None, proc, 120)
    proc.kill()  # SIGKILL
    _, err = proc.communicate(timeout=60)
    assert found, f"no checkpoint appeared (exit {proc.returncode}): {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "summary.json").exists()  # killed before the end

    res = subprocess.run([*cmd_b, "--resume"], env=env, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert b"no checkpoint" not in res.stdout  # it continued from one

    steps = [m["step"] for m in _lines(tmp_path / "b")]
    assert steps == [m["step"] for m in _lines(tmp_path / "a")]
    assert len([m for m in _lines(tmp_path / "b") if "loss/total" in m]) == 24  # no repeats
    assert _lines(tmp_path / "a") == _lines(tmp_path / "b")
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    for s in (sa, sb):
        s.pop("wall_s")
        s["outputs"] = {k: Path(v).name for k, v in s["outputs"].items()}  # different dirs
    assert sa == sb
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    names = [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()]
    assert names == ["step-000024"]  # keep_checkpoints: 1, no leftovers
