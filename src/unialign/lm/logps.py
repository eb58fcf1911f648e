"""Per-sequence log-probs of packed batches, with a chunked LM head.

``ℓ(y | x) = Σ_t log π(y_t | x, y_<t)`` over the completion tokens of each sequence, and
``n(y)`` = the number of tokens summed (see :mod:`unialign.lm.packing` for the scoring rule;
it is TRL 1.16's: completion token ``t`` is scored from the logits at ``t - 1``).

Memory: the ``[batch, seq, vocab]`` logits are never built. The decoder runs once; its last
hidden states are gathered at the scored positions only (``[T, H]``), and the LM head +
float32 log-softmax run over ``chunk_size`` tokens at a time, each chunk under
``torch.utils.checkpoint`` so that autograd keeps only the chunk's inputs: one chunk's
``[chunk_size, V]`` float32 logits are alive at any moment, in the forward and again in the
backward (measured in ``docs/lm-logps.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from unialign.lm.packing import PackedBatch, VarlenInputs, attention_mask_for, unwrap_model

__all__ = [
    "chunked_token_logps",
    "token_logps",
    "sequence_logps",
    "logit_transform",
    "decoder_and_head",
]

#: Config fields that rescale the logits in a way this module does not reproduce.
_UNSUPPORTED_LOGIT_FIELDS = ("output_multiplier", "lm_head_multiplier", "logits_scaling")


def logit_transform(config: Any) -> tuple[float, float | None]:
    """``(logit_scale, final_logit_softcapping)`` the model's own forward applies to its logits.

    Supported: ``logit_scale`` (Cohere: ``z ← z · scale``) and ``final_logit_softcapping``
    (Gemma 2/3: ``z ← c · tanh(z / c)``), applied in that order, then the temperature, as TRL's
    fused head does.

    Raises:
        NotImplementedError: the config rescales logits some other way (the field is named).
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _UNSUPPORTED_LOGIT_FIELDS:
        value = getattr(cfg, name, None)
        if value is not None and value != 1:
            raise NotImplementedError(
                f"config.{name}={value!r} rescales the logits; unialign's chunked LM head does not "
                "implement it (only logit_scale and final_logit_softcapping are supported)"
            )
    scale = getattr(cfg, "logit_scale", None)
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return (1.0 if scale is None else float(scale)), (None if not softcap else float(softcap))


def _chunk_logps(
    hidden: Tensor,
    targets: Tensor,
    project: Callable[[Tensor], Tensor],
    logit_scale: float,
    softcap: float | None,
    temperature: float,
) -> Tensor:
    """log-softmax of one chunk's logits (float32), read at the targets: ``z_y − logsumexp(z)``."""
    z = project(hidden).float()
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if temperature != 1.0:
        z = z / temperature
    return z.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


def _chunked(
    hidden: Tensor,
    targets: Tensor,
    project: Callable[[Tensor], Tensor],
    *,
    chunk_size: int,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    temperature: float = 1.0,
) -> Tensor:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(
            f"hidden has {hidden.shape[0]} rows but targets has {targets.shape[0]} entries"
        )
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    args = (project, logit_scale, softcap, temperature)
    # Checkpointing only matters when a backward will follow; under no_grad it is pure overhead.
    use_ckpt = torch.is_grad_enabled()
    out = []
    for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size)):
        if use_ckpt:
            out.append(
                checkpoint(_chunk_logps, h, t, *args, use_reentrant=False, preserve_rng_state=False)
            )
        else:
            out.append(_chunk_logps(h, t, *args))
    return out[0] if len(out) == 1 else torch.cat(out)


def chunked_token_logps(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 1024,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
) -> Tensor:
    """``log softmax(h W^T + b)[target]`` per token, ``chunk_size`` tokens at a time.

    Args:
        hidden: ``[T, H]`` last hidden states at the scored positions.
        lm_head_weight: ``[V, H]`` (the input embedding matrix when embeddings are tied).
        targets: ``[T]`` long, the token to score at each row of ``hidden``.
        chunk_size: tokens per chunk; peak extra memory is about ``chunk_size × V`` float32
            values (×3 in the backward), whatever ``T`` is.
        bias: ``[V]`` optional LM-head bias.
        temperature, logit_scale, final_logit_softcapping: applied to the logits as
            ``z · scale → c · tanh(z / c) → z / temperature`` before the log-softmax.

    Returns:
        ``[T]`` float32 log-probs, differentiable w.r.t. ``hidden``, the weight and the bias.
    """

    def project(h: Tensor) -> Tensor:
        return F.linear(h, lm_head_weight, bias)

    return _chunked(
        hidden,
        targets,
        project,
        chunk_size=chunk_size,
        logit_scale=logit_scale,
        softcap=final_logit_softcapping,
        temperature=temperature,
    )


