"""The offline preference-training loop for causal LMs (``unialign train lm``).

Phases, top to bottom:

1. **data** — tokenize and validate the preference file(s); hold out an eval split.
2. **model** — load the policy (full or LoRA) with the chosen dtype and attention kernel.
3. **reference** — reference log-probs of every example, computed once with the initial
   weights (or the LoRA adapter disabled) and cached on disk; or a frozen reference
   forward per micro-batch (``precompute_ref: false``); reference-free objectives skip it.
4. **optimize** — per optimizer step: micro-batches → pack → ``sequence_logps`` → typed
   batch → objective → exact gradient accumulation → clip → AdamW (or SGD) + schedule → log.
   Checkpoints every ``save_every`` steps, on SIGINT/SIGTERM (at the next step boundary,
   :class:`~unialign.interrupt.StopOnSignal`) and at the end.
5. **evaluate and export** — held-out preference accuracy and margin; ``save_pretrained``.

Crash safety: after ``kill -9`` at any moment, ``resume=True`` continues from the last complete
checkpoint (:mod:`unialign.lm.checkpoint`), truncates ``metrics.jsonl`` to the checkpoint's
offset, and ends as an uninterrupted run does. The final checkpoint is written *before* the
final evaluation and export, so a run killed during them is finished by ``resume``.

Exact accumulation: a step consumes ``G = batch_size × grad_accum × world_size`` examples;
each micro-batch contributes ``Σ_i loss_i · world_size / G`` (DDP averages gradients over
processes), so the update equals that of one batch of ``G`` for every objective whose
per-example loss does not depend on the rest of its batch (all except ``aot``, which sorts
within the batch, and the batch-mean KL baseline of ``kto``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from unialign.config import ConfigError, dump_config
from unialign.interrupt import StopOnSignal
from unialign.lm.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from unialign.lm.config import LMTrainConfig
from unialign.lm.data import DataError, TokenizedPair, load_preference_data, split_heldout
from unialign.lm.logps import sequence_logps
from unialign.lm.model import frozen_copy, is_lora, load_policy, load_tokenizer, save_policy
from unialign.lm.packing import pack_pairs, pair_sequences
from unialign.lm.refcache import (
    ReferenceCache,
    compute_reference_logps,
    data_fingerprint,
    fingerprint,
    reference_logps,
)
from unialign.losses import LossOutput, PairedLogps, UnpairedLogps
from unialign.runlog import MetricsLog, atomic_file, progress_bar

__all__ = ["train_lm", "Examples", "load_examples", "evaluate"]

#: Wall-clock metrics: the only values that differ between a resumed and an uninterrupted run.
TIMING_KEYS = ("lm/tokens_per_s",)


# ---------------------------------------------------------------------------------------------
# 1. data
# ---------------------------------------------------------------------------------------------
@dataclass
class Examples:
    """Training/eval examples as token pairs. For unpaired data, ``pairs[i]`` is
    (prompt_i, completion_i, completion_{i+1 mod N}): the "rejected" slot carries the
    mismatched completion of KTO's KL baseline (Ethayarajh et al. 2024, §4.2) and
    ``desirable`` the labels. Fixing the mismatch at the dataset level makes its reference
    log-probs precomputable."""

    pairs: list[TokenizedPair]
    desirable: torch.Tensor | None = None  # bool [N], unpaired data only

    def __len__(self) -> int:
        return len(self.pairs)

    def take(self, idx: list[int]) -> Examples:
        lab = None if self.desirable is None else self.desirable[idx]
        return Examples([self.pairs[i] for i in idx], lab)


def _to_examples(data, max_length: int) -> Examples:
    if data.fmt != "unpaired":
        return Examples(list(data.pairs))
    rows = data.unpaired
    pairs = []
    for i, row in enumerate(rows):
        room = max(1, max_length - len(row.prompt_ids))
        mismatched = rows[(i + 1) % len(rows)].completion_ids[:room]
        pairs.append(TokenizedPair(row.prompt_ids, row.completion_ids, mismatched))
    return Examples(pairs, torch.tensor([bool(r.desirable) for r in rows]))


def load_examples(cfg: LMTrainConfig, tokenizer) -> tuple[Examples, Examples | None]:
    """Phase 1: (train, eval) examples; data problems become a ``ConfigError`` naming the file."""
    kw = dict(fmt=cfg.format, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    try:
        train = load_preference_data(cfg.train_data, tokenizer, **kw)
        held = None
        if cfg.eval_data:
            held = load_preference_data(cfg.eval_data, tokenizer, **kw)
        elif cfg.eval_fraction > 0:
            train, held = split_heldout(train, cfg.eval_fraction, cfg.seed)
    except DataError as e:
        raise ConfigError(f"train_data/eval_data: {e}") from None
    if (train.fmt == "unpaired") != cfg.is_unpaired:
        raise ConfigError(
            f"format: objective {cfg.loss!r} needs {'un' if cfg.is_unpaired else ''}paired "
            f"data, but {cfg.train_data} is {train.fmt}"
        )
    train_ex = _to_examples(train, cfg.max_length)
    if len(train_ex) == 0:
        raise ConfigError(f"train_data: {cfg.train_data} has no usable examples")
    return train_ex, (_to_examples(held, cfg.max_length) if held is not None else None)


def _order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation that depends only on (seed, epoch), so a
    position in the stream identifies the examples (resume needs only the position)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def stream_positions(n: int, seed: int, start: int, count: int) -> list[int]:
    """Example indices at stream positions ``start … start+count−1`` (epoch after epoch of the
    seeded per-epoch order): what a step consumes, from its position alone (exact resume)."""
    out, cache = [], {}
    for pos in range(start, start + count):
        epoch = pos // n
        if epoch not in cache:
            cache = {epoch: _order(n, seed, epoch)}
        out.append(cache[epoch][pos % n])
    return out


# ---------------------------------------------------------------------------------------------
# 3. log-probs of a micro-batch, policy and reference
# ---------------------------------------------------------------------------------------------
class Scorer(torch.nn.Module):
    """The module that is trained: packed batch → per-sequence log-probs of ``policy``.

    Wrapping this (rather than the bare causal LM) in DDP/FSDP makes the one forward the loop
    calls, :func:`~unialign.lm.logps.sequence_logps`, go through the wrapper, so gradient
    synchronization (and ``no_sync`` during accumulation) sees it.
    """

    def __init__(self, policy: torch.nn.Module, chunk_size: int):
        super().__init__()
        self.policy, self.chunk_size = policy, chunk_size

    def forward(self, batch):
        return sequence_logps(self.policy, batch, chunk_size=self.chunk_size)


def _logps(scorer, pairs, *, pad_id: int, row_tokens: int, device):
    """Per-pair (chosen, rejected) log-probs and completion token counts, plus the non-pad
    token count of the packed batch. Sequence 2i is pair i's chosen, 2i+1 its rejected."""
    packed = pack_pairs(pairs, max_tokens_per_row=row_tokens, pad_id=pad_id).to(device)
    logps, counts = scorer(packed)
    return logps[0::2], logps[1::2], counts[0::2], counts[1::2], int(packed.num_tokens)


