"""Sampling completions from the current policy, and scoring them again for the update.

The online loop (sample K completions per prompt → judge → update) needs two things from here:

1. :func:`generate` (or a :class:`Sampler`): batched sampling with a KV cache through
   transformers ``generate``. Prompts are left-padded into micro-batches of ``batch_size``
   sequences; every sequence stops on its own at EOS, at a stop string, or after
   ``max_new_tokens``. The result is a :class:`Generations` holding, per sample, the exact
   token ids the policy saw and produced, with no padding anywhere.
2. :func:`completion_logps`: the summed log-prob of those stored completion tokens under the
   training model, through the project's packed, chunked log-prob code
   (:func:`~unialign.lm.packing.pack_sequences` + :func:`~unialign.lm.logps.sequence_logps`),
   differentiable.

What is stored (see ``docs/lm-generation.md``):

- ``completion_ids`` are the sampled tokens up to and including the token that ended the
  sequence. A sequence that ended with EOS keeps its EOS token: stopping is an action of the
  policy and the update must score it (the same convention as the offline data, where EOS or
  the chat template's end-of-turn token closes every completion).
- A stop string ends the completion after the first token at which the decoded completion
  contains it; ``texts`` is cut right after the stop string. When the stop string ends inside a
  token, that whole token is kept in ``completion_ids`` (it was sampled; re-tokenizing the cut
  text would store tokens the policy never produced), so ``texts`` can be a few characters
  shorter than ``decode(completion_ids)``.
- The sampling distribution is exactly ``softmax(logits / temperature)`` restricted by top-k
  and top-p: the model's own ``generation_config`` (repetition penalties, default top-k 50,
  ...) is ignored during the call, so that the samples are on-policy for the update.

Only the transformers backend is implemented. :class:`Sampler` is the interface another backend
(e.g. vLLM on the GPU machine) would implement; none exists yet.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from .logps import sequence_logps
from .packing import pack_sequences, unwrap_model

__all__ = [
    "Prompt",
    "StopReason",
    "SamplingParams",
    "Generations",
    "Sampler",
    "TransformersSampler",
    "generate",
    "encode_prompts",
    "completion_logps",
]

#: A prompt: plain text (tokenized with the tokenizer's default special tokens, as the offline
#: data is), a conversation (``[{"role", "content"}, ...]``, rendered with the chat template and
#: ``add_generation_prompt=True``), or token ids used as they are.
Prompt = str | Sequence[Mapping[str, str]] | Sequence[int]
StopReason = Literal["eos", "stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample (backend-independent).

    Attributes:
        num_samples: ``K``, completions per prompt.
        max_new_tokens: the most tokens a completion may have (EOS included).
        temperature: divide the logits by this; ``0`` means greedy decoding.
        top_p: nucleus sampling; ``1.0`` disables it.
        top_k: keep the ``k`` most likely tokens; ``0`` disables it.
        stop: strings that end a completion (matched in the decoded completion text, special
            tokens skipped; the prompt's text is not searched).
        seed: seed for the sampling RNG (the global torch RNG is left as it was). ``None``
            draws from the global torch RNG.
    """

    num_samples: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generations:
    """``N = P × K`` sampled completions: sample ``j`` of prompt ``i`` is entry ``i·K + j``.

    Per-sample values are tuples of length ``N`` (ragged token ids cannot be one tensor), so a
    per-sample tensor ``x`` of shape ``[N]`` regroups per prompt with ``x.view(P, K)``.

    Attributes:
        prompt_index: ``[N]`` the prompt each sample answers (``i``).
        prompt_ids: ``[N]`` the prompt's token ids as the model saw them, no padding.
        completion_ids: ``[N]`` the sampled token ids, no padding; they end with the EOS token
            when ``stop_reason`` is ``"eos"``, with the token that completed a stop string
            when it is ``"stop"``, and are ``max_new_tokens`` long when it is ``"length"``.
            These are exactly the tokens :func:`completion_logps` scores.
        texts: ``[N]`` the decoded completion (special tokens skipped), cut right after the
            stop string when ``stop_reason == "stop"``.
        stop_reason: ``[N]`` ``"eos"``, ``"stop"`` or ``"length"``.
        num_prompts: ``P``.
        num_samples: ``K``.
        prompt_tokens: sum of the prompt lengths over the ``N`` samples.
        completion_tokens: sum of the completion lengths (the generated tokens, for tokens/s).
        seconds: wall time of the sampling (not compared by ``==``).
    """

    prompt_index: tuple[int, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    completion_ids: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...]
    stop_reason: tuple[StopReason, ...]
    num_prompts: int
    num_samples: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float = field(default=0.0, compare=False)

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def completion_lengths(self) -> Tensor:
        """``[N]`` long, tokens per completion."""
        return torch.tensor([len(c) for c in self.completion_ids], dtype=torch.long)

    @property
    def tokens_per_second(self) -> float:
        """Generated (completion) tokens per second of sampling wall time."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else float("nan")

    def sequences(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """``(prompt_ids, completion_ids)`` per sample, the input of ``pack_sequences``."""
        return list(zip(self.prompt_ids, self.completion_ids))


@runtime_checkable
class Sampler(Protocol):
    """A generation backend for the online loop.

    ``sample`` returns ``len(prompts) × params.num_samples`` completions laid out as
    :class:`Generations` describes. ``sync_weights`` is called after every policy update:
    a backend that samples from its own copy of the weights (vLLM) must load ``model``'s
    current weights there; one that samples with the training model itself has nothing to do.
    """

    def sample(self, prompts: Sequence[Prompt], params: SamplingParams) -> Generations: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


class TransformersSampler:
    """:class:`Sampler` over transformers ``generate`` with the live training model.

    Args:
        model: a causal LM (PEFT-wrapped or not).
        tokenizer: its tokenizer.
        batch_size: sequences (prompts × samples) per ``generate`` call.
        eos_token_ids: token ids that end a completion; by default the model's
            ``generation_config.eos_token_id`` plus the tokenizer's EOS.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        eos_token_ids: Sequence[int] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_token_ids = eos_token_ids

    def sample(self, prompts: Sequence[Prompt], params: SamplingParams) -> Generations:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            params,
            batch_size=self.batch_size,
            eos_token_ids=self.eos_token_ids,
        )

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to copy: sampling uses the training model's parameters directly."""
        self.model = model


