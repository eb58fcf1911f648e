"""Online DPO throughput: TRL's ``trl.experimental.online_dpo`` and unialign, same run, same device.

One **iteration** = one batch of P prompts sampled (K = 2 completions each), judged by a
Python reward function and trained on (one optimizer step). TRL's online DPO always samples
2 completions per prompt and trains on the better vs the worse one; unialign runs
``method: online_dpo, pairs: best_worst, num_samples: 2``, which is the same pair.

Both peers get the same random-weight model (built from a config, saved once, loaded with
``from_pretrained`` by each), the same prompt pool, the same reward function (``reward_fn``
below, given to TRL as ``reward_funcs`` and to unialign as a ``FunctionScoreJudge``), K = 2,
``max_new_tokens``, temperature 1 (no top-k / top-p), sigmoid loss with β = 0.1, AdamW
(``torch.optim.AdamW`` for both: TRL's default ``adamw_torch_fused`` is switched to
``adamw_torch``), constant learning rate 1e-6, no weight decay, gradient clipping at 1.0, one
forward/backward of all P pairs per step, no gradient checkpointing (TRL's online DPO turns it
on by default; unialign does not), fp32 on CPU / bf16 on CUDA, the frozen initial policy as
reference (TRL's ``create_reference_model`` copy; unialign's ``frozen_copy``).

Peers (``--peers``): ``trl``; ``unialign`` with its defaults (log-probs of packed rows of
max(1024, longest sequence) tokens); ``unialign_rows``, the same with ``max_tokens_per_row`` =
the longest possible sequence, about one sequence per row like TRL's padded batch (on CPU the
``sdpa`` document mask of a 1024-token row costs the full L² attention: see docs/benchmarks.md).

Metrics per peer and repeat (the first ``--warmup`` iterations are not timed; timing runs from
the end of the last warm-up iteration to the end of the last iteration):

- ``iterations_per_s``: timed iterations / wall seconds;
- ``generated_tokens_per_s``: sampled completion tokens (EOS included, no padding) / seconds
  spent in the generation phase (TRL: its ``_generate``; unialign: ``time/generation_s``);
- ``update_tokens_per_s``: non-pad prompt + completion tokens of the chosen and rejected
  sequences trained on / seconds of the rest of the iteration (wall − generation − judge:
  reference forward, policy forward/backward, optimizer, bookkeeping and logging);
- ``cpu_s_per_iteration``: process CPU time per timed iteration (less sensitive to other jobs
  on a shared machine than wall time);
- ``peak_rss_mib``: ``getrusage`` peak resident memory of the peer's own process (each peer
  runs in a fresh subprocess), ``peak_gpu_gib`` on CUDA;
- equivalence counters: generated and update tokens per iteration, pairs per iteration,
  optimizer steps, mean reward of the timed iterations' samples (same sampling distribution).

Repeats alternate the order of the peers (as listed in odd repeats, reversed in even ones),
so all see the same machine state on average; medians, min–max spread and the unialign/TRL
ratios (of the medians, and per repeat) are reported, with the 1.5× iterations/s target checked
for ``unialign`` (defaults). Torch runs ``--threads`` threads (default 1) in every peer.

    python benchmarks/lm_online_throughput.py                  # CPU tier -> benchmarks/results/
    python benchmarks/lm_online_throughput.py --tier gpu       # SmolLM2-135M, 0.39 B (CUDA only)
    python benchmarks/lm_online_throughput.py --sizes tiny --repeats 1 --iterations 1 --out x.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared _lm_bench, run as a script
from _lm_bench import (  # noqa: E402
    MODELS,
    ROOT,
    TARGET_RATIO,
    Marks,
    base_parser,
    check_args,
    interleave,
    mark_unialign_iteration,
    prepare,
    report_header,
    reward_fn,
    rss_mib,
    run_worker,
    spawn,
    summarize,
    sync,
)

# Shared training settings (both peers)
COMMON = dict(num_samples=2, lr=1e-6, beta=0.1, temperature=1.0, max_grad_norm=1.0, seed=0)

# The models and prompt pools of _lm_bench.MODELS with this benchmark's batch and lengths
SIZES = {
    "tiny": {**MODELS["tiny"], "prompts_per_iteration": 8, "max_new_tokens": 32},
    "small": {**MODELS["small"], "prompts_per_iteration": 8, "max_new_tokens": 64},
    "smollm2_135m": {**MODELS["smollm2_135m"], "prompts_per_iteration": 16, "max_new_tokens": 256},
    "qwen2_0.39b": {**MODELS["qwen2_0.39b"], "prompts_per_iteration": 16, "max_new_tokens": 256},
}


# ------------------------------------------------------------------------------------------
# one peer (runs in a worker process)
# ------------------------------------------------------------------------------------------
def run_trl(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    cuda = torch.cuda.is_available()
    warm, iters, P = job["warmup"], job["iterations"], job["prompts_per_iteration"]
    rss_imports = rss_mib()
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        job["model_dir"],
        dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation="sdpa",
    )
    rows = [json.loads(x) for x in Path(job["prompts"]).read_text().splitlines()]
    marks = Marks()

    class TimedOnlineDPO(OnlineDPOTrainer):
        """TRL's trainer unchanged, with its generation and reward calls timed and counted."""

        def _generate(self, model, prompts, images=None):
            sync()
            t0 = time.perf_counter()
            out = super()._generate(model, prompts, images)
            sync()
            marks.pending["gen_s"] += time.perf_counter() - t0
            _, prompt_mask, _, completion_mask, _ = out
            marks.pending["gen_tokens"] += int(completion_mask.sum())
            marks.pending["update_tokens"] += int(prompt_mask.sum() + completion_mask.sum())
            return out

        def _calculate_rewards_from_functions(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._calculate_rewards_from_functions(*a, **kw)
            marks.pending["judge_s"] += time.perf_counter() - t0
            return out

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.end_iteration(pairs=P, prompts=P, step=state.global_step)

    args = OnlineDPOConfig(
        output_dir=job["work"] + "/trl_out", per_device_train_batch_size=P,
        max_steps=warm + iters, learning_rate=COMMON["lr"], lr_scheduler_type="constant",
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=COMMON["max_grad_norm"],
        beta=COMMON["beta"], loss_type="sigmoid", max_new_tokens=job["max_new_tokens"],
        max_length=job["max_length"], temperature=COMMON["temperature"], top_p=1.0, top_k=0,
        gradient_checkpointing=False, bf16=cuda, use_cpu=not cuda, seed=COMMON["seed"],
        logging_steps=1, report_to=[], save_strategy="no", dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = TimedOnlineDPO(model=model, reward_funcs=reward_fn, args=args, processing_class=tok,
                             train_dataset=Dataset.from_list(rows), callbacks=[Clock()])  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    res = marks.summary(warm)
    scores = [h["objective/scores"] for h in trainer.state.log_history
              if "objective/scores" in h and h.get("step", 0) > warm]  # fmt: skip
    res["mean_reward"] = statistics.mean(scores)
    res.update(optimizer_steps=trainer.state.global_step, rss_after_imports_mib=rss_imports,
               step1_loss=next(h["loss"] for h in trainer.state.log_history if "loss" in h))  # fmt: skip
    return res


def run_unialign(job: dict) -> dict:
    import torch

    from unialign.lm.online import train_lm_online
    from unialign.lm.online_config import LMOnlineConfig
    from unialign.lm.online_judging import FunctionScoreJudge

    cuda = torch.cuda.is_available()
    warm, iters, P = job["warmup"], job["iterations"], job["prompts_per_iteration"]
    rss_imports = rss_mib()
    K = COMMON["num_samples"]
    cfg = LMOnlineConfig(
        model=job["model_dir"], prompts=job["prompts"], method="online_dpo", loss="sigmoid",
        beta=COMMON["beta"], pairs="best_worst", num_samples=K, prompts_per_iteration=P,
        max_new_tokens=job["max_new_tokens"], temperature=COMMON["temperature"],
        generation_batch_size=P * K, micro_batch_size=P, iterations=warm + iters,
        lr=COMMON["lr"], schedule="constant", max_grad_norm=COMMON["max_grad_norm"],
        seed=COMMON["seed"], output_dir=job["work"] + "/unialign_out", save_every=0, log_every=1,
        max_tokens_per_row=job.get("row_tokens"),
    )  # fmt: skip
    marks = Marks()
    loss1: list[float] = []
    rewards: list[float] = []

    def on_iteration(rec) -> None:
        mark_unialign_iteration(marks, rec, pairs=len(rec.examples), prompts=len(rec.prompts))
        m = rec.metrics
        if rec.iteration > warm:
            rewards.append(m["judge/score"])
        if "loss/total" in m and not loss1:
            loss1.append(m["loss/total"])

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    summary = train_lm_online(cfg, judge=FunctionScoreJudge(reward_fn, "reward_fn"),
                              on_iteration=on_iteration)  # fmt: skip
    res = marks.summary(warm)
    res["mean_reward"] = statistics.mean(rewards)
    res.update(optimizer_steps=marks.iters[-1]["step"], rss_after_imports_mib=rss_imports,
               step1_loss=loss1[0] if loss1 else None, completed=summary["iterations"])  # fmt: skip
    return res


# ------------------------------------------------------------------------------------------
# the comparison
# ------------------------------------------------------------------------------------------
METRICS = ("iterations_per_s", "generated_tokens_per_s", "update_tokens_per_s",
           "cpu_s_per_iteration", "peak_rss_mib")  # fmt: skip
EQUIVALENCE = ("generated_tokens_per_iteration", "update_tokens_per_iteration",
               "pairs_per_iteration", "prompts_per_iteration", "mean_reward")  # fmt: skip


PEERS = {
    "trl": "TRL OnlineDPOTrainer (matched settings, otherwise its defaults)",
    "unialign": "unialign train lm-online, method online_dpo (matched settings, otherwise its "
    "defaults: packed log-prob rows of max(1024, longest sequence) tokens)",
    "unialign_rows": "the same with max_tokens_per_row = the longest possible sequence (longest "
    "prompt + max_new_tokens): about one sequence per row, as TRL's padded batch",
}


def compare_size(name: str, args, cuda: bool) -> dict:
    spec = SIZES[name]
    P, K = spec["prompts_per_iteration"], COMMON["num_samples"]
    peers = args.peers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        setup = prepare(Path(tmp), spec, cuda)
        longest = setup["longest_prompt_tokens"] + spec["max_new_tokens"]
        base = dict(
            model_dir=setup["model_dir"], prompts=setup["prompts"], prompts_per_iteration=P,
            max_new_tokens=spec["max_new_tokens"], warmup=args.warmup,
            iterations=args.iterations, threads=args.threads,
            # TRL truncates prompt + completion to max_length from the left: never here
            max_length=longest + 8,
        )  # fmt: skip

        def run(peer: str) -> dict:
            job = {**base, "peer": "trl" if peer == "trl" else "unialign",
                   "row_tokens": longest if peer == "unialign_rows" else None}  # fmt: skip
            return spawn(__file__, job, args.timeout)

        runs = interleave(peers, args.repeats, run, {"size": name})

    summary = summarize(runs, peers, args.repeats, METRICS, EQUIVALENCE)
    ratios = summary["ratios_over_trl"]
    headline = ratios.get("unialign", {}).get("iterations_per_s")
    return {
        "model": {**spec["model"], "vocab": setup["vocab"], "params": setup["params"]},
        "settings": {**COMMON, "prompts_per_iteration": P, "max_new_tokens": spec["max_new_tokens"],
                     "max_length_trl": base["max_length"], "prompt_words": spec["prompt_words"],
                     "prompt_pool": spec["pool"], "generation_batch_size": P * K,
                     "micro_batch_size": P, "unialign_rows_max_tokens_per_row": longest,
                     "precision": "bf16" if cuda else "fp32"},
        "peers": {p: PEERS[p] for p in peers},
        "runs": runs, **summary, "target_iterations_ratio": TARGET_RATIO,
        "target_met": headline is not None and headline >= TARGET_RATIO,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n\n")[0], PEERS, "trl,unialign,unialign_rows", 20, 3)
    args = ap.parse_args(argv)
    if args.worker:
        result = run_worker(json.loads(args.worker), run_trl, run_unialign)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    sizes, _ = check_args(ap, args, SIZES, PEERS, cuda)
    out_path = Path(args.out or ROOT / "benchmarks/results/lm_online_throughput.json")

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    results = {name: compare_size(name, args, cuda) for name in sizes}
    report = {
        **report_header(cuda, load_start, args.threads),
        "tier": args.tier, "repeats": args.repeats, "iterations": args.iterations,
        "warmup": args.warmup, "wall_s": time.perf_counter() - t0,
        "sizes": results,
    }  # fmt: skip
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(f"wrote {out_path}")
    for name, r in results.items():
        print(name, json.dumps(r["ratios_over_trl"]), "target met:", r["target_met"])
    ok = all(x.get("ok") for r in results.values() for x in r["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