def _precompute_reference(cfg, policy, examples: Examples, *, pad_id: int, cuda: bool, show: bool):
    """(ref_chosen, ref_rejected) of every example with the current (initial) weights — the
    LoRA policy with its adapter disabled is the base model — in one packed pass, through
    the on-disk cache, so resumed and repeated runs read them instead of recomputing."""
    key = fingerprint(
        cfg.model,
        policy.config.to_dict(),
        data_fingerprint(examples.pairs),
        extra={
            "dtype": str(cfg.torch_dtype(cuda)),
            "attn": cfg.attention(cuda),
            "max_tokens_per_row": cfg.row_budget,
        },  # fmt: skip
    )
    return ReferenceCache(cfg.ref_cache_path).get_or_compute(
        key,
        lambda: compute_reference_logps(
            policy,
            examples.pairs,
            max_tokens_per_row=cfg.row_budget,
            pad_id=pad_id,
            chunk_size=cfg.chunk_size,
            disable_adapter=is_lora(policy),
            progress=show,
        ),  # fmt: skip
    )


# ---------------------------------------------------------------------------------------------
# the objective on one micro-batch
# ---------------------------------------------------------------------------------------------
def _objective(spec, params, pol, ref, n_c, n_r, desirable) -> LossOutput:
    """Build the typed batch the objective takes and call it."""
    if spec.kind == "unpaired":
        batch = UnpairedLogps(
            policy=pol[0], ref=ref[0], desirable=desirable.to(pol[0].device),
            kl_policy=pol[1], kl_ref=ref[1], tokens=n_c,
        )  # fmt: skip
    else:
        batch = PairedLogps(pol[0], pol[1], *(ref or (None, None)), n_c, n_r)
    return spec.fn(batch, **params)


