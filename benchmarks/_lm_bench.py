"""Machinery shared by the LM throughput benchmarks that race unialign's online loop against a
TRL trainer in one run (``lm_online_throughput.py``: online DPO; ``lm_rl_throughput.py``: GRPO
and RLOO).

What lives here, so that both scripts measure the same way:

- the models (:data:`MODELS`: random weights from a config, one tokenizer trained on the fly
  for the target vocabulary, saved once and loaded with ``from_pretrained`` by every peer) and
  the prompt pool (:func:`prepare`);
- the judge both peers call, a plain Python reward function (:func:`reward_fn`);
- the per-iteration clock (:class:`Marks`): wall and CPU time at the end of every iteration,
  generation and judge seconds, token counts; its :meth:`Marks.summary` turns the iterations
  after the warm-up into rates;
- one fresh subprocess per measured run (:func:`spawn`: separate peak RSS, no state carried
  from one peer to the next), the peers' order reversed every other repeat
  (:func:`interleave`), and the medians, min–max spreads and ratios over the baseline peer,
  of the medians and per repeat (:func:`summarize`);
- the worker's frame (:func:`run_worker`, :func:`mark_unialign_iteration`), the common
  options and their checks (:func:`base_parser`, :func:`check_args`), and the report's
  header: command, date, machine, load averages, package versions (:func:`report_header`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
#: unialign's iterations/s over the peer's that the benchmarks aim for.
TARGET_RATIO = 1.5

#: Model architectures (random weights) and their prompt pools. CPU tier: the tiny Qwen2 of
#: docs/lm-online.md's speed table, and a 4-layer one where the matrix work weighs more than
#: the per-token Python overhead. GPU tier (CUDA only): SmolLM2-135M's architecture and the
#: anchors' 0.39 B Qwen2.
MODELS = {
    "tiny": dict(
        model=dict(arch="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab=512, tie=False),
        prompt_words=(5, 20), pool=64,
    ),
    "small": dict(
        model=dict(arch="qwen2", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, vocab=2048, tie=False),
        prompt_words=(10, 40), pool=64,
    ),
    "smollm2_135m": dict(
        model=dict(arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, vocab=49152, tie=True),
        prompt_words=(30, 150), pool=256,
    ),
    "qwen2_0.39b": dict(
        model=dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2, vocab=32000, tie=True),
        prompt_words=(30, 150), pool=256,
    ),
}  # fmt: skip
TIERS = {"cpu": ["tiny", "small"], "gpu": ["smollm2_135m", "qwen2_0.39b"]}


# ------------------------------------------------------------------------------------------
# the judge: one Python reward function for both peers
# ------------------------------------------------------------------------------------------
def reward_fn(prompts, completions, **kwargs) -> list[float]:
    """Share of vowels among the completion's letters plus a small length term (a cheap,
    deterministic stand-in for a reward model). TRL calls it with keywords and extra
    arguments, unialign's ``FunctionScoreJudge`` with ``(prompts, completions)``."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        letters = [ch for ch in text if ch.isalpha()]
        vowels = sum(ch in "aeiou" for ch in letters)
        out.append(vowels / max(len(letters), 1) + 1e-3 * len(text))
    return out


# ------------------------------------------------------------------------------------------
# setup: tokenizer, model, prompts
# ------------------------------------------------------------------------------------------
def _words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(n)]


