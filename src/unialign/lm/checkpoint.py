"""Checkpoints of the offline LM loop: everything needed to continue as if never stopped.

A checkpoint directory ``output_dir/checkpoints/step-000012/`` holds

- ``trainable.safetensors``: the trainable parameters only (all weights for full
  fine-tuning, the adapter for LoRA), by parameter name;
- ``optimizer.pt``, ``scheduler.pt``: their ``state_dict()``;
- ``rng-<rank>.pt``: Python, NumPy, torch (and CUDA) generator states of each process;
- ``state.json``: step, examples consumed (the data-order position), metrics-file offset.

It is written to a temporary directory and renamed, so an interrupted save never leaves a
half checkpoint that ``--resume`` would pick up. Under FSDP the model and optimizer part is
delegated to ``accelerate``'s sharded ``save_state``/``load_state``.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["TrainState", "save_checkpoint", "load_checkpoint", "latest_checkpoint"]


@dataclass
class TrainState:
    """Loop position. ``examples_seen`` is the position in the (seeded, per-epoch) data order;
    ``metrics_offset`` the byte length of ``metrics.jsonl`` when the checkpoint was taken."""

    step: int = 0
    examples_seen: int = 0
    metrics_offset: int = 0


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_fsdp(accelerator) -> bool:
    return str(accelerator.distributed_type).endswith("FSDP")


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    done = sorted(root.glob("step-*")) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(
    output_dir: str | Path,
    *,
    accelerator,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    state: TrainState,
    keep: int = 1,
) -> Path:
    """Write a checkpoint of ``state.step`` (every process calls this); returns its path."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if _is_fsdp(accelerator):
        accelerator.save_state(str(tmp / "accelerate"))
    elif accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        weights = {
            n: p.detach().cpu().contiguous()
            for n, p in unwrapped.named_parameters()
            if p.requires_grad
        }
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: str | Path, *, accelerator, model: torch.nn.Module, optimizer, scheduler
) -> TrainState:
    """Restore what :func:`save_checkpoint` wrote, in place; returns the loop position."""
    path = Path(path)
    if _is_fsdp(accelerator):
        accelerator.load_state(str(path / "accelerate"))
    else:
        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(accelerator.unwrap_model(model).named_parameters())
        missing = sorted(set(weights) ^ {n for n, p in params.items() if p.requires_grad})
        if missing:
            raise ValueError(
                f"checkpoint {path} does not match the model's trainable parameters "
                f"(e.g. {missing[:3]}); was it written with another finetune setting?"
            )
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng-{accelerator.process_index}.pt"
    if rng.is_file():  # a different world size resumes with fresh per-process streams
        _set_rng_state(torch.load(rng, weights_only=False))
    return TrainState(**json.loads((path / "state.json").read_text()))
