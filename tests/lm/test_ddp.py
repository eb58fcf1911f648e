"""Data parallel: 2 CPU processes (gloo) × batch 2 follow the same trajectory as 1 × batch 4.

Each process scores half of the step's examples; DDP averages gradients,
and the loop scales each process's loss by world_size / G, so the update is the one of the
whole global batch (docs/lm-training.md, "Multi-GPU").
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from unialign.lm.config import LMTrainConfig
from unialign.lm.tiny import save_tiny, synthetic_preferences
from unialign.lm.train import train_lm


def _cfg(root, out, batch_size):
    return LMTrainConfig(
        model=str(root / "model"), train_data=str(root / "data.jsonl"), batch_size=batch_size,
        max_steps=3, lr=1e-4, max_length=64, precision="fp32", output_dir=str(out),
    )  # fmt: skip


def _worker(rank, world, port, root):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    train_lm(_cfg(root, root / "ddp", batch_size=2))
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss/total"], r["lm/grad_norm"]) for r in rows]


@pytest.mark.integration
def test_two_processes_match_one(tmp_path):
    save_tiny(tmp_path / "model")
    rows = synthetic_preferences(8, prompt_words=(3, 8), completion_words=(3, 12))
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    train_lm(_cfg(tmp_path, tmp_path / "single", batch_size=4))
    mp.spawn(_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)

    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert [s for s, *_ in ddp] == [1, 2, 3]
    for (_, l1, g1), (_, l2, g2) in zip(single, ddp):
        assert l2 == pytest.approx(l1, abs=1e-5)
        assert g2 == pytest.approx(g1, rel=1e-5)
    w1 = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    for name, t in w1.items():
        assert torch.allclose(w2[name], t, atol=1e-6, rtol=0), name
