"""LM preference-training throughput: TRL's DPOTrainer and unialign, same run, same device.

Model, data and lengths are the anchors' (``shared/anchors.md``): a random-weight Qwen2
(hidden 896, 24 layers, 14/2 heads, intermediate 4864, vocab 32 000), a BPE tokenizer trained
on the fly, synthetic pairs with prompts of 30–250 words and completions of 40–300 words,
``max_length`` 1024, bf16, sigmoid (DPO) loss.

Metrics per configuration (after ``--warmup`` untimed steps, ``--steps`` timed):

- ``tokens_per_s``: non-pad tokens of the chosen + rejected sequences per wall second;
- ``peak_gib``: peak allocated GPU memory; ``mfu``: tokens/s × 8N / (PEAK_TFLOPS × 1e12),
  8N = policy forward+backward (6N) + reference forward (2N) flops per token, the anchors'
  convention (with precomputed reference log-probs the 2N is paid once, before training:
  ``reference_setup_s`` is the wall time of the 1-step run that fills that cache: model
  load, the reference pass, one step and the saves, so an upper bound on the pass);
- ``step1_loss``: the logged loss of the first step (ln 2 for both: policy = reference).

TRL runs: default (batch 8), batch 32, gradient checkpointing (batch 16), padding_free
(batch 8); the best is the baseline. unialign runs: batch 8 and the batch sizes of
``--unialign-batches`` (packed rows of ``--row-tokens``). ``--search`` additionally finds the
largest unialign batch (at max_length 1024) and the longest sequence (batch 1) that fit.
Each configuration runs in its own process (isolates CUDA OOMs and accelerate's global
state). Writes JSON with the command, device, versions, every run and the ratios.

    python benchmarks/lm_throughput.py                 # GPU: writes benchmarks/results/lm_throughput.json
    python benchmarks/lm_throughput.py --search        # + largest batch / sequence that fits
    python benchmarks/lm_throughput.py --tiny          # CPU smoke run (< 2 min), writes under runs/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = float(os.environ.get("PEAK_TFLOPS", "790"))

ANCHOR = dict(
    model=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, vocab=32000, tie=True),
    prompt_words=(30, 250), completion_words=(40, 300), max_length=1024, pairs=2000,
)  # fmt: skip
TINY = dict(
    model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab=512, tie=False),
    prompt_words=(5, 20), completion_words=(5, 30), max_length=256, pairs=48,
)  # fmt: skip


# ------------------------------------------------------------------------------------------
# setup: tokenizer, model, data (the anchor script's recipe)
# ------------------------------------------------------------------------------------------
def _words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(n)]


def prepare(work: Path, spec: dict, cuda: bool) -> dict:
    """Tokenizer + random model saved to ``work/model``, pairs to ``work/data.jsonl``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    rng = random.Random(0)
    m = spec["model"]
    words = _words(rng, 20000 if m["vocab"] > 1000 else 2000)

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        (text(200) for _ in range(3000 if m["vocab"] > 1000 else 300)),
        trainers.BpeTrainer(vocab_size=m["vocab"], special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")  # fmt: skip
    cfg = Qwen2Config(
        vocab_size=len(fast), hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"], num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"], max_position_embeddings=32768,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=m["tie"],
    )  # fmt: skip
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(work / "model")
    fast.save_pretrained(work / "model")
    rows = [
        {"prompt": text(rng.randint(*spec["prompt_words"])),
         "chosen": " " + text(rng.randint(*spec["completion_words"])),
         "rejected": " " + text(rng.randint(*spec["completion_words"]))}
        for _ in range(spec["pairs"])
    ]  # fmt: skip
    (work / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return {"model_dir": str(work / "model"), "data": str(work / "data.jsonl"), "params": n_params}


# ------------------------------------------------------------------------------------------
# one configuration (runs in a worker process)
# ------------------------------------------------------------------------------------------
def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float | None:
    import torch

    return (
        round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    )


def run_trl(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    cuda = torch.cuda.is_available()
    warm, steps, bs = job["warmup"], job["steps"], job["batch_size"]
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        job["model_dir"], dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation=job.get("attn", "sdpa"),
    )  # fmt: skip
    rows = [json.loads(x) for x in Path(job["data"]).read_text().splitlines()]
    clock: dict = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warm:
                _sync()
                clock["t0"] = time.perf_counter()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()

    args = DPOConfig(
        output_dir=job["work"] + "/trl_out", per_device_train_batch_size=bs,
        max_steps=warm + steps, logging_steps=1, report_to=[], save_strategy="no", bf16=cuda,
        use_cpu=not cuda, learning_rate=1e-6, max_length=job["max_length"],
        dataloader_num_workers=2 if cuda else 0, **job.get("trl_args", {}),
    )  # fmt: skip
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, callbacks=[Clock()])  # fmt: skip
    trainer.train()
    _sync()
    dt = time.perf_counter() - clock["t0"]
    ds = trainer.train_dataset
    sample = ds.select(range(min(len(ds), 512)))
    L = job["max_length"]
    per_pair = [min(len(r["prompt_ids"]) + len(r["chosen_ids"]), L)
                + min(len(r["prompt_ids"]) + len(r["rejected_ids"]), L) for r in sample]  # fmt: skip
    tokens = sum(per_pair) / len(per_pair) * bs * steps
    loss1 = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return {"tokens_per_s": tokens / dt, "sec": dt, "peak_gib": _peak_gib(), "step1_loss": loss1,
            "mean_tokens_per_pair": sum(per_pair) / len(per_pair)}  # fmt: skip


