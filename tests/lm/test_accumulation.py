"""Exact gradient accumulation: 8 × 1, 1 × 8 and 2 × 4 accumulate the same gradient.

Each micro-batch contributes Σ_i loss_i / G with G the examples of the whole optimizer step,
so the accumulated gradient is the gradient of the mean over all G examples however they are
split. The test compares that gradient itself, captured just before each optimizer step, and
the parameters after two steps of plain SGD (``optimizer: sgd``).

Why not AdamW: its first updates are lr·g/(|g| + ε) ≈ lr·sign(g), so wherever |g| is of the
order of ε a rounding-level difference in g becomes a whole update of difference; comparing
weights after Adam steps tests the platform's rounding, not the accumulation. SGD's update is
linear in g and carries a gradient difference over unamplified.

The tolerance, from float32 summation. The splits compute the same sums in different orders:
every entry of the gradient is a sum over the step's n token positions (n = ``lm/tokens``,
840 here: each position contributes one term to a weight's gradient), grouped per micro-batch
and then across micro-batches, over sequences packed into rows of different lengths. Reordering
a sum of n fp32 terms moves it by at most ≈ n·u·Σ|terms| (u = 2⁻²⁴). For Σ|terms| of an entry
we take the largest |entry| of the same tensor's gradient, and with n as large as it is the
bound has ample headroom: the worst case grows like n while rounding errors typically grow
like √n (measured: the largest difference is 3 % of the bound, with 1 or 2 threads). A real
accumulation error (a missing 1/grad_accum, a dropped or repeated micro-batch) moves entries
by O(max|g|), 1/(n·u) ≈ 2·10⁴ times the tolerance. At step 2 the parameters of the splits
already differ by lr·Δg₁ (SGD: unamplified), which moves g₂ by a further ≈ lr·H·Δg₁ — small at
lr = 1e-2, within the same bound. The parameters then agree to Σ_s lr_s·tol_s plus one rounding
of θ − lr·g per step and run (``fp32.sgd_parameter_tolerance``).

``loss/total`` is computed before any accumulation (only the packing differs): a mean of
per-example losses of sequence log-prob sums ℓ over ≤ 64 tokens of one sign (relative error
≤ 64·u ≈ 4e-6 each); the losses' relative sensitivity to ℓ is below 25 here (IPO at h ≈ 0), so
1e-4 relative.

``aot`` sorts within a batch and ``kto``'s KL baseline is a batch mean: neither is micro-batch
invariant, by definition (docs/lm-training.md).
"""

import json

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from unialign.lm.config import LMTrainConfig
from unialign.lm.tiny import save_tiny, synthetic_preferences
from unialign.lm.train import train_lm

from .fp32 import assert_gradients_close, gradients_before_each_step, sgd_parameter_tolerance

LR = 1e-2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("acc")
    save_tiny(d / "model")
    rows = synthetic_preferences(8, prompt_words=(3, 8), completion_words=(3, 12))
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def _run(tiny, out, batch_size, grad_accum, loss):
    cfg = LMTrainConfig(
        model=str(tiny / "model"), train_data=str(tiny / "data.jsonl"), loss=loss,
        batch_size=batch_size, grad_accum=grad_accum, max_steps=2, optimizer="sgd", lr=LR,
        max_grad_norm=None, max_length=64, precision="fp32", output_dir=str(out),
    )  # fmt: skip
    with gradients_before_each_step() as grads:
        train_lm(cfg)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return grads, metrics, load_file(str(out / "model" / "model.safetensors"))


@pytest.mark.integration
@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_accumulation_is_exact(tmp_path, tiny, loss):
    names = [n for n, _ in AutoModelForCausalLM.from_pretrained(tiny / "model").named_parameters()]
    ref_g, ref_m, ref_w = _run(tiny, tmp_path / "b8", 8, 1, loss)
    assert len(ref_g) == 2 and len(ref_g[0]) == len(names)
    lrs = [m["lm/lr"] for m in ref_m]
    for bs, acc in ((1, 8), (2, 4)):
        g, m, w = _run(tiny, tmp_path / f"b{bs}x{acc}", bs, acc, loss)
        what = f"{loss} {bs}x{acc} vs 8x1"
        tols = []  # [step][parameter]
        for s in range(2):
            assert m[s]["lm/tokens"] == ref_m[s]["lm/tokens"]  # the same examples
            tols.append(
                assert_gradients_close(
                    g[s], ref_g[s], ref_m[s]["lm/tokens"], f"{what} step {s + 1}"
                )
            )
            assert m[s]["loss/total"] == pytest.approx(ref_m[s]["loss/total"], rel=1e-4)
        for k, name in enumerate(names):
            tol = sgd_parameter_tolerance([t[k] for t in tols], lrs, ref_w[name])
            err = float((w[name] - ref_w[name]).abs().max())
            assert err <= tol, f"{what}: {name} differs by {err:.3g} > {tol:.3g}"
            # the check has teeth: the two SGD updates move the weights far beyond it
        moved = max(float((ref_w[n] - w0).abs().max()) for n, w0 in _initial(tiny).items())
        assert moved > 1e3 * max(max(t) for t in tols) * LR


def _initial(tiny):
    return load_file(str(tiny / "model" / "model.safetensors"))
