"""Interrupt and resume: the resumed run ends where the uninterrupted one does.

A SIGINT (raised from the ``on_step`` hook, so the loop's real signal handler sees it) makes
the loop checkpoint at the step boundary and return; ``resume=True`` restores weights,
optimizer, schedule, RNG states and the data-order position. Parameters must agree to 1e-6
(fp32, CPU) and every metrics line of the overlapping steps must be identical except the
wall-clock ``lm/tokens_per_s``. The data (8 pairs, batch 3) crosses an epoch boundary, and
the LoRA case has dropout, so the RNG state matters.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

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

    assert _lines(tmp_path / "a") == _lines(tmp_path / "b")
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for name, t in wa.items():
        assert torch.allclose(wb[name], t, atol=1e-6, rtol=0), name


@pytest.mark.slow  # two CLI process start-ups (~6 s of imports each on 2 cores)
def test_cli_sigint_checkpoints_and_resumes(tmp_path, tiny):
    """A real SIGINT to a CLI process: it saves at the next step boundary and exits cleanly;
    ``--resume`` continues from that step."""
    cfg = tmp_path / "c.yaml"
    fields = dict(model=str(tiny / "model"), train_data=str(tiny / "data.jsonl"), batch_size=2,
                  max_steps=100000, lr=1e-4, schedule="constant", max_length=64,
                  output_dir=str(tmp_path / "run"))  # fmt: skip
    cfg.write_text(json.dumps(fields))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "unialign", "train", "lm", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
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
