"""Sampling from the token-wise geometric mixture of the policy and the reference (Nash-MD).

At every step the next token is drawn from

    log π_mix(· | x, y_<t) = (1 − β) log π_θ(· | x, y_<t) + β log π_ref(· | x, y_<t) − log Z_t

(divided by the sampling temperature, then normalized): Munos et al. 2023's geometric mixture
π_θ^{1−β} π_ref^β taken per token, as their experiments (and TRL's former Nash-MD trainer) do;
it is not the sequence-level mixture, whose normalizer would need all continuations. Both
models run over the same tokens with their own KV cache: one prompt forward each, then one
token per step. A LoRA policy is its own reference with the adapter disabled
(:func:`~unialign.lm.refcache.adapter_disabled`), with a second cache.

Rows are left-padded; each stops at an EOS token or after ``max_new_tokens``; the stored ids
hold no padding. The samples are judged but never trained on (Nash-MD's gradient is taken on
the policy's own samples), so neither stop strings nor top-k/top-p are implemented here.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from unialign.lm.packing import unwrap_model
from unialign.lm.refcache import adapter_disabled

__all__ = ["mixture_log_probs", "sample_mixture"]


def mixture_log_probs(
    policy_logits: Tensor, ref_logits: Tensor, coef: float, temperature: float = 1.0
) -> Tensor:
    """``log softmax(((1 − β) log π_θ + β log π_ref) / T)`` over the last dimension, float32."""
    mixed = (1.0 - coef) * F.log_softmax(policy_logits.float(), -1) + coef * F.log_softmax(
        ref_logits.float(), -1
    )
    return F.log_softmax(mixed / temperature, -1)


def _cache_kwarg(model: Any) -> str:
    """The forward's KV-cache keyword: ``cache`` (transformers ≥ 5.x) or ``past_key_values``."""
    params = inspect.signature(unwrap_model(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@contextlib.contextmanager
def _eval(*models: torch.nn.Module) -> Iterator[None]:
    modes = [{m: m.training for m in model.modules()} for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for saved in modes:
            for m, training in saved.items():
                m.training = training


@torch.no_grad()
def sample_mixture(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    prompts: Sequence[Sequence[int]],
    *,
    coef: float,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> tuple[list[list[int]], Tensor]:
    """One completion per prompt from the token-wise mixture π_θ^{1−β} π_ref^β.

    Args:
        policy: the causal LM being trained (PEFT-wrapped or not).
        reference: the frozen reference model; ``None`` for a LoRA policy, whose reference is
            the policy with its adapter disabled.
        prompts: prompt token ids (non-empty; repeat a prompt for several samples).
        coef: β ∈ [0, 1]; 0 samples π_θ, 1 samples π_ref.
        max_new_tokens: the most tokens a completion may have (EOS included).
        eos_token_ids: tokens that end a completion (kept in the ids).
        pad_id: fills the left padding of a batch (never attended to).
        temperature: divides the mixed log-probs; 0 is greedy.
        seed: seed of a private generator (the global RNG is untouched).
        batch_size: prompts per batch.

    Returns:
        ``(completion_ids, logps)``: the sampled ids per prompt and ``[N]`` float32 sums of
        log π_mix of the sampled tokens at the sampling temperature (diagnostics and tests).
    """
    if not 0.0 <= coef <= 1.0:
        raise ValueError(f"coef (the mixture coefficient β) must lie in [0, 1], got {coef!r}")
    device = next(policy.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    eos = torch.tensor(sorted({int(t) for t in eos_token_ids}), device=device, dtype=torch.long)
    kw = _cache_kwarg(policy)
    out_ids: list[list[int]] = []
    out_logps: list[Tensor] = []
    models = (policy,) if reference is None else (policy, reference)
    with _eval(*models):
        for b0 in range(0, len(prompts), batch_size):
            ids, lp = _sample_batch(
                policy, reference, prompts[b0 : b0 + batch_size], coef=coef,
                max_new_tokens=max_new_tokens, eos=eos, pad_id=pad_id, temperature=temperature,
                gen=gen, cache_kw=kw, device=device,
            )  # fmt: skip
            out_ids.extend(ids)
            out_logps.append(lp)
    logps = torch.cat(out_logps) if out_logps else torch.zeros(0)
    return out_ids, logps


def _sample_batch(
    policy, reference, prompts, *, coef, max_new_tokens, eos, pad_id, temperature, gen,
    cache_kw, device,
) -> tuple[list[list[int]], Tensor]:  # fmt: skip
    n, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((n, width), dtype=torch.long, device=device)
    for r, p in enumerate(prompts):  # left padding: every prompt ends at column width − 1
        input_ids[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long, device=device)
        mask[r, width - len(p) :] = 1
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = {"policy": DynamicCache(), "ref": DynamicCache()}

    def logits(which: str, ids: Tensor, pos: Tensor) -> Tensor:
        model = policy if which == "policy" or reference is None else reference
        ctx = (
            adapter_disabled(policy)
            if which == "ref" and reference is None
            else contextlib.nullcontext()
        )
        with ctx:
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                **{cache_kw: caches[which]},
            )  # fmt: skip
        return out.logits[:, -1]

    step_ids, step_pos = input_ids, position
    done = torch.zeros(n, dtype=torch.bool, device=device)
    lengths = torch.full((n,), max_new_tokens, dtype=torch.long, device=device)
    logps = torch.zeros(n, dtype=torch.float32, device=device)
    tokens: list[Tensor] = []
    for t in range(max_new_tokens):
        z_pol = logits("policy", step_ids, step_pos)
        # β = 0 or 1 never needs the other model; skipping it keeps those limits exact
        z_ref = logits("ref", step_ids, step_pos) if coef > 0 else z_pol
        if temperature == 0:
            lp = mixture_log_probs(z_pol, z_ref, coef)
            nxt = lp.argmax(-1)
        else:
            lp = mixture_log_probs(z_pol, z_ref, coef, temperature)
            nxt = torch.multinomial(lp.exp(), 1, generator=gen).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        logps += torch.where(done, 0.0, lp.gather(-1, nxt[:, None]).squeeze(-1))
        tokens.append(nxt)
        ended = ~done & torch.isin(nxt, eos)
        lengths = torch.where(ended, t + 1, lengths)
        done |= ended
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
    sampled = torch.stack(tokens, dim=1).tolist()
    return [row[: int(k)] for row, k in zip(sampled, lengths.tolist())], logps.cpu()
