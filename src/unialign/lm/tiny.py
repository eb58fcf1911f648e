"""Tiny random models, trained-on-the-fly tokenizers and synthetic preference data.

No machine here reaches a model hub, so tests, the CPU tier of the benchmarks and smoke runs
build a small causal LM from a config (random weights) and train a byte-level BPE tokenizer
on synthetic text. ``save_tiny`` writes both to a directory so that the real
``from_pretrained(path)`` loading code is exercised on a local path.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

# A ChatML-style template: every message is "<|im_start|>role\ncontent<|im_end|>\n"; the
# generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def synthetic_words(n: int = 2000, seed: int = 0) -> list[str]:
    """A fixed vocabulary of pseudo-words (2–9 lowercase letters)."""
    rng = random.Random(seed)
    return [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(n)
    ]


def synthetic_text(rng: random.Random, words: list[str], n_words: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n_words))


def train_tiny_tokenizer(
    vocab_size: int = 512, seed: int = 0, n_texts: int = 400
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on synthetic text, with BOS/EOS/PAD and a chat template."""
    rng = random.Random(seed)
    words = synthetic_words(seed=seed)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((synthetic_text(rng, words, 60) for _ in range(n_texts)), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 2048,
) -> Qwen2Config:
    """A Qwen2-architecture config (the anchors' architecture) at toy size."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    **config_kwargs: int,
) -> torch.nn.Module:
    """A randomly initialised tiny causal LM (deterministic for a given seed)."""
    torch.manual_seed(seed)
    cfg = tiny_config(tokenizer, **config_kwargs)
    return AutoModelForCausalLM.from_config(
        cfg, dtype=dtype, attn_implementation=attn_implementation
    )


def save_tiny(
    path: str | Path, *, seed: int = 0, vocab_size: int = 512, **config_kwargs: int
) -> Path:
    """Write a tiny model and its tokenizer to ``path`` (loadable with ``from_pretrained``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer(vocab_size=vocab_size, seed=seed)
    model = build_tiny_model(tok, seed=seed, **config_kwargs)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def synthetic_preferences(
    n: int,
    *,
    seed: int = 0,
    fmt: str = "standard",
    prompt_words: tuple[int, int] = (5, 30),
    completion_words: tuple[int, int] = (5, 40),
) -> list[dict]:
    """Synthetic preference rows in one of the three data formats.

    ``standard``: {prompt, chosen, rejected} strings; ``conversational``: the same as lists of
    role/content messages; ``unpaired``: {prompt, completion, label} with alternating labels.
    """
    rng = random.Random(seed)
    words = synthetic_words(seed=0)

    def text(lo_hi: tuple[int, int]) -> str:
        return synthetic_text(rng, words, rng.randint(*lo_hi))

    rows: list[dict] = []
    for i in range(n):
        prompt, chosen, rejected = (
            text(prompt_words),
            " " + text(completion_words),
            " " + text(completion_words),
        )
        if fmt == "standard":
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        elif fmt == "conversational":
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen.strip()}],
                    "rejected": [{"role": "assistant", "content": rejected.strip()}],
                }
            )
        elif fmt == "unpaired":
            rows.append(
                {
                    "prompt": prompt,
                    "completion": chosen if i % 2 == 0 else rejected,
                    "label": i % 2 == 0,
                }
            )
        else:
            raise ValueError(f"fmt must be 'standard', 'conversational' or 'unpaired', got {fmt!r}")
    return rows