class _Reference:
    """Where reference log-probs come from: precomputed tables (``train``/``eval``), a
    reference forward per micro-batch (``model``: a frozen copy, or the LoRA policy with its
    adapter disabled), or nowhere (reference-free objectives). Both computed paths are
    :func:`~unialign.lm.refcache.reference_logps` (eval mode, no grad)."""

    def __init__(self, *, pad_id: int, row_tokens: int, chunk_size: int, device):
        self.tables: dict[str, tuple | None] = {"train": None, "eval": None}
        self.model: torch.nn.Module | None = None
        self.pad_id, self.row_tokens, self.chunk_size, self.device = (
            pad_id, row_tokens, chunk_size, device,
        )  # fmt: skip

    def __call__(self, split: str, idx: list[int], pairs) -> tuple | None:
        table = self.tables[split]
        if table is not None:
            return tuple(t[idx].to(self.device) for t in table)
        if self.model is None:
            return None
        logps = reference_logps(
            self.model, pair_sequences(pairs), disable_adapter=is_lora(self.model),
            max_tokens_per_row=self.row_tokens, pad_id=self.pad_id, chunk_size=self.chunk_size,
            rows_per_step=None,  # the whole micro-batch in one forward, as for the policy
        )  # fmt: skip
        return logps[0::2], logps[1::2]


# ---------------------------------------------------------------------------------------------
# 5. evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(scorer, examples: Examples, reference, spec, params, *, batch_size, logps_kw) -> dict:
    """Held-out metrics, averaged over examples: ``eval/loss``, ``eval/accuracy`` (fraction of
    pairs whose implicit reward ranks chosen above rejected), ``eval/margin`` (mean reward
    margin) and the objective's other diagnostics as ``eval/<name>``. Objectives without
    reward diagnostics are scored by the length-normalized log-ratio margin
    ``(ℓ_θ − ℓ_ref)(y_w)/n_w − (ℓ_θ − ℓ_ref)(y_l)/n_l`` (no reference: ``ℓ_θ`` alone)."""
    scorer.eval()
    sums: dict[str, float] = {}
    for i in range(0, len(examples), batch_size):
        idx = list(range(i, min(i + batch_size, len(examples))))
        part = examples.take(idx)
        c, r, n_c, n_r, _ = _logps(scorer, part.pairs, **logps_kw)
        ref = reference("eval", idx, part.pairs)
        out = _objective(spec, params, (c, r), ref, n_c, n_r, part.desirable)
        values = {"eval/loss": out.losses, **{f"eval/{k}": v for k, v in out.metrics.items()}}
        for src, dst in (("accuracies", "accuracy"), ("margins", "margin")):
            if f"eval/rewards/{src}" in values:
                values[f"eval/{dst}"] = values.pop(f"eval/rewards/{src}")
        if "eval/accuracy" not in values and spec.kind != "unpaired":
            rc, rr = ref if ref is not None else (0.0, 0.0)
            margin = (c - rc) / n_c - (r - rr) / n_r
            values["eval/margin"], values["eval/accuracy"] = margin, (margin > 0).float()
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(v.float().sum())
    scorer.train()
    return {k: v / len(examples) for k, v in sums.items()}


