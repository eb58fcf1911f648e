"""GGUF → plain transformers directory, on a tiny GGUF written here with the ``gguf`` writer.

The test file is a 2-layer llama (hidden 64) with a byte-level BPE tokenizer and a chat
template, written the way llama.cpp's converter writes one: llama.cpp's tensor names, q/k rows
permuted into its rotary layout, the vocabulary, merges, token types and special ids under the
``tokenizer.ggml.*`` keys. Loading it back through transformers must give the original model's
logits exactly (F32) or within the quantization error (Q8_0), and the converted directory must
give the same logits as the GGUF loaded directly, with no gguf involvement.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from unialign.lm.gguf import convert_gguf, main
from unialign.lm.tiny import train_tiny_tokenizer

gguf = pytest.importorskip("gguf")

HEADS, KV_HEADS, HIDDEN, LAYERS = 4, 2, 64, 2
TEXTS = ["hello world", "<|im_start|>user\nabc def<|im_end|>\n", "  two  spaces</s>"]

# transformers parameter name (within a layer) → llama.cpp tensor name
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _rotary_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' half-split rotary layout → llama.cpp's interleaved one (per head, rows
    ``[a0..a_{d/2-1}, b0..]`` become ``[a0, b0, a1, b1, ...]``); the loader undoes it."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tokenizer_vocab(tok) -> tuple[list[str], list[str]]:
    """Tokens in id order (added tokens included) and merges as ``"a b"`` strings."""
    state = json.loads(tok.backend_tokenizer.to_str())
    tokens: list[str | None] = [None] * len(tok)
    for t, i in state["model"]["vocab"].items():
        tokens[i] = t
    for added in state["added_tokens"]:
        tokens[added["id"]] = added["content"]
    assert all(t is not None for t in tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    return tokens, merges  # type: ignore[return-value]


def write_tiny_gguf(path, model: LlamaForCausalLM, tok, *, qtype: str = "F32") -> None:
    """Write ``model`` and ``tok`` as a llama GGUF; ``qtype`` ``Q8_0`` quantizes the matrices."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("unialign-tiny")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    tokens, merges = _tokenizer_vocab(tok)
    special = set(tok.all_special_ids)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3 = CONTROL
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in _LAYER_NAMES.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    state = model.state_dict()
    for hf, gg in names.items():
        a = state[hf].detach().float().numpy()
        if ".attn_q." in gg:
            a = _rotary_permute(a, cfg.num_attention_heads)
        elif ".attn_k." in gg:
            a = _rotary_permute(a, cfg.num_key_value_heads)
        a = np.ascontiguousarray(a, dtype=np.float32)
        if qtype == "Q8_0" and a.ndim == 2:
            q = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(gg, gguf.quants.quantize(a, q), raw_dtype=q)
        else:
            w.add_tensor(gg, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(vocab_size=300)


@pytest.fixture(scope="module")
def reference(tok) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=["F32", "Q8_0"])
def gguf_file(request, tmp_path_factory, reference, tok):
    path = tmp_path_factory.mktemp(f"gguf_{request.param}") / "tiny.gguf"
    write_tiny_gguf(path, reference, tok, qtype=request.param)
    return request.param, path


def _logits(model, tok) -> torch.Tensor:
    ids = tok(TEXTS[1] + TEXTS[0])["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_convert_matches_direct_gguf_load(gguf_file, tmp_path, tok, reference, monkeypatch):
    qtype, path = gguf_file
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    direct_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The hand-written file is right: the GGUF holds the reference model (exactly in F32; Q8_0
    # rounds each weight to 1/254 of its block's absmax, about 6e-3 here on logits up to 0.7).
    if qtype == "F32":
        torch.testing.assert_close(_logits(direct, tok), _logits(reference, tok), rtol=0, atol=0)
    else:
        torch.testing.assert_close(_logits(direct, tok), _logits(reference, tok), rtol=0, atol=3e-2)

    out = convert_gguf(path, tmp_path / "model")
    assert out == (tmp_path / "model").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left behind
    assert not list(out.glob("*.gguf"))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    # Load with the gguf package unimportable: nothing about the result needs it.
    monkeypatch.setitem(sys.modules, "gguf", None)
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    converted_tok = AutoTokenizer.from_pretrained(out)
    monkeypatch.undo()
    assert getattr(converted, "hf_quantizer", None) is None
    assert converted.dtype == torch.float32
    # Same weights, same architecture, same CPU kernels: the same logits, bit for bit.
    torch.testing.assert_close(_logits(converted, tok), _logits(direct, tok), rtol=0, atol=0)

    for text in TEXTS:
        expected = tok(text)["input_ids"]
        assert direct_tok(text)["input_ids"] == expected
        assert converted_tok(text)["input_ids"] == expected
    assert converted_tok.chat_template == tok.chat_template
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        assert getattr(converted_tok, attr) == getattr(tok, attr)
    chat = [{"role": "user", "content": "abc"}]
    assert converted_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )


def test_existing_output_and_failures_leave_no_partial_directory(gguf_file, tmp_path):
    _, path = gguf_file
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_gguf(path, out)
    assert (out / "keep.txt").exists()

    convert_gguf(path, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    with pytest.raises(FileNotFoundError):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "never")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(Exception):  # noqa: B017 - whatever the reader raises
        convert_gguf(bad, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "model"]


def test_module_entry_point(tmp_path, reference, tok, capsys):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, reference, tok)
    assert main([str(path), str(tmp_path / "m"), "--dtype", "bfloat16"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").dtype == torch.bfloat16
    assert main([str(path), str(tmp_path / "m")]) == 1
    assert "exists" in capsys.readouterr().err
