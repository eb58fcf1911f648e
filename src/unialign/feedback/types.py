"""Candidates that feedback compares, for either kind of policy (shapes in each docstring).

A comparison is between two candidates of the same kind: two control *segments* (windows of a
trajectory) or two language-model *completions* of one prompt. Teachers, judges, the store and
the labelling app take these containers; neither engine's internals leak into the feedback
layer (``unialign.feedback`` imports nothing from ``lm/``, ``control/`` or ``bilevel/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "CompletionPairs",
    "LabelledCompletions",
    "Message",
    "SegmentBatch",
    "Text",
    "text_format",
]


@dataclass(frozen=True)
class SegmentBatch:
    """Trajectory segments σ = (s₁, a₁, …, s_H, a_H) of length H from single episodes.

    Attributes:
        obs: ``[N, H, obs_dim]``.
        actions: ``[N, H, act_dim]``.
        true_rewards: ``[N, H]`` the environment's reward (what simulated teachers see).
        indices: ``[N]`` long, replay-buffer index of each segment's first transition
            (lets the feedback store refer to a segment without copying it).
        absorbed: ``[N, H]`` bool, True at steps padded with the absorbing state after a
            termination (not chosen by the policy; true reward 0). ``None`` means no step is
            absorbed; read it through :attr:`absorbed_mask`.
    """

    obs: Tensor
    actions: Tensor
    true_rewards: Tensor
    indices: Tensor
    absorbed: Tensor | None = field(default=None)

    @property
    def length(self) -> int:
        return int(self.obs.shape[1])

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    @property
    def absorbed_mask(self) -> Tensor:
        """``[N, H]`` bool: True at absorbed (padded) steps, all False when none are."""
        if self.absorbed is None:
            return torch.zeros(self.obs.shape[:2], dtype=torch.bool, device=self.obs.device)
        return self.absorbed

    def take(self, idx: Tensor | list[int]) -> SegmentBatch:
        """The segments at positions ``idx`` (a CPU index works for tensors on any device)."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return SegmentBatch(
            self.obs[i.to(self.obs.device)],
            self.actions[i.to(self.actions.device)],
            self.true_rewards[i.to(self.true_rewards.device)],
            self.indices[i.to(self.indices.device)],
            None if self.absorbed is None else self.absorbed[i.to(self.absorbed.device)],
        )

    def to(self, device: torch.device | str) -> SegmentBatch:
        """The same segments with obs, actions, rewards and mask on ``device`` (indices stay)."""
        return SegmentBatch(
            self.obs.to(device),
            self.actions.to(device),
            self.true_rewards.to(device),
            self.indices,
            None if self.absorbed is None else self.absorbed.to(device),
        )


# A prompt or a completion: a plain string (standard format), or a conversation given as a list
# of ``{"role": ..., "content": ...}`` messages (conversational format; docs/lm-data.md).
Message = dict[str, Any]
Text = str | list[Message]


def text_format(value: object, what: str) -> str:
    """``"standard"`` for a string, ``"conversational"`` for a well-formed message list.

    A message list must be non-empty and each message a dict with string ``role`` and
    ``content`` (other keys are kept). Raises ``ValueError`` naming ``what`` otherwise.
    """
    if isinstance(value, str):
        return "standard"
    if not isinstance(value, list):
        raise ValueError(
            f"{what} must be a string or a list of {{'role', 'content'}} messages, "
            f"got {type(value).__name__}"
        )
    if not value:
        raise ValueError(f"{what} is an empty message list; a conversation needs a message")
    for j, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
            raise ValueError(f"{what}[{j}] must be a dict with a string 'role', got {m!r:.80}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{what}[{j}] must have string 'content', got {m!r:.80}")
    return "conversational"


@dataclass(frozen=True)
class CompletionPairs:
    """N comparisons of two language-model completions of one prompt each.

    Within a pair the prompt and both completions are all strings (standard format) or all
    message lists (conversational format; a completion's last message is the ``assistant``
    turn); pairs of both formats may sit in one container (see :attr:`formats`).

    Attributes:
        prompts: N prompts.
        completions_1: N first completions (label 1 means this one is better).
        completions_2: N second completions.
        rewards_1: ``[N]`` float64 hidden/true reward of each first completion, NaN where
            unknown; ``None`` when unknown for every pair. Simulated teachers read these.
        rewards_2: ``[N]`` the same for the second completions.
        token_ids_1: N token-id lists (or ``None`` each) of the first completions; ``None``
            when no pair has them.
        token_ids_2: the same for the second completions.
        policy_versions: N names of the policy that generated each pair (an iteration number
            or checkpoint name, as text), ``None`` where unknown; ``None`` for all unknown.
        query_ids: ``[N]`` long, the feedback store's query id of each pair; ``None`` for
            pairs that were never stored.
    """

    prompts: Sequence[Text]
    completions_1: Sequence[Text]
    completions_2: Sequence[Text]
    rewards_1: Tensor | None = None
    rewards_2: Tensor | None = None
    token_ids_1: Sequence[list[int] | None] | None = None
    token_ids_2: Sequence[list[int] | None] | None = None
    policy_versions: Sequence[str | None] | None = None
    query_ids: Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        for name in (
            "completions_1",
            "completions_2",
            "token_ids_1",
            "token_ids_2",
            "policy_versions",
        ):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries but prompts has {n}")
        for name in ("rewards_1", "rewards_2", "query_ids"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (n,):
                raise ValueError(f"{name} must have shape [{n}], got {tuple(value.shape)}")
        for i in range(n):
            fmt = text_format(self.prompts[i], f"prompts[{i}]")
            for name in ("completions_1", "completions_2"):
                value = getattr(self, name)[i]
                if text_format(value, f"{name}[{i}]") != fmt:
                    raise ValueError(
                        f"pair {i}: the prompt is {fmt} but {name}[{i}] is not; a pair's prompt "
                        "and completions must all be strings or all be message lists"
                    )
                if fmt == "conversational" and value[-1]["role"] != "assistant":
                    raise ValueError(
                        f"{name}[{i}] must end with an 'assistant' message, its last message "
                        f"has role {value[-1]['role']!r}"
                    )

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def formats(self) -> list[str]:
        """Per pair, ``"standard"`` (strings) or ``"conversational"`` (message lists)."""
        return ["standard" if isinstance(p, str) else "conversational" for p in self.prompts]

    def take(self, idx: Sequence[int]) -> CompletionPairs:
        """The pairs at positions ``idx``, in that order."""
        rows = [int(i) for i in idx]
        index = torch.as_tensor(rows, dtype=torch.long)

        def pick(seq: Sequence | None) -> list | None:
            return None if seq is None else [seq[i] for i in rows]

        def pick_tensor(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index.to(t.device)]

        return CompletionPairs(
            pick(self.prompts),
            pick(self.completions_1),
            pick(self.completions_2),
            pick_tensor(self.rewards_1),
            pick_tensor(self.rewards_2),
            pick(self.token_ids_1),
            pick(self.token_ids_2),
            pick(self.policy_versions),
            pick_tensor(self.query_ids),
        )


class LabelledCompletions(NamedTuple):
    """Labelled completion comparisons read back from the feedback store.

    Attributes:
        pairs: M pairs (a query labelled by two labellers appears twice).
        labels: ``[M]`` float32; 1 = first completion better, 0 = second, ½ = tie.
        labelers: M labeller names (``teacher:oracle``, ``judge:gpt``, ``human:ada``, ...).
    """

    pairs: CompletionPairs
    labels: Tensor
    labelers: list[str]