# ---------------------------------------------------------------------------------------------
# Prompts


def _is_conversation(prompt: Any) -> bool:
    return (
        not isinstance(prompt, str)
        and isinstance(prompt, Sequence)
        and len(prompt) > 0
        and all(isinstance(m, Mapping) for m in prompt)
    )


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt, the way the offline data tokenizes them.

    Text: ``tokenizer(text)["input_ids"]`` (default special tokens, so BOS if the tokenizer adds
    one). Conversation: ``apply_chat_template(messages, add_generation_prompt=True)``.
    Token ids: copied.

    Raises:
        ValueError: an empty prompt, a conversation without a chat template, or a prompt of
            another type (the index is named).
    """
    out: list[list[int]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids = list(tokenizer(p)["input_ids"])
        elif _is_conversation(p):
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    f"prompt {i} is a conversation but the tokenizer has no chat template; set "
                    "tokenizer.chat_template or pass the prompt as text"
                )
            enc = tokenizer.apply_chat_template(
                [dict(m) for m in p], add_generation_prompt=True, tokenize=True, return_dict=True
            )
            ids = list(enc["input_ids"])
        elif isinstance(p, Sequence) and all(isinstance(t, int) for t in p):
            ids = [int(t) for t in p]
        else:
            raise ValueError(
                f"prompt {i} must be text, a list of {{'role', 'content'}} messages or a list of "
                f"token ids, got {type(p).__name__}"
            )
        if not ids:
            raise ValueError(f"prompt {i} is empty: a completion needs at least one prompt token")
        out.append(ids)
    return out


# ---------------------------------------------------------------------------------------------
# Generation


def _eos_ids(model: Any, tokenizer: Any, override: Sequence[int] | None) -> list[int]:
    if override is not None:
        return [int(t) for t in override]
    ids: list[int] = []
    gen_cfg = getattr(unwrap_model(model), "generation_config", None)
    for v in (getattr(gen_cfg, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        for t in [v] if isinstance(v, int) else (v or []):
            if int(t) not in ids:
                ids.append(int(t))
    return ids


class _StopWatch(StoppingCriteria):
    """Records, for every row of one ``generate`` call, how many tokens it generated when it
    first finished (EOS as the newest token, or a stop string in the decoded tail) and why.

    ``generate`` pads finished rows with the pad id (which may equal EOS, or be a token a random
    model samples), so the lengths recorded here, not the pad id, say where each row ends.
    """

    def __init__(self, prompt_width: int, eos: list[int], stop: tuple[str, ...], tokenizer: Any):
        self.prompt_width = prompt_width
        self.eos = set(eos)
        self.stop = stop
        self.tokenizer = tokenizer
        # A stop string completed by the newest token lies within the last len(s) characters;
        # tokens carry >= 1 character except special and partial-UTF-8 ones, hence the margin.
        # A stop string this misses is still found by the final, whole-text check.
        self.window = max((len(s) for s in stop), default=0) + 8
        self.finished: dict[int, tuple[int, StopReason]] = {}

    def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
        gen = input_ids[:, self.prompt_width :]
        n = gen.shape[1]
        newest = gen[:, -1].tolist()
        done = torch.zeros(gen.shape[0], dtype=torch.bool, device=input_ids.device)
        for r, tok in enumerate(newest):
            if r in self.finished:
                done[r] = True
            elif tok in self.eos:
                self.finished[r] = (n, "eos")
                done[r] = True
            elif self.stop:
                tail = self.tokenizer.decode(
                    gen[r, -self.window :].tolist(), skip_special_tokens=True
                )
                if any(s in tail for s in self.stop):
                    self.finished[r] = (n, "stop")
                    done[r] = True
        return done


def _first_stop_end(text: str, stop: tuple[str, ...]) -> int | None:
    """Index just past the earliest-ending stop string in ``text``, or None."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return min(ends) if ends else None