def run_unialign(job: dict) -> dict:
    import torch

    from unialign.lm.config import LMTrainConfig
    from unialign.lm.train import train_lm

    cuda = torch.cuda.is_available()
    warm, steps = job["warmup"], job["steps"]
    fields = dict(
        model=job["model_dir"], train_data=job["data"], loss="sigmoid", lr=1e-6,
        batch_size=job["batch_size"], max_length=job["max_length"],
        max_tokens_per_row=job.get("row_tokens") or max(job["max_length"], 4096 if cuda else 1024),
        ref_cache_dir=job["work"] + "/ref_cache", save_every=0, log_every=1,
        gradient_checkpointing=job.get("gradient_checkpointing", False),
    )  # fmt: skip
    # pass 1: fill the reference cache (one packed no-grad pass over the data), timed apart
    t0 = time.perf_counter()
    train_lm(LMTrainConfig(**fields, max_steps=1, output_dir=job["work"] + "/u_ref"))
    ref_s = time.perf_counter() - t0
    marks: dict = {}

    def on_step(step: int, metrics: dict) -> None:
        if step == warm:
            _sync()
            marks["t0"] = time.perf_counter()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        elif step > warm:
            marks["tokens"] = marks.get("tokens", 0.0) + metrics["lm/tokens"]
        if step == 1:
            marks["loss1"] = metrics["loss/total"]

    train_lm(LMTrainConfig(**fields, max_steps=warm + steps, output_dir=job["work"] + "/u_run"),
             on_step=on_step)  # fmt: skip
    _sync()
    dt = time.perf_counter() - marks["t0"]
    return {"tokens_per_s": marks["tokens"] / dt, "sec": dt, "peak_gib": _peak_gib(),
            "step1_loss": marks["loss1"], "reference_setup_s": ref_s,
            "mean_tokens_per_pair": marks["tokens"] / (steps * job["batch_size"])}  # fmt: skip


def worker(job: dict) -> dict:
    import torch

    try:
        res = run_trl(job) if job["tool"] == "trl" else run_unialign(job)
        res["ok"] = True
    except torch.cuda.OutOfMemoryError as e:
        res = {"ok": False, "error": "out of memory: " + str(e)[:200]}
    return res