def prepare(work: Path, spec: dict, cuda: bool) -> dict:
    """Tokenizer + random model saved to ``work/model``, prompts to ``work/prompts.jsonl``
    (``spec``: an entry of :data:`MODELS`)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    rng = random.Random(0)
    m = spec["model"]
    big = m["vocab"] > 4096
    # enough distinct pseudo-words for the BPE to reach the target vocabulary
    words = _words(rng, max(2000, 2 * m["vocab"]) if big else 2000)

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        (text(200) for _ in range(max(3000, m["vocab"] // 5) if big else 300)),
        trainers.BpeTrainer(vocab_size=m["vocab"], special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")  # fmt: skip
    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[m["arch"]]
    cfg = config_cls(
        vocab_size=len(fast), hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"], num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"], max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=m["tie"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if cuda else torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(work / "model")
    fast.save_pretrained(work / "model")
    prompts = [text(rng.randint(*spec["prompt_words"])) for _ in range(spec["pool"])]
    (work / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    longest = max(len(fast(p)["input_ids"]) for p in prompts)
    return {"model_dir": str(work / "model"), "prompts": str(work / "prompts.jsonl"),
            "params": n_params, "vocab": len(fast), "longest_prompt_tokens": longest}  # fmt: skip


# ------------------------------------------------------------------------------------------
# the clock of one peer (runs in a worker process)
# ------------------------------------------------------------------------------------------
def sync() -> None:
    """Wait for queued CUDA work (a no-op on CPU), so stamps include it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Marks:
    """Per-iteration stamps: wall and CPU time at the end of each iteration, and what it did.

    A peer adds its generation and judge seconds and token counts to ``pending`` during the
    iteration and calls :meth:`end_iteration` with the iteration's counts (``counts`` names
    them: e.g. pairs and prompts) once its optimizer step is done."""

    def __init__(self, counts: tuple[str, ...] = ("pairs", "prompts")) -> None:
        self.counts = counts
        self.iters: list[dict] = []
        self.pending: dict = self._fresh()

    @staticmethod
    def _fresh() -> dict:
        return {"gen_s": 0.0, "judge_s": 0.0, "gen_tokens": 0, "update_tokens": 0}

    def end_iteration(self, **extra) -> None:
        sync()
        self.iters.append({**self.pending, **extra, "t": time.perf_counter(),
                           "cpu": time.process_time()})  # fmt: skip
        self.pending = self._fresh()

    def summary(self, warm: int) -> dict:
        """Totals over the iterations after the warm-up (stamp ``warm - 1`` is the start)."""
        start, timed = self.iters[warm - 1], self.iters[warm:]
        n = len(timed)
        wall = timed[-1]["t"] - start["t"]
        gen_s = sum(x["gen_s"] for x in timed)
        judge_s = sum(x["judge_s"] for x in timed)
        gen_tok = sum(x["gen_tokens"] for x in timed)
        upd_tok = sum(x["update_tokens"] for x in timed)
        out = {
            "iterations": n, "wall_s": wall, "iterations_per_s": n / wall,
            "generated_tokens_per_s": gen_tok / gen_s,
            "update_tokens_per_s": upd_tok / (wall - gen_s - judge_s),
            "cpu_s_per_iteration": (timed[-1]["cpu"] - start["cpu"]) / n,
            "share_generation": gen_s / wall, "share_judge": judge_s / wall,
            "share_update": (wall - gen_s - judge_s) / wall,
            "generated_tokens_per_iteration": gen_tok / n,
            "update_tokens_per_iteration": upd_tok / n,
        }  # fmt: skip
        for k in self.counts:
            out[f"{k}_per_iteration"] = sum(x[k] for x in timed) / n
        return out


def mark_unialign_iteration(marks: Marks, rec: Any, **counts: int) -> None:
    """Stamp the end of one iteration of unialign's loop from its ``IterationRecord``: phase
    seconds from its metrics, generated tokens, and the non-pad prompt + completion tokens of
    the samples its examples use (``counts``: the peer's own counters)."""
    g, m = rec.generations, rec.metrics
    used = rec.examples.samples()
    marks.pending.update(
        gen_s=m["time/generation_s"], judge_s=m["time/judge_s"], gen_tokens=g.completion_tokens,
        update_tokens=sum(len(g.prompt_ids[i]) + len(g.completion_ids[i]) for i in used),
    )  # fmt: skip
    marks.end_iteration(**counts, step=int(m["lm/optimizer_steps"]))


def run_worker(job: dict, trl: Callable[[dict], dict], unialign: Callable[[dict], dict]) -> dict:
    """One measured run in this (fresh) process: ``trl(job)`` for the peer ``trl``, else
    ``unialign(job)``, on ``job["threads"]`` torch threads; then the process's peak RSS (and
    peak GPU memory on CUDA)."""
    import resource

    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    res = trl(job) if job["peer"] == "trl" else unialign(job)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        res["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    res["ok"] = True
    return res


# ------------------------------------------------------------------------------------------
# runs: one subprocess each, peers interleaved
# ------------------------------------------------------------------------------------------
def spawn(script: str | Path, job: dict, timeout: int) -> dict:
    """Run ``script --worker JOB`` in a fresh process; its last ``RESULT`` line is the JSON
    result, to which the machine's 1-minute load before and after is added."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]),
           "MKL_NUM_THREADS": str(job["threads"])}  # fmt: skip
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        job = {**job, "work": work}
        cmd = [sys.executable, str(script), "--worker", json.dumps(job)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"ok": False, "error": (p.stderr or p.stdout)[-3000:]}
    res = json.loads(lines[-1][len("RESULT ") :])
    res["loadavg_1m_before"], res["loadavg_1m_after"] = load_before[0], os.getloadavg()[0]
    return res


def interleave(
    peers: list[str], repeats: int, run: Callable[[str], dict], label: dict[str, Any]
) -> list[dict]:
    """``repeats`` runs of every peer, in the listed order in odd repeats and reversed in even
    ones (A B, B A, ...), so that all see the same machine state on average. ``run(peer)``
    returns one run's result; ``label`` is copied into every record. Prints a line per run."""
    runs = []
    for r in range(repeats):
        for peer in peers if r % 2 == 0 else peers[::-1]:
            res = run(peer)
            runs.append({**label, "repeat": r + 1, "peer": peer, **res})
            brief = {k: runs[-1].get(k) for k in (*label, "repeat", "peer", "ok",
                                                  "iterations_per_s", "error")}  # fmt: skip
            print(json.dumps(brief), flush=True)
    return runs


def _stats(values: list[float]) -> dict:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else None, "n": len(values)}  # fmt: skip


