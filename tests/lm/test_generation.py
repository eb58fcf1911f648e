"""Sampling for the online loop (tiny random Qwen2, hidden 64, 2 layers) and re-scoring.

What must hold: every sequence stops on its own (EOS, stop string, max_new_tokens) and the
stored ids are exactly the prompt the model saw and the tokens it sampled, with no padding,
whatever the batch layout; the same seed gives the same samples; the stored completions score
under the training model as a fresh, unpacked forward pass scores them.
"""

from __future__ import annotations

import copy

import pytest
import torch

from unialign.lm.generation import (
    Generations,
    Sampler,
    SamplingParams,
    TransformersSampler,
    completion_logps,
    encode_prompts,
    generate,
)
from unialign.lm.tiny import build_tiny_model, train_tiny_tokenizer

PROMPTS = [
    "abc def ghi jkl mno",
    "x",
    [{"role": "user", "content": "hello there"}],
    "qwe rty",
]


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


@pytest.fixture
def model(tok):
    return build_tiny_model(tok).eval()


def with_head_bias(model, bias: dict[int, float]):
    """Replace the LM head by one with a bias (same weight), ``bias[token] = value``: a large
    value forces the token, a very negative one forbids it."""
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight = old.weight
    with torch.no_grad():
        head.bias.zero_()
        for t, v in bias.items():
            head.bias[t] = v
    model.set_output_embeddings(head)
    return model


def check_stored_ids(g: Generations, tok, prompts, params: SamplingParams, eos: int) -> None:
    """The invariants every Generations must satisfy."""
    encoded = encode_prompts(tok, prompts)
    K = params.num_samples
    assert len(g) == len(prompts) * K and g.num_prompts == len(prompts) and g.num_samples == K
    assert g.prompt_index == tuple(i for i in range(len(prompts)) for _ in range(K))
    for n in range(len(g)):
        ids, reason = g.completion_ids[n], g.stop_reason[n]
        assert g.prompt_ids[n] == tuple(encoded[g.prompt_index[n]])
        assert 1 <= len(ids) <= params.max_new_tokens
        assert eos not in ids[:-1]  # nothing is stored after the end
        if reason == "eos":
            assert ids[-1] == eos
        elif reason == "length":
            assert len(ids) == params.max_new_tokens and ids[-1] != eos
        else:
            assert reason == "stop"
            assert any(s in tok.decode(ids, skip_special_tokens=True) for s in params.stop)
            assert not any(s in tok.decode(ids[:-1], skip_special_tokens=True) for s in params.stop)
            assert any(g.texts[n].endswith(s) for s in params.stop)
        if reason != "stop":
            assert g.texts[n] == tok.decode(ids, skip_special_tokens=True)
    assert g.completion_tokens == sum(len(c) for c in g.completion_ids)
    assert g.prompt_tokens == sum(len(p) for p in g.prompt_ids)


# (1) where sequences stop -----------------------------------------------------------------------
def test_forced_eos_ends_every_sequence_at_once(tok, model):
    with_head_bias(model, {tok.eos_token_id: 1e4})
    params = SamplingParams(num_samples=3, max_new_tokens=10, seed=0)
    g = generate(model, tok, PROMPTS, params, batch_size=5)
    assert set(g.completion_ids) == {(tok.eos_token_id,)}  # EOS is stored: the update scores it
    assert set(g.stop_reason) == {"eos"} and set(g.texts) == {""}
    check_stored_ids(g, tok, PROMPTS, params, tok.eos_token_id)


def test_without_eos_every_sequence_runs_to_max_new_tokens(tok, model):
    with_head_bias(model, {tok.eos_token_id: -1e4})
    params = SamplingParams(num_samples=2, max_new_tokens=7, seed=0)
    g = generate(model, tok, PROMPTS, params, batch_size=3)
    assert set(g.stop_reason) == {"length"} and set(map(len, g.completion_ids)) == {7}
    check_stored_ids(g, tok, PROMPTS, params, tok.eos_token_id)


