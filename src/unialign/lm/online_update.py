"""The update phase of the online loop: frozen log-probs, then exact-accumulation AdamW steps.

Log-probs are always those of the *stored* tokens (prompt ids as the model saw them, sampled
completion ids, EOS included when sampled), computed by
:func:`~unialign.lm.generation.completion_logps`: the samples of a micro-batch are packed into
rows behind a per-document mask, and nothing but completion tokens is scored, so padding never
enters a log-prob or a gradient.

Frozen log-probs (ℓ_t under the policy that sampled, ℓ_ref under the initial policy) are
computed without grad, in eval mode, *before* the first update and on the same micro-batches
(the same packing) as the first pass of the update, so that at the first step ℓ_θ − ℓ_t is
exactly 0 when there is no dropout.

Exact accumulation: an optimizer step over a group of G examples backpropagates
Σ_i loss_i / G of each of its micro-batches, so the step equals one over a batch of G for every
objective whose per-example loss does not depend on the rest of its batch (as in ``train lm``).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unialign.lm.generation import Generations, completion_logps
from unialign.lm.online_methods import ExampleLogps, Examples, OnlineMethod
from unialign.lm.packing import default_row_budget
from unialign.lm.refcache import adapter_disabled
from unialign.losses import LossSpec

__all__ = ["plan_steps", "sample_logps", "frozen_logps", "update_policy", "UpdateResult"]


def plan_steps(n: int, *, epochs: int, groups: int, micro: int, seeds: list[int]) -> list[list]:
    """The optimizer steps of one iteration, each a list of micro-batches (example positions).

    Every pass e reshuffles the ``n`` examples with ``seeds[e]`` and splits them into
    ``groups`` near-equal contiguous steps (a step is empty when n < groups), each cut into
    micro-batches of at most ``micro`` examples.
    """
    steps = []
    for e in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seeds[e]))
        for part in torch.tensor_split(order, groups):
            p = part.tolist()
            steps.append([p[i : i + micro] for i in range(0, len(p), micro)])
    return steps


def sample_logps(
    model: torch.nn.Module,
    gens: Generations,
    ids: list[int],
    *,
    pad_id: int,
    chunk_size: int,
    max_tokens_per_row: int | None,
) -> tuple[Tensor, Tensor, int]:
    """``(ℓ [U], n [U], tokens)`` of the samples ``ids`` (in this order) under ``model``, packed
    in one forward (differentiable when grad is on); ``tokens`` counts the prompt and
    completion tokens processed. The row budget defaults to
    :func:`~unialign.lm.packing.default_row_budget` (the longest sequence with a dense-mask
    kernel, else max(1024, longest)), so a given list of samples is always packed the same way."""
    prompts = [gens.prompt_ids[i] for i in ids]
    comps = [gens.completion_ids[i] for i in ids]
    lengths = [len(p) + len(c) for p, c in zip(prompts, comps)]
    budget = max_tokens_per_row or default_row_budget(model, lengths)
    logps, counts = completion_logps(
        model, prompts, comps, chunk_size=chunk_size, max_tokens_per_row=budget, pad_id=pad_id
    )
    return logps, counts, sum(lengths)


@contextmanager
def _frozen(model: torch.nn.Module, *, adapter_off: bool = False):
    """Eval mode (no dropout), no grad, optionally the LoRA adapter disabled; mode restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), adapter_disabled(model) if adapter_off else nullcontext():
            yield
    finally:
        model.train(was)


