"""Conversions between Python values and the feedback store's rows (schema: ``schema.py``).

Segment tensors are float32 blobs (little-endian, C order) and absorbed masks one byte per
step; token ids and conversational texts are JSON; an unknown hidden reward is SQL NULL, NaN
in tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unialign.feedback.types import CompletionPairs, SegmentBatch, Text

#: The columns :func:`segments_from_rows` reads (``p`` = segment_pairs).
SEGMENT_COLUMNS = (
    "p.segment_length, p.obs_dim, p.act_dim, p.index_1, p.index_2, p.obs_1, p.actions_1, "
    "p.rewards_1, p.absorbed_1, p.obs_2, p.actions_2, p.rewards_2, p.absorbed_2"
)
#: The columns :func:`completions_from_rows` reads (``q`` = queries, ``p`` = completion_pairs).
COMPLETION_COLUMNS = (
    "q.id, p.format, p.prompt, p.completion_1, p.completion_2, p.token_ids_1, p.token_ids_2, "
    "p.policy_version, p.reward_1, p.reward_2"
)


def float_blob(t: Tensor) -> bytes:
    """float32, little-endian, C order (float32 inputs round-trip bit for bit)."""
    return t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()


def mask_blob(t: Tensor) -> bytes:
    """One byte per step: 1 where absorbed, 0 elsewhere."""
    return t.detach().to("cpu", torch.bool).contiguous().numpy().astype(np.uint8).tobytes()


def blob_floats(blob: bytes, *shape: int) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").reshape(shape).astype(np.float32)


def blob_mask(blob: bytes, length: int) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8).reshape(length).astype(bool)


def dump_json(value: object, what: str) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{what} must be JSON-serializable (dicts, lists, strings, finite numbers): {err}"
        ) from err


def json_or_none(value: object) -> str | None:
    return None if value is None else json.dumps(value)


def float_or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def rewards_tensor(values: Tensor | Sequence[float | None] | None, n: int, what: str) -> Tensor:
    """``[n]`` float64, NaN where unknown (None, NaN, or no rewards at all)."""
    if values is None:
        return torch.full((n,), math.nan, dtype=torch.float64)
    if isinstance(values, Tensor):
        out = values.detach().to("cpu", torch.float64).reshape(-1)
    else:
        out = torch.tensor(
            [math.nan if v is None else float(v) for v in values], dtype=torch.float64
        )
    if out.shape != (n,):
        raise ValueError(
            f"{what} must have one reward per pair ({n}), got shape {tuple(out.shape)}"
        )
    if torch.isinf(out).any():
        raise ValueError(f"{what} must be finite (None or NaN marks an unknown reward)")
    return out


def token_id_lists(
    values: Sequence[Sequence[int] | None] | None, n: int, what: str
) -> list[list[int] | None]:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} pairs")
    out: list[list[int] | None] = []
    for i, ids in enumerate(values):
        if ids is None:
            out.append(None)
            continue
        seq = ids.tolist() if isinstance(ids, Tensor | np.ndarray) else list(ids)
        if not all(
            isinstance(t, int | np.integer) and not isinstance(t, bool) and t >= 0 for t in seq
        ):
            raise ValueError(f"{what}[{i}] must be a list of non-negative ints (token ids)")
        out.append([int(t) for t in seq])
    return out


def completions_from_rows(rows: list[tuple]) -> CompletionPairs:
    """Rows of :data:`COMPLETION_COLUMNS` → one container (texts decoded per the row's format)."""

    def text(fmt: str, value: str) -> Text:
        return value if fmt == "standard" else json.loads(value)

    def ids(value: str | None) -> list[int] | None:
        return None if value is None else json.loads(value)

    def reward(value: float | None) -> float:
        return math.nan if value is None else value

    return CompletionPairs(
        prompts=[text(r[1], r[2]) for r in rows],
        completions_1=[text(r[1], r[3]) for r in rows],
        completions_2=[text(r[1], r[4]) for r in rows],
        rewards_1=torch.tensor([reward(r[8]) for r in rows], dtype=torch.float64),
        rewards_2=torch.tensor([reward(r[9]) for r in rows], dtype=torch.float64),
        token_ids_1=[ids(r[5]) for r in rows],
        token_ids_2=[ids(r[6]) for r in rows],
        policy_versions=[r[7] for r in rows],
        query_ids=torch.tensor([r[0] for r in rows], dtype=torch.long),
    )


def segments_from_rows(rows: list[tuple], path: Path) -> tuple[SegmentBatch, SegmentBatch]:
    """Rows of :data:`SEGMENT_COLUMNS` → ``(seg1, seg2)``; all rows must share one shape."""
    if not rows:
        empty = SegmentBatch(
            torch.zeros(0, 0, 0),
            torch.zeros(0, 0, 0),
            torch.zeros(0, 0),
            torch.zeros(0, dtype=torch.long),
        )
        return empty, empty
    shapes = {tuple(r[:3]) for r in rows}
    if len(shapes) > 1:
        raise ValueError(
            f"{path} mixes segment shapes (H, obs_dim, act_dim) {sorted(shapes)}; "
            "they cannot be stacked into one batch"
        )
    horizon, obs_dim, act_dim = shapes.pop()

    def floats(col: int, *shape: int) -> Tensor:
        return torch.from_numpy(np.stack([blob_floats(r[col], *shape) for r in rows]))

    def side(first: int, index_col: int) -> SegmentBatch:
        masks = [r[first + 3] for r in rows]
        absorbed = None
        if any(m is not None for m in masks):  # a row stored without a mask has none absorbed
            absorbed = torch.from_numpy(
                np.stack([
                    np.zeros(horizon, bool) if m is None else blob_mask(m, horizon)
                    for m in masks
                ])
            )  # fmt: skip
        return SegmentBatch(
            obs=floats(first, horizon, obs_dim),
            actions=floats(first + 1, horizon, act_dim),
            true_rewards=floats(first + 2, horizon),
            indices=torch.tensor([r[index_col] for r in rows], dtype=torch.long),
            absorbed=absorbed,
        )

    return side(5, 3), side(9, 4)
