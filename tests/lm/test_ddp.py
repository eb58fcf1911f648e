"""Data parallel: 2 CPU processes (gloo) × batch 2 accumulate the gradient of 1 × batch 4.

Each process scores half of the step's examples; DDP averages gradients, and the loop scales
each process's loss by world_size / G, so the gradient is that of the whole global batch
(docs/lm-training.md, "Multi-GPU"). Compared as in ``test_accumulation.py`` (whose docstring
has the argument): the gradients just before each of 3 optimizer steps to n·u·max|g| per
tensor (n = the step's tokens; the all-reduce is one more regrouping of the same sums), and
the parameters after 3 steps of plain SGD, not AdamW, whose near-sign update would turn
rounding-level gradient differences into whole updates.
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from unialign.lm.config import LMTrainConfig
from unialign.lm.tiny import save_tiny, synthetic_preferences
from unialign.lm.train import train_lm

from .fp32 import assert_gradients_close, gradients_before_each_step, sgd_parameter_tolerance

STEPS = 3


def _cfg(root, out, batch_size):
    return LMTrainConfig(
        model=str(root / "model"), train_data=str(root / "data.jsonl"), batch_size=batch_size,
        max_steps=STEPS, optimizer="sgd", lr=1e-2, max_grad_norm=None, max_length=64,
        precision="fp32", output_dir=str(out),
    )  # fmt: skip


def _worker(rank, world, port, root):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    with gradients_before_each_step() as grads:
        train_lm(_cfg(root, root / "ddp", batch_size=2))
    if rank == 0:  # after the all-reduce every process holds the same gradient
        torch.save(grads, root / "ddp_grads.pt")
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_two_processes_match_one(tmp_path):
    save_tiny(tmp_path / "model")
    rows = synthetic_preferences(8, prompt_words=(3, 8), completion_words=(3, 12))
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with gradients_before_each_step() as single_g:
        train_lm(_cfg(tmp_path, tmp_path / "single", batch_size=4))
    mp.spawn(_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    ddp_g = torch.load(tmp_path / "ddp_grads.pt")

    single, ddp = _metrics(tmp_path / "single"), _metrics(tmp_path / "ddp")
    assert [m["step"] for m in ddp] == list(range(1, STEPS + 1))
    tols = []
    for s in range(STEPS):
        assert ddp[s]["lm/tokens"] == single[s]["lm/tokens"]  # the same examples
        n = single[s]["lm/tokens"]
        tols.append(assert_gradients_close(ddp_g[s], single_g[s], n, f"step {s + 1}"))
        assert ddp[s]["loss/total"] == pytest.approx(single[s]["loss/total"], rel=1e-4)
    names = [
        n for n, _ in AutoModelForCausalLM.from_pretrained(tmp_path / "model").named_parameters()
    ]
    lrs = [m["lm/lr"] for m in single]
    w1 = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    for k, name in enumerate(names):
        tol = sgd_parameter_tolerance([t[k] for t in tols], lrs, w1[name])
        err = float((w2[name] - w1[name]).abs().max())
        assert err <= tol, f"{name} differs by {err:.3g} > {tol:.3g}"