@pytest.mark.parametrize("pad", ["<pad>", "eos"])
def test_per_sequence_eos_and_no_padding_in_stored_ids(tok, model, pad):
    """EOS at probability ~0.15 per step: within one batch, rows end at different steps while
    others run to the limit, and generate pads the finished rows. The pad token is forbidden to
    the model, so any pad id in the stored ids would be leaked padding. With pad == EOS (as in
    SmolLM2) the rows are padded with EOS, and only the first one may be kept."""
    tok = copy.deepcopy(tok)
    if pad == "eos":
        tok.pad_token = tok.eos_token
    bias = {tok.eos_token_id: 4.5}
    if tok.pad_token_id != tok.eos_token_id:
        bias[tok.pad_token_id] = -1e4
    with_head_bias(model, bias)
    params = SamplingParams(num_samples=6, max_new_tokens=12, seed=3)
    g = generate(model, tok, PROMPTS, params, batch_size=8)
    check_stored_ids(g, tok, PROMPTS, params, tok.eos_token_id)
    assert {"eos", "length"} <= set(g.stop_reason)
    eos_lengths = {len(c) for c, r in zip(g.completion_ids, g.stop_reason) if r == "eos"}
    assert len(eos_lengths) >= 3  # ragged: rows really stopped one by one
    if pad == "<pad>":
        assert all(tok.pad_token_id not in c for c in g.completion_ids)
    assert all(tok.pad_token_id not in p for p in g.prompt_ids)


def test_left_padding_and_batching_do_not_change_greedy_completions(tok, model):
    """Greedy decoding is deterministic, so every batch layout must give the same tokens as
    generating each prompt alone (no padding at all); this also checks that the K samples of
    each prompt come back to their prompt after the longest-first reordering."""
    params = SamplingParams(num_samples=2, max_new_tokens=10, temperature=0)
    alone = [generate(model, tok, [p], params, batch_size=1) for p in PROMPTS]
    for batch_size in (3, 8):
        g = generate(model, tok, PROMPTS, params, batch_size=batch_size)
        check_stored_ids(g, tok, PROMPTS, params, tok.eos_token_id)
        for n in range(len(g)):
            single = alone[g.prompt_index[n]]
            assert g.completion_ids[n] == single.completion_ids[0] == single.completion_ids[1]
            assert g.prompt_ids[n] == single.prompt_ids[0]


def _ascii_window(text: str, start: int, width: int) -> str:
    for i in range(start, len(text) - width):
        w = text[i : i + width]
        if w.isascii() and w.isalpha():
            return w
    raise AssertionError(f"no ascii window in {text!r}")


def test_stop_string_truncates_right_after_it(tok, model):
    with_head_bias(model, {tok.eos_token_id: -1e4})
    free = generate(model, tok, ["abc def"], SamplingParams(max_new_tokens=24, temperature=0))
    full_ids, full_text = free.completion_ids[0], free.texts[0]
    stop = _ascii_window(full_text, 4, 2)
    cut = full_text.find(stop) + len(stop)
    g = generate(
        model,
        tok,
        ["abc def"],
        SamplingParams(max_new_tokens=24, temperature=0, stop=("never-there", stop)),
    )
    ids, text = g.completion_ids[0], g.texts[0]
    assert g.stop_reason == ("stop",)
    assert text == full_text[:cut]  # cut right after the first occurrence
    assert full_ids[: len(ids)] == ids and len(ids) < len(full_ids)
    assert stop in tok.decode(ids) and stop not in tok.decode(ids[:-1])  # shortest prefix
    # Two stop strings: the one that ends first wins.
    later = full_text[cut : cut + 3]
    g2 = generate(
        model,
        tok,
        ["abc def"],
        SamplingParams(max_new_tokens=24, temperature=0, stop=(later, stop)),
    )
    assert g2.texts[0] == text and g2.completion_ids[0] == ids


