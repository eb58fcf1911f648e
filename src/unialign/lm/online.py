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
import time
from collections.abc import Callable
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
from unialign.lm import online_rl
from unialign.lm.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from unialign.lm.generation import Generations, SamplingParams, TransformersSampler, encode_prompts
from unialign.lm.model import frozen_copy, load_policy, load_tokenizer, save_policy
from unialign.lm.online_config import LMOnlineConfig
from unialign.lm.online_io import (
    iteration_metrics,
    load_prompts,
    plot_learning_curve,
    progress_info,
    prune_sidecars,
    read_sidecar,
    resolve_judge,
    write_sidecar,
)
from unialign.lm.online_judging import as_completion, judge_against_mixture, judge_samples
from unialign.lm.online_methods import Examples, Judgements
from unialign.lm.online_mixture import sample_mixture
from unialign.lm.online_rewards import CombinedScoreJudge, greedy_completions, resolve_judges
from unialign.lm.online_update import frozen_logps, plan_steps, update_policy
from unialign.lm.packing import unwrap_model
from unialign.lm.refit_reward import build_refit
from unialign.lm.train import stream_positions
from unialign.runlog import MetricsLog, atomic_file, progress_bar

__all__ = ["train_lm_online", "IterationRecord", "TIMING_KEYS"]

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
    method = cfg.online_method

    # prompts, task and judge first: their errors come before any model loads -----------------
    task = _load_task(cfg) if cfg.task else None
    state = TrainState()  # step = iterations done, examples_seen = prompts consumed
    stopper = StopOnSignal()
    refit = None
    if judge is None and cfg.refit is not None:  # the judge: a reward model refit every iteration
        refit = judge = build_refit(
            cfg.refit, model=cfg.model or str(task.reference.path),
            tokenizer=cfg.tokenizer or cfg.model or str(task.reference.path),
            gold=task.gold_reward, iterations=cfg.iterations, beta=cfg.refit_beta,
            seed=cfg.seed, device=acc.device,
        )  # fmt: skip
    if judge is None and cfg.judges:  # several score judges, one combined reward
        judge = resolve_judges(cfg.judges, task, combination=cfg.reward_combination,
                               weights=cfg.reward_weights or None, resolve=resolve_judge)  # fmt: skip
    if judge is None:  # hooks of a judge of people: the iterate that sampled, the iteration
        judge = resolve_judge(cfg.judge, task, policy_version=lambda: state.step,
                              step_fn=lambda: state.step + 1,
                              stop_fn=lambda: stopper.requested)  # fmt: skip
    if method.rollout is not None:
        online_rl.check_judge(cfg.method, judge)
    prompts = load_prompts(cfg.prompts) if cfg.prompts else task.prompts("train", seed=cfg.seed)
    store_path = out / "feedback.sqlite"
    ckpt = latest_checkpoint(out) if resume else None
    if not resume:
        _fresh_store(store_path)
        remove_checkpoints(out)
    with atomic_file(out / "config.yaml") as tmp:
        dump_config(cfg, tmp)
    set_seed(cfg.seed)

    # the policy, its reference (the initial weights, copied before a checkpoint loads) ---------
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
    reference_judge = isinstance(judge, CombinedScoreJudge) and judge.needs_reference
    wants_ref = cfg.needs_reference or reference_judge
    ref_model = frozen_copy(policy) if wants_ref and lora is None else None
    if reference_judge:  # log_sigmoid: r_ref,p(x) of the reference policy's greedy completions
        judge.bind_reference(prompts, greedy_completions(
            ref_model or policy, tokenizer, max_new_tokens=cfg.max_new_tokens,
            max_prompt_length=cfg.max_prompt_length, stop=cfg.stop,
            batch_size=cfg.generation_batch_size, adapter_off=ref_model is None,
        ), chunk=cfg.generation_batch_size)  # fmt: skip
    rollout = online_rl.RolloutSettings.from_config(cfg) if method.rollout else None
    sampler = TransformersSampler(policy, tokenizer, batch_size=cfg.generation_batch_size)
    logps_kw = dict(pad_id=tokenizer.pad_token_id, chunk_size=cfg.chunk_size,
                    max_tokens_per_row=cfg.max_tokens_per_row)  # fmt: skip

    # optimizer, schedule, resume, store ---------------------------------------------------------
    params = ([p for p in policy.parameters() if p.requires_grad] if rollout is None else
              online_rl.prepare_policy(policy, rollout, lr=cfg.lr, value_lr=cfg.value_lr))  # fmt: skip
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_iteration = cfg.update_epochs * cfg.updates_per_epoch
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup"}.get(cfg.schedule, cfg.schedule), optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.iterations * steps_per_iteration,
    )  # fmt: skip
    store = FeedbackStore(store_path)
    if resume and ckpt is None:
        print(f"unialign: no checkpoint under {out}/checkpoints; starting from iteration 0")
        store.rollback(StoreMark(0, 0))
    if ckpt is not None:  # in place: the judge's hooks read ``state``
        loaded = load_checkpoint(ckpt, accelerator=acc, model=policy, optimizer=optimizer,
                                 scheduler=scheduler)  # fmt: skip
        state.__dict__.update(loaded.__dict__)
        if refit is not None:
            refit.load(out, state.step)
        # verdicts stored after the checkpoint are replayed by this run: drop them first
        store.rollback(StoreMark.from_dict(read_sidecar(out, state.step)["store_mark"]))
    saved = state.step if ckpt is not None else None
    log = MetricsLog(out / "metrics.jsonl", offset=state.metrics_offset,
                     tensorboard_dir=out / "tensorboard", start_step=state.step)  # fmt: skip

    def checkpoint() -> None:
        nonlocal saved
        state.metrics_offset = log.offset()
        # the sidecar first: a kill between the two leaves an older, consistent checkpoint
        if refit is not None:
            refit.save(out, state.step)
        write_sidecar(out, state.step, {"store_mark": store.mark().as_dict()})
        save_checkpoint(out, accelerator=acc, model=policy, optimizer=optimizer,
                        scheduler=scheduler, state=state, keep=cfg.keep_checkpoints)  # fmt: skip
        prune_sidecars(out)
        saved = state.step

    progress = progress_bar("train lm-online", fields="{task.fields[info]}")
    bar = progress.add_task("iterations", total=cfg.iterations, completed=state.step, info="")
    interrupted = False
    try:
        with stopper as stop, progress:
            while state.step < cfg.iterations:
                it = state.step + 1
                # 1. prompts
                idx = stream_positions(len(prompts), cfg.seed, state.examples_seen,
                                 cfg.prompts_per_iteration)  # fmt: skip
                batch_prompts = [prompts[i] for i in idx]
                # 2. sample
                s = _sample(cfg, it, sampler, policy, ref_model, tokenizer, batch_prompts)
                refit_metrics = {} if refit is None else refit.round(  # 2b. label, refit
                    it, batch_prompts, s.gens, s.completions, policy=policy, store=store,
                    temperature=cfg.temperature, **logps_kw,
                )  # fmt: skip
                # 3. judge (every verdict goes to the store as soon as its chunk is judged)
                t0 = time.perf_counter()
                jkw = dict(score_temperature=cfg.score_temperature, chunk=cfg.judge_batch_size,
                           store=store, step=it, policy_version=it - 1,
                           source={"method": cfg.method})  # fmt: skip
                if method.mixture:
                    judgements = judge_against_mixture(
                        judge, batch_prompts, s.completions, s.mixture_completions,
                        s.gens.completion_ids, s.mixture_ids, cfg.num_samples, **jkw,
                    )  # fmt: skip
                else:
                    judgements = judge_samples(judge, batch_prompts, s.completions,
                                               s.gens.completion_ids, cfg.num_samples, **jkw)  # fmt: skip
                t_judge = time.perf_counter() - t0
                # 4. examples
                examples = method.build(judgements, cfg.build_options)
                plan = plan_steps(
                    len(examples), epochs=cfg.update_epochs, groups=cfg.updates_per_epoch,
                    micro=cfg.micro_batch_size,
                    seeds=[_seed(cfg.seed, it, 2 + e) for e in range(cfg.update_epochs)],
                )  # fmt: skip
                # 5. frozen log-probs: ℓ_t (the policy that sampled) and ℓ_ref
                t0 = time.perf_counter()
                if rollout is not None:  # policy-gradient methods: per-token rollout (online_rl)
                    ro = online_rl.collect_rollout(policy, ref_model, s.gens, examples,
                                                   plan[: cfg.updates_per_epoch], rollout,
                                                   **logps_kw)  # fmt: skip
                    previous, reference = ro.previous, ro.reference
                else:
                    previous, reference = frozen_logps(
                        policy, ref_model, s.gens, examples, plan[: cfg.updates_per_epoch],
                        previous=method.uses_previous, reference=cfg.needs_reference, **logps_kw,
                    )  # fmt: skip
                t_frozen = time.perf_counter() - t0
                # 6. update
                if rollout is not None:
                    upd = online_rl.update_rollout(
                        policy, optimizer, scheduler, s.gens, examples, plan, ro, rollout,
                        max_grad_norm=cfg.max_grad_norm, **logps_kw,
                    )  # fmt: skip
                else:
                    upd = update_policy(
                        policy, optimizer, scheduler, s.gens, examples, plan, previous, reference,
                        method=method, objective=cfg.objective, params=cfg.resolved_params(),
                        use_reference=cfg.needs_reference, max_grad_norm=cfg.max_grad_norm,
                        **logps_kw,
                    )  # fmt: skip
                state.step += 1
                state.examples_seen += cfg.prompts_per_iteration
                # 7. log
                last = {
                    **upd.metrics,
                    **iteration_metrics(s.gens, judgements, examples, previous, reference),
                }
                if rollout is not None:  # their per-sample targets are scores, not win rates
                    last.pop("judge/win_rate_spread", None)
                last.update({
                    "lm/lr": upd.lr, "lm/optimizer_steps": state.step * steps_per_iteration,
                    "lm/generation_tokens_per_s": s.tokens / max(s.seconds, 1e-9),
                    "lm/update_tokens_per_s": upd.tokens / max(upd.seconds, 1e-9),
                    "time/generation_s": s.seconds, "time/judge_s": t_judge,
                    "time/update_s": t_frozen + upd.seconds,
                })  # fmt: skip
                if upd.grad_norm is not None:
                    last["lm/grad_norm"] = upd.grad_norm
                last.update(refit_metrics)
                if task is not None:
                    per_sample = [batch_prompts[i] for i in s.gens.prompt_index]
                    last.update(task.evaluate(per_sample, s.completions))
                state.metrics = {k: v for k, v in last.items() if k not in TIMING_KEYS}
                if state.step % cfg.log_every == 0:
                    log.write(state.step, last)
                progress.update(bar, completed=state.step, info=progress_info(last))
                if on_iteration is not None:
                    on_iteration(IterationRecord(
                        it, last, batch_prompts, s.gens, judgements, examples, previous.cpu(),
                        reference.cpu(), s.mixture_ids,
                    ))  # fmt: skip
                more = state.step < cfg.iterations
                if stop.requested and more:
                    checkpoint()
                    interrupted = True
                    break
                if cfg.save_every and state.step % cfg.save_every == 0 and more:
                    checkpoint()

        summary = {"iterations": state.step, "total_iterations": cfg.iterations,
                   "interrupted": interrupted, "method": cfg.method,
                   "train": dict(state.metrics)}  # fmt: skip
        if interrupted:
            summary["resume"] = f"unialign train lm-online --config {out / 'config.yaml'} --resume"
        else:
            if saved != state.step:  # the final checkpoint: a --resume of a finished run is a no-op
                checkpoint()
            summary["feedback"] = {"store": str(store_path), "queries": store.count_queries(),
                                   "labels": store.count_labels(include_skipped=True)}  # fmt: skip
            summary["learning_curve"] = plot_learning_curve(out / "metrics.jsonl",
                                                            out / "learning_curve.png")  # fmt: skip
            value_head = online_rl.finish_policy(policy, out)  # PPO: the head is not the LM's
            summary["outputs"] = save_policy(policy, tokenizer, out,
                                             merge_lora=cfg.merge_lora_on_save)  # fmt: skip
            summary["outputs"].update(value_head)
    finally:
        log.close()
        store.close()
    summary["wall_s"] = round(time.perf_counter() - t_start, 2)
    with atomic_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class _Samples:
    """Phase 2's output: the policy's samples (and Nash-MD's mixture samples)."""

    gens: Generations
    completions: list
    mixture_ids: list[list[int]] | None
    mixture_completions: list | None
    tokens: int
    seconds: float