def build_optimizer(name: str, params, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adamw``: torch AdamW (decoupled weight decay); ``sgd``: plain SGD (no momentum; weight
    decay as an L2 term), whose update is linear in the gradient (invariance tests use it:
    Adam's near-sign update turns float rounding where |g| ≈ ε into whole updates)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train_lm(
    cfg: LMTrainConfig,
    *,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train a causal LM on preference data as configured; returns the run summary.

    ``on_step(step, metrics)`` is called after every optimizer step (tests use it to send a
    signal mid-run; notebooks to watch metrics). Launch with ``accelerate launch`` (or
    ``torchrun``) for data-parallel training on several processes.
    """
    t_start = time.perf_counter()
    # cpu=True on CPU-only machines so that torchrun/spawned processes form a gloo group
    acc = Accelerator(cpu=not torch.cuda.is_available())
    main = acc.is_main_process
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = latest_checkpoint(out) if resume else None
    if main:
        if not resume:  # a fresh run: stale checkpoints must not be what a --resume picks up
            remove_checkpoints(out)
        with atomic_file(out / "config.yaml") as tmp:
            dump_config(cfg, tmp)
    set_seed(cfg.seed)
    spec, params = cfg.loss_spec, cfg.resolved_loss_params()
    cuda = acc.device.type == "cuda"

    # 1. data ---------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    train, held = load_examples(cfg, tokenizer)
    world, accum, bs = acc.num_processes, cfg.grad_accum, cfg.batch_size
    per_step = bs * accum * world  # G: examples per optimizer step, all processes
    total_steps = cfg.max_steps or max(1, math.ceil((cfg.epochs or 1.0) * len(train) / per_step))

    # 2. model --------------------------------------------------------------------------
    lora = None
    if cfg.finetune == "lora":
        lora = dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    target_modules=cfg.lora_target_modules)  # fmt: skip
    policy = load_policy(
        cfg.model, dtype=cfg.torch_dtype(cuda), attn_implementation=cfg.attention(cuda),
        lora=lora, gradient_checkpointing=cfg.gradient_checkpointing,
    ).to(acc.device)  # fmt: skip
    scorer = Scorer(policy, cfg.chunk_size)
    logps_kw = dict(pad_id=tokenizer.pad_token_id, row_tokens=cfg.row_budget, device=acc.device)

    # 3. reference (with the initial weights, before any checkpoint is restored) ---------
    reference = _Reference(pad_id=tokenizer.pad_token_id, row_tokens=cfg.row_budget,
                           chunk_size=cfg.chunk_size, device=acc.device)  # fmt: skip
    if cfg.needs_reference and cfg.precompute_ref:
        kw = dict(pad_id=tokenizer.pad_token_id, cuda=cuda, show=main)
        with acc.main_process_first():  # one process computes, the others read the cache
            reference.tables["train"] = _precompute_reference(cfg, policy, train, **kw)
            if held is not None:
                reference.tables["eval"] = _precompute_reference(cfg, policy, held, **kw)
    elif cfg.needs_reference:  # LoRA: the same weights, adapter disabled; full: a frozen copy
        reference.model = policy if lora else frozen_copy(policy)

    # 4. optimizer, schedule, resume -----------------------------------------------------
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup"}.get(cfg.schedule, cfg.schedule),
        optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps,
    )  # fmt: skip
    model, optimizer = acc.prepare(scorer, optimizer)  # DDP/FSDP-wrapped when distributed
    state = TrainState()
    if resume and ckpt is None and main:
        print(f"unialign: no checkpoint under {out}/checkpoints; starting from step 0")
    if ckpt is not None:
        state = load_checkpoint(ckpt, accelerator=acc, model=policy, optimizer=optimizer,
                                scheduler=scheduler)  # fmt: skip
    saved_step = state.step if ckpt is not None else None  # the step the newest checkpoint holds
    log = MetricsLog(out / "metrics.jsonl", offset=state.metrics_offset, enabled=main,
                     tensorboard_dir=out / "tensorboard", start_step=state.step)  # fmt: skip

    def checkpoint() -> None:
        nonlocal saved_step
        state.metrics_offset = log.offset()
        save_checkpoint(out, accelerator=acc, model=policy, optimizer=optimizer,
                        scheduler=scheduler, state=state, keep=cfg.keep_checkpoints)  # fmt: skip
        saved_step = state.step

    def run_eval() -> dict:
        if held is None:
            return {}
        return evaluate(model, held, reference, spec, params, batch_size=bs, logps_kw=logps_kw)

    # the optimization loop ----------------------------------------------------------------
    model.train()
    progress = progress_bar("train lm", enabled=main, fields="{task.fields[info]}")
    task = progress.add_task("steps", total=total_steps, completed=state.step, info="")
    interrupted, last, eval_metrics = False, {}, {}
    with StopOnSignal() as stop, progress:
        while state.step < total_steps:
            t0 = time.perf_counter()
            idx = stream_positions(len(train), cfg.seed, state.examples_seen, per_step)
            mine = idx[acc.process_index * bs * accum : (acc.process_index + 1) * bs * accum]
            per_example: dict[str, list[torch.Tensor]] = {}
            tokens = 0
            for m in range(accum):
                micro_idx = mine[m * bs : (m + 1) * bs]
                part = train.take(micro_idx)
                sync = acc.no_sync(model) if m < accum - 1 else nullcontext()
                with sync:
                    c, r, n_c, n_r, n_tok = _logps(model, part.pairs, **logps_kw)
                    ref = reference("train", micro_idx, part.pairs)
                    res = _objective(spec, params, (c, r), ref, n_c, n_r, part.desirable)
                    acc.backward(res.losses.sum() * world / per_step)
                tokens += n_tok
                for k, v in {"loss/total": res.losses, **res.metrics}.items():
                    per_example.setdefault(k, []).append(v.detach().float().to(acc.device))
            grad_norm = None
            if cfg.max_grad_norm:  # the norm of the whole accumulated (and synced) gradient
                grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.examples_seen += per_step

            # log: means over the step's examples on all processes
            stats = {k: acc.gather(torch.cat(v)) for k, v in per_example.items()}
            tokens = float(acc.reduce(torch.tensor([float(tokens)], device=acc.device)).sum())
            last = {k: float(v.mean()) for k, v in stats.items()}
            last.update({"lm/lr": lr, "lm/tokens": tokens, "lm/examples": state.examples_seen,
                         "lm/tokens_per_s": tokens / (time.perf_counter() - t0)})  # fmt: skip
            if grad_norm is not None:
                last["lm/grad_norm"] = grad_norm
            evaluate_now = cfg.eval_every and state.step % cfg.eval_every == 0
            if evaluate_now and state.step < total_steps:  # the final evaluation comes below
                last.update(run_eval())
            state.metrics = {k: v for k, v in last.items() if k not in TIMING_KEYS}
            if state.step % cfg.log_every == 0 or evaluate_now:
                log.write(state.step, last)
            progress.update(task, completed=state.step, info=(
                f"loss {last['loss/total']:.4f}  margin {last.get('rewards/margins', 0.0):+.3f}  "
                f"{last['lm/tokens_per_s']:,.0f} tok/s"))  # fmt: skip
            if on_step is not None:
                on_step(state.step, last)
            stop_now = torch.tensor([float(stop.requested)], device=acc.device)
            if acc.reduce(stop_now, "max").item() > 0 and state.step < total_steps:
                checkpoint()
                interrupted = True
                break
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < total_steps:
                checkpoint()

    # 5. evaluate and export -------------------------------------------------------------------
    summary = {"steps": state.step, "total_steps": total_steps, "examples": state.examples_seen,
               "interrupted": interrupted, "train": dict(state.metrics)}  # fmt: skip
    if interrupted:
        summary["resume"] = f"unialign train lm --config {out / 'config.yaml'} --resume"
    else:
        # The final checkpoint comes first: the evaluation's metrics line then lies past its
        # offset, so a run killed from here on is finished by --resume without a repeated line
        # (and a run resumed from this checkpoint does not write it again).
        if saved_step != state.step:
            checkpoint()
        if held is not None:
            eval_metrics = run_eval()
            log.write(state.step, eval_metrics)
        summary["eval"] = eval_metrics
        acc.wait_for_everyone()
        state_dict = None
        if str(acc.distributed_type).endswith("FSDP"):  # gather the sharded weights
            state_dict = {
                k.removeprefix("policy."): v for k, v in acc.get_state_dict(model).items()
            }
        if main:
            summary["outputs"] = save_policy(policy, tokenizer, out,
                                             merge_lora=cfg.merge_lora_on_save,
                                             state_dict=state_dict)  # fmt: skip
    summary["wall_s"] = round(time.perf_counter() - t_start, 2)
    log.close()
    if main:
        with atomic_file(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    acc.wait_for_everyone()
    return summary
