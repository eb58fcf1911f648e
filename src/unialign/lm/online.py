"""The online preference loop for causal LMs (``unialign train lm-online``).

Every iteration t (1-based in metrics and the feedback store; the policy that samples in it is
the iterate π_{t−1} of the papers' 0-based notation), in named phases:

1. **prompts** — the next P prompts of a seeded, per-epoch permutation of the prompt source.
2. **sample** — K completions per prompt from the current policy
   (:class:`~unialign.lm.generation.TransformersSampler`, seeded per iteration); Nash-MD also
   draws one completion per sample from the token-wise mixture π_θ^{1−β} π_ref^β
   (:func:`~unialign.lm.online_mixture.sample_mixture`).
3. **judge** — the judge's verdicts (:mod:`unialign.lm.online_judging`), each stored in
   ``output_dir/feedback.sqlite`` as soon as its chunk is judged.
4. **examples** — the method's build rule turns the verdicts into pairs or weighted samples
   (:data:`~unialign.lm.online_methods.METHODS`).
5. **frozen log-probs** — ℓ_t under the policy that sampled (before any update) and ℓ_ref under
   the initial policy (a frozen copy, or the LoRA adapter disabled), without grad, on the same
   micro-batches the first update pass uses.
6. **update** — ``update_epochs × updates_per_epoch`` AdamW steps; each step's micro-batches
   contribute Σ_i loss_i / |step|, so accumulation is exact; log-probs are computed by the
   training model on the stored tokens (:func:`~unialign.lm.generation.completion_logps`).
7. **log** — ``metrics.jsonl`` (+ TensorBoard), the progress bar, ``on_iteration``; checkpoint
   every ``save_every`` iterations and on SIGINT/SIGTERM.

Resume: a checkpoint holds the trainable weights, optimizer, schedule, RNG states, the
iteration, the prompt position and the metrics offset (:mod:`unialign.lm.checkpoint`), and
next to it the feedback store's mark; ``resume=True`` restores them and rolls the store back to
the mark. Sampling seeds are a function of (seed, iteration), so the resumed run draws the same
completions. On CPU a resumed run equals the uninterrupted one bit for bit (weights, metrics
lines except wall-clock values, store rows except their timestamps).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from unialign.config import ConfigError, dump_config
from unialign.feedback.store import FeedbackStore, StoreMark
from unialign.interrupt import StopOnSignal
from unialign.lm.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from unialign.lm.generation import (
    Generations,
    SamplingParams,
    TransformersSampler,
    completion_logps,
    encode_prompts,
)
from unialign.lm.model import frozen_copy, load_policy, load_tokenizer, save_policy
from unialign.lm.online_config import LMOnlineConfig
from unialign.lm.online_io import (
    load_prompts,
    plot_learning_curve,
    prune_sidecars,
    read_sidecar,
    resolve_judge,
    write_sidecar,
)
from unialign.lm.online_judging import as_completion, judge_against_mixture, judge_samples
from unialign.lm.online_methods import ExampleLogps, Examples, Judgements
from unialign.lm.online_mixture import sample_mixture
from unialign.lm.packing import unwrap_model
from unialign.lm.refcache import adapter_disabled
from unialign.lm.train import _positions
from unialign.runlog import MetricsLog, atomic_file, progress_bar

__all__ = ["train_lm_online", "IterationRecord", "TIMING_KEYS", "sample_logps"]

#: Wall-clock metrics: the only values that differ between a resumed and an uninterrupted run.
TIMING_KEYS = (
    "lm/generation_tokens_per_s",
    "lm/update_tokens_per_s",
    "time/generation_s",
    "time/judge_s",
    "time/update_s",
)


@dataclass
class IterationRecord:
    """What one iteration did, handed to ``on_iteration`` (tests, notebooks).

    Attributes:
        iteration: 1-based.
        metrics: the metrics line of the iteration.
        prompts: the P prompts.
        generations: the N = P·K samples (token ids exactly as scored).
        judgements: the judge's verdicts.
        examples: the training examples built from them.
        previous: ``[N]`` ℓ_t of each sample under the policy that sampled (NaN where the
            method does not need it).
        reference: ``[N]`` ℓ_ref (NaN where not needed).
        mixture_ids: Nash-MD's mixture samples (token ids), else ``None``.
    """

    iteration: int
    metrics: dict
    prompts: list
    generations: Generations
    judgements: Judgements
    examples: Examples
    previous: torch.Tensor
    reference: torch.Tensor
    mixture_ids: list[list[int]] | None = None


def _seed(seed: int, iteration: int, stream: int) -> int:
    """The seed of one random stream of one iteration (sampling, mixture, shuffles)."""
    return ((seed * 1_000_003 + iteration) * 64 + stream) % (2**62)


# ---------------------------------------------------------------------------------------------
# log-probs of stored samples
# ---------------------------------------------------------------------------------------------
def sample_logps(
    model: torch.nn.Module,
    gens: Generations,
    ids: list[int],
    *,
    pad_id: int,
    chunk_size: int,
    max_tokens_per_row: int | None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(ℓ [U], n [U], tokens)`` of the samples ``ids`` (distinct, in this order) under
    ``model``, packed in one forward (differentiable when grad is on); ``tokens`` counts the
    prompt and completion tokens processed. The row budget defaults to max(1024, the longest
    sequence), so a given list of samples is always packed the same way."""
    prompts = [gens.prompt_ids[i] for i in ids]
    comps = [gens.completion_ids[i] for i in ids]
    lengths = [len(p) + len(c) for p, c in zip(prompts, comps)]
    budget = max_tokens_per_row or max(1024, max(lengths))
    logps, counts = completion_logps(
        model, prompts, comps, chunk_size=chunk_size, max_tokens_per_row=budget, pad_id=pad_id
    )
    return logps, counts, sum(lengths)


