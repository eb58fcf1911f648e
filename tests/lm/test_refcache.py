"""Reference log-probs: one packed pass, the on-disk cache and its key, LoRA's base model."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from unialign.lm.data import TokenizedPair, TokenizedUnpaired
from unialign.lm.logps import sequence_logps
from unialign.lm.packing import pad_pairs, pad_unpaired
from unialign.lm.refcache import (
    ReferenceCache,
    adapter_disabled,
    compute_reference_logps,
    compute_reference_logps_unpaired,
    data_fingerprint,
    fingerprint,
    parameters_fingerprint,
    reference_logps,
)
from unialign.lm.tiny import build_tiny_model, train_tiny_tokenizer

TOL = dict(rtol=1e-6, atol=1e-5)


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs() -> list[TokenizedPair]:
    rng = random.Random(3)

    def ids(lo, hi):
        return [rng.randrange(6, 500) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair(ids(1, 15), ids(1, 20), ids(1, 20)) for _ in range(9)]


def test_cache_computes_once_and_round_trips_exactly(tmp_path):
    calls = []
    chosen, rejected = torch.randn(6), torch.randn(6)

    def compute():
        calls.append(1)
        return chosen.clone(), rejected.clone()

    cache = ReferenceCache(tmp_path / "ref")
    fp = "ab" * 32
    c1, r1 = cache.get_or_compute(fp, compute)
    c2, r2 = ReferenceCache(tmp_path / "ref").get_or_compute(fp, compute)  # a later run
    assert len(calls) == 1
    assert torch.equal(c2, chosen) and torch.equal(r2, rejected)  # bit-exact
    assert torch.equal(c1, c2) and torch.equal(r1, r2)
    manifest = json.loads((tmp_path / "ref" / fp / "manifest.json").read_text())
    assert manifest["fingerprint"] == fp and manifest["tensors"] == {"chosen": [6], "rejected": [6]}
    # a corrupt entry is recomputed, never trusted
    (tmp_path / "ref" / fp / "manifest.json").write_text('{"fingerprint": "other"}')
    cache.get_or_compute(fp, compute)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="invalid fingerprint"):
        cache.get_or_compute("../escape", compute)


def test_fingerprint_tracks_data_weights_and_settings(tmp_path, tok, pairs):
    model = build_tiny_model(tok)
    path = tmp_path / "model"
    model.save_pretrained(path)
    cfg = model.config.to_dict()
    data = data_fingerprint(pairs)
    extra = {"max_length": 512, "dtype": "float32"}
    base = fingerprint(str(path), cfg, data, extra)
    assert base == fingerprint(str(path), cfg, data_fingerprint(list(pairs)), dict(extra))
    # the data: one token changed, or the order
    changed = copy.deepcopy(pairs)
    changed[4] = TokenizedPair(
        changed[4].prompt_ids, changed[4].chosen_ids + [7], changed[4].rejected_ids
    )
    assert fingerprint(str(path), cfg, data_fingerprint(changed), extra) != base
    assert fingerprint(str(path), cfg, data_fingerprint(pairs[::-1]), extra) != base
    # the settings, the config
    assert fingerprint(str(path), cfg, data, {**extra, "max_length": 256}) != base
    assert fingerprint(str(path), {**cfg, "rope_theta": 1.0}, data, extra) != base
    # the weights on disk
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    model.save_pretrained(path)
    assert fingerprint(str(path), cfg, data, extra) != base
    # in-memory models: hash the parameters
    p1 = parameters_fingerprint(model)
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-6
    assert parameters_fingerprint(model) != p1
    # unpaired labels count
    u = [TokenizedUnpaired([1], [2], True)]
    assert data_fingerprint(u) != data_fingerprint([TokenizedUnpaired([1], [2], False)])


def test_compute_reference_logps_matches_scoring_and_restores_mode(tok, pairs):
    model = build_tiny_model(tok)
    model.train()
    ref_c, ref_r = compute_reference_logps(
        model,
        pairs,
        max_tokens_per_row=64,
        pad_id=tok.pad_token_id,
        rows_per_step=2,
        progress=False,
    )
    assert model.training and ref_c.shape == (len(pairs),) and not ref_c.requires_grad
    with torch.no_grad():
        direct, _ = sequence_logps(model.eval(), pad_pairs(pairs, pad_id=tok.pad_token_id))
    torch.testing.assert_close(ref_c, direct[0::2], **TOL)
    torch.testing.assert_close(ref_r, direct[1::2], **TOL)
    # packing in blocks (large data sets) gives the same numbers
    seqs = [
        s for p in pairs for s in ((p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids))
    ]
    blocked = reference_logps(
        model, seqs, max_tokens_per_row=64, pad_id=0, rows_per_step=1, chunk_size=8,
        progress=True, block_sequences=5,
    )  # fmt: skip
    torch.testing.assert_close(blocked, direct, **TOL)
    # all rows in one forward (the training loop's per-micro-batch reference)
    whole = reference_logps(model, seqs, max_tokens_per_row=64, pad_id=0, rows_per_step=None)
    torch.testing.assert_close(whole, direct, **TOL)
    unpaired = [TokenizedUnpaired(p.prompt_ids, p.chosen_ids, True) for p in pairs]
    u = compute_reference_logps_unpaired(
        model, unpaired, max_tokens_per_row=64, pad_id=0, progress=False
    )
    with torch.no_grad():
        direct_u, _ = sequence_logps(model, pad_unpaired(unpaired, pad_id=0))
    torch.testing.assert_close(u, direct_u, **TOL)


def test_adapter_disabled_gives_the_base_model(tok, pairs):
    peft = pytest.importorskip("peft")
    base = build_tiny_model(tok)
    lora = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    batch = pad_pairs(pairs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        want, _ = sequence_logps(base, batch)
        with_adapter, _ = sequence_logps(lora, batch)
        with adapter_disabled(lora):
            got, _ = sequence_logps(lora, batch)
        again, _ = sequence_logps(lora, batch)  # re-enabled on exit
    assert float((with_adapter - want).abs().max()) > 1e-3  # the adapter is not a no-op
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(again, with_adapter, **TOL)
    ref_c, ref_r = compute_reference_logps(
        lora, pairs, max_tokens_per_row=64, pad_id=tok.pad_token_id, disable_adapter=True,
        progress=False,
    )  # fmt: skip
    torch.testing.assert_close(ref_c, want[0::2], **TOL)
    torch.testing.assert_close(ref_r, want[1::2], **TOL)
    # gradients flow to the LoRA weights only through the packed scoring
    logps, _ = sequence_logps(lora, batch)
    logps.sum().backward()
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    with pytest.raises(TypeError, match="disable_adapter"), adapter_disabled(base):
        pass


def test_cache_write_killed_midway_is_never_read(tmp_path, monkeypatch):
    """An entry appears and is replaced only by renames: a write that dies after its tensors
    (before its manifest) leaves the old entry readable and no new one; the hidden temporary
    directory a ``kill -9`` would leave behind is not an entry."""
    from unialign.lm import refcache

    cache = ReferenceCache(tmp_path / "ref")
    old, new = "ab" * 32, "cd" * 32
    cache.store(old, {"chosen": torch.ones(3), "rejected": torch.zeros(3)})

    def dies(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(refcache.json, "dumps", dies)  # the manifest is written second
    for fp in (old, new):
        with pytest.raises(RuntimeError, match="killed"):
            cache.store(fp, {"chosen": torch.full((3,), 7.0), "rejected": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(cache.load(old)["chosen"], torch.ones(3))
    assert new not in cache and cache.load(new) is None
    (tmp_path / "ref" / f".{new[:16]}-leftover").mkdir()  # what kill -9 leaves
    (tmp_path / "ref" / f".{new[:16]}-leftover" / ReferenceCache.FILE).write_bytes(b"\0" * 8)
    assert new not in cache
    assert [p.name for p in (tmp_path / "ref").iterdir() if not p.name.startswith(".")] == [old]
