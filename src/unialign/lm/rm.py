"""Reward-model training on preference pairs (``unialign train rm``).

Phases, top to bottom:

1. **data** — the preference files of ``train lm`` (standard or conversational pairs, the same
   validation), plus an optional per-row margin; each pair becomes the two token sequences a
   reward model scores, exactly as :class:`~unialign.feedback.reward_models.RewardModelJudge`
   builds them: ``tokenizer(prompt + completion + EOS)``, or the chat template of the whole
   conversation, cut on the left to ``max_length``. A held-out split by prompt (or a file).
2. **model** — ``AutoModelForSequenceClassification`` over the base causal LM, full or LoRA
   (:mod:`unialign.lm.rm_model`): one scalar head, K heads on a shared trunk, K LoRA adapters
   over a frozen base, or a GPM embedding head.
3. **optimize** — per optimizer step: micro-batches → right-padded forward (chosen and rejected
   in one batch) → objective → exact gradient accumulation → clip → AdamW (or SGD) + schedule
   → log. Checkpoints every ``save_every`` steps, on SIGINT/SIGTERM (at the next step
   boundary) and at the end; ``resume=True`` continues exactly (:mod:`unialign.lm.checkpoint`).
4. **evaluate and export** — held-out accuracy (chosen scored above rejected), per-pair scores
   in ``eval_scores.jsonl``, and models the judges load (:func:`export_reward_model`).

Objectives (``docs/lm-reward-models.md``):

- scalar heads: Bradley–Terry with margin and centering,
  ``ℓ_k(i) = −log σ(R_k(y_w) − R_k(y_l) − m_i) + c·(R_k(y_w) + R_k(y_l))²``
  (:func:`unialign.losses.reward.bradley_terry`), for each member k;
- GPM: ``−log σ(⟨R v_w, v_l⟩/τ)`` (:func:`unialign.losses.reward.general_preference`).

Exact accumulation: a step consumes ``G = batch_size × grad_accum × world_size`` pairs and
minimises ``(1/G) Σ_i Σ_k w_k(i) ℓ_k(i)`` with ``w_k(i)`` member k's bootstrap count of pair i
(1 without bootstrap), a function of the pair alone, so ``8 × 1`` and ``1 × 8`` give the same
update. Members of a shared trunk share its gradient; members of an adapter ensemble share no
trainable weight, and each is clipped on its own.
"""

from __future__ import annotations

import functools
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
from torch import Tensor
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
from unialign.lm.data import (
    DataError,
    PreferenceData,
    Problem,
    build_preference_data,
    load_records,
    split_heldout,
)
from unialign.lm.model import load_tokenizer
from unialign.lm.rm_config import RMTrainConfig
from unialign.lm.rm_model import (
    GPMJudge,
    RewardNet,
    export_reward_model,
    gpm_embeddings,
    load_reward_model,
    pad_batch,
)
from unialign.lm.train import build_optimizer, stream_positions
from unialign.losses import LossOutput
from unialign.losses.reward import bradley_terry, general_preference
from unialign.runlog import MetricsLog, atomic_file, progress_bar

__all__ = [
    "GPMJudge",
    "RMExamples",
    "bootstrap_counts",
    "evaluate_rm",
    "gpm_pair_losses",
    "load_rm_examples",
    "scalar_pair_losses",
    "train_rm",
]

