"""Packing prompt+completion sequences into rows, and the attention masks that keep them apart.

Layout (see ``docs/lm-logps.md``). Every sequence is ``prompt_ids + completion_ids``, kept
whole, placed in a row of at most ``max_tokens_per_row`` tokens by greedy first-fit; rows are
right-padded to a common length ``L``. Position ids restart at 0 for every sequence, and every
token carries the index of its document within the row (``doc_ids``; ``-1`` on padding).

Scoring rule (the same as TRL 1.16's DPO trainer): the log-prob of completion token ``t`` is
read from the logits at position ``t - 1`` (next-token prediction), so each position ``p`` whose
next token ``p + 1`` is a completion token of the same sequence is *scored*:
``seq_index[r, p]`` names the sequence, ``target_ids[r, p]`` the token. Everything else (prompt
positions before the last prompt token, the last token of every sequence, padding) has
``seq_index == -1``. When a prompt is empty the first completion token has no preceding
position and is not scored (TRL does the same).

Restarting ``position_ids`` alone is **not** a document mask: transformers only infers one from
them when no attention mask and no KV cache is passed (``use_cache`` defaults to True), and the
anchors measured logits leaking across packed documents by up to 4.4 on the GPU machine. The
mask is therefore always built here, explicitly, by :func:`attention_mask_for`:

- ``sdpa``: a boolean ``[R, 1, L, L]`` mask (True = attend), passed as ``attention_mask``;
  transformers returns a 4-D mask unchanged (``masking_utils._preprocess_mask_arguments``);
- ``eager``: the same mask as an additive float mask (0 / dtype min), because eager attention
  *adds* the mask to the scores;
- ``flex_attention``: a FlexAttention ``BlockMask`` (causal AND same document);
- ``flash_attention_2`` / ``flash_attention_3``: no mask at all; the rows are flattened to one
  padding-free row and the varlen kernel gets ``cu_seq_lens`` (:class:`VarlenInputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "PackedBatch",
    "VarlenInputs",
    "pack_sequences",
    "pack_pairs",
    "pack_unpaired",
    "pad_sequences",
    "pad_pairs",
    "pad_unpaired",
    "pair_sequences",
    "unpaired_sequences",
    "document_mask",
    "document_block_mask",
    "varlen_inputs",
    "attention_mask_for",
    "MASKED_IMPLEMENTATIONS",
    "unwrap_model",
    "VARLEN_IMPLEMENTATIONS",
]

IGNORE_INDEX = -100

#: Attention implementations that take a 4-D document mask (boolean, or additive for eager).
MASKED_IMPLEMENTATIONS = {"sdpa": "bool", "eager": "additive"}
#: Attention implementations that get flattened rows plus ``cu_seq_lens`` (varlen kernels).
#: A mutable set so that a custom varlen kernel registered with transformers can opt in.
VARLEN_IMPLEMENTATIONS = {"flash_attention_2", "flash_attention_3"}


@dataclass
class PackedBatch:
    """Sequences packed into rows (or one per row, padded), ready to score.

    ``R`` rows of ``L`` tokens; ``S = num_sequences`` sequences, numbered in the order given to
    the packing function.

    Attributes:
        input_ids: ``[R, L]`` long, padding is ``pad_id``.
        position_ids: ``[R, L]`` long, restarting at 0 for every sequence (0 on padding).
        doc_ids: ``[R, L]`` long, the document index within the row, ``-1`` on padding.
        target_ids: ``[R, L]`` long, the next token (the one scored at this position) where
            ``seq_index >= 0``, ``-100`` elsewhere.
        seq_index: ``[R, L]`` long, which sequence the log-prob at this position belongs to;
            ``-1`` where it does not count (prompt tokens before the last one, the last token of
            a sequence, padding).
        seq_row: ``[S]`` long, the row holding each sequence.
        seq_start: ``[S]`` long, its first position in that row.
        seq_length: ``[S]`` long, its length (prompt + completion).
        num_sequences: ``S``.
        num_tokens: non-pad tokens (for tokens/s).
    """

    input_ids: Tensor
    position_ids: Tensor
    doc_ids: Tensor
    target_ids: Tensor
    seq_index: Tensor
    seq_row: Tensor
    seq_start: Tensor
    seq_length: Tensor
    num_sequences: int
    num_tokens: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(R, L)``."""
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    @property
    def num_scored(self) -> int:
        """Positions whose log-prob counts (completion tokens that have a predecessor)."""
        return int((self.seq_index >= 0).sum())

    @property
    def fill(self) -> float:
        """Fraction of the ``R × L`` slots holding real tokens."""
        return self.num_tokens / max(1, self.input_ids.numel())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """The same batch with every tensor on ``device``."""
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v
        return PackedBatch(**kw)

    def rows(self, start: int, stop: int) -> PackedBatch:
        """Rows ``start:stop`` as a batch that keeps the *global* sequence numbering.

        ``num_sequences`` is unchanged, so per-sequence results of the sub-batch are ``[S]``
        tensors with zeros for the sequences that live in other rows; summing over sub-batches
        gives the result of the whole batch. ``seq_row`` is re-based (sequences outside the
        slice get ``-1``).
        """
        sl = slice(start, stop)
        inside = (self.seq_row >= start) & (self.seq_row < stop)
        return PackedBatch(
            input_ids=self.input_ids[sl],
            position_ids=self.position_ids[sl],
            doc_ids=self.doc_ids[sl],
            target_ids=self.target_ids[sl],
            seq_index=self.seq_index[sl],
            seq_row=torch.where(inside, self.seq_row - start, torch.full_like(self.seq_row, -1)),
            seq_start=self.seq_start,
            seq_length=self.seq_length,
            num_sequences=self.num_sequences,
            num_tokens=int((self.doc_ids[sl] >= 0).sum()),
        )


