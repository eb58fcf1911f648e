"""PPO's critic for the online loop: a scalar value head on the policy's own trunk, and the one
forward pass that gives per-token log-probs and values.

Why a head on the trunk, not a separate value model: the hidden state at the position that
scores completion token y_t is the state s_t = (x, y_<t) the value V(s_t) is a function of,
so one decoder pass yields ℓ_θ(y_t | s_t) and V_φ(s_t) together. The head is a registered
submodule of the policy (attribute :data:`ATTRIBUTE`), so the loop's optimizer, checkpoints and
``--resume`` carry its weights and AdamW state without any machinery of their own, and no
second model (a copy of the trunk, with its own optimizer) sits in memory. The price is that
the value loss's gradient reaches the shared trunk; ``value_coef`` weighs it (TRL's former
``AutoModelForCausalLMWithValueHead`` made the same choice; OpenAI's summarization PPO used a
separate critic).

The head is a linear map ``V = w·h + b`` computed in float32, initialized to zero (V ≡ 0 at
the start: GAE's first advantages are then the discounted rewards-to-go).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from unialign.lm.generation import Generations
from unialign.lm.logps import decoder_and_head, token_logps
from unialign.lm.packing import default_row_budget, pack_sequences, unwrap_model, varlen_inputs

__all__ = [
    "ATTRIBUTE",
    "ValueHead",
    "attach_value_head",
    "value_head_of",
    "detach_value_head",
    "save_value_head",
    "TokenOutputs",
    "token_outputs",
]

#: The policy attribute the head is registered under (its parameters: ``value_head.*``).
ATTRIBUTE = "value_head"


class ValueHead(torch.nn.Module):
    """``V(s_t) = w·h_t + b``, float32, zero-initialized."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1, dtype=torch.float32)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """``[T, H] → [T]``."""
        return self.linear(hidden.float()).squeeze(-1)


def _hidden_size(model: torch.nn.Module) -> int:
    config = unwrap_model(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.hidden_size)


def attach_value_head(model: torch.nn.Module) -> ValueHead:
    """Register a fresh :class:`ValueHead` on ``model`` (on its device) and return it. Call it
    before the optimizer is built and before a checkpoint is loaded (both then include it)."""
    if getattr(model, ATTRIBUTE, None) is not None:
        raise ValueError(f"the policy already has a {ATTRIBUTE!r}")
    device = next(model.parameters()).device
    head = ValueHead(_hidden_size(model)).to(device)
    setattr(model, ATTRIBUTE, head)
    return head


def value_head_of(model: torch.nn.Module) -> ValueHead | None:
    return getattr(model, ATTRIBUTE, None)


def detach_value_head(model: torch.nn.Module) -> ValueHead | None:
    """Remove the head from ``model`` (before ``save_pretrained``: it is not part of the LM)."""
    head = value_head_of(model)
    if head is not None:
        delattr(model, ATTRIBUTE)
    return head


def save_value_head(head: ValueHead, path: str | Path) -> str:
    """Write the head's weights (``linear.weight [1, H]``, ``linear.bias [1]``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(path))
    return str(path)


class TokenOutputs:
    """Per-token outputs of U sequences, right-padded to ``width`` positions.

    Attributes:
        logps: ``[U, width]`` float32 log π(y_t | s_t) (0 on padding), differentiable when
            grad is on.
        mask: ``[U, width]`` bool, True on the completion tokens.
        values: ``[U, width]`` float32 V(s_t) (0 on padding), or ``None`` without a head.
        tokens: prompt + completion tokens processed (for tokens/s).
    """

    def __init__(self, logps: Tensor, mask: Tensor, values: Tensor | None, tokens: int):
        self.logps, self.mask, self.values, self.tokens = logps, mask, values, tokens


def _pad(flat: Tensor, seq: Tensor, counts: Tensor, width: int) -> Tensor:
    """Scatter per-token values ``[T]`` (sequence ``seq[i]``, positions in order within each
    sequence) into ``[U, width]``."""
    order = torch.argsort(seq, stable=True)  # tokens grouped by sequence, order kept
    s = seq[order]
    offsets = torch.cumsum(counts, 0) - counts
    pos = torch.arange(s.numel(), device=s.device) - offsets[s]
    out = flat.new_zeros(int(counts.numel()), width)
    return out.index_put((s, pos), flat[order])


def token_outputs(
    model: torch.nn.Module,
    gens: Generations,
    ids: list[int],
    *,
    width: int,
    pad_id: int,
    chunk_size: int,
    max_tokens_per_row: int | None,
    value_head: ValueHead | None = None,
) -> TokenOutputs:
    """Per-token log-probs (and values) of the samples ``ids`` under ``model``, one forward.

    The samples are packed exactly as :func:`~unialign.lm.online_update.sample_logps` packs
    them (row budget :func:`~unialign.lm.packing.default_row_budget` unless given), and the tokens are scored by
    :func:`~unialign.lm.logps.token_logps`, the one place that scores tokens. With a value head,
    a forward hook on the decoder keeps its last hidden states; the head reads them at the
    same scored positions (the state s_t before token y_t).
    """
    prompts = [gens.prompt_ids[i] for i in ids]
    comps = [gens.completion_ids[i] for i in ids]
    lengths = [len(p) + len(c) for p, c in zip(prompts, comps)]
    budget = max_tokens_per_row or default_row_budget(model, lengths)
    batch = pack_sequences(list(zip(prompts, comps)), max_tokens_per_row=budget, pad_id=pad_id)
    captured: list[Tensor] = []
    handle = None
    if value_head is not None:
        decoder, _ = decoder_and_head(model)
        handle = decoder.register_forward_hook(
            lambda module, args, out: captured.append(out.last_hidden_state)
        )
    try:
        logps, seq = token_logps(model, batch, chunk_size=chunk_size)
    finally:
        if handle is not None:
            handle.remove()
    counts = torch.bincount(seq, minlength=len(ids))
    mask = torch.arange(width, device=seq.device)[None, :] < counts[:, None]
    values = None
    if value_head is not None:
        hidden = captured[-1]
        index = batch.seq_index.to(hidden.device)
        if tuple(hidden.shape[:2]) != tuple(index.shape):  # a varlen kernel: one flat row
            index = index[varlen_inputs(batch).keep.to(hidden.device)][None]
        h = hidden[index >= 0]  # row-major, the order token_logps scores in
        values = _pad(value_head(h), seq, counts, width)
    return TokenOutputs(_pad(logps, seq, counts, width), mask, values, sum(lengths))
