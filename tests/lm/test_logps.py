"""Packed per-sequence log-probs: agreement with the unpacked layout, the definition, TRL.

The central property: packing several sequences into one row, with the document mask, gives
the same per-sequence log-probs as one sequence per padded row (float32, 1e-5), and without
the mask it does not (negative control: the mask is what makes packing correct).
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from unialign.lm.data import TokenizedPair
from unialign.lm.logps import chunked_token_logps, logit_transform, sequence_logps, token_logps
from unialign.lm.packing import (
    VARLEN_IMPLEMENTATIONS,
    attention_mask_for,
    pack_pairs,
    pack_sequences,
    pad_pairs,
)
from unialign.lm.tiny import build_tiny_model, tiny_config, train_tiny_tokenizer

TOL = dict(rtol=1e-6, atol=1e-5)  # float32: sums of ~40 log-probs of magnitude ~6


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


def _ids(rng: random.Random, lo: int, hi: int) -> list[int]:
    return [rng.randrange(6, 500) for _ in range(rng.randint(lo, hi))]


@pytest.fixture(scope="module")
def pairs() -> list[TokenizedPair]:
    """Varied lengths, including a 1-token prompt and an empty completion."""
    rng = random.Random(1)
    out = [TokenizedPair(_ids(rng, 1, 24), _ids(rng, 1, 30), _ids(rng, 1, 30)) for _ in range(7)]
    out.append(TokenizedPair([42], [43, 44, 45], []))
    return out


def naive_logps(model, seqs) -> torch.Tensor:
    """The definition, one sequence at a time through the full model (logits and all):
    ℓ = Σ over completion tokens t (that have a predecessor) of log softmax(logits[t-1])[y_t]."""
    out = []
    for prompt, completion in seqs:
        ids = torch.tensor([list(prompt) + list(completion)])
        logp = model(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)
        total = logp.new_zeros(())
        for t in range(max(len(prompt), 1), ids.shape[1]):
            total = total + logp[t - 1, ids[0, t]]
        out.append(total)
    return torch.stack(out)


def pair_seqs(pairs):
    return [
        s for p in pairs for s in ((p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids))
    ]


# (1) packed == unpacked ------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_matches_unpacked(tok, pairs, impl):
    model = build_tiny_model(tok, attn_implementation=impl)
    packed = pack_pairs(pairs, max_tokens_per_row=100, pad_id=tok.pad_token_id)
    padded = pad_pairs(pairs, pad_id=tok.pad_token_id)
    assert packed.shape[0] < padded.shape[0]
    assert int(packed.doc_ids.max()) >= 2  # at least one row holds 3+ sequences
    with torch.no_grad():
        lp, n = sequence_logps(model, packed, chunk_size=16)
        lu, nu = sequence_logps(model, padded, chunk_size=1000)
    torch.testing.assert_close(lp, lu, **TOL)
    assert torch.equal(n, nu)
    assert n.tolist() == [len(s[1]) for s in pair_seqs(pairs)]
    assert lp[-1] == 0 and n[-1] == 0  # the empty completion


# (2) negative control ----------------------------------------------------------------------------
def test_without_document_mask_packed_rows_leak(tok, pairs):
    """Restarting position_ids without the document mask: later documents see earlier ones.

    (a) with the ordinary 2-D padding mask; (b) with no mask at all and transformers' default
    ``use_cache=True`` (its own packed-sequence detection from position_ids is then skipped:
    the trap the anchors measured on the GPU machine).
    """
    model = build_tiny_model(tok, attn_implementation="sdpa")
    packed = pack_pairs(pairs, max_tokens_per_row=100, pad_id=tok.pad_token_id)
    with torch.no_grad():
        good, _ = sequence_logps(model, packed)
        sel = packed.seq_index >= 0
        for kwargs in (
            dict(attention_mask=(packed.doc_ids >= 0).long(), use_cache=False),
            dict(),
        ):
            h = model.model(
                input_ids=packed.input_ids, position_ids=packed.position_ids, **kwargs
            ).last_hidden_state
            tok_lp = model.lm_head(h[sel]).log_softmax(-1)
            tok_lp = tok_lp.gather(-1, packed.target_ids[sel][:, None])[:, 0]
            leaky = torch.zeros(packed.num_sequences).index_add(0, packed.seq_index[sel], tok_lp)
            first = packed.seq_start == 0  # first document of its row: nothing to leak from
            torch.testing.assert_close(leaky[first], good[first], **TOL)
            assert float((leaky[~first] - good[~first]).abs().max()) > 1e-2


# (3) chunked LM head ---------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 50, 64])
def test_chunked_token_logps_matches_full_log_softmax(chunk_size):
    T, H, V = 50, 12, 37  # 7 does not divide 50; 64 > T
    torch.manual_seed(0)
    hidden = torch.randn(T, H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (T,))
    upstream = torch.randn(T, dtype=torch.float64)

    def grads(out):
        return torch.autograd.grad((out * upstream).sum(), (hidden, weight, bias))

    ref = F.linear(hidden, weight, bias).log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    got = chunked_token_logps(hidden, weight, targets, chunk_size=chunk_size, bias=bias)
    assert got.dtype == torch.float32 and got.shape == (T,)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-5)
    for g, r in zip(grads(got.double()), grads(ref)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_chunked_transforms_and_temperature():
    """logit_scale → softcap → temperature, in that order (TRL's fused head)."""
    T, H, V = 9, 8, 21
    hidden, weight = torch.randn(T, H), torch.randn(V, H)
    targets = torch.randint(0, V, (T,))
    z = F.linear(hidden, weight) * 0.5
    z = 3.0 * torch.tanh(z / 3.0) / 0.7
    ref = z.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    got = chunked_token_logps(
        hidden,
        weight,
        targets,
        chunk_size=4,
        logit_scale=0.5,
        final_logit_softcapping=3.0,
        temperature=0.7,
    )
    torch.testing.assert_close(got, ref)


def test_chunked_head_saves_only_its_inputs_for_backward():
    """No ``[chunk, V]`` logits are kept for the backward (each chunk is recomputed)."""
    T, H, V = 64, 8, 1000
    hidden = torch.randn(T, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    targets = torch.randint(0, V, (T,))
    largest = [0]

    def pack(t):
        largest[0] = max(largest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = chunked_token_logps(hidden, weight, targets, chunk_size=16)
    assert largest[0] <= V * H  # the weight itself; never 16 × V logits (or T × V)
    out.sum().backward()
    assert hidden.grad is not None and weight.grad is not None


# (4) the definition, gradients included ------------------------------------------------------
def test_sequence_logps_matches_naive_loop_with_gradients(tok, pairs):
    model = build_tiny_model(tok, attn_implementation="sdpa")
    seqs = pair_seqs(pairs)
    weights = torch.randn(len(seqs))
    packed = pack_pairs(pairs, max_tokens_per_row=90, pad_id=tok.pad_token_id)
    got, _ = sequence_logps(model, packed, chunk_size=32)
    (got * weights).sum().backward()
    g_got = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ref = naive_logps(model, seqs)
    (ref * weights).sum().backward()
    torch.testing.assert_close(got, ref, **TOL)
    for k, p in model.named_parameters():
        torch.testing.assert_close(g_got[k], p.grad, rtol=1e-4, atol=1e-5, msg=k)


def test_tied_embeddings(tok, pairs):
    cfg = tiny_config(tok)
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    packed = pack_pairs(pairs[:4], max_tokens_per_row=90, pad_id=tok.pad_token_id)
    got, _ = sequence_logps(model, packed)
    got.sum().backward()
    g = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    ref = naive_logps(model, pair_seqs(pairs[:4]))
    ref.sum().backward()
    torch.testing.assert_close(got, ref, **TOL)
    torch.testing.assert_close(g, model.model.embed_tokens.weight.grad, rtol=1e-4, atol=1e-5)


def test_temperature(tok, pairs):
    model = build_tiny_model(tok)
    seqs = pair_seqs(pairs[:2])
    with torch.no_grad():
        got, _ = sequence_logps(
            model, pack_sequences(seqs, max_tokens_per_row=200, pad_id=0), temperature=0.6
        )
        ref = []
        for p, c in seqs:
            ids = torch.tensor([p + c])
            lp = (model(input_ids=ids).logits[0] / 0.6).log_softmax(-1)
            ref.append(sum(lp[t - 1, ids[0, t]] for t in range(len(p), ids.shape[1])))
    torch.testing.assert_close(got, torch.stack(ref), **TOL)


def test_matches_trl_dpo_logps(tok, pairs):
    """TRL 1.16's DPO log-probs (its collator + fused LM head, as in ``_compute_loss``)."""
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    model = build_tiny_model(tok)
    trl_model = copy.deepcopy(model)
    add_fused_lm_head(trl_model)
    examples = [
        dict(prompt_ids=p.prompt_ids, chosen_ids=p.chosen_ids, rejected_ids=p.rejected_ids)
        for p in pairs
    ]
    inputs = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples)
    completion_mask = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    with torch.no_grad():
        out = trl_model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=labels,
            use_cache=False,
            fused_lm_head=True,
        )
        trl_chosen, trl_rejected = (
            out.log_probs[:, -(completion_mask.size(1) - 1) :].sum(1).chunk(2)
        )
        ours, _ = sequence_logps(
            model, pack_pairs(pairs, max_tokens_per_row=128, pad_id=tok.pad_token_id)
        )
    torch.testing.assert_close(ours[0::2], trl_chosen, **TOL)
    torch.testing.assert_close(ours[1::2], trl_rejected, **TOL)


# logit transforms of other architectures, sliding windows ------------------------------------
def _other_arch(kind: str):
    common = dict(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    if kind == "gemma2":  # final_logit_softcapping + alternating sliding-window layers
        from transformers import Gemma2Config

        cfg = Gemma2Config(
            **common, head_dim=8, sliding_window=6, final_logit_softcapping=2.0,
            attn_logit_softcapping=None, pad_token_id=0,
        )  # fmt: skip
        assert "sliding_attention" in cfg.layer_types
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    from transformers import CohereConfig

    cfg = CohereConfig(**common, logit_scale=0.25, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")


@pytest.mark.parametrize("kind", ["gemma2", "cohere"])
def test_logit_transforms_and_sliding_window(kind):
    model = _other_arch(kind)
    rng = random.Random(2)
    seqs = [
        (_ids(rng, 2, 10), [rng.randrange(1, 300) for _ in range(rng.randint(4, 14))])
        for _ in range(5)
    ]
    seqs = [([min(t, 299) for t in p], c) for p, c in seqs]
    with torch.no_grad():
        got, _ = sequence_logps(model, pack_sequences(seqs, max_tokens_per_row=64, pad_id=0))
        ref = naive_logps(model, seqs)
    torch.testing.assert_close(got, ref, **TOL)


def test_unsupported_logit_field_is_named(tok):
    cfg = tiny_config(tok)
    cfg.logits_scaling = 4.0
    with pytest.raises(NotImplementedError, match="logits_scaling"):
        logit_transform(cfg)


# varlen (flash-attention style) plumbing, with a stand-in kernel ------------------------------
def test_varlen_path_passes_cu_seq_lens(tok, pairs, monkeypatch):
    """Rows are flattened and the documents delimited by ``cu_seq_lens``; checked with a varlen
    attention function registered with transformers that runs SDPA per document."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seen = []

    def varlen_attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kw):
        assert attention_mask is None
        cu = kw["cu_seq_lens_q"]
        seen.append(cu.tolist())
        outs = [
            sdpa_attention_forward(
                module,
                q[:, :, a:b],
                k[:, :, a:b],
                v[:, :, a:b],
                None,
                scaling=scaling,
                is_causal=True,
            )[0]
            for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())
        ]
        return torch.cat(outs, 1), None

    AttentionInterface.register("unialign_test_varlen", varlen_attention)
    monkeypatch.setattr(
        "unialign.lm.packing.VARLEN_IMPLEMENTATIONS",
        VARLEN_IMPLEMENTATIONS | {"unialign_test_varlen"},
    )
    model = build_tiny_model(tok)
    padded = pad_pairs(pairs, pad_id=tok.pad_token_id)
    packed = pack_pairs(pairs, max_tokens_per_row=100, pad_id=tok.pad_token_id)
    with torch.no_grad():
        ref, _ = sequence_logps(model, padded)
        model.set_attn_implementation("unialign_test_varlen")
        got, _ = sequence_logps(model, packed)
    assert seen and seen[0][-1] == packed.num_tokens and len(seen[0]) == 2 * len(pairs) + 1
    torch.testing.assert_close(got, ref, **TOL)


# (7) errors -------------------------------------------------------------------------------------
def test_unsupported_attention_implementation_is_an_error(tok, pairs):
    model = build_tiny_model(tok)
    model.config._attn_implementation = "paged|sdpa"
    batch = pack_pairs(pairs[:2], max_tokens_per_row=100, pad_id=0)
    with pytest.raises(ValueError, match="'paged\\|sdpa' is not supported"):
        attention_mask_for(model, batch)
    with pytest.raises(ValueError, match="not supported"):
        token_logps(model, batch)


def test_sequence_longer_than_row_is_an_error(pairs):
    with pytest.raises(ValueError, match="sequence 0 has"):
        pack_pairs(pairs, max_tokens_per_row=3, pad_id=0)


# flex attention ----------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_attention_packed_matches_unpacked_cuda(tok, pairs, dtype):
    model = build_tiny_model(tok, dtype=dtype, attn_implementation="flex_attention").cuda()
    packed = pack_pairs(pairs, max_tokens_per_row=128, pad_id=tok.pad_token_id)
    padded = pad_pairs(pairs, pad_id=tok.pad_token_id)
    assert type(attention_mask_for(model, packed.to("cuda"))).__name__ == "BlockMask"
    with torch.no_grad():
        got, n = sequence_logps(model, packed)
        ref, _ = sequence_logps(model, padded)
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    else:  # bf16 activations: compare per token (the logits carry ~1e-2 relative error)
        per_token = (got - ref).abs() / n.clamp_min(1)
        assert float(per_token.max()) < 2e-2


@pytest.mark.slow
def test_flex_attention_on_cpu(tok, pairs):
    """The BlockMask path on CPU (compiles flex attention: ~20 s, so opt-in)."""
    model = build_tiny_model(tok, attn_implementation="flex_attention")
    ref_model = build_tiny_model(tok, attn_implementation="sdpa")
    with torch.no_grad():
        got, _ = sequence_logps(model, pack_pairs(pairs, max_tokens_per_row=100, pad_id=0))
        ref, _ = sequence_logps(ref_model, pad_pairs(pairs, pad_id=0))
    torch.testing.assert_close(got, ref, **TOL)