def _sample(
    cfg: LMOnlineConfig, it: int, sampler, policy, ref_model, tokenizer, prompts
) -> _Samples:
    """K completions per prompt from the policy (seeded by iteration); for Nash-MD one more per
    sample from the token-wise mixture π_θ^(1−β)·π_ref^β."""
    t0 = time.perf_counter()
    prompt_ids = encode_prompts(tokenizer, prompts)
    if cfg.max_prompt_length:
        prompt_ids = [p[-cfg.max_prompt_length :] for p in prompt_ids]
    params = SamplingParams(
        num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, stop=tuple(cfg.stop),
        seed=_seed(cfg.seed, it, 0),
    )  # fmt: skip
    gens = sampler.sample(prompt_ids, params)
    owner = [prompts[i] for i in gens.prompt_index]
    completions = [as_completion(p, t) for p, t in zip(owner, gens.texts)]
    tokens, mix_ids, mix_completions = gens.completion_tokens, None, None
    if cfg.online_method.mixture:
        mix_ids, _ = sample_mixture(
            policy, ref_model, gens.prompt_ids, coef=cfg.mixture_coef,
            max_new_tokens=cfg.max_new_tokens, eos_token_ids=_eos_ids(policy, tokenizer),
            pad_id=tokenizer.pad_token_id, temperature=cfg.temperature,
            seed=_seed(cfg.seed, it, 1), batch_size=cfg.generation_batch_size,
        )  # fmt: skip
        texts = tokenizer.batch_decode(mix_ids, skip_special_tokens=True)
        mix_completions = [as_completion(p, t) for p, t in zip(owner, texts)]
        tokens += sum(len(m) for m in mix_ids)
    return _Samples(gens, completions, mix_ids, mix_completions, tokens,
                    time.perf_counter() - t0)  # fmt: skip


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
