"""Exact gradient accumulation: 1 × 8, 2 × 4 and 8 × 1 give the same update.

Each micro-batch contributes Σ_i loss_i / G with G the examples of the whole optimizer step,
so the accumulated gradient is the gradient of the mean over all G examples regardless of how
they are split. AdamW's first steps are nearly scale-invariant (update ≈ lr·sign(g)), so the
test also compares the gradient norm, which a wrong 1/accum factor would change. The same
near scale-invariance amplifies float rounding where |g| is of the order of Adam's ε (an
update of lr·g/(|g|+ε)): lr is 1e-4 so that 1e-6 on the parameters is ~1 % of one update.
``aot`` sorts within a batch and ``kto``'s KL baseline is a batch mean: neither is micro-batch
invariant, by definition (docs/lm-training.md).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from unialign.lm.config import LMTrainConfig
from unialign.lm.tiny import save_tiny, synthetic_preferences
from unialign.lm.train import train_lm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("acc")
    save_tiny(d / "model")
    rows = synthetic_preferences(8, prompt_words=(3, 8), completion_words=(3, 12))
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def _run(tiny, out, batch_size, grad_accum, loss="sigmoid"):
    cfg = LMTrainConfig(
        model=str(tiny / "model"), train_data=str(tiny / "data.jsonl"), loss=loss,
        batch_size=batch_size, grad_accum=grad_accum, max_steps=2, lr=1e-4,
        max_grad_norm=1e9, max_length=64, precision="fp32", output_dir=str(out),
    )  # fmt: skip
    train_lm(cfg)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(out / "model" / "model.safetensors")), metrics


@pytest.mark.integration
@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_accumulation_is_exact(tmp_path, tiny, loss):
    ref_w, ref_m = _run(tiny, tmp_path / "b8", 8, 1, loss)
    for bs, acc in ((1, 8), (2, 4)):
        w, m = _run(tiny, tmp_path / f"b{bs}x{acc}", bs, acc, loss)
        for a, b in zip(ref_m, m):
            assert b["loss/total"] == pytest.approx(a["loss/total"], abs=1e-6)
            assert b["lm/grad_norm"] == pytest.approx(a["lm/grad_norm"], rel=1e-5)
            assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-6)
        for name, t in ref_w.items():
            assert torch.allclose(w[name], t, atol=1e-6, rtol=0), name
