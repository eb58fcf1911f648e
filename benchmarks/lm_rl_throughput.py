"""GRPO and RLOO throughput: TRL 1.16's ``GRPOTrainer`` / ``RLOOTrainer`` and unialign's online
loop (``train lm-online`` with ``method: grpo`` / ``rloo``), same run, same device.

One **iteration** = one batch of P prompts, K completions sampled for each (the group), all
P·K scored by a Python reward function, and **one optimizer step** over the P·K completions
(one forward/backward, no gradient accumulation). TRL: ``per_device_train_batch_size = P·K``
completions, ``num_generations = K``, ``steps_per_generation = gradient_accumulation_steps =
num_iterations = 1`` (its generation batch is the step's batch, sampled in one ``generate``
call); unialign: ``prompts_per_iteration = P``, ``num_samples = K``, ``generation_batch_size =
micro_batch_size = P·K``, ``update_epochs = updates_per_epoch = 1``.

Both peers get the same random-weight model (built from a config, saved once, loaded with
``from_pretrained`` by each), the same prompt pool, the same reward function
(``_lm_bench.reward_fn``: TRL's ``reward_funcs``, unialign's ``FunctionScoreJudge``), K,
``max_new_tokens`` (TRL's ``max_completion_length``), temperature 1 (no top-k / top-p),
``torch.optim.AdamW`` (TRL's default fused AdamW switched to ``adamw_torch``), constant
learning rate 1e-6, no weight decay, clipping at 1.0, no gradient checkpointing (TRL's default
is on; unialign's off), fp32 on CPU / bf16 on CUDA, ``sdpa`` attention, no vLLM.

The objectives are unialign's defaults, set on TRL's side to match:

- **grpo**: the clipped surrogate with ε = 0.2, each completion's token mean then the batch mean
  (TRL ``loss_type="grpo"``, its default is ``dapo``), group advantages (r − mean_g)/(std_g +
  1e-4) (``scale_rewards="group"``), a k3 KL term to the frozen initial policy with β = 0.04
  (TRL ``beta=0.04``; its default 0 loads no reference model).
- **rloo**: leave-one-out baseline b_i = mean_{j≠i} R_j in the group, no KL (TRL ``beta=0``,
  its default 0.05 puts a KL penalty in the reward), advantages not normalized. unialign's
  loss is REINFORCE −(R − b)·ℓ_θ(y); TRL's is the clipped sequence-ratio surrogate, whose
  gradient at the one step per rollout (ratio 1) is the same −(R − b)∇ℓ_θ(y) up to the batch
  mean.

Peers (``--peers``, default ``trl,unialign``): ``trl``; ``unialign`` with its defaults;
``unialign_frozen``, the same with the rollout's separate no-grad ℓ_old pass forced (the loop
before ``online_rl`` deferred that pass to the update's first forward when one optimizer step
follows each rollout): the before/after measure of that change in the same run.

Metrics per peer and repeat (the first ``--warmup`` iterations are not timed; timing runs from
the end of the last warm-up iteration to the end of the last iteration):

- ``iterations_per_s``: timed iterations / wall seconds (the headline; target 1.5× TRL's);
- ``generated_tokens_per_s``: sampled completion tokens (EOS included, no padding) / seconds
  in the generation phase (TRL: its ``_generate``; unialign: ``time/generation_s``);
- ``update_tokens_per_s``: non-pad prompt + completion tokens of the P·K completions / seconds
  of the rest of the iteration (wall − generation − judge: frozen log-prob passes, policy
  forward/backward, optimizer, bookkeeping, logging);
- ``cpu_s_per_iteration``: process CPU time per timed iteration (less moved by other jobs);
- ``peak_rss_mib``: ``getrusage`` peak resident memory of the peer's own process (each run is
  a fresh subprocess), ``peak_gpu_gib`` on CUDA;
- equivalence counters: generated and update tokens, completions and prompts per iteration,
  optimizer steps, mean reward of the timed iterations' samples.

Runs alternate the peers' order (as listed in odd repeats, reversed in even ones) within
every size and method; medians, min–max spreads and the ratios over TRL (of the medians, and
per repeat) are reported. Torch runs ``--threads`` threads (default 1) in every peer. The
report is rewritten after every size × method (``"partial": true`` until the end).

    python benchmarks/lm_rl_throughput.py                  # CPU tier -> benchmarks/results/
    python benchmarks/lm_rl_throughput.py --tier gpu       # SmolLM2-135M, 0.39 B (CUDA only)
    python benchmarks/lm_rl_throughput.py --sizes tiny --repeats 1 --iterations 1 --out x.json
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

# Shared training settings (both peers, both methods)
COMMON = dict(num_samples=4, lr=1e-6, temperature=1.0, max_grad_norm=1.0, epsilon=0.2, seed=0)
# Per method: the KL coefficient (unialign's default; TRL's beta set to it) and TRL's trainer
METHODS = {
    "grpo": dict(beta=0.04, kl_estimator="k3", trl_loss_type="grpo", scale_rewards="group"),
    "rloo": dict(beta=0.0, kl_estimator=None, trl_loss_type=None, scale_rewards=None),
}

# The models and prompt pools of _lm_bench.MODELS with this benchmark's batch, lengths and the
# default number of timed and warm-up iterations (fewer where an iteration takes seconds)
SIZES = {
    "tiny": {**MODELS["tiny"], "prompts_per_iteration": 4, "max_new_tokens": 32,
             "iterations": 20, "warmup": 3},
    "small": {**MODELS["small"], "prompts_per_iteration": 4, "max_new_tokens": 64,
              "iterations": 8, "warmup": 2},
    "smollm2_135m": {**MODELS["smollm2_135m"], "prompts_per_iteration": 8, "max_new_tokens": 256,
                     "iterations": 10, "warmup": 2},
    "qwen2_0.39b": {**MODELS["qwen2_0.39b"], "prompts_per_iteration": 8, "max_new_tokens": 256,
                    "iterations": 10, "warmup": 2},
}  # fmt: skip
PEERS = {
    "trl": "TRL GRPOTrainer / RLOOTrainer (matched settings, otherwise its defaults)",
    "unialign": "unialign train lm-online, method grpo / rloo (matched settings, otherwise its "
    "defaults)",
    "unialign_frozen": "the same with the rollout's separate ℓ_old pass forced "
    "(online_rl.defers_old_logps patched to False in the worker): the loop as it was before "
    "that pass was deferred to the update's first forward",
}


# ------------------------------------------------------------------------------------------
# one peer (runs in a worker process)
# ------------------------------------------------------------------------------------------
def run_trl(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    cuda = torch.cuda.is_available()
    warm, iters, P, K = job["warmup"], job["iterations"], job["prompts_per_iteration"], job["K"]
    meth = METHODS[job["method"]]
    rss_imports = rss_mib()
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        job["model_dir"],
        dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation="sdpa",
    )
    rows = [json.loads(x) for x in Path(job["prompts"]).read_text().splitlines()]
    marks = Marks(counts=("completions", "prompts"))
    grpo = job["method"] == "grpo"
    Trainer, Config = (GRPOTrainer, GRPOConfig) if grpo else (RLOOTrainer, RLOOConfig)

    class Timed(Trainer):
        """TRL's trainer unchanged, with its generation and reward calls timed and counted."""

        def _generate(self, prompts):
            sync()
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            sync()
            marks.pending["gen_s"] += time.perf_counter() - t0
            prompt_ids, completion_ids = out[0], out[1]
            marks.pending["gen_tokens"] += sum(len(c) for c in completion_ids)
            marks.pending["update_tokens"] += sum(len(p) + len(c)
                                                  for p, c in zip(prompt_ids, completion_ids))  # fmt: skip
            return out

        def _calculate_rewards(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(*a, **kw)
            marks.pending["judge_s"] += time.perf_counter() - t0
            return out

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.end_iteration(completions=P * K, prompts=P, step=state.global_step)

    extra = (
        dict(loss_type=meth["trl_loss_type"], scale_rewards=meth["scale_rewards"]) if grpo else {}
    )
    args = Config(
        output_dir=job["work"] + "/trl_out", per_device_train_batch_size=P * K,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=K,
        num_iterations=1, max_completion_length=job["max_new_tokens"], beta=meth["beta"],
        epsilon=COMMON["epsilon"], max_steps=warm + iters, learning_rate=COMMON["lr"],
        lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=COMMON["max_grad_norm"], temperature=COMMON["temperature"], top_p=1.0,
        top_k=0, gradient_checkpointing=False, bf16=cuda, use_cpu=not cuda, seed=COMMON["seed"],
        logging_steps=1, report_to=[], save_strategy="no", dataloader_num_workers=0,
        disable_tqdm=True, use_vllm=False, **extra,
    )  # fmt: skip
    trainer = Timed(model=model, reward_funcs=reward_fn, args=args, processing_class=tok,
                    train_dataset=Dataset.from_list(rows), callbacks=[Clock()])  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    res = marks.summary(warm)
    rewards = [h["reward"] for h in trainer.state.log_history
               if "reward" in h and h.get("step", 0) > warm]  # fmt: skip
    res["mean_reward"] = statistics.mean(rewards)
    res.update(optimizer_steps=trainer.state.global_step, rss_after_imports_mib=rss_imports,
               reference_model=trainer.ref_model is not None)  # fmt: skip
    return res


def run_unialign(job: dict) -> dict:
    import torch

    from unialign.lm.online import train_lm_online
    from unialign.lm.online_config import LMOnlineConfig
    from unialign.lm.online_judging import FunctionScoreJudge

    cuda = torch.cuda.is_available()
    warm, iters, P, K = job["warmup"], job["iterations"], job["prompts_per_iteration"], job["K"]
    meth = METHODS[job["method"]]
    rss_imports = rss_mib()
    if job["peer"] == "unialign_frozen":  # the comparison before/after the deferred ℓ_old pass
        from unialign.lm import online_rl

        online_rl.defers_old_logps = lambda *a: False
    extra = {}
    if job["method"] == "grpo":
        extra = dict(loss="grpo", scale_rewards=meth["scale_rewards"],
                     loss_params=dict(kl_coef=meth["beta"], kl_estimator=meth["kl_estimator"],
                                      epsilon_low=COMMON["epsilon"],
                                      epsilon_high=COMMON["epsilon"]))  # fmt: skip
    cfg = LMOnlineConfig(
        model=job["model_dir"], prompts=job["prompts"], method=job["method"], num_samples=K,
        prompts_per_iteration=P, max_new_tokens=job["max_new_tokens"],
        temperature=COMMON["temperature"], generation_batch_size=P * K, micro_batch_size=P * K,
        update_epochs=1, updates_per_epoch=1, iterations=warm + iters, lr=COMMON["lr"],
        schedule="constant", max_grad_norm=COMMON["max_grad_norm"], seed=COMMON["seed"],
        attn_implementation="sdpa", output_dir=job["work"] + "/unialign_out", save_every=0,
        log_every=1, **extra,
    )  # fmt: skip
    marks = Marks(counts=("completions", "prompts"))
    rewards: list[float] = []
    reference: list[bool] = []

    def on_iteration(rec) -> None:
        mark_unialign_iteration(marks, rec, completions=len(rec.examples.samples()),
                                prompts=len(rec.prompts))  # fmt: skip
        m = rec.metrics
        if rec.iteration > warm:
            rewards.append(m["judge/score"])
        reference.append(bool(torch.isfinite(rec.reference).any()))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    summary = train_lm_online(cfg, judge=FunctionScoreJudge(reward_fn, "reward_fn"),
                              on_iteration=on_iteration)  # fmt: skip
    res = marks.summary(warm)
    res["mean_reward"] = statistics.mean(rewards)
    res.update(optimizer_steps=marks.iters[-1]["step"], rss_after_imports_mib=rss_imports,
               reference_model=all(reference), completed=summary["iterations"])  # fmt: skip
    return res


# ------------------------------------------------------------------------------------------
# the comparison
# ------------------------------------------------------------------------------------------
METRICS = ("iterations_per_s", "generated_tokens_per_s", "update_tokens_per_s",
           "cpu_s_per_iteration", "peak_rss_mib")  # fmt: skip
EQUIVALENCE = ("generated_tokens_per_iteration", "update_tokens_per_iteration",
               "completions_per_iteration", "prompts_per_iteration", "mean_reward")  # fmt: skip


def compare(name: str, method: str, setup: dict, args, cuda: bool) -> dict:
    """Every repeat of both peers for one size and method."""
    spec = SIZES[name]
    P, K = spec["prompts_per_iteration"], COMMON["num_samples"]
    warm = args.warmup or spec["warmup"]
    iters = args.iterations or spec["iterations"]
    base = dict(model_dir=setup["model_dir"], prompts=setup["prompts"], method=method,
                prompts_per_iteration=P, K=K, max_new_tokens=spec["max_new_tokens"],
                warmup=warm, iterations=iters, threads=args.threads)  # fmt: skip
    peers = args.peers.split(",")
    runs = interleave(peers, args.repeats,
                      lambda peer: spawn(__file__, {**base, "peer": peer}, args.timeout),
                      {"size": name, "method": method})  # fmt: skip
    summary = summarize(runs, peers, args.repeats, METRICS, EQUIVALENCE)
    headline = summary["ratios_over_trl"].get("unialign", {}).get("iterations_per_s")
    return {
        "settings": {**COMMON, **METHODS[method], "prompts_per_iteration": P,
                     "completions_per_iteration": P * K, "max_new_tokens": spec["max_new_tokens"],
                     "prompt_words": spec["prompt_words"], "prompt_pool": spec["pool"],
                     "generation_batch_size": P * K, "micro_batch_size": P * K,
                     "optimizer_steps_per_iteration": 1, "warmup": warm, "iterations": iters,
                     "precision": "bf16" if cuda else "fp32"},
        "peers": {p: PEERS[p] for p in peers},
        "runs": runs, **summary, "target_iterations_ratio": TARGET_RATIO,
        "target_met": headline is not None and headline >= TARGET_RATIO,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n\n")[0], PEERS, "trl,unialign", None, None)
    ap.add_argument("--methods", default="grpo,rloo", help="comma list of grpo, rloo")
    args = ap.parse_args(argv)
    if args.worker:
        result = run_worker(json.loads(args.worker), run_trl, run_unialign)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    sizes, _ = check_args(ap, args, SIZES, PEERS, cuda)
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        ap.error(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
    out_path = Path(args.out or ROOT / "benchmarks/results/lm_rl_throughput.json")

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    results: dict = {}
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def write(partial: bool) -> None:  # after every method: a crash keeps what was measured
        report = {
            **report_header(cuda, load_start, args.threads),
            "tier": args.tier, "repeats": args.repeats, "wall_s": time.perf_counter() - t0,
            "partial": partial, "sizes": results,
        }  # fmt: skip
        out_path.write_text(json.dumps(report, indent=2))

    for name in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            setup = prepare(Path(tmp), SIZES[name], cuda)
            results[name] = {
                "model": {**SIZES[name]["model"], "vocab": setup["vocab"],
                          "params": setup["params"]},
                "longest_prompt_tokens": setup["longest_prompt_tokens"], "methods": {},
            }  # fmt: skip
            for m in methods:
                results[name]["methods"][m] = compare(name, m, setup, args, cuda)
                write(partial=True)
    write(partial=False)
    print(f"wrote {out_path}")
    for name, r in results.items():
        for m, res in r["methods"].items():
            ratio = res["ratios_over_trl"].get("unialign", {}).get("iterations_per_s")
            print(name, m, "unialign/TRL iterations/s:", ratio, "target met:", res["target_met"])
    ok = all(x.get("ok") for r in results.values() for res in r["methods"].values()
             for x in res["runs"])  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