def decoder_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder (body without LM head) and the LM head of a causal LM, PEFT-wrapped or not.

    With PEFT, the LoRA layers are injected in place, so the returned modules run with the
    adapters active (and honour ``disable_adapter()``).
    """
    base = unwrap_model(model)
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings (LM head)")
    decoder = base.get_decoder()
    if decoder is base:
        raise ValueError(
            f"could not find the decoder inside {type(base).__name__} (get_decoder() returned the "
            "model itself); pass a *ForCausalLM model"
        )
    return decoder, head


def _head_projection(head: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    """``h ↦ logits``: ``F.linear`` with the head's parameters for a plain ``nn.Linear`` (tied or
    not); the module itself otherwise (e.g. a LoRA-wrapped ``lm_head``)."""
    if type(head) is torch.nn.Linear:
        weight, bias = head.weight, head.bias

        def project(h: Tensor) -> Tensor:
            return F.linear(h, weight, bias)

        return project
    return head


def token_logps(
    model: Any,
    batch: PackedBatch,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Log-prob of every scored token of ``batch`` under ``model``.

    Returns:
        ``(logps [T] float32, seq [T] long)``: one entry per position with
        ``batch.seq_index >= 0`` (row-major order) and the sequence it belongs to.
    """
    decoder, head = decoder_and_head(model)
    device = head.weight.device if hasattr(head, "weight") else next(decoder.parameters()).device
    if batch.input_ids.device != device:
        batch = batch.to(device)
    logit_scale, softcap = logit_transform(unwrap_model(model).config)
    mask = attention_mask_for(model, batch)
    if isinstance(mask, VarlenInputs):
        out = decoder(**mask.model_kwargs(), use_cache=False)
        hidden = out.last_hidden_state[0]  # [N, H] in row-major order of the kept tokens
        seq = batch.seq_index[mask.keep]
        targets = batch.target_ids[mask.keep]
    else:
        out = decoder(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=mask,
            use_cache=False,
        )
        hidden, seq, targets = out.last_hidden_state, batch.seq_index, batch.target_ids
    scored = seq >= 0
    seq, targets = seq[scored], targets[scored]
    h = hidden[scored]  # [T, H]: only the positions that count reach the LM head
    if hasattr(head, "weight"):
        h = h.to(head.weight.device)
    logps = _chunked(
        h,
        targets,
        _head_projection(head),
        chunk_size=chunk_size,
        logit_scale=logit_scale,
        softcap=softcap,
        temperature=temperature,
    )
    return logps, seq


def sequence_logps(
    model: Any,
    batch: PackedBatch,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs per sequence.

    Args:
        model: a ``*ForCausalLM`` (or a PEFT model around one) loaded with ``sdpa``, ``eager``,
            ``flex_attention`` or a flash-attention implementation.
        batch: from :func:`~unialign.lm.packing.pack_sequences` (or ``pad_sequences``...).
        chunk_size: tokens per LM-head chunk.
        temperature: divide the logits by this before the log-softmax.

    Returns:
        ``(logps [S] float32, counts [S] long)``: ``ℓ(y|x)`` and ``n(y)`` for every sequence,
        ``logps`` differentiable w.r.t. the model's parameters. For pairs packed with
        :func:`~unialign.lm.packing.pack_pairs`, ``logps[0::2]`` are the chosen and
        ``logps[1::2]`` the rejected sequences.
    """
    per_token, seq = token_logps(model, batch, chunk_size=chunk_size, temperature=temperature)
    S = batch.num_sequences
    sums = per_token.new_zeros(S).index_add(0, seq, per_token)
    counts = torch.bincount(seq, minlength=S)
    return sums, counts