# --------------------------------------------------------------------------------------------
# Building batches
# --------------------------------------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _layout(
    seqs: Sequence[tuple[Sequence[int], Sequence[int]]],
    placement: list[tuple[int, int]],
    num_rows: int,
    row_length: int,
    pad_id: int,
) -> PackedBatch:
    """Fill the tensors given where each sequence goes: ``placement[i] = (row, start)``."""
    R, L, S = num_rows, row_length, len(seqs)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    doc_ids = torch.full((R, L), -1, dtype=torch.long)
    target_ids = torch.full((R, L), IGNORE_INDEX, dtype=torch.long)
    seq_index = torch.full((R, L), -1, dtype=torch.long)
    docs_in_row = [0] * R
    lengths = []
    for i, ((prompt, completion), (r, s)) in enumerate(zip(seqs, placement)):
        ids = list(prompt) + list(completion)
        n, p = len(ids), len(prompt)
        lengths.append(n)
        if n == 0:
            continue
        input_ids[r, s : s + n] = torch.tensor(ids, dtype=torch.long)
        position_ids[r, s : s + n] = torch.arange(n)
        doc_ids[r, s : s + n] = docs_in_row[r]
        docs_in_row[r] += 1
        # Position q scores token q + 1; completion tokens are p .. n-1, so the scoring
        # positions are max(p, 1) - 1 .. n - 2 (an empty prompt leaves token 0 unscored).
        first = max(p, 1) - 1
        if n - 1 > first:
            seq_index[r, s + first : s + n - 1] = i
            target_ids[r, s + first : s + n - 1] = input_ids[r, s + first + 1 : s + n]
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        doc_ids=doc_ids,
        target_ids=target_ids,
        seq_index=seq_index,
        seq_row=torch.tensor([r for r, _ in placement], dtype=torch.long),
        seq_start=torch.tensor([s for _, s in placement], dtype=torch.long),
        seq_length=torch.tensor(lengths, dtype=torch.long),
        num_sequences=S,
        num_tokens=sum(lengths),
    )