def summarize(
    runs: list[dict],
    peers: list[str],
    repeats: int,
    metrics: tuple[str, ...],
    equivalence_keys: tuple[str, ...],
    baseline: str = "trl",
) -> dict:
    """Medians (with min, max, spread) per peer and metric over its successful runs; the
    ratios peer / ``baseline`` of the medians and, for iterations/s, per repeat; the means of
    ``equivalence_keys`` per peer (evidence of equal work) and the optimizer steps seen."""
    ok = {p: [x for x in runs if x["peer"] == p and x.get("ok")] for p in peers}
    medians = {p: {m: _stats([x[m] for x in rs]) for m in metrics} for p, rs in ok.items() if rs}
    by = {(x["repeat"], x["peer"]): x for x in runs if x.get("ok")}
    ratios, paired = {}, {}
    for peer in peers:
        if peer == baseline or peer not in medians or baseline not in medians:
            continue
        ratios[peer] = {m: medians[peer][m]["median"] / medians[baseline][m]["median"]
                        for m in metrics}  # fmt: skip
        per_repeat = [by[(r, peer)]["iterations_per_s"] / by[(r, baseline)]["iterations_per_s"]
                      for r in range(1, repeats + 1)
                      if (r, peer) in by and (r, baseline) in by]  # fmt: skip
        paired[peer] = {"iterations_per_s_per_repeat": per_repeat, **_stats(per_repeat)}
    equivalence = {}
    for peer, rs in ok.items():
        if rs:
            equivalence[peer] = {k: statistics.mean(x[k] for x in rs) for k in equivalence_keys}
            equivalence[peer]["optimizer_steps"] = sorted({x["optimizer_steps"] for x in rs})
    return {"medians": medians, "ratios_over_trl": ratios, "paired_ratios_over_trl": paired,
            "equivalence": equivalence}  # fmt: skip


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------
def base_parser(description: str, peers: dict[str, str], default_peers: str,
                iterations: int | None, warmup: int | None) -> argparse.ArgumentParser:  # fmt: skip
    """The options both benchmarks take (``iterations`` / ``warmup`` None: the size's)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--tier", choices=sorted(TIERS), default="cpu")
    ap.add_argument("--sizes", default=None, help="comma list of sizes (default: the tier's)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per peer, alternating order")
    ap.add_argument("--iterations", type=int, default=iterations,
                    help="timed iterations per run" + (" (default: the size's)"
                                                       if iterations is None else ""))  # fmt: skip
    ap.add_argument("--warmup", type=int, default=warmup,
                    help="untimed iterations first, >= 1" + (" (default: the size's)"
                                                             if warmup is None else ""))  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch threads per peer (CPU)")
    ap.add_argument("--peers", default=default_peers,
                    help=f"comma list of {', '.join(peers)} (trl is the baseline)")  # fmt: skip
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    ap.add_argument("--out", default=None, help="output JSON path")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace, sizes: dict,
               peers: dict, cuda: bool) -> tuple[list[str], list[str]]:  # fmt: skip
    """Validate the common options (``ap.error`` names the flag); the sizes and peers to run."""
    if any(v is not None and v < 1 for v in (args.warmup, args.iterations)) or args.repeats < 1:
        ap.error("--warmup, --iterations and --repeats must be >= 1")
    if args.tier == "gpu" and not cuda:
        ap.error("the gpu tier needs CUDA (none here); the CPU tier is --tier cpu")
    chosen = (args.sizes or ",".join(TIERS[args.tier])).split(",")
    if unknown := [s for s in chosen if s not in sizes]:
        ap.error(f"--sizes: unknown {unknown}; valid: {', '.join(sizes)}")
    runs = args.peers.split(",")
    if "trl" not in runs or set(runs) - set(peers):
        ap.error(f"--peers: a comma list of {', '.join(peers)} that includes trl")
    return chosen, runs


# ------------------------------------------------------------------------------------------
# the report's header
# ------------------------------------------------------------------------------------------
def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "accelerate", "datasets", "unialign"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _machine(cuda: bool) -> dict:
    import torch

    out = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
           "cpu": platform.processor() or platform.machine()}  # fmt: skip
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    return out


def report_header(cuda: bool, load_start: tuple[float, ...], threads: int) -> dict:
    """Command line, date, machine, load averages (at the start and now), versions."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": _machine(cuda),
        "load": {"loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                 "threads_per_peer": threads,
                 "note": "load averages of the whole machine (shared with other jobs); each run "
                         "also records the 1-minute load before and after it"},
        "versions": _versions(),
    }  # fmt: skip