def frozen_logps(
    policy: torch.nn.Module,
    reference_model: torch.nn.Module | None,
    gens: Generations,
    examples: Examples,
    first_pass: list[list[list[int]]],
    *,
    previous: bool,
    reference: bool,
    **logps_kw: Any,
) -> tuple[Tensor, Tensor]:
    """``(ℓ_t [N], ℓ_ref [N])`` of the samples the examples use, NaN elsewhere (and where not
    asked). ℓ_t is the current policy's (the one that sampled: call this before updating);
    ℓ_ref is ``reference_model``'s, or the LoRA policy's with its adapter disabled when
    ``reference_model`` is None."""
    device = next(policy.parameters()).device
    prev = torch.full((len(gens),), math.nan, device=device)
    ref = torch.full((len(gens),), math.nan, device=device)
    for mb in (mb for step in first_pass for mb in step):
        ids = examples.take(mb).samples()
        if previous:
            with _frozen(policy):
                prev[ids] = sample_logps(policy, gens, ids, **logps_kw)[0].float()
        if reference:
            model = reference_model if reference_model is not None else policy
            with _frozen(model, adapter_off=reference_model is None):
                ref[ids] = sample_logps(model, gens, ids, **logps_kw)[0].float().to(device)
    return prev, ref


@dataclass
class UpdateResult:
    """What the update phase reports: per-example means of the objective's ``loss/total`` and
    diagnostics, tokens processed, the last step's gradient norm and learning rate."""

    metrics: dict[str, float]
    tokens: int
    grad_norm: float | None
    lr: float
    seconds: float


def update_policy(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    gens: Generations,
    examples: Examples,
    plan: list[list[list[int]]],
    previous: Tensor,
    reference: Tensor,
    *,
    method: OnlineMethod,
    objective: LossSpec,
    params: dict[str, Any],
    use_reference: bool,
    max_grad_norm: float | None,
    **logps_kw: Any,
) -> UpdateResult:
    """Run the steps of ``plan``: per micro-batch the policy's log-probs of its samples, the
    method's typed batch, the objective, ``backward`` of Σ loss / |step|; per step clipping,
    AdamW and the schedule. An empty step (fewer examples than steps) moves the schedule only."""
    t0 = time.perf_counter()
    policy.train()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    per_example: dict[str, list[Tensor]] = {}
    tokens, grad_norm, lr = 0, None, scheduler.get_last_lr()[0]
    for micro_batches in plan:
        size = sum(len(mb) for mb in micro_batches)
        lr = scheduler.get_last_lr()[0]
        for mb in micro_batches:
            ex = examples.take(mb)
            ids = ex.samples()
            logps, counts, n_tok = sample_logps(policy, gens, ids, **logps_kw)
            batch = method.batch(_example_logps(ex, ids, logps, counts, previous, reference,
                                                method.uses_previous, use_reference))  # fmt: skip
            res = objective.fn(batch, **params)
            (res.losses.sum() / size).backward()
            tokens += n_tok
            for k, v in {"loss/total": res.losses, **res.metrics}.items():
                per_example.setdefault(k, []).append(v.detach().float().cpu())
        if size > 0:
            if max_grad_norm:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # torch warns of a schedule step before any AdamW step
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    means = {k: float(torch.cat(v).mean()) for k, v in per_example.items()}
    return UpdateResult(means, tokens, grad_norm, lr, time.perf_counter() - t0)


def _example_logps(
    ex: Examples, ids: list[int], logps: Tensor, counts: Tensor, previous: Tensor,
    reference: Tensor, use_previous: bool, use_reference: bool,
) -> ExampleLogps:  # fmt: skip
    """Gather the micro-batch's per-sample values into per-example (chosen, rejected) slots."""
    pos = {s: k for k, s in enumerate(ids)}
    device = logps.device

    def live(t: Tensor, which: Tensor | None) -> Tensor | None:
        if which is None:
            return None
        return t[torch.tensor([pos[int(i)] for i in which], device=device)]

    def frozen(t: Tensor, which: Tensor | None, used: bool) -> Tensor | None:
        return None if which is None or not used else t[which.to(t.device)]

    return ExampleLogps(
        policy_chosen=live(logps, ex.chosen), chosen_tokens=live(counts, ex.chosen),
        target=ex.target.to(device), policy_rejected=live(logps, ex.rejected),
        rejected_tokens=live(counts, ex.rejected),
        previous_chosen=frozen(previous, ex.chosen, use_previous),
        previous_rejected=frozen(previous, ex.rejected, use_previous),
        ref_chosen=frozen(reference, ex.chosen, use_reference),
        ref_rejected=frozen(reference, ex.rejected, use_reference),
    )  # fmt: skip
