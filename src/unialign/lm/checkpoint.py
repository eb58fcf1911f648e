"""Checkpoints of the offline LM loop: everything needed to continue as if never stopped.

A checkpoint directory ``output_dir/checkpoints/step-000012/`` holds

- ``trainable.safetensors``: the trainable parameters only (all weights for full
  fine-tuning, the adapter for LoRA), by parameter name;
- ``optimizer.pt``, ``scheduler.pt``: their ``state_dict()``;
- ``rng-<rank>.pt``: Python, NumPy, torch (and CUDA) generator states of each process;
- ``state.json``: step, examples consumed (the data-order position), metrics-file offset.

Crash safety (``kill -9`` at any moment): a ``step-N`` directory appears only by the rename of
a complete temporary directory (``.tmp-step-N``) and disappears only by a rename to
``.old-step-N`` before it is deleted, so ``checkpoints/`` always holds complete ``step-N``
directories and, at most, hidden leftovers of the save or deletion that was killed;
:func:`latest_checkpoint` reads only the former and the next save deletes the latter. (This
protects against a killed process, not a power loss: nothing is fsync'ed.) Under FSDP the model
and optimizer part is delegated to ``accelerate``'s sharded ``save_state``/``load_state``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "TrainState",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "remove_checkpoints",
]


@dataclass
class TrainState:
    """Loop position. ``examples_seen`` is the position in the (seeded, per-epoch) data order;
    ``metrics_offset`` the byte length of ``metrics.jsonl`` when the checkpoint was taken;
    ``metrics`` the last step's train metrics (without wall-clock values), which the summary of a
    run resumed from its final checkpoint reports."""

    step: int = 0
    examples_seen: int = 0
    metrics_offset: int = 0
    metrics: dict = field(default_factory=dict)


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


_STEP_DIR = re.compile(r"step-(\d+)")


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(N, root/step-N)`` for every ``step-N`` directory, by N."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name))]
    return sorted((n, p) for n, p in found if p.is_dir())


def _complete(path: Path) -> bool:
    return (path / "state.json").is_file()


def _discard(path: Path) -> None:
    """Delete a directory so that no reader ever sees it half deleted: rename, then remove."""
    aside = path.with_name(f".old-{path.name}")
    shutil.rmtree(aside, ignore_errors=True)
    path.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """What a killed save or deletion left: hidden ``.tmp-*``/``.old-*`` directories, and
    ``step-N`` directories without ``state.json`` (half deleted by an older version)."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(p, ignore_errors=True)
    for _, p in _step_dirs(root):
        if not _complete(p):
            _discard(p)


def remove_checkpoints(output_dir: str | Path) -> None:
    """Delete every checkpoint of a run (a fresh run must not leave any for a later ``--resume``
    to pick up); renamed away first, so a kill during the deletion leaves none half deleted."""
    root = Path(output_dir) / "checkpoints"
    if root.is_dir():
        _discard(root)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume`` continues from: the complete ``checkpoints/step-N`` with the
    largest N, or ``None``. Temporary or half-deleted directories are never returned."""
    done = [p for _, p in _step_dirs(Path(output_dir) / "checkpoints") if _complete(p)]
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
    """Write a checkpoint of ``state.step`` (every process calls this); returns its path.

    Keeps the ``keep`` newest checkpoints. Crash safe (module docstring): the checkpoint is
    complete in ``.tmp-step-N`` before it is renamed to ``step-N``.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        _remove_leftovers(root)
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
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))  # last: marks it complete
        if final.exists():  # the same step saved again
            _discard(final)
        tmp.rename(final)
        done = [p for _, p in _step_dirs(root) if _complete(p)]
        for old in done[:-keep]:
            _discard(old)
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