@contextmanager
def _frozen(model: torch.nn.Module, *, adapter_off: bool = False):
    """Eval mode (no dropout), no grad, optionally the LoRA adapter disabled; modes restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), adapter_disabled(model) if adapter_off else nullcontext():
            yield
    finally:
        model.train(was)


def _plan(n: int, *, epochs: int, groups: int, micro: int, seed: int, it: int) -> list[list]:
    """Optimizer steps of one iteration: each a list of micro-batches (example positions).
    Every pass reshuffles the n examples (seeded) and splits them into ``groups`` near-equal
    contiguous steps; a step may be empty when n < groups."""
    steps = []
    for e in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, it, 2 + e)))
        for part in torch.tensor_split(order, groups):
            p = part.tolist()
            steps.append([p[i : i + micro] for i in range(0, len(p), micro)])
    return steps


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train_lm_online(
    cfg: LMOnlineConfig,
    *,
    judge: Any | None = None,
    resume: bool = False,
    on_iteration: Callable[[IterationRecord], None] | None = None,
) -> dict:
    """Run the online loop as configured; returns the run summary.

    Args:
        cfg: the validated configuration.
        judge: a ScoreJudge or PairJudge object; overrides ``cfg.judge``.
        resume: continue from the run directory's last checkpoint.
        on_iteration: called after every iteration with its :class:`IterationRecord` (tests
            send a signal from it; notebooks watch metrics).

    Raises:
        ConfigError: bad prompts, an unknown judge spec, a run directory in use.
        JudgeError: the judge failed; the verdicts stored before the failure stay stored.
    """
    t_start = time.perf_counter()
    acc = Accelerator(cpu=not torch.cuda.is_available())
    if acc.num_processes > 1:
        raise ConfigError("train lm-online runs in one process; launch it without accelerate")
    cuda = acc.device.type == "cuda"
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    method, spec, params = cfg.online_method, cfg.objective, cfg.resolved_params()
    K, P = cfg.num_samples, cfg.prompts_per_iteration

    # prompts, task and judge first: their errors come before any model loads --------------
    task = _load_task(cfg) if cfg.task else None
    judge = judge if judge is not None else resolve_judge(cfg.judge, task)
    prompts = load_prompts(cfg.prompts) if cfg.prompts else task.prompts("train", seed=cfg.seed)
    store_path = out / "feedback.sqlite"
    ckpt = latest_checkpoint(out) if resume else None
    if not resume:
        _fresh_store(store_path)
        remove_checkpoints(out)
    with atomic_file(out / "config.yaml") as tmp:
        dump_config(cfg, tmp)
    set_seed(cfg.seed)

    # the policy, its reference, the sampler ------------------------------------------------
    model_path = cfg.model or str(task.reference.path)
    tokenizer = load_tokenizer(cfg.tokenizer or model_path)
    lora = None
    if cfg.finetune == "lora":
        lora = dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    target_modules=cfg.lora_target_modules)  # fmt: skip
    policy = load_policy(
        model_path, dtype=cfg.torch_dtype(cuda), attn_implementation=cfg.attention(cuda),
        lora=lora, gradient_checkpointing=cfg.gradient_checkpointing,
    ).to(acc.device)  # fmt: skip
    # the reference is the initial policy: copied before a checkpoint overwrites the weights
    ref_model = frozen_copy(policy) if cfg.needs_reference and lora is None else None
    sampler = TransformersSampler(policy, tokenizer, batch_size=cfg.generation_batch_size)
    pad_id = tokenizer.pad_token_id
    eos_ids = _eos_ids(policy, tokenizer)
    logps_kw = dict(pad_id=pad_id, chunk_size=cfg.chunk_size,
                    max_tokens_per_row=cfg.max_tokens_per_row)  # fmt: skip

    # optimizer, schedule, resume, store -----------------------------------------------------
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_iteration = cfg.update_epochs * cfg.updates_per_epoch
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup"}.get(cfg.schedule, cfg.schedule), optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.iterations * steps_per_iteration,
    )  # fmt: skip
    store = FeedbackStore(store_path)
    state = TrainState()
    if resume and ckpt is None:
        print(f"unialign: no checkpoint under {out}/checkpoints; starting from iteration 0")
        store.rollback(StoreMark(0, 0))
    if ckpt is not None:
        state = load_checkpoint(ckpt, accelerator=acc, model=policy, optimizer=optimizer,
                                scheduler=scheduler)  # fmt: skip
        store.rollback(StoreMark.from_dict(read_sidecar(out, state.step)["store_mark"]))
    saved = state.step if ckpt is not None else None
    log = MetricsLog(out / "metrics.jsonl", offset=state.metrics_offset,
                     tensorboard_dir=out / "tensorboard", start_step=state.step)  # fmt: skip

    def checkpoint() -> None:
        nonlocal saved
        state.metrics_offset = log.offset()
        # the sidecar first: a kill between the two leaves an older, consistent checkpoint
        write_sidecar(out, state.step, {"store_mark": store.mark().as_dict()})
        save_checkpoint(out, accelerator=acc, model=policy, optimizer=optimizer,
                        scheduler=scheduler, state=state, keep=cfg.keep_checkpoints)  # fmt: skip
        prune_sidecars(out)
        saved = state.step

    def frozen_logps(model, ids, adapter_off=False) -> torch.Tensor:
        with _frozen(model, adapter_off=adapter_off):
            return sample_logps(model, gens, ids, **logps_kw)[0].float()

    progress = progress_bar("train lm-online", fields="{task.fields[info]}")
    bar = progress.add_task("iterations", total=cfg.iterations, completed=state.step, info="")
    interrupted, last = False, dict(state.metrics)
    try:
        with StopOnSignal() as stop, progress:
            while state.step < cfg.iterations:
                it = state.step + 1
                # 1. prompts ---------------------------------------------------------------
                idx = _positions(len(prompts), cfg.seed, state.examples_seen, P)
                batch_prompts = [prompts[i] for i in idx]
                prompt_ids = encode_prompts(tokenizer, batch_prompts)
                if cfg.max_prompt_length:
                    prompt_ids = [p[-cfg.max_prompt_length :] for p in prompt_ids]

                # 2. sample ----------------------------------------------------------------
                t0 = time.perf_counter()
                sampling = SamplingParams(
                    num_samples=K, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                    top_p=cfg.top_p, top_k=cfg.top_k, stop=tuple(cfg.stop),
                    seed=_seed(cfg.seed, it, 0),
                )  # fmt: skip
                gens = sampler.sample(prompt_ids, sampling)
                completions = [as_completion(batch_prompts[gens.prompt_index[n]], gens.texts[n])
                               for n in range(len(gens))]  # fmt: skip
                gen_tokens = gens.completion_tokens
                mix_ids = None
                if method.mixture:
                    mix_ids, _ = sample_mixture(
                        policy, ref_model, gens.prompt_ids, coef=cfg.mixture_coef,
                        max_new_tokens=cfg.max_new_tokens, eos_token_ids=eos_ids, pad_id=pad_id,
                        temperature=cfg.temperature, seed=_seed(cfg.seed, it, 1),
                        batch_size=cfg.generation_batch_size,
                    )  # fmt: skip
                    gen_tokens += sum(len(m) for m in mix_ids)
                t_gen = time.perf_counter() - t0

                # 3. judge (every verdict goes to the store) ---------------------------------
                t0 = time.perf_counter()
                jkw = dict(score_temperature=cfg.score_temperature, chunk=cfg.judge_batch_size,
                           store=store, step=it, policy_version=it - 1,
                           source={"method": cfg.method})  # fmt: skip
                if method.mixture:
                    mix_texts = tokenizer.batch_decode(mix_ids, skip_special_tokens=True)
                    mix_completions = [as_completion(batch_prompts[gens.prompt_index[n]], t)
                                       for n, t in enumerate(mix_texts)]  # fmt: skip
                    judgements = judge_against_mixture(
                        judge, batch_prompts, completions, mix_completions, gens.completion_ids,
                        mix_ids, K, **jkw,
                    )  # fmt: skip
                else:
                    judgements = judge_samples(judge, batch_prompts, completions,
                                               gens.completion_ids, K, **jkw)  # fmt: skip
                t_judge = time.perf_counter() - t0

                # 4. examples --------------------------------------------------------------
                examples = method.build(judgements, cfg.build_options)
                plan = _plan(len(examples), epochs=cfg.update_epochs,
                             groups=cfg.updates_per_epoch, micro=cfg.micro_batch_size,
                             seed=cfg.seed, it=it)  # fmt: skip

                # 5. frozen log-probs (π_t and π_ref), on the first pass's micro-batches -------
                t0 = time.perf_counter()
                N = len(gens)
                previous = torch.full((N,), math.nan, device=acc.device)
                reference = torch.full((N,), math.nan, device=acc.device)
                for mb in (mb for step in plan[: cfg.updates_per_epoch] for mb in step):
                    ids = examples.take(mb).samples()
                    if method.uses_previous:
                        previous[ids] = frozen_logps(policy, ids)
                    if cfg.needs_reference:
                        reference[ids] = (frozen_logps(ref_model, ids) if ref_model is not None
                                          else frozen_logps(policy, ids, adapter_off=True))  # fmt: skip

                # 6. update ----------------------------------------------------------------
                policy.train()
                per_example: dict[str, list[torch.Tensor]] = {}
                upd_tokens, grad_norm, lr = 0, None, scheduler.get_last_lr()[0]
                for micro_batches in plan:
                    size = sum(len(mb) for mb in micro_batches)
                    lr = scheduler.get_last_lr()[0]
                    for mb in micro_batches:
                        res, n_tok = _micro_step(policy, gens, examples.take(mb), previous,
                                                 reference, method, spec, params, size, logps_kw,
                                                 cfg.needs_reference)  # fmt: skip
                        upd_tokens += n_tok
                        for k, v in {"loss/total": res.losses, **res.metrics}.items():
                            per_example.setdefault(k, []).append(v.detach().float().cpu())
                    if size > 0:  # an empty step (n < groups) moves only the schedule
                        if cfg.max_grad_norm:
                            grad_norm = float(
                                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                            )
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    with warnings.catch_warnings():  # "scheduler before optimizer" on empty steps
                        warnings.simplefilter("ignore", UserWarning)
                        scheduler.step()
                t_upd = time.perf_counter() - t0
                state.step += 1
                state.examples_seen += P

                # 7. log -----------------------------------------------------------------------
                last = _metrics(per_example, gens, judgements, examples, method, previous,
                                reference, cfg)  # fmt: skip
                last.update({"lm/lr": lr, "lm/optimizer_steps": state.step * steps_per_iteration,
                             "lm/generation_tokens_per_s": gen_tokens / max(t_gen, 1e-9),
                             "lm/update_tokens_per_s": upd_tokens / max(t_upd, 1e-9),
                             "time/generation_s": t_gen, "time/judge_s": t_judge,
                             "time/update_s": t_upd})  # fmt: skip
                if grad_norm is not None:
                    last["lm/grad_norm"] = grad_norm
                if task is not None:
                    per_sample = [batch_prompts[i] for i in gens.prompt_index]
                    last.update(task.evaluate(per_sample, completions))
                state.metrics = {k: v for k, v in last.items() if k not in TIMING_KEYS}
                if state.step % cfg.log_every == 0:
                    log.write(state.step, last)
                progress.update(bar, completed=state.step, info=_progress_info(last))
                if on_iteration is not None:
                    on_iteration(IterationRecord(
                        it, last, batch_prompts, gens, judgements, examples, previous.cpu(),
                        reference.cpu(), mix_ids))  # fmt: skip
                if stop.requested and state.step < cfg.iterations:
                    checkpoint()
                    interrupted = True
                    break
                if (
                    cfg.save_every
                    and state.step % cfg.save_every == 0
                    and (state.step < cfg.iterations)
                ):
                    checkpoint()

        summary = {"iterations": state.step, "total_iterations": cfg.iterations,
                   "interrupted": interrupted, "method": cfg.method,
                   "train": dict(state.metrics)}  # fmt: skip
        if interrupted:
            summary["resume"] = f"unialign train lm-online --config {out / 'config.yaml'} --resume"
        else:
            if saved != state.step:
                checkpoint()
            summary["feedback"] = {"store": str(store_path), "queries": store.count_queries(),
                                   "labels": store.count_labels(include_skipped=True)}  # fmt: skip
            summary["learning_curve"] = plot_learning_curve(out / "metrics.jsonl",
                                                            out / "learning_curve.png")  # fmt: skip
            summary["outputs"] = save_policy(policy, tokenizer, out,
                                             merge_lora=cfg.merge_lora_on_save)  # fmt: skip
    finally:
        log.close()
        store.close()
    summary["wall_s"] = round(time.perf_counter() - t_start, 2)
    if state.step and summary.get("train"):
        summary["iterations_per_s"] = round(state.step / summary["wall_s"], 4)
    with atomic_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def _micro_step(policy, gens, ex: Examples, previous, reference, method, spec, params, size,
                logps_kw, needs_ref: bool):  # fmt: skip
    """One micro-batch: policy log-probs of its samples, the typed batch, the objective, and
    ``backward`` of Σ_i loss_i / size (size = the examples of the whole optimizer step)."""
    ids = ex.samples()
    logps, counts, n_tok = sample_logps(policy, gens, ids, **logps_kw)
    pos = {s: k for k, s in enumerate(ids)}
    device = logps.device

    def pick(t: torch.Tensor, which: torch.Tensor | None):
        if which is None:
            return None
        return t[torch.tensor([pos[int(i)] for i in which], device=device)]

    def frozen(t: torch.Tensor, which: torch.Tensor | None):
        return None if which is None else t[which.to(t.device)]

    batch = method.batch(ExampleLogps(
        policy_chosen=pick(logps, ex.chosen), chosen_tokens=pick(counts, ex.chosen),
        target=ex.target.to(device), policy_rejected=pick(logps, ex.rejected),
        rejected_tokens=pick(counts, ex.rejected),
        previous_chosen=frozen(previous, ex.chosen) if method.uses_previous else None,
        previous_rejected=frozen(previous, ex.rejected) if method.uses_previous else None,
        ref_chosen=frozen(reference, ex.chosen) if needs_ref else None,
        ref_rejected=frozen(reference, ex.rejected) if needs_ref else None,
    ))  # fmt: skip
    res = spec.fn(batch, **params)
    (res.losses.sum() / size).backward()
    return res, n_tok


def _metrics(per_example, gens: Generations, j: Judgements, ex: Examples, method, previous,
             reference, cfg) -> dict:  # fmt: skip
    """The iteration's metrics line (without the optimizer and timing values)."""
    m = {k: float(torch.cat(v).mean()) for k, v in per_example.items() if v}
    lengths = gens.completion_lengths.float()
    m.update({
        "online/prompts": gens.num_prompts, "online/samples": len(gens),
        "online/examples": len(ex), "online/dropped": ex.dropped,
        "online/completion_tokens": float(lengths.mean()),
        "online/truncated": sum(r == "length" for r in gens.stop_reason) / max(1, len(gens)),
    })  # fmt: skip
    if j.scores is not None:
        m["judge/score"] = float(j.scores.mean())
        m["judge/score_std"] = float(j.scores.std()) if j.scores.numel() > 1 else 0.0
    if j.versus is not None:
        v = j.versus[~torch.isnan(j.versus)]
        m["judge/win_rate"] = float(v.mean()) if v.numel() else math.nan
        m["judge/skipped"] = float(torch.isnan(j.versus).float().mean())
    else:
        upper = torch.triu(torch.ones(j.shape[1], j.shape[1], dtype=torch.bool), diagonal=1)
        asked = j.preference[:, upper]
        if asked.numel():
            m["judge/skipped"] = float(torch.isnan(asked).float().mean())
    if ex.paired and len(ex):
        m["judge/margin"] = float(ex.target.mean())
    if not ex.paired and method.name == "sppo" and len(ex):
        m["judge/win_rate_spread"] = float((ex.target - 0.5).abs().mean())
    prev = previous[~torch.isnan(previous)]
    if prev.numel():
        m["online/logp_previous"] = float(prev.mean())
    ref = reference[~torch.isnan(reference)]
    if ref.numel():
        m["online/logp_reference"] = float(ref.mean())
    return m