#: Wall-clock metrics: the only values that differ between a resumed and an uninterrupted run.
TIMING_KEYS = ("rm/tokens_per_s", "rm/step_s")
#: Tokenize without truncation; sequences are cut on the left afterwards, as the judge cuts.
_NO_LIMIT = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# 1. data
# ---------------------------------------------------------------------------------------------
@dataclass
class RMExamples:
    """Preference pairs as the sequences a reward model scores: ``chosen[i]`` and
    ``rejected[i]`` are the token ids of prompt + completion (already left-truncated);
    ``margins`` ``[N]`` float32, the per-pair Bradley–Terry margin (0 where none was given)."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    margins: Tensor
    truncated: int = 0  # sequences cut to max_length

    def __len__(self) -> int:
        return len(self.chosen)

    def take(self, idx: list[int]) -> RMExamples:
        return RMExamples([self.chosen[i] for i in idx], [self.rejected[i] for i in idx],
                          self.margins[idx])  # fmt: skip


def _row_margins(records: list[dict], field: str | None, source: str) -> list[float]:
    """Each row's margin (0 where the field is absent or null); bad values are a
    :class:`DataError` naming the file, row and field."""
    if field is None:
        return [0.0] * len(records)
    out, problems = [], []
    for i, row in enumerate(records):
        value = row.get(field) if isinstance(row, dict) else None
        try:
            m = 0.0 if value is None or isinstance(value, bool) else float(value)
            ok = not isinstance(value, bool) and math.isfinite(m) and m >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(Problem(source, i, field, f"a margin must be a finite number >= 0, "
                                    f"got {value!r}; fix it, or set margin_field: null to ignore "
                                    "the column"))  # fmt: skip
            m = 0.0
        out.append(m)
    if problems:
        raise DataError.from_problems(source, problems, "margins")
    return out


def _examples(data: PreferenceData, margins: list[float], max_length: int) -> RMExamples:
    chosen, rejected, cut = [], [], 0
    for pair in data.pairs:
        c, r = pair.prompt_ids + pair.chosen_ids, pair.prompt_ids + pair.rejected_ids
        cut += (len(c) > max_length) + (len(r) > max_length)
        chosen.append(c[-max_length:])  # left truncation: the head reads the last token
        rejected.append(r[-max_length:])
    m = torch.tensor([margins[row] for row in data.row_ids], dtype=torch.float32)
    return RMExamples(chosen, rejected, m, cut)


def _read(path: str, tokenizer, fmt: str, margin_field: str | None) -> tuple[PreferenceData, list]:
    records = load_records(path)
    margins = _row_margins(records, margin_field, str(path))
    # prefix_mismatch="trim": prompt_ids + completion_ids is then always the tokenization of
    # the whole text, whatever the tokenizer merges across the boundary — the judge's text.
    data = build_preference_data(records, tokenizer, source=str(path), fmt=fmt,
                                 max_length=_NO_LIMIT, prefix_mismatch="trim")  # fmt: skip
    return data, margins


def load_rm_examples(cfg: RMTrainConfig, tokenizer) -> tuple[RMExamples, RMExamples | None]:
    """Phase 1: (train, held-out) pairs; data problems become a ``ConfigError`` naming the
    field (``train_data``, ``eval_data``, ``format``) and, through the data layer, the file,
    row and column."""
    try:
        train, margins = _read(cfg.train_data, tokenizer, cfg.format, cfg.margin_field)
        held = held_margins = None
        if cfg.eval_data:
            held, held_margins = _read(cfg.eval_data, tokenizer, cfg.format, cfg.margin_field)
        elif cfg.eval_fraction > 0:
            train, held = split_heldout(train, cfg.eval_fraction, cfg.seed)
            held_margins = margins
    except DataError as e:
        raise ConfigError(f"train_data/eval_data: {e}") from None
    for which, data in (("train_data", train), ("eval_data", held)):
        if data is not None and data.fmt == "unpaired":
            raise ConfigError(
                f"format: {which} {data.source} is unpaired (prompt/completion/label); a reward "
                "model trains on pairs (prompt/chosen/rejected)"
            )
    if held is not None and held.fmt != train.fmt:
        raise ConfigError(
            f"eval_data: {held.source} is {held.fmt} but train_data is {train.fmt}; a model "
            "scores one kind of text (strings, or chat-template conversations)"
        )
    if len(train) == 0:
        raise ConfigError(f"train_data: {cfg.train_data} has no usable pairs")
    out_train = _examples(train, margins, cfg.max_length)
    out_held = _examples(held, held_margins, cfg.max_length) if held is not None else None
    return out_train, out_held


def bootstrap_counts(n: int, k: int, seed: int) -> Tensor:
    """``[k, n]`` float32: row j counts how often each of n pairs is drawn in n draws with
    replacement (member j's bootstrap resample; Σ_i = n, mean 1), fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    draws = torch.randint(n, (k, n), generator=g)
    return torch.zeros(k, n).scatter_add_(1, draws, torch.ones(k, n))


# ---------------------------------------------------------------------------------------------
# the objectives (one per head kind)
# ---------------------------------------------------------------------------------------------
def scalar_pair_losses(
    chosen: Tensor, rejected: Tensor, margins: Tensor, *, centering: float = 0.0
) -> LossOutput:
    """Bradley–Terry for M scalar members at once: ``chosen``/``rejected`` ``[M, B]`` rewards,
    ``margins`` ``[B]`` (shared by the members); losses and metrics ``[M, B]``
    (:func:`~unialign.losses.reward.bradley_terry` on the flattened batch)."""
    m, b = chosen.shape
    out = bradley_terry(chosen.reshape(-1), rejected.reshape(-1),
                        margin=margins.to(chosen).repeat(m), centering=centering)  # fmt: skip
    return LossOutput(out.losses.view(m, b), {k: v.view(m, b) for k, v in out.metrics.items()})


def gpm_pair_losses(
    chosen: Tensor, rejected: Tensor, margins: Tensor, *, tau: float, normalize: bool
) -> LossOutput:
    """The GPM loss on the head outputs ``[B, 2k]`` of chosen and rejected (``margins`` is
    unused: the GPM has no margin); losses and metrics ``[1, B]``."""
    out = general_preference(gpm_embeddings(chosen, normalize=normalize),
                             gpm_embeddings(rejected, normalize=normalize), tau=tau)  # fmt: skip
    return LossOutput(out.losses[None], {k: v[None] for k, v in out.metrics.items()})


def _objective(cfg: RMTrainConfig) -> Callable[[Tensor, Tensor, Tensor], LossOutput]:
    """``(chosen [B, n], rejected [B, n], margins [B]) -> LossOutput [M, B]``."""
    if cfg.head == "gpm":
        return functools.partial(gpm_pair_losses, tau=cfg.gpm_tau, normalize=cfg.gpm_normalize)
    return lambda c, r, m: scalar_pair_losses(c.T, r.T, m, centering=cfg.centering)


def _forward_pairs(model, net: RewardNet, part: RMExamples, *, pad_id: int, device):
    """Yield ``(pass p, chosen outputs [B, n], rejected outputs [B, n])`` for each forward
    pass (one, or one per adapter member)."""
    ids, mask = pad_batch(part.chosen + part.rejected, pad_id)
    ids, mask, b = ids.to(device), mask.to(device), len(part)
    for p in range(net.passes):
        net.select(p)
        out = model(ids, mask)
        yield p, out[:b], out[b:]


# ---------------------------------------------------------------------------------------------
# 4. evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_rm(model, net, examples: RMExamples, objective, *, head: str, batch_size: int,
                pad_id: int, device) -> tuple[dict, list[dict]]:  # fmt: skip
    """Held-out metrics and per-pair scores.

    Scalar heads: ``eval/accuracy`` (fraction of pairs whose mean-over-members reward ranks
    chosen above rejected), ``eval/margin``, ``eval/loss`` (Bradley–Terry, mean over members
    and pairs); for K > 1 also ``eval/member_accuracy`` (mean of the members'),
    ``eval/accuracy_min`` (ranked by the worst-case reward), ``eval/disagreement`` (fraction of
    pairs the members do not rank alike), ``eval/margin_std`` (population std of the members'
    margins, averaged over pairs) and ``eval/member_<k>/accuracy``. GPM: ``eval/accuracy``
    (s(chosen, rejected) > 0), ``eval/score``, ``eval/loss``. Rows: ``{"chosen": [K], "rejected":
    [K]}`` member rewards, or ``{"score": s}`` for the GPM.
    """
    net.eval()
    outs_c: list[list[Tensor]] = [[] for _ in range(net.passes)]
    outs_r: list[list[Tensor]] = [[] for _ in range(net.passes)]
    for i in range(0, len(examples), batch_size):
        part = examples.take(list(range(i, min(i + batch_size, len(examples)))))
        for p, c, r in _forward_pairs(model, net, part, pad_id=pad_id, device=device):
            outs_c[p].append(c.cpu())
            outs_r[p].append(r.cpu())
    net.train()
    chosen = torch.cat([torch.cat(o) for o in outs_c], dim=1)  # [N, n × passes]
    rejected = torch.cat([torch.cat(o) for o in outs_r], dim=1)
    res = objective(chosen, rejected, examples.margins)
    metrics = {"eval/loss": float(res.losses.mean())}
    if head == "gpm":
        s = res.metrics["preference/score"][0]
        metrics.update({"eval/accuracy": float((s > 0).float().mean()),
                        "eval/score": float(s.mean())})  # fmt: skip
        return metrics, [{"score": float(v)} for v in s]
    rw, rl = chosen.T, rejected.T  # [K, N]
    mean_margin = rw.mean(0) - rl.mean(0)
    metrics["eval/accuracy"] = float((mean_margin > 0).float().mean())
    metrics["eval/margin"] = float(mean_margin.mean())
    if len(rw) > 1:
        wins = rw > rl
        agree = wins.all(0) | (~wins).all(0)
        metrics.update({
            "eval/member_accuracy": float(wins.float().mean()),
            "eval/accuracy_min": float((rw.min(0).values > rl.min(0).values).float().mean()),
            "eval/disagreement": float(1.0 - agree.float().mean()),
            "eval/margin_std": float((rw - rl).std(0, correction=0).mean()),
            **{f"eval/member_{k}/accuracy": float(w.float().mean()) for k, w in enumerate(wins)},
        })  # fmt: skip
    rows = [{"chosen": rw[:, i].tolist(), "rejected": rl[:, i].tolist()} for i in range(len(rw[0]))]
    return metrics, rows


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train_rm(
    cfg: RMTrainConfig,
    *,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train a reward model (or an ensemble, or a GPM) as configured; returns the run summary.

    ``on_step(step, metrics)`` is called after every optimizer step (tests use it to send a
    signal mid-run).
    """
    t_start = time.perf_counter()
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
    if cfg.adapters > 1 and acc.num_processes > 1:
        raise ConfigError("ensemble_kind: lora_adapters ensembles train on one process")
    set_seed(cfg.seed)
    cuda = acc.device.type == "cuda"

    # 1. data ---------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    train, held = load_rm_examples(cfg, tokenizer)
    world, accum, bs = acc.num_processes, cfg.grad_accum, cfg.batch_size
    per_step = bs * accum * world  # G: pairs per optimizer step, all processes
    total_steps = cfg.max_steps or max(1, math.ceil((cfg.epochs or 1.0) * len(train) / per_step))
    k = cfg.ensemble_size
    weights = (bootstrap_counts(len(train), k, cfg.seed) if k > 1 and cfg.bootstrap
               else torch.ones(k if cfg.head == "scalar" else 1, len(train)))  # fmt: skip

    # 2. model --------------------------------------------------------------------------
    net = load_reward_model(
        cfg.model, num_outputs=cfg.num_outputs, dtype=cfg.torch_dtype(cuda),
        attn_implementation=cfg.attn_implementation, pad_token_id=tokenizer.pad_token_id,
        lora=cfg.lora_settings(), adapters=cfg.adapters,
        gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed,
    ).to(acc.device)  # fmt: skip
    objective = _objective(cfg)
    fwd_kw = dict(pad_id=tokenizer.pad_token_id, device=acc.device)

    # 3. optimizer, schedule, resume -----------------------------------------------------
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup"}.get(cfg.schedule, cfg.schedule),
        optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps,
    )  # fmt: skip
    model, optimizer = acc.prepare(net, optimizer)  # DDP-wrapped when distributed
    state = TrainState()
    if resume and ckpt is None and main:
        print(f"unialign: no checkpoint under {out}/checkpoints; starting from step 0")
    if ckpt is not None:
        state = load_checkpoint(ckpt, accelerator=acc, model=net, optimizer=optimizer,
                                scheduler=scheduler)  # fmt: skip
    saved_step = state.step if ckpt is not None else None
    log = MetricsLog(out / "metrics.jsonl", offset=state.metrics_offset, enabled=main,
                     tensorboard_dir=out / "tensorboard", start_step=state.step)  # fmt: skip

    def checkpoint() -> None:
        nonlocal saved_step
        state.metrics_offset = log.offset()
        save_checkpoint(out, accelerator=acc, model=net, optimizer=optimizer,
                        scheduler=scheduler, state=state, keep=cfg.keep_checkpoints)  # fmt: skip
        saved_step = state.step

    def run_eval() -> tuple[dict, list[dict]]:
        if held is None:
            return {}, []
        return evaluate_rm(model, net, held, objective, head=cfg.head, batch_size=bs, **fwd_kw)

    def clip() -> float | None:
        if not cfg.max_grad_norm:
            return None
        groups = net.member_groups()
        if not groups:  # the norm of the whole accumulated (and synced) gradient
            return float(acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
        norms = [torch.nn.utils.clip_grad_norm_(g, cfg.max_grad_norm) for g in groups]
        return float(torch.stack(norms).norm())

    # the optimization loop ----------------------------------------------------------------
    model.train()
    acc_key = "preference/accuracy" if cfg.head == "gpm" else "rewards/accuracies"
    progress = progress_bar("train rm", enabled=main, fields="{task.fields[info]}")
    task = progress.add_task("steps", total=total_steps, completed=state.step, info="")
    interrupted, last, eval_metrics = False, {}, {}
    with StopOnSignal() as stop, progress:
        while state.step < total_steps:
            t0 = time.perf_counter()
            idx = stream_positions(len(train), cfg.seed, state.examples_seen, per_step)
            mine = idx[acc.process_index * bs * accum : (acc.process_index + 1) * bs * accum]
            per_example: dict[str, list[Tensor]] = {}
            tokens = 0
            for m in range(accum):
                micro = mine[m * bs : (m + 1) * bs]
                part = train.take(micro)
                sync = acc.no_sync(model) if m < accum - 1 else nullcontext()
                vals: dict[str, Tensor] = {}  # per pair: loss summed, metrics averaged
                with sync:  # over the members
                    for p, c, r in _forward_pairs(model, net, part, **fwd_kw):
                        res = objective(c, r, part.margins.to(acc.device))
                        rows = slice(p, p + 1) if net.adapter_names else slice(None)
                        w = weights[rows][:, micro].to(res.losses)
                        acc.backward((res.losses * w).sum() * world / per_step)
                        for key, v in {"loss/total": res.losses * w, **res.metrics}.items():
                            v = v.detach().float()
                            v = v.sum(0) if key == "loss/total" else v.mean(0) / net.passes
                            vals[key] = vals[key] + v if key in vals else v
                for key, v in vals.items():
                    per_example.setdefault(key, []).append(v)
                tokens += sum(map(len, part.chosen)) + sum(map(len, part.rejected))
            grad_norm = clip()
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.examples_seen += per_step

            # log: means over the step's pairs on all processes
            stats = {key: acc.gather(torch.cat(v)) for key, v in per_example.items()}
            tokens = float(acc.reduce(torch.tensor([float(tokens)], device=acc.device)).sum())
            dt = time.perf_counter() - t0
            last = {key: float(v.mean()) for key, v in stats.items()}
            last.update({"rm/lr": lr, "rm/tokens": tokens, "rm/examples": state.examples_seen,
                         "rm/tokens_per_s": tokens / dt, "rm/step_s": dt})  # fmt: skip
            if grad_norm is not None:
                last["rm/grad_norm"] = grad_norm
            evaluate_now = cfg.eval_every and state.step % cfg.eval_every == 0
            if evaluate_now and state.step < total_steps:  # the final evaluation comes below
                last.update(run_eval()[0])
            state.metrics = {key: v for key, v in last.items() if key not in TIMING_KEYS}
            if state.step % cfg.log_every == 0 or evaluate_now:
                log.write(state.step, last)
            progress.update(task, completed=state.step, info=(
                f"loss {last['loss/total']:.4f}  acc {last.get(acc_key, 0.0):.3f}"))  # fmt: skip
            if on_step is not None:
                on_step(state.step, last)
            stop_now = torch.tensor([float(stop.requested)], device=acc.device)
            if acc.reduce(stop_now, "max").item() > 0 and state.step < total_steps:
                checkpoint()
                interrupted = True
                break
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < total_steps:
                checkpoint()

    # 4. evaluate and export -------------------------------------------------------------------
    n_total = sum(p.numel() for p in net.parameters())
    summary = {"steps": state.step, "total_steps": total_steps, "examples": state.examples_seen,
               "interrupted": interrupted, "train": dict(state.metrics),
               "params": {"total": n_total, "trainable": sum(p.numel() for p in trainable)},
               "data": {"train_pairs": len(train), "eval_pairs": len(held) if held else 0,
                        "truncated_sequences": train.truncated + (held.truncated if held else 0)}}  # fmt: skip
    if interrupted:
        summary["resume"] = f"unialign train rm --config {out / 'config.yaml'} --resume"
    else:
        if saved_step != state.step:  # the final checkpoint first (as in train lm)
            checkpoint()
        if held is not None:
            eval_metrics, rows = run_eval()
            log.write(state.step, eval_metrics)
            if main:
                with atomic_file(out / "eval_scores.jsonl") as tmp:
                    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary["eval"] = eval_metrics
        acc.wait_for_everyone()
        if main:
            gpm = (
                {"tau": cfg.gpm_tau, "normalize": cfg.gpm_normalize} if cfg.head == "gpm" else None
            )
            summary["outputs"] = export_reward_model(
                net, tokenizer, out, base_path=cfg.model, dtype=cfg.torch_dtype(cuda),
                merge_lora=cfg.merge_lora_on_save, gpm=gpm,
            )  # fmt: skip
    summary["wall_s"] = round(time.perf_counter() - t_start, 2)
    log.close()
    if main:
        with atomic_file(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    acc.wait_for_everyone()
    return summary