def test_stop_strings_per_sequence_in_a_sampled_batch(tok, model):
    """A space ends most completions early, at different steps; the other rows go on."""
    with_head_bias(model, {tok.eos_token_id: -1e4})
    params = SamplingParams(num_samples=5, max_new_tokens=12, seed=1, stop=(" ",))
    g = generate(model, tok, PROMPTS, params, batch_size=7)
    check_stored_ids(g, tok, PROMPTS, params, tok.eos_token_id)
    stopped = [t for t, r in zip(g.texts, g.stop_reason) if r == "stop"]
    assert len(stopped) >= 5 and all(t.find(" ") == len(t) - 1 for t in stopped)
    assert len({len(c) for c, r in zip(g.completion_ids, g.stop_reason) if r == "stop"}) >= 3
    for c, r in zip(g.completion_ids, g.stop_reason):
        if r != "stop":
            assert " " not in tok.decode(c, skip_special_tokens=True)


# (2) reproducibility ----------------------------------------------------------------------------
def test_same_seed_same_samples_and_global_rng_untouched(tok, model):
    params = SamplingParams(num_samples=3, max_new_tokens=8, seed=7, top_k=50, top_p=0.9)
    state = torch.random.get_rng_state()
    a = generate(model, tok, PROMPTS, params, batch_size=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = generate(model, tok, PROMPTS, params, batch_size=4)
    assert a == b
    c = generate(
        model, tok, PROMPTS, SamplingParams(**{**params.__dict__, "seed": 8}), batch_size=4
    )
    assert c.completion_ids != a.completion_ids
    # K samples of one prompt are different draws, not copies.
    assert len(set(a.completion_ids[0:3])) == 3
    # Unseeded sampling draws from the global stream.
    unseeded = SamplingParams(num_samples=2, max_new_tokens=8)
    torch.manual_seed(5)
    d = generate(model, tok, PROMPTS, unseeded)
    torch.manual_seed(5)
    assert generate(model, tok, PROMPTS, unseeded) == d


# (3) prompts ------------------------------------------------------------------------------------
def test_prompt_encodings(tok):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    text_ids, chat_ids, raw_ids = encode_prompts(tok, ["abc def", chat, [5, 6, 7]])
    assert text_ids == tok("abc def")["input_ids"]
    expected = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert expected.endswith("<|im_start|>assistant\n")
    assert chat_ids == tok(expected, add_special_tokens=False)["input_ids"]
    assert raw_ids == [5, 6, 7]
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        encode_prompts(tok, ["a", []])
    no_template = copy.deepcopy(tok)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(no_template, [chat])
    with pytest.raises(ValueError, match="prompt 0 must be"):
        encode_prompts(tok, [3.5])


def test_chat_prompts_generate(tok, model):
    chats = [[{"role": "user", "content": w}] for w in ("hi", "how are you today")]
    params = SamplingParams(num_samples=2, max_new_tokens=6, seed=0)
    g = generate(model, tok, chats, params)
    check_stored_ids(g, tok, chats, params, tok.eos_token_id)
    assert tok.decode(g.prompt_ids[2]).endswith("<|im_start|>assistant\n")


# (4) the model is left as it was -----------------------------------------------------------------
def test_kv_cache_modes_grad_and_generation_config(tok, model):
    """One full-width forward, then one token per forward (the KV cache), even with
    config.use_cache=False as load_policy sets it; train/eval modes restored module by module;
    no graph kept; the checkpoint's generation_config neither used nor lost."""
    with_head_bias(model, {tok.eos_token_id: -1e4})
    model.config.use_cache = False
    model.train()
    model.model.layers[0].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    widths: list[int] = []
    model.model.register_forward_pre_hook(
        lambda mod, args, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    params = SamplingParams(max_new_tokens=5, temperature=0)
    g = generate(model, tok, ["abc def", "x"], params)
    assert widths == [len(g.prompt_ids[0])] + [1] * 4
    assert {name: m.training for name, m in model.named_modules()} == modes

    # A repetition penalty (or any other knob) in the checkpoint's config must not change the
    # sampling distribution.
    model.generation_config.repetition_penalty = 1e3
    model.generation_config.top_k = 1
    assert generate(model, tok, ["abc def", "x"], params) == g
    assert model.generation_config.repetition_penalty == 1e3


def test_lora_model_generates_like_its_base_at_init(tok, model):
    """A PEFT-wrapped policy (LoRA B = 0 at init, so the same function) samples the same."""
    from peft import LoraConfig, get_peft_model

    params = SamplingParams(num_samples=2, max_new_tokens=6, seed=0)
    base = generate(model, tok, PROMPTS, params)
    lora = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    lora.train()
    assert generate(lora, tok, PROMPTS, params) == base
    assert lora.training and all(m.training for m in lora.modules())


def test_sampling_params_validation():
    for bad in (
        {"num_samples": 0},
        {"max_new_tokens": 0},
        {"temperature": -1},
        {"temperature": float("nan")},
        {"top_p": 0},
        {"top_k": -1},
        {"stop": "x"},
        {"stop": ("",)},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_transformers_sampler_is_a_sampler(tok, model):
    sampler = TransformersSampler(model, tok, batch_size=3)
    assert isinstance(sampler, Sampler)
    params = SamplingParams(num_samples=2, max_new_tokens=4, seed=2)
    assert sampler.sample(PROMPTS, params) == generate(model, tok, PROMPTS, params, batch_size=3)
    sampler.sync_weights(model)


# (5) scoring the stored tokens ------------------------------------------------------------------
def fresh_logps(model, prompt, completion) -> torch.Tensor:
    """The definition, one unpadded, unpacked sequence through the full model:
    Σ_t log softmax(logits[t-1])[y_t] over the completion positions t."""
    ids = torch.tensor([list(prompt) + list(completion)])
    logp = model(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)
    p = len(prompt)
    return logp[torch.arange(p - 1, ids.shape[1] - 1), ids[0, p:]].sum()


def test_completion_logps_equal_a_fresh_forward(tok, model):
    """Tolerance, from float32 arithmetic (eps = 1.2e-7); bit-exactness is not expected.

    (a) Packing changes the attention's reduction order (other row lengths and masks), so each
    logit (|z| < 5 here) moves by a few eps·|z|, and each per-token log-prob
    z_y − logsumexp(z) (log V ≈ 6.3) by a few eps × 10 ≈ 5e-7; over n ≤ 12 tokens ≤ 6e-6.
    (b) The sum itself is accumulated in another order (index_add over the packed rows versus
    a sum per sequence): each of the n additions rounds by ≤ eps/2 of a partial sum ≤ |ℓ|, so
    ≤ 12 · 6e-8 · |ℓ| ≈ 7e-7 · |ℓ| (|ℓ| reaches ~80, where one ulp is 7.6e-6).
    Hence rtol = 1e-6 (b) and atol = 1e-5 (a); the measured difference is one ulp of the sum.
    """
    with_head_bias(model, {tok.eos_token_id: 4.0})  # some completions end with EOS
    g = generate(model, tok, PROMPTS, SamplingParams(num_samples=3, max_new_tokens=12, seed=4))
    assert "eos" in g.stop_reason
    model.train()  # the update's mode (no dropout in this model)
    lp, n = completion_logps(
        model,
        g.prompt_ids,
        g.completion_ids,
        chunk_size=8,
        max_tokens_per_row=64,
        pad_id=tok.pad_token_id,
    )
    assert lp.dtype == torch.float32 and lp.shape == (len(g),)
    assert n.tolist() == g.completion_lengths.tolist()
    ref = torch.stack([fresh_logps(model, p, c) for p, c in g.sequences()])
    torch.testing.assert_close(lp, ref, rtol=1e-6, atol=1e-5)

    # Differentiable, with the same gradient as the fresh forward's.
    weight = model.model.layers[1].mlp.down_proj.weight
    (g_packed,) = torch.autograd.grad(lp.sum(), weight)
    (g_fresh,) = torch.autograd.grad(ref.sum(), weight)
    torch.testing.assert_close(g_packed, g_fresh, rtol=1e-4, atol=1e-5)


def test_completion_logps_input_errors(tok, model):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        completion_logps(model, [[1], [2]], [[3]], max_tokens_per_row=8, pad_id=0)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        completion_logps(model, [[]], [[3]], max_tokens_per_row=8, pad_id=0)
