"""Crash-safe checkpoints: whatever moment a process dies at, ``latest_checkpoint`` returns a
complete checkpoint (or none), never a temporary or half-deleted directory.

A save interrupted by an exception leaves exactly what ``kill -9`` at that point leaves (the
save has no cleanup handler), so raising inside a save stands in for killing it there.
"""

import json

import pytest
import torch
from accelerate import Accelerator

from unialign.lm import checkpoint as ckpt_mod
from unialign.lm.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)


def _parts(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def _save(out, step, model, opt, sched, keep=1):
    kw = dict(accelerator=Accelerator(cpu=True), model=model, optimizer=opt, scheduler=sched)
    return save_checkpoint(
        out, state=TrainState(step=step, examples_seen=2 * step), keep=keep, **kw
    )


def _load(path):
    model, opt, sched = _parts(seed=1)
    state = load_checkpoint(path, accelerator=Accelerator(cpu=True), model=model, optimizer=opt,
                            scheduler=sched)  # fmt: skip
    return state, model


def test_latest_checkpoint_reads_only_complete_step_dirs(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [
        ("step-000005", True),
        ("step-000010", True),
        ("step-000040", False),  # half deleted (no state.json)
        (".tmp-step-000050", True),  # a save that was killed before its rename
        (".old-step-000060", True),  # a deletion that was killed after its rename
        ("step-000070.bak", True),  # not ours
    ]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == root / "step-000010"  # by number, complete only
    (root / "step-1000000").mkdir()  # past 6 digits: numeric order, not lexicographic
    (root / "step-1000000" / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == root / "step-1000000"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _parts()
    first = _save(tmp_path, 1, model, opt, sched)
    at_first = model.weight.detach().clone()
    with torch.no_grad():
        model.weight += 1.0

    real_save = torch.save

    def dies_at_the_scheduler(obj, path, *a, **k):
        if str(path).endswith("scheduler.pt"):
            raise RuntimeError("killed")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_at_the_scheduler)
    with pytest.raises(RuntimeError, match="killed"):
        _save(tmp_path, 2, model, opt, sched)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)

    root = tmp_path / "checkpoints"
    assert (root / ".tmp-step-000002" / "trainable.safetensors").is_file()  # the half save
    assert latest_checkpoint(tmp_path) == first
    state, restored = _load(first)
    assert state.step == 1 and torch.equal(restored.weight, at_first)

    # the next save removes the leftovers; keep=1 drops step 1 (renamed away, then deleted)
    (root / ".old-step-000000").mkdir()  # a deletion killed midway
    second = _save(tmp_path, 2, model, opt, sched)
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]
    state, restored = _load(second)
    assert state.step == 2 and state.examples_seen == 4
    assert torch.equal(restored.weight, model.weight)


def test_saving_a_step_again_replaces_it(tmp_path):
    model, opt, sched = _parts()
    _save(tmp_path, 3, model, opt, sched, keep=2)
    with torch.no_grad():
        model.weight.zero_()
    path = _save(tmp_path, 3, model, opt, sched, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000003"]
    assert torch.equal(_load(path)[1].weight, torch.zeros(2, 3))
    assert json.loads((path / "state.json").read_text())["step"] == 3


def test_remove_checkpoints(tmp_path):
    model, opt, sched = _parts()
    _save(tmp_path, 1, model, opt, sched)
    remove_checkpoints(tmp_path)
    assert latest_checkpoint(tmp_path) is None and not (tmp_path / "checkpoints").exists()
    remove_checkpoints(tmp_path)  # nothing to remove: no error