def _progress_info(m: dict) -> str:
    if "judge/score" in m:
        head = f"reward {m['judge/score']:+.3f}"
    elif "judge/win_rate" in m:
        head = f"win rate {m['judge/win_rate']:.3f}"
    else:
        head = f"margin {m.get('judge/margin', math.nan):.3f}"
    return (f"{head}  loss {m.get('loss/total', math.nan):.4f}  "
            f"gen {m['lm/generation_tokens_per_s']:,.0f} tok/s  "
            f"update {m['lm/update_tokens_per_s']:,.0f} tok/s")  # fmt: skip


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    gen_cfg = getattr(unwrap_model(model), "generation_config", None)
    for v in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        for t in [v] if isinstance(v, int) else (v or []):
            if int(t) not in ids:
                ids.append(int(t))
    return ids


def _fresh_store(path: Path) -> None:
    """A fresh run starts with an empty store; one that holds queries is never overwritten."""
    if not path.exists():
        return
    with FeedbackStore(path) as s:
        n = s.count_queries()
    if n:
        raise ConfigError(
            f"output_dir: {path} already holds {n} feedback queries of an earlier run; pass "
            "--resume to continue it, or choose another output_dir"
        )
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _load_task(cfg: LMOnlineConfig):
    from unialign.tasks import ReferenceConfig, style_task

    ref = ReferenceConfig.small() if cfg.task_size == "small" else ReferenceConfig()
    return style_task(ref, cache_dir=cfg.task_cache_dir)