def pack_sequences(
    seqs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_tokens_per_row: int,
    pad_id: int,
    pad_to_multiple_of: int = 1,
    decreasing: bool = False,
) -> PackedBatch:
    """Pack ``(prompt_ids, completion_ids)`` sequences into rows by greedy first-fit.

    Each sequence is kept whole and goes into the first row (in creation order) with room for
    it, else into a new row. Rows are right-padded to the longest row's fill, rounded up to
    ``pad_to_multiple_of`` (and never beyond ``max_tokens_per_row`` unless rounding demands it).

    Args:
        seqs: one ``(prompt_ids, completion_ids)`` per sequence; sequence ``i`` keeps index ``i``.
        max_tokens_per_row: row capacity in tokens.
        pad_id: token id written on padding (never attended to, never scored).
        pad_to_multiple_of: round the row length up to a multiple of this (e.g. 128 for
            FlexAttention blocks, or ``max_tokens_per_row`` for fixed shapes).
        decreasing: place sequences longest first (first-fit-decreasing: denser rows); the
            sequence numbering is unchanged.

    Raises:
        ValueError: a sequence longer than a row (the message names its index).
    """
    if max_tokens_per_row < 1:
        raise ValueError(f"max_tokens_per_row must be >= 1, got {max_tokens_per_row}")
    if pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
    lengths = [len(p) + len(c) for p, c in seqs]
    for i, n in enumerate(lengths):
        if n > max_tokens_per_row:
            raise ValueError(
                f"sequence {i} has {n} tokens (prompt + completion), more than "
                f"max_tokens_per_row={max_tokens_per_row}; truncate it or raise the row size"
            )
    order = range(len(seqs))
    if decreasing:
        order = sorted(order, key=lambda i: -lengths[i])
    fill: list[int] = []  # tokens used per row
    placement: list[tuple[int, int]] = [(0, 0)] * len(seqs)
    for i in order:
        n = lengths[i]
        for r, used in enumerate(fill):
            if used + n <= max_tokens_per_row:
                placement[i] = (r, used)
                fill[r] = used + n
                break
        else:
            placement[i] = (len(fill), 0)
            fill.append(n)
    if not fill:
        fill = [0]
    L = _round_up(max(1, max(fill)), pad_to_multiple_of)
    return _layout(seqs, placement, len(fill), L, pad_id)


def pad_sequences(
    seqs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    pad_to_multiple_of: int = 1,
) -> PackedBatch:
    """The unpacked layout: one sequence per row, right-padded (``doc_ids`` 0 / -1)."""
    n = max([len(p) + len(c) for p, c in seqs] + [1])
    L = _round_up(n, pad_to_multiple_of)
    return _layout(seqs, [(i, 0) for i in range(len(seqs))], max(1, len(seqs)), L, pad_id)


def pair_sequences(pairs: Sequence[Any]) -> list[tuple[list[int], list[int]]]:
    """``TokenizedPair``-likes → sequences: ``2i`` = chosen of pair ``i``, ``2i + 1`` = rejected."""
    out: list[tuple[list[int], list[int]]] = []
    for p in pairs:
        out.append((list(p.prompt_ids), list(p.chosen_ids)))
        out.append((list(p.prompt_ids), list(p.rejected_ids)))
    return out


def unpaired_sequences(examples: Sequence[Any]) -> list[tuple[list[int], list[int]]]:
    """``TokenizedUnpaired``-likes → sequences: ``i`` = example ``i``."""
    return [(list(e.prompt_ids), list(e.completion_ids)) for e in examples]


def pack_pairs(
    pairs: Sequence[Any], *, max_tokens_per_row: int, pad_id: int, **kwargs: Any
) -> PackedBatch:
    """Pack preference pairs (objects with ``prompt_ids``, ``chosen_ids``, ``rejected_ids``).

    Sequence ``2i`` is the chosen completion of pair ``i``, ``2i + 1`` the rejected one, so
    ``logps[0::2]`` / ``logps[1::2]`` are the chosen / rejected log-probs. Extra keyword
    arguments go to :func:`pack_sequences`.
    """
    return pack_sequences(
        pair_sequences(pairs), max_tokens_per_row=max_tokens_per_row, pad_id=pad_id, **kwargs
    )


def pack_unpaired(
    examples: Sequence[Any], *, max_tokens_per_row: int, pad_id: int, **kwargs: Any
) -> PackedBatch:
    """Pack unpaired examples (objects with ``prompt_ids``, ``completion_ids``); ``i`` = example ``i``."""
    return pack_sequences(
        unpaired_sequences(examples), max_tokens_per_row=max_tokens_per_row, pad_id=pad_id, **kwargs
    )


