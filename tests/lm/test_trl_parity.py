"""Parity with TRL 1.16's DPOTrainer: tokenization, per-sequence log-probs, first-step losses.

One tiny random Qwen2 policy and a *different* random reference model (so that the log-ratios
are not zero and every objective is tested away from its first-step invariant), 4 pairs, fp32
on CPU. TRL builds its trainer once per data format; its ``compute_loss`` on the collated
batch is the loss of its first optimizer step, and a forward hook on each model reads TRL's
per-sequence log-probs (the fused LM head returns per-token log-probs, 0 off the completion).
We score the same data with :mod:`unialign.lm.data` → ``pack_pairs`` → ``sequence_logps``
and call our objectives with the keyword arguments that reproduce TRL's definitions:

- ``ipo``: TRL divides the log-ratios by the completion length = our default ``normalize=True``;
- ``bco_pair``: TRL has no running-mean reward shift = our ``delta=0``;
- ``robust``/``exo_pair``: TRL's ``label_smoothing`` = ours; ``discopop``: ``discopop_tau`` = ``tau``;
- f-divergences: TRL's ``f_divergence_type`` with ``loss_type="sigmoid"`` = our ``fdpo_*``;
  TRL's ``f_alpha_divergence_coef`` a is our ``alpha = 1 − a``.
"""

import json

import pytest
import torch
from datasets import Dataset

from unialign.lm.data import load_preference_data
from unialign.lm.logps import sequence_logps
from unialign.lm.packing import pack_pairs
from unialign.lm.tiny import build_tiny_model, save_tiny, synthetic_preferences
from unialign.losses import PairedLogps, get_loss

trl = pytest.importorskip("trl")

BETA = 0.1
# (TRL settings, unialign objective, unialign kwargs)
CASES = [
    ({"loss_type": "sigmoid"}, "sigmoid", {}),
    ({"loss_type": "ipo"}, "ipo", {"normalize": True}),
    ({"loss_type": "hinge"}, "hinge", {}),
    ({"loss_type": "robust", "label_smoothing": 0.1}, "robust", {"label_smoothing": 0.1}),
    ({"loss_type": "bco_pair"}, "bco_pair", {"delta": 0.0}),
    ({"loss_type": "sppo_hard"}, "sppo_hard", {}),
    ({"loss_type": "nca_pair"}, "nca_pair", {}),
    ({"loss_type": "apo_zero"}, "apo_zero", {}),
    ({"loss_type": "apo_down"}, "apo_down", {}),
    ({"loss_type": "discopop", "discopop_tau": 0.05}, "discopop", {"tau": 0.05}),
    ({"loss_type": "exo_pair", "label_smoothing": 1e-3}, "exo_pair", {"label_smoothing": 1e-3}),
    ({"loss_type": "sigmoid_norm"}, "sigmoid_norm", {}),
    ({"loss_type": "aot"}, "aot", {}),
    ({"loss_type": "aot_unpaired"}, "aot", {"unpaired": True}),
    ({"loss_type": "sigmoid", "f_divergence_type": "reverse_kl"}, "fdpo_reverse_kl", {}),
    ({"loss_type": "sigmoid", "f_divergence_type": "forward_kl"}, "fdpo_forward_kl", {}),
    ({"loss_type": "sigmoid", "f_divergence_type": "js_divergence"}, "fdpo_js", {}),
    (
        {"loss_type": "sigmoid", "f_divergence_type": "alpha_divergence", "alpha_coef": 0.3},
        "fdpo_alpha",
        {"alpha": 0.7},
    ),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("parity")
    save_tiny(d / "policy")
    tok = AutoTokenizer.from_pretrained(d / "policy")
    policy = AutoModelForCausalLM.from_pretrained(d / "policy", attn_implementation="sdpa")
    ref = build_tiny_model(tok, seed=1)  # a different reference: log-ratios ≠ 0
    return d, tok, policy.float(), ref.float().eval()


def _trl_trainer(d, tok, policy, ref, rows):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(d / "trl"), per_device_train_batch_size=len(rows), report_to=[],
        save_strategy="no", use_cpu=True, bf16=False, max_length=256, beta=BETA,
        dataset_num_proc=None, loss_type=["sigmoid"], logging_steps=1000,
    )  # fmt: skip
    return DPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )  # fmt: skip


