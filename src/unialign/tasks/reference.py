"""A reference policy for the style task: a tiny causal LM pretrained in-process, cached on disk.

:func:`reference_policy` draws a corpus from :class:`SyntheticLanguage`, trains a byte-level
BPE tokenizer on it, builds a Qwen2-architecture model from a config (random init, seeded) and
trains it on the answers (next-token cross-entropy on answer tokens and EOS; prompt tokens are
context only). The result is written with ``save_pretrained`` to
``<cache_dir>/reference-<fingerprint>``, where the fingerprint hashes every setting and the
seed, so a second call with the same settings loads it instead of training. The directory is
an ordinary local model: ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load it, its chat template renders a conversation to
the plain prompt format, and its ``generation_config.json`` samples at temperature 1 with no
top-k/top-p truncation.

Writes are atomic: everything goes to a temporary directory next to the target, renamed onto
it at the end; a process that loses a race to another one keeps the winner's copy.

Determinism: the seed fixes the corpus, the tokenizer, the initial weights and the batch order;
training runs on one intra-op thread (by default) with ``torch.use_deterministic_algorithms``,
so the same settings give bit-identical weights on the same torch build, whatever the machine's
core count.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from unialign.lm.tiny import SPECIAL_TOKENS, tiny_config
from unialign.runlog import progress_bar
from unialign.tasks.language import LanguageConfig, SyntheticLanguage, format_prompt

__all__ = [
    "CHAT_TEMPLATE",
    "FORMAT_VERSION",
    "ReferenceConfig",
    "ReferenceModel",
    "default_cache_dir",
    "fingerprint",
    "pretrain",
    "reference_policy",
    "sample_completions",
    "train_tokenizer",
]

# Bump when a change to this module changes the weights that a config produces.
FORMAT_VERSION = 1
INFO_FILE = "unialign_task.json"

# A user turn renders as "Q: <content>\n", an assistant turn as "A: <content></s>"; the
# generation prompt is "A:". So apply_chat_template([user], add_generation_prompt=True) is the
# plain prompt format_prompt(content), and the full conversation is that prompt followed by
# " <answer></s>": the same tokens the model was pretrained on.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ 'Q: ' + message['content'] + '\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'A: ' + message['content'] + eos_token }}"
    "{%- else -%}{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'A:' }}{%- endif -%}"
)


@dataclass(frozen=True)
class ReferenceConfig:
    """Everything that determines the reference policy (all of it enters the fingerprint).

    The defaults (≈ 235 k parameters, 800 steps of 32 rows) pretrain in about a minute on a
    loaded 2-core machine (measured figures in ``docs/tasks.md``); :meth:`small` is the
    seconds-long setting for tests.

    Attributes:
        seed: fixes the language (fitting sets, prompt split), corpus, tokenizer, init, order.
        language: how the corpus is drawn.
        vocab_size: the BPE tokenizer's target vocabulary (bytes + specials + merges).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: the model shape.
        max_positions: the longest sequence the model accepts.
        tie_embeddings: share the input embedding with the output head.
        init_std: the initial weights' standard deviation. Larger than transformers' 0.02:
            at 0.02 the model sat on a loss plateau (answers that ignore the prompt's topic)
            for hundreds of steps, for some seeds past the end of training.
        steps: optimiser steps; the corpus has ``steps * batch_size`` rows, each seen once.
        batch_size: sequences per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to 10 %).
        warmup_steps: steps of linear warm-up.
        weight_decay: AdamW weight decay.
        tokenizer_texts: corpus rows the tokenizer is trained on.
    """

    seed: int = 0
    language: LanguageConfig = field(default_factory=LanguageConfig)
    vocab_size: int = 512
    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_positions: int = 256
    tie_embeddings: bool = True
    init_std: float = 0.06
    steps: int = 800
    batch_size: int = 32
    lr: float = 5e-3
    warmup_steps: int = 25
    weight_decay: float = 0.01
    tokenizer_texts: int = 3000

    @classmethod
    def small(cls, **overrides: Any) -> ReferenceConfig:
        """A seconds-long setting for tests: a 2-layer, 32-wide model and 150 steps of 16."""
        base = cls(
            hidden_size=32,
            intermediate_size=64,
            steps=150,
            batch_size=16,
            warmup_steps=10,
            tokenizer_texts=1500,
        )
        return replace(base, **overrides)


def fingerprint(config: ReferenceConfig) -> str:
    """A hex SHA-256 of the settings, the seed and :data:`FORMAT_VERSION`."""
    blob = json.dumps({"format": FORMAT_VERSION, **asdict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$UNIALIGN_CACHE`` if set, else ``~/.cache/unialign/tasks``."""
    env = os.environ.get("UNIALIGN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "unialign" / "tasks"


@dataclass
class ReferenceModel:
    """A pretrained reference policy on disk.

    Attributes:
        path: the model directory (``from_pretrained(path)`` loads model and tokenizer).
        fingerprint: the settings' hash that names the directory.
        config: the settings.
        trained: True if this call trained the model, False if it came from the cache.
        info: what was recorded at training time: ``seconds``, ``parameters``,
            ``final_loss``, ``steps``, library versions.
    """

    path: Path
    fingerprint: str
    config: ReferenceConfig
    trained: bool
    info: dict[str, Any]

    @property
    def language(self) -> SyntheticLanguage:
        """The language the model was pretrained on."""
        return SyntheticLanguage(self.config.language, self.config.seed)

    def load(self, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any]:
        """``(model, tokenizer)`` loaded from :attr:`path` (model in eval mode)."""
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        return model.eval(), AutoTokenizer.from_pretrained(self.path)


def train_tokenizer(
    language: SyntheticLanguage, *, vocab_size: int = 512, n_texts: int = 3000, seed: int = 0
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on corpus texts, with BOS/EOS/PAD and
    :data:`CHAT_TEMPLATE`; text of the language encodes and decodes back exactly."""
    rows = language.corpus(n_texts, seed=seed + 1_000_003)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # The base alphabet is the corpus's characters only (not all 256 bytes): a token the
    # corpus never shows keeps some probability in a briefly trained model and would turn
    # ancestral samples invalid. Text outside the language encodes to <unk>.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator((format_prompt(r.prompt) + " " + r.answer for r in rows), trainer)
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


@contextmanager
def _deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, enforce deterministic kernels and fix the intra-op thread count inside the
    block; the global RNG state, the flag and the thread count are restored after."""
    previous, previous_threads = (
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)
            torch.set_num_threads(previous_threads)


def _batches(
    language: SyntheticLanguage, tokenizer: PreTrainedTokenizerFast, config: ReferenceConfig
) -> Iterator[dict[str, torch.Tensor]]:
    """The corpus as padded batches; labels are -100 on prompt and padding tokens."""
    rows = language.corpus(config.steps * config.batch_size, seed=config.seed)
    prompts = [format_prompt(r.prompt) for r in rows]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(
        [p + " " + r.answer + tokenizer.eos_token for p, r in zip(prompts, rows)],
        add_special_tokens=False,
    )["input_ids"]
    pad = tokenizer.pad_token_id
    for start in range(0, len(rows), config.batch_size):
        seqs = full_ids[start : start + config.batch_size]
        plens = [len(p) for p in prompt_ids[start : start + config.batch_size]]
        width = max(len(s) for s in seqs)
        if width > config.max_positions:
            raise ValueError(f"a corpus row has {width} tokens > max_positions")
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, plen) in enumerate(zip(seqs, plens)):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, plen : len(s)] = torch.tensor(s[plen:])
            mask[i, : len(s)] = 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lr_factor(step: int, config: ReferenceConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(
    config: ReferenceConfig, *, progress: bool = True, threads: int = 1
) -> tuple[torch.nn.Module, PreTrainedTokenizerFast, dict[str, Any]]:
    """Train the tokenizer and the model (no caching); returns ``(model, tokenizer, info)``.

    ``threads`` is torch's intra-op thread count while training. One thread (the default)
    makes the weights independent of the machine's core count and is the fastest setting on
    a loaded 2-core machine; it is not part of the fingerprint.
    """
    start = time.perf_counter()
    language = SyntheticLanguage(config.language, config.seed)
    tokenizer = train_tokenizer(
        language, vocab_size=config.vocab_size, n_texts=config.tokenizer_texts, seed=config.seed
    )
    model_config = tiny_config(
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        intermediate_size=config.intermediate_size,
        max_positions=config.max_positions,
    )
    model_config.tie_word_embeddings = config.tie_embeddings
    model_config.initializer_range = config.init_std
    losses: list[float] = []
    with _deterministic(config.seed, threads):
        model = AutoModelForCausalLM.from_config(
            model_config, dtype=torch.float32, attn_implementation="sdpa"
        )
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _lr_factor(step, config)
        )
        bar = progress_bar(
            "pretrain reference", enabled=progress, fields="loss {task.fields[loss]}"
        )
        with bar:
            task = bar.add_task("pretrain", total=config.steps, loss="-")
            for batch in _batches(language, tokenizer, config):
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update(task, advance=1, loss=f"{losses[-1]:.3f}")
    model.eval()
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=96,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tail = losses[-max(1, len(losses) // 10) :]
    info = {
        "seconds": round(time.perf_counter() - start, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": round(sum(tail) / len(tail), 4),
        "loss_curve": [
            round(sum(chunk) / len(chunk), 4)
            for i in range(0, len(losses), max(1, len(losses) // 10))
            if (chunk := losses[i : i + max(1, len(losses) // 10)])
        ],
        "steps": config.steps,
        "vocab": len(tokenizer),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
    }
    return model, tokenizer, info


def reference_policy(
    config: ReferenceConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    threads: int = 1,
) -> ReferenceModel:
    """The pretrained reference policy for ``config``, trained on the first call and loaded
    from ``<cache_dir>/reference-<fingerprint>`` afterwards (``cache_dir`` defaults to
    :func:`default_cache_dir`)."""
    config = config or ReferenceConfig()
    fp = fingerprint(config)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"reference-{fp[:16]}"
    info_path = path / INFO_FILE
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") == fp:
            return ReferenceModel(path, fp, config, False, info["info"])
        raise RuntimeError(f"{path} holds another model (fingerprint {info.get('fingerprint')})")

    model, tokenizer, info = pretrain(config, progress=progress, threads=threads)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{fp[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"fingerprint": fp, "config": asdict(config), "info": info}
        (tmp / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
        try:
            os.rename(tmp, path)
        except OSError:
            if not info_path.exists():  # not a lost race: a real failure
                raise
            # another process finished the same model first: keep its copy (same weights)
            info = json.loads(info_path.read_text())["info"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReferenceModel(path, fp, config, True, info)


def sample_completions(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | Sequence[dict[str, str]]],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 96,
    seed: int = 0,
    batch_size: int = 256,
) -> list[list[str]]:
    """``num_samples`` completions per prompt by ancestral sampling (no top-k/top-p), decoded
    without special tokens; a completion that hits ``max_new_tokens`` stays cut (and usually
    classifies as invalid). Conversational prompts go through the chat template. Deterministic
    for a given seed; the global RNG state is left as it was."""
    texts = [
        p
        if isinstance(p, str)
        else tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(texts), max(1, batch_size // num_samples)):
                chunk = texts[start : start + max(1, batch_size // num_samples)]
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
                gen = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=num_samples,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = tokenizer.batch_decode(
                    gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
                )
                out += [new[i : i + num_samples] for i in range(0, len(new), num_samples)]
    finally:
        tokenizer.padding_side = side
    return out