def pad_pairs(pairs: Sequence[Any], *, pad_id: int, **kwargs: Any) -> PackedBatch:
    """:func:`pad_sequences` over :func:`pair_sequences` (the unpacked reference layout)."""
    return pad_sequences(pair_sequences(pairs), pad_id=pad_id, **kwargs)


def pad_unpaired(examples: Sequence[Any], *, pad_id: int, **kwargs: Any) -> PackedBatch:
    """:func:`pad_sequences` over :func:`unpaired_sequences`."""
    return pad_sequences(unpaired_sequences(examples), pad_id=pad_id, **kwargs)


# --------------------------------------------------------------------------------------------
# Attention masks
# --------------------------------------------------------------------------------------------


def document_mask(
    doc_ids: Tensor,
    *,
    dtype: torch.dtype | None = None,
    sliding_window: int | None = None,
) -> Tensor:
    """The dense document mask ``[R, 1, L, L]``: query ``q`` may see key ``k`` iff ``k <= q`` and
    both tokens are in the same document.

    Padding (``doc_ids == -1``) forms its own "document": pad tokens see earlier pad tokens
    only, so no real token sees padding and no query row is fully masked (a fully masked row
    makes SDPA return NaN, and ``0 × NaN`` in the next layer would leak it everywhere).

    Args:
        doc_ids: ``[R, L]`` document index per token, ``-1`` on padding.
        dtype: ``None`` for a boolean mask (True = attend; SDPA), or a float dtype for an
            additive mask (0 where attended, the dtype's minimum elsewhere; eager attention).
        sliding_window: also require ``q - k < sliding_window`` (sliding-window layers).
    """
    L = doc_ids.shape[-1]
    pos = torch.arange(L, device=doc_ids.device)
    allowed = pos[None, :] <= pos[:, None]  # [L(q), L(k)]
    if sliding_window is not None:
        allowed = allowed & (pos[:, None] - pos[None, :] < sliding_window)
    allowed = allowed[None] & (doc_ids[:, :, None] == doc_ids[:, None, :])  # [R, L, L]
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=doc_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def document_block_mask(doc_ids: Tensor, *, sliding_window: int | None = None) -> Any:
    """A FlexAttention ``BlockMask`` for ``causal AND same document`` over ``doc_ids [R, L]``.

    Built with ``create_block_mask`` on ``doc_ids``' device; padding is its own document, as in
    :func:`document_mask`.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    docs = doc_ids

    if sliding_window is None:

        def mask_mod(b, h, q, kv):
            return (q >= kv) & (docs[b, q] == docs[b, kv])

    else:
        window = int(sliding_window)

        def mask_mod(b, h, q, kv):
            return (q >= kv) & (q - kv < window) & (docs[b, q] == docs[b, kv])

    R, L = docs.shape
    return create_block_mask(mask_mod, R, None, L, L, device=docs.device)


@dataclass
class VarlenInputs:
    """Inputs for a varlen (flash-attention) kernel: all rows flattened into one padding-free row.

    Attributes:
        keep: ``[R, L]`` bool, the non-pad tokens (row-major order = flattened order).
        input_ids: ``[1, N]`` the kept tokens.
        position_ids: ``[1, N]`` restarting per sequence.
        cu_seq_lens: ``[D + 1]`` int32 cumulative document lengths (D documents in all rows).
        max_length: the longest document.
    """

    keep: Tensor
    input_ids: Tensor
    position_ids: Tensor
    cu_seq_lens: Tensor
    max_length: int

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the decoder's forward (transformers' ``FlashAttentionKwargs``)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": None,
            "cu_seq_lens_q": self.cu_seq_lens,
            "cu_seq_lens_k": self.cu_seq_lens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }


def varlen_inputs(batch: PackedBatch) -> VarlenInputs:
    """Flatten ``batch`` for a varlen kernel (documents delimited by ``cu_seq_lens``)."""
    keep = batch.doc_ids >= 0
    R = batch.doc_ids.shape[0]
    # A key that changes exactly at document boundaries in row-major order.
    rows = torch.arange(R, device=keep.device)[:, None].expand_as(batch.doc_ids)
    key = (rows * (batch.doc_ids.max().clamp_min(0) + 1) + batch.doc_ids)[keep]
    if key.numel() == 0:
        lengths = key.new_zeros(0)
    else:
        lengths = torch.unique_consecutive(key, return_counts=True)[1]
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=keep.device)
    cu[1:] = torch.cumsum(lengths, 0).to(torch.int32)
    return VarlenInputs(
        keep=keep,
        input_ids=batch.input_ids[keep][None],
        position_ids=batch.position_ids[keep][None],
        cu_seq_lens=cu,
        max_length=int(lengths.max()) if lengths.numel() else 0,
    )


def unwrap_model(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (LoRA layers stay injected and active)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _sliding_window(config: Any) -> tuple[bool, int | None]:
    """Whether the model has sliding-window layers, and the window."""
    layer_types = getattr(config, "layer_types", None) or []
    has_sliding = any(t == "sliding_attention" for t in layer_types)
    if any(t not in ("full_attention", "sliding_attention") for t in layer_types):
        raise NotImplementedError(
            f"config.layer_types contains {sorted(set(layer_types))}; only 'full_attention' and "
            "'sliding_attention' layers are supported by the packed document mask"
        )
    return has_sliding, (getattr(config, "sliding_window", None) if has_sliding else None)


def attention_mask_for(model: Any, batch: PackedBatch) -> Any:
    """The document mask for ``batch`` in the form ``model``'s attention implementation needs.

    Returns (by ``model.config._attn_implementation``):

    - ``"sdpa"``: a boolean ``[R, 1, L, L]`` tensor;
    - ``"eager"``: an additive ``[R, 1, L, L]`` tensor in the model's dtype;
    - ``"flex_attention"``: a ``BlockMask``;
    - ``"flash_attention_2"`` / ``"flash_attention_3"`` (and anything added to
      :data:`VARLEN_IMPLEMENTATIONS`): a :class:`VarlenInputs`.

    Models with sliding-window layers get a dict ``{"full_attention": m,
    "sliding_attention": m_sw}`` (transformers' per-layer-type mask mapping) for the dense and
    flex forms.

    Raises:
        ValueError: for any other attention implementation (it could not be told to keep the
            packed documents apart).
    """
    base = unwrap_model(model)
    config = base.config
    impl = getattr(config, "_attn_implementation", None)
    if impl in VARLEN_IMPLEMENTATIONS:
        return varlen_inputs(batch)
    if impl not in MASKED_IMPLEMENTATIONS and impl != "flex_attention":
        raise ValueError(
            f"attention implementation {impl!r} is not supported for packed log-probs: it cannot "
            "be given a per-document mask. Load the model with attn_implementation= one of "
            f"{sorted([*MASKED_IMPLEMENTATIONS, 'flex_attention', *VARLEN_IMPLEMENTATIONS])}"
        )
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    has_sliding, window = _sliding_window(text_config)
    doc_ids = batch.doc_ids
    if impl == "flex_attention":
        full = document_block_mask(doc_ids)
        if has_sliding:
            return {
                "full_attention": full,
                "sliding_attention": document_block_mask(doc_ids, sliding_window=window),
            }
        return full
    dtype = None
    if MASKED_IMPLEMENTATIONS[impl] == "additive":
        dtype = getattr(base, "dtype", None) or next(base.parameters()).dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
    full = document_mask(doc_ids, dtype=dtype)
    if has_sliding:
        return {
            "full_attention": full,
            "sliding_attention": document_mask(doc_ids, dtype=dtype, sliding_window=window),
        }
    return full


def default_row_budget(model: Any, lengths: Sequence[int]) -> int:
    """The packing row budget to use when none is configured, for sequences of ``lengths``.

    With a kernel that takes a dense per-document mask (``sdpa``, ``eager``: the CPU default)
    attention costs the whole row's length squared whatever the mask says, so packing many short
    sequences into one long row multiplies the work (measured on CPU: 113 ms against 29 ms for
    one online-DPO iteration's forward + backward, ``docs/benchmarks.md``): rows as long as the
    longest sequence. Block-sparse (flex) and varlen (flash) kernels skip the masked blocks, so
    long rows only save padding: at least 1024 tokens.
    """
    longest = max(lengths)
    impl = getattr(unwrap_model(model).config, "_attn_implementation", None)
    return longest if impl in MASKED_IMPLEMENTATIONS else max(1024, longest)