class _SequenceLogps:
    """Forward hook: the per-sequence log-probs TRL sums (``outputs.log_probs`` is 0 where
    the label is masked, so its row sums are TRL's ``logps``)."""

    def __init__(self, model):
        self.value = None
        self.handle = model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.value = output.log_probs.detach().sum(dim=1)


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_logps_and_losses_match_trl(tmp_path, models, fmt):
    d, tok, policy, ref = models
    rows = synthetic_preferences(4, fmt=fmt, seed=3, prompt_words=(3, 8), completion_words=(3, 10))
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    trainer = _trl_trainer(d, tok, policy, ref, rows)

    # tokenization: the same prompt / completion ids (TRL appends EOS to text completions; the
    # chat template closes conversational turns)
    ours = load_preference_data(path, tok, fmt=fmt, max_length=256).pairs
    theirs = trainer.train_dataset
    for i, pair in enumerate(ours):
        assert pair.prompt_ids == theirs[i]["prompt_ids"], i
        assert pair.chosen_ids == theirs[i]["chosen_ids"], i
        assert pair.rejected_ids == theirs[i]["rejected_ids"], i

    inputs = trainer.data_collator([theirs[i] for i in range(len(rows))])
    hooks = [_SequenceLogps(trainer.model), _SequenceLogps(trainer.ref_model)]

    batch = pack_pairs(ours, max_tokens_per_row=512, pad_id=tok.pad_token_id)
    with torch.no_grad():
        pol, n = sequence_logps(policy, batch)
        rl, _ = sequence_logps(ref, batch)
    ours_batch = PairedLogps(pol[0::2], pol[1::2], rl[0::2], rl[1::2], n[0::2], n[1::2])
    assert ((pol - rl).abs() > 1e-2).all()  # policy ≠ reference

    checked = 0
    for trl_settings, name, kwargs in CASES:
        settings = dict(trl_settings)
        trainer.loss_types = [settings.pop("loss_type")]
        trainer.f_divergence_type = settings.pop("f_divergence_type", "reverse_kl")
        trainer.f_alpha_divergence_coef = settings.pop("alpha_coef", 1.0)
        trainer.label_smoothing = settings.pop("label_smoothing", 0.0)
        trainer.args.discopop_tau = settings.pop("discopop_tau", 0.05)
        assert not settings
        with torch.no_grad():
            trl_loss = float(trainer.compute_loss(trainer.model, inputs))
        trl_pol, trl_ref = hooks[0].value, hooks[1].value
        # TRL's batch is [chosen..., rejected...]; ours interleaves (2i chosen, 2i+1 rejected).
        # The sums are ~1e2 in float32 (resolution ~1e-5): 1e-6 relative is a few ulp.
        torch.testing.assert_close(pol[0::2], trl_pol[:4], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(pol[1::2], trl_pol[4:], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(rl[0::2], trl_ref[:4], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(rl[1::2], trl_ref[4:], rtol=1e-6, atol=1e-5)
        # the objective, on TRL's own log-probs (so that only the definitions are compared:
        # sppo_hard's (r − 1/2β)² would turn an ulp of the sums into 1e-4 of the loss)
        same_inputs = PairedLogps(
            trl_pol[:4], trl_pol[4:], trl_ref[:4], trl_ref[4:], n[0::2], n[1::2]
        )
        ours_loss = float(get_loss(name).fn(same_inputs, beta=BETA, **kwargs).losses.mean())
        assert ours_loss == pytest.approx(trl_loss, abs=1e-5), (name, trl_settings)
        # and end to end on our log-probs, where the loss is smooth in them at this scale. Our
        # packed log-probs may differ from TRL's padded ones by the tolerance above (~1e-4 at
        # |ℓ| ≈ 10²: another reduction order); z moves by β per unit of each of the 4 log-probs
        # of a pair and these losses by ≲ 2 per unit of z, so ≲ 1e-4 (measured: ≤ 2.4e-6).
        if name not in ("sppo_hard", "ipo"):
            e2e = float(get_loss(name).fn(ours_batch, beta=BETA, **kwargs).losses.mean())
            assert e2e == pytest.approx(trl_loss, abs=1e-4), (name, trl_settings)
        checked += 1
    for h in hooks:
        h.handle.remove()
    assert checked == len(CASES)
