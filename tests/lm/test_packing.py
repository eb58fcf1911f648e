"""Packing layout and document masks (no model needed)."""

from __future__ import annotations

import random

import pytest
import torch

from unialign.lm.data import TokenizedPair, TokenizedUnpaired
from unialign.lm.packing import (
    document_mask,
    pack_pairs,
    pack_sequences,
    pack_unpaired,
    pad_pairs,
    pad_sequences,
    varlen_inputs,
)

PAD = 0


def test_layout_by_hand():
    """Two sequences in one row of 8, then padding.

    seq 0 = prompt [11, 12] + completion [13, 14] at positions 0-3: completion token t is read
    from position t - 1, so positions 1 and 2 score 13 and 14; position 0 (a prompt token whose
    successor is a prompt token) and position 3 (the last token) score nothing.
    seq 1 = prompt [21] + completion [22, 23] at positions 4-6: positions 4, 5 score 22, 23.
    """
    b = pack_sequences([([11, 12], [13, 14]), ([21], [22, 23])], max_tokens_per_row=8, pad_id=PAD)
    assert b.shape == (1, 7)  # rows are trimmed to the longest fill
    assert b.input_ids.tolist() == [[11, 12, 13, 14, 21, 22, 23]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert b.doc_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert b.seq_index.tolist() == [[-1, 0, 0, -1, 1, 1, -1]]
    assert b.target_ids.tolist() == [[-100, 13, 14, -100, 22, 23, -100]]
    assert b.num_sequences == 2 and b.num_tokens == 7 and b.num_scored == 4
    assert b.seq_row.tolist() == [0, 0] and b.seq_start.tolist() == [0, 4]
    assert b.seq_length.tolist() == [4, 3]


def test_first_fit_keeps_sequences_whole_and_in_capacity():
    # lengths 5, 4, 3, 2: capacity 6 → row0 = [s0], row1 = [s1, s3]... first fit in order:
    # s0 (5) → row0 (5); s1 (4) → row1 (4); s2 (3) → row2 (3); s3 (2) → row1 (6).
    seqs = [([1] * 2, [2] * 3), ([1] * 2, [2] * 2), ([1], [2] * 2), ([1], [2])]
    b = pack_sequences(seqs, max_tokens_per_row=6, pad_id=PAD)
    assert b.seq_row.tolist() == [0, 1, 2, 1]
    assert b.seq_start.tolist() == [0, 0, 0, 4]
    assert b.shape == (3, 6)
    assert b.doc_ids.tolist() == [
        [0, 0, 0, 0, 0, -1],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, -1, -1, -1],
    ]
    assert b.input_ids[0, 5] == PAD
    # first-fit-decreasing keeps the numbering and packs at least as densely
    d = pack_sequences(seqs, max_tokens_per_row=6, pad_id=PAD, decreasing=True)
    assert d.shape[0] <= b.shape[0]
    assert d.seq_length.tolist() == b.seq_length.tolist()


def test_random_packing_invariants():
    rng = random.Random(0)
    seqs = [
        ([rng.randrange(6, 100) for _ in range(rng.randint(0, 9))],
         [rng.randrange(6, 100) for _ in range(rng.randint(0, 9))])
        for _ in range(40)
    ]  # fmt: skip
    b = pack_sequences(seqs, max_tokens_per_row=24, pad_id=PAD, pad_to_multiple_of=8)
    assert b.shape[1] % 8 == 0
    assert int((b.doc_ids >= 0).sum()) == b.num_tokens == sum(len(p) + len(c) for p, c in seqs)
    for i, (p, c) in enumerate(seqs):
        r, s, n = int(b.seq_row[i]), int(b.seq_start[i]), len(p) + len(c)
        assert b.input_ids[r, s : s + n].tolist() == p + c
        assert b.position_ids[r, s : s + n].tolist() == list(range(n))
        scored = b.seq_index[r] == i
        # n(y): every completion token except a first token without a predecessor
        assert int(scored.sum()) == (len(c) if p else max(0, len(c) - 1))
        assert b.target_ids[r][scored].tolist() == (c if p else c[1:])
    # every row fits and no sequence is split
    assert int((b.doc_ids >= 0).sum(1).max()) <= 24