def _spawn(job: dict, timeout: int) -> dict:
    """Run one configuration in a fresh process; its last stdout line is the JSON result."""
    with tempfile.TemporaryDirectory() as work:
        job = {**job, "work": work}
        cmd = [sys.executable, __file__, "--worker", json.dumps(job)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"ok": False, "error": (p.stderr or p.stdout)[-1500:]}
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------------------------------
# the comparison
# ------------------------------------------------------------------------------------------
def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "accelerate", "peft", "unialign"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU, end to end (< 2 min)")
    ap.add_argument(
        "--search", action="store_true", help="largest unialign batch/sequence that fits"
    )
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; tiny 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; tiny 1)")
    ap.add_argument(
        "--trl", default=None, help="comma list of TRL configs (default, bs32, gc, padding_free)"
    )
    ap.add_argument("--unialign-batches", default=None, help="comma list of unialign batch sizes")
    ap.add_argument("--row-tokens", type=int, default=None, help="unialign packing budget per row")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    ap.add_argument("--out", default=None, help="output JSON path")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        ap.error("the full benchmark needs a CUDA GPU; use --tiny for the CPU smoke run")
    spec = TINY if args.tiny else ANCHOR
    steps = args.steps or (3 if args.tiny else 20)
    warm = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    trl_names = (args.trl or ("default" if args.tiny else "default,bs32,gc,padding_free")).split(
        ","
    )
    ubatches = [
        int(b) for b in (args.unialign_batches or ("8" if args.tiny else "8,32,64")).split(",")
    ]
    out_path = Path(args.out or (ROOT / ("runs/bench/lm_throughput_tiny.json" if args.tiny
                                         else "benchmarks/results/lm_throughput.json")))  # fmt: skip
    trl_cfgs = {"default": (8, {}), "bs32": (32, {}),
                "gc": (16, {"gradient_checkpointing": True}),
                "padding_free": (8, {"padding_free": True})}  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        setup = prepare(Path(tmp), spec, cuda)
        n = setup["params"]
        base = dict(model_dir=setup["model_dir"], data=setup["data"], steps=steps, warmup=warm,
                    max_length=spec["max_length"], row_tokens=args.row_tokens)  # fmt: skip
        runs = []
        for name in trl_names:
            bs, trl_args = trl_cfgs[name]
            bs = min(bs, 8) if args.tiny else bs
            res = _spawn(
                {**base, "tool": "trl", "batch_size": bs, "trl_args": trl_args}, args.timeout
            )
            runs.append({"name": f"trl_{name}", "tool": "trl", "batch_size": bs, **res})
            print(json.dumps(runs[-1]), flush=True)
        for bs in ubatches:
            res = _spawn({**base, "tool": "unialign", "batch_size": bs}, args.timeout)
            name = "unialign" if bs == ubatches[0] else f"unialign_bs{bs}"
            runs.append({"name": name, "tool": "unialign", "batch_size": bs, **res})
            print(json.dumps(runs[-1]), flush=True)
        search = _search(base, args.timeout) if args.search else None

    for r in runs:
        if r.get("ok"):
            r["mfu"] = r["tokens_per_s"] * 8 * n / (PEAK_TFLOPS * 1e12)
    best = {}
    for tool in ("trl", "unialign"):
        ok = [r for r in runs if r["tool"] == tool and r.get("ok")]
        if ok:
            best[tool] = max(ok, key=lambda r: r["tokens_per_s"])["name"]
    by_name = {r["name"]: r for r in runs}
    ratios = {}
    if len(best) == 2:
        u, t = by_name[best["unialign"]], by_name[best["trl"]]
        ratios["best_tokens_per_s"] = u["tokens_per_s"] / t["tokens_per_s"]
        if u.get("peak_gib") and t.get("peak_gib"):
            ratios["peak_gib_of_best"] = u["peak_gib"] / t["peak_gib"]
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
        "peak_tflops": PEAK_TFLOPS,
        "versions": _versions(),
        "model": {**spec["model"], "params": n},
        "data": {k: spec[k] for k in ("prompt_words", "completion_words", "max_length", "pairs")},
        "steps": steps, "warmup": warm, "runs": runs, "best": best, "ratios": ratios,
        "search": search,
    }  # fmt: skip
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(f"wrote {out_path}")
    return 0 if all(r.get("ok") for r in runs) else 1


def _search(base: dict, timeout: int) -> dict:
    """Largest unialign batch at max_length 1024 (doubling from 64), then the longest
    max_length at batch 1 (doubling from 2048, with completions long enough to fill it)."""
    found: dict = {"batch": None, "max_length": None, "tried": []}
    bs = 64
    while bs <= 4096:
        r = _spawn({**base, "tool": "unialign", "batch_size": bs, "steps": 2, "warmup": 1}, timeout)
        found["tried"].append({"batch_size": bs, **r})
        if not r.get("ok"):
            break
        found["batch"], bs = bs, bs * 2
    length = 2048
    while length <= 131072:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "long.jsonl"
            words = length // 3  # ~1.3 tokens per pseudo-word: the completion fills the budget
            rng = random.Random(1)
            pool = _words(rng, 2000)
            rows = [{"prompt": " ".join(rng.choice(pool) for _ in range(64)),
                     "chosen": " " + " ".join(rng.choice(pool) for _ in range(words)),
                     "rejected": " " + " ".join(rng.choice(pool) for _ in range(words))}
                    for _ in range(8)]  # fmt: skip
            data.write_text("\n".join(json.dumps(x) for x in rows))
            job = {**base, "tool": "unialign", "data": str(data), "batch_size": 1, "steps": 2,
                   "warmup": 1, "max_length": length, "row_tokens": length}  # fmt: skip
            r = _spawn(job, timeout)
        found["tried"].append({"max_length": length, **r})
        if not r.get("ok"):
            break
        found["max_length"], length = length, length * 2
    return found


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