def _finish(
    ids: list[int], reason: StopReason, stop: tuple[str, ...], tokenizer: Any
) -> tuple[list[int], str, StopReason]:
    """Cut ``ids`` after the first stop string (if any) and decode the completion text."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if stop and (end := _first_stop_end(text, stop)) is not None:
        # Shortest token prefix whose text still contains a stop string (usually all of ids).
        k = len(ids)
        while k > 1 and _first_stop_end(
            tokenizer.decode(ids[: k - 1], skip_special_tokens=True), stop
        ):
            k -= 1
        ids = ids[:k]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        end = _first_stop_end(text, stop)
        assert end is not None
        return ids, text[:end], "stop"
    return ids, text, reason


def _generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    params: SamplingParams,
    gen_config: GenerationConfig,
    eos: list[int],
    pad_id: int,
    device: torch.device,
) -> list[tuple[list[int], str, StopReason]]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):  # left padding: every prompt ends at column width - 1
        input_ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention_mask[r, width - len(p) :] = 1
    watch = _StopWatch(width, eos, params.stop, tokenizer)
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=gen_config,
        stopping_criteria=StoppingCriteriaList([watch]),
    )
    gen = out[:, width:].tolist()
    results = []
    for r, row in enumerate(gen):
        n, reason = watch.finished.get(r, (len(row), "length"))
        results.append(_finish(row[:n], reason, params.stop, tokenizer))
    return results


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    params: SamplingParams | None = None,
    *,
    batch_size: int = 16,
    eos_token_ids: Sequence[int] | None = None,
) -> Generations:
    """Sample ``params.num_samples`` completions for every prompt.

    Sequences (prompt × sample) are processed in micro-batches of ``batch_size``, longest
    prompts first (less padding), each a ``model.generate`` call with a KV cache and left
    padding; the results are put back in prompt order. The model runs in eval mode without
    gradients, and every module's train/eval mode is restored afterwards.

    Reproducibility: with ``params.seed`` set, the samples depend only on the seed, the model,
    the prompts, ``batch_size`` and the device (batch composition changes the random stream);
    the global torch RNG state is unchanged by the call.

    Args:
        model: a causal LM (PEFT-wrapped or not) on its device.
        tokenizer: its tokenizer (chat template needed for conversational prompts).
        prompts: ``P`` prompts (see :data:`Prompt`).
        params: sampling parameters (defaults: one sample, 128 tokens, temperature 1).
        batch_size: sequences per ``generate`` call.
        eos_token_ids: token ids that end a completion; by default the model's
            ``generation_config.eos_token_id`` plus the tokenizer's EOS.

    Returns:
        :class:`Generations` with ``N = P × K`` entries.
    """
    params = params or SamplingParams()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    encoded = encode_prompts(tokenizer, prompts)
    K = params.num_samples
    seq_prompt = [i for i in range(len(encoded)) for _ in range(K)]  # sequence → prompt
    order = sorted(range(len(seq_prompt)), key=lambda s: -len(encoded[seq_prompt[s]]))

    eos = _eos_ids(model, tokenizer, eos_token_ids)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = eos[0] if eos else 0  # only fills padding; lengths are tracked separately
    gen_config = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=not params.greedy,
        temperature=None if params.greedy else params.temperature,
        top_p=None if params.greedy else params.top_p,
        top_k=None if params.greedy else params.top_k,
        eos_token_id=eos or None,
        pad_token_id=pad_id,
        use_cache=True,
        num_beams=1,
    )
    hf_model = unwrap_model(model)
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    saved_gen_config = getattr(hf_model, "generation_config", None)
    results: list[tuple[list[int], str, StopReason] | None] = [None] * len(seq_prompt)
    try:
        model.eval()
        # A blank default config: nothing from the checkpoint's generation_config.json
        # (repetition penalty, top-k 50, ...) alters the sampling distribution.
        hf_model.generation_config = GenerationConfig()
        # Seeded: a private stream (fork_rng restores the global state on exit); else the
        # global stream, which advances as any sampling would advance it.
        rng = (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
            if params.seed is not None
            else contextlib.nullcontext()
        )
        with torch.no_grad(), rng:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                batch = [encoded[seq_prompt[s]] for s in idx]
                out = _generate_batch(
                    model, tokenizer, batch, params, gen_config, eos, pad_id, device
                )
                for s, res in zip(idx, out):
                    results[s] = res
    finally:
        hf_model.generation_config = saved_gen_config
        for m, training in modes.items():
            m.training = training

    done = [r for r in results if r is not None]
    assert len(done) == len(seq_prompt)
    prompt_ids = tuple(tuple(encoded[i]) for i in seq_prompt)
    return Generations(
        prompt_index=tuple(seq_prompt),
        prompt_ids=prompt_ids,
        completion_ids=tuple(tuple(ids) for ids, _, _ in done),
        texts=tuple(text for _, text, _ in done),
        stop_reason=tuple(reason for _, _, reason in done),
        num_prompts=len(encoded),
        num_samples=K,
        prompt_tokens=sum(len(p) for p in prompt_ids),
        completion_tokens=sum(len(ids) for ids, _, _ in done),
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# Scoring for the update


def completion_logps(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    chunk_size: int = 1024,
    max_tokens_per_row: int,
    pad_id: int,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of stored completions under ``model``, differentiable.

    ``ℓ_i = Σ_t log softmax(z_{t-1} / temperature)[y_t]`` over the completion tokens ``y_t`` of
    sequence ``i`` (EOS included when it was stored), with the sequences packed into rows of at
    most ``max_tokens_per_row`` tokens behind a per-document attention mask
    (:func:`~unialign.lm.packing.pack_sequences`) and the LM head applied ``chunk_size`` tokens
    at a time (:func:`~unialign.lm.logps.sequence_logps`). All sequences go through one forward
    pass: micro-batch by calling this on slices.

    Args:
        model: the training model (``sdpa``, ``eager``, ``flex_attention`` or flash attention).
        prompt_ids: ``[N]`` prompt token ids (non-empty), e.g. ``Generations.prompt_ids``.
        completion_ids: ``[N]`` completion token ids, e.g. ``Generations.completion_ids``.
        chunk_size: tokens per LM-head chunk.
        max_tokens_per_row: packed row capacity (at least the longest prompt + completion).
        pad_id: the id written on padding (never attended to, never scored).
        temperature: divide the logits by this first (match the sampling temperature for
            importance ratios against the sampler's distribution).

    Returns:
        ``(logps [N] float32, token_counts [N] long)``; ``token_counts[i]`` equals
        ``len(completion_ids[i])``.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(
            f"{len(prompt_ids)} prompts but {len(completion_ids)} completions; pass one of each "
            "per sample"
        )
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: its first completion token could not be scored")
    batch = pack_sequences(
        list(zip(prompt_ids, completion_ids)), max_tokens_per_row=max_tokens_per_row, pad_id=pad_id
    )
    return sequence_logps(model, batch, chunk_size=chunk_size, temperature=temperature)