def test_empty_prompt_and_empty_completion():
    b = pad_sequences([([], [5, 6, 7]), ([4], [])], pad_id=PAD)
    assert b.seq_index.tolist() == [[0, 0, -1], [-1, -1, -1]]
    assert b.target_ids[0, :2].tolist() == [6, 7]


def test_sequence_longer_than_row_is_an_error_naming_it():
    seqs = [([1, 2], [3]), ([1] * 5, [2] * 6), ([1], [2])]
    with pytest.raises(ValueError, match=r"sequence 1 has 11 tokens"):
        pack_sequences(seqs, max_tokens_per_row=10, pad_id=PAD)


def test_pairs_and_unpaired_numbering():
    pairs = [TokenizedPair([1, 2], [3], [4, 5]), TokenizedPair([6], [7, 8, 9], [10])]
    b = pack_pairs(pairs, max_tokens_per_row=16, pad_id=PAD)
    assert b.num_sequences == 4
    r, s = int(b.seq_row[2]), int(b.seq_start[2])
    assert b.input_ids[r, s : s + 4].tolist() == [6, 7, 8, 9]  # sequence 2 = chosen of pair 1
    r, s = int(b.seq_row[1]), int(b.seq_start[1])
    assert b.input_ids[r, s : s + 4].tolist() == [1, 2, 4, 5]  # sequence 1 = rejected of pair 0
    p = pad_pairs(pairs, pad_id=PAD)
    assert p.shape == (4, 4) and p.doc_ids[3].tolist() == [0, 0, -1, -1]
    u = pack_unpaired(
        [TokenizedUnpaired([1], [2, 3], True), TokenizedUnpaired([4, 5], [6], False)],
        max_tokens_per_row=16,
        pad_id=PAD,
    )
    assert u.num_sequences == 2 and u.input_ids[0, :6].tolist() == [1, 2, 3, 4, 5, 6]


def test_rows_subbatch_keeps_global_numbering():
    seqs = [([1] * 3, [2] * 3)] * 5
    b = pack_sequences(seqs, max_tokens_per_row=12, pad_id=PAD)  # rows: {0,1}, {2,3}, {4}
    sub = b.rows(1, 3)
    assert sub.num_sequences == 5 and sub.shape == (2, 12)
    assert set(sub.seq_index[sub.seq_index >= 0].tolist()) == {2, 3, 4}
    assert sub.seq_row.tolist() == [-1, -1, 0, 0, 1]
    assert sub.num_tokens == 18


def test_document_mask_bool_and_additive():
    doc = torch.tensor([[0, 0, 1, 1, -1]])
    m = document_mask(doc)
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.bool
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1],  # padding sees only padding: no fully masked row (no NaN)
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m[0, 0], expected)
    a = document_mask(doc, dtype=torch.float32)
    assert torch.equal(a[0, 0] == 0, expected)
    assert float(a.min()) == torch.finfo(torch.float32).min
    w = document_mask(torch.zeros(1, 4, dtype=torch.long), sliding_window=2)
    assert w[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


def test_varlen_inputs_flatten_documents():
    b = pack_sequences(
        [([1, 2], [3]), ([4], [5, 6, 7]), ([8], [9])], max_tokens_per_row=7, pad_id=PAD
    )  # rows: [s0 s1] (7 tokens), [s2] (2 tokens + 5 pad)
    v = varlen_inputs(b)
    assert v.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert v.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1]]
    assert v.cu_seq_lens.tolist() == [0, 3, 7, 9] and v.cu_seq_lens.dtype == torch.int32
    assert v.max_length == 4
