"""What the online loop reads and writes besides models: prompts, the judge from its spec, the
checkpoint sidecar (the feedback store's mark), the metrics line, the progress-bar text and the
learning-curve plot."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unialign.config import ConfigError
from unialign.feedback.judges import build_judge
from unialign.feedback.types import text_format
from unialign.lm.data import DataError
from unialign.lm.data.loading import load_records
from unialign.lm.generation import Generations
from unialign.lm.online_judging import FunctionPairJudge, FunctionScoreJudge
from unialign.lm.online_methods import Examples, Judgements
from unialign.runlog import atomic_file

__all__ = [
    "load_prompts",
    "resolve_judge",
    "write_sidecar",
    "read_sidecar",
    "prune_sidecars",
    "plot_learning_curve",
    "iteration_metrics",
    "progress_info",
]


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------
def _line_numbers(path: Path) -> list[int] | None:
    """1-based line of each row of a JSON-lines file (blank lines hold no row); None for JSON."""
    text = path.read_bytes().split(b"\n")
    lines = [i for i, raw in enumerate(text, start=1) if raw.strip()]
    if path.suffix == ".jsonl" or (lines and text[lines[0] - 1].lstrip().startswith(b"{")):
        return lines
    return None


def load_prompts(path: str | Path) -> list[Any]:
    """The prompts of a JSONL or JSON file of rows ``{"prompt": text | message list}``.

    Every problem is a :class:`~unialign.config.ConfigError` naming the file and the line (JSON
    lines) or row (a JSON list): unreadable JSON, a row without ``prompt``, an empty prompt, a
    malformed message list. Other keys of a row are ignored.
    """
    p = Path(path)
    try:
        rows = load_records(p)
    except DataError as e:
        raise ConfigError(f"prompts: {e}") from None
    lines = _line_numbers(p) if p.is_file() else None
    problems, prompts = [], []
    for i, row in enumerate(rows):
        where = f"{p}: line {lines[i]}" if lines and i < len(lines) else f"{p}: row {i} (0-based)"
        prompt = row.get("prompt") if isinstance(row, dict) else None
        try:
            if prompt is None:
                raise ValueError('has no "prompt" field; each row must be {"prompt": ...}')
            fmt = text_format(prompt, "its prompt")
            if fmt == "standard" and not prompt.strip():
                raise ValueError("has an empty prompt")
        except ValueError as e:
            problems.append(f"{where} {e}")
            continue
        prompts.append(prompt)
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ConfigError("prompts: " + "\n  ".join(problems[:10]) + more)
    if not prompts:
        raise ConfigError(f"prompts: {p} holds no prompts")
    return prompts


# ---------------------------------------------------------------------------------------------
# the judge
# ---------------------------------------------------------------------------------------------
def resolve_judge(spec: str | dict | None, task: Any | None, **hooks: Any) -> Any:
    """The judge a spec names: ``task:preference`` (the task's pairwise judge, a PairJudge),
    ``task:gold`` (its gold reward, a ScoreJudge), else
    :func:`unialign.feedback.judges.build_judge` (``hooks``: its run-time hooks for a judge of
    people: ``policy_version``, ``step_fn``, ``stop_fn``)."""
    if spec is None:
        raise ConfigError("judge: required (a judge spec, or pass a judge object to the loop)")
    if spec == "task:preference":
        return FunctionPairJudge(task.judge.probabilities, "style-task-preference")
    if spec == "task:gold":
        return FunctionScoreJudge(task.gold_reward, "style-task-gold")
    return build_judge(spec, source="judge", **hooks)  # JudgeConfigError is a ConfigError


# ---------------------------------------------------------------------------------------------
# checkpoint sidecar
# ---------------------------------------------------------------------------------------------
_SIDECAR = re.compile(r"online-(\d+)\.json")


def _sidecar(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"online-{step:06d}.json"


def write_sidecar(out: str | Path, step: int, data: dict) -> None:
    """Write the loop state :mod:`unialign.lm.checkpoint` does not hold (the store's mark) for
    the checkpoint of ``step``, atomically and *before* that checkpoint (a kill between the two
    leaves a sidecar without a checkpoint, which :func:`prune_sidecars` removes later)."""
    path = _sidecar(Path(out), step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data))


def prune_sidecars(out: str | Path) -> None:
    """Delete sidecars whose ``step-N`` checkpoint directory is gone."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return
    for p in root.iterdir():
        m = _SIDECAR.fullmatch(p.name)
        if m and not (root / f"step-{int(m.group(1)):06d}").is_dir():
            p.unlink(missing_ok=True)


def read_sidecar(out: str | Path, step: int) -> dict:
    """The sidecar of the checkpoint of ``step``; ``ValueError`` when it is missing."""
    path = _sidecar(Path(out), step)
    if not path.is_file():
        raise ValueError(f"{path} is missing: the checkpoint of iteration {step} cannot be resumed")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def iteration_metrics(
    gens: Generations, j: Judgements, ex: Examples, previous: Tensor, reference: Tensor
) -> dict[str, float]:
    """The sampling, judging and example metrics of one iteration (docs/lm-online.md)."""
    m: dict[str, float] = {
        "online/prompts": gens.num_prompts, "online/samples": len(gens),
        "online/examples": len(ex), "online/dropped": ex.dropped,
        "online/completion_tokens": float(gens.completion_lengths.float().mean()),
        "online/truncated": sum(r == "length" for r in gens.stop_reason) / max(1, len(gens)),
    }  # fmt: skip
    if j.scores is not None:
        m["judge/score"] = float(j.scores.mean())
        m["judge/score_std"] = float(j.scores.std()) if j.scores.numel() > 1 else 0.0
    if j.versus is not None:
        v = j.versus[~torch.isnan(j.versus)]
        m["judge/win_rate"] = float(v.mean()) if v.numel() else math.nan
        m["judge/skipped"] = float(torch.isnan(j.versus).float().mean())
    else:
        k = j.shape[1]
        asked = j.preference[:, torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)]
        if asked.numel():
            m["judge/skipped"] = float(torch.isnan(asked).float().mean())
    if len(ex) and ex.paired:
        m["judge/margin"] = float(ex.target.mean())
    elif len(ex) and j.versus is None:  # SPPO: how far the win rates are from a coin flip
        m["judge/win_rate_spread"] = float((ex.target - 0.5).abs().mean())
    for key, t in (("online/logp_previous", previous), ("online/logp_reference", reference)):
        t = t[~torch.isnan(t)]
        if t.numel():
            m[key] = float(t.mean())
    return m


def progress_info(m: dict) -> str:
    """The progress bar's text: the judge's signal, the loss, generation and update tokens/s."""
    if "judge/score" in m:
        head = f"reward {m['judge/score']:+.3f}"
    elif "judge/win_rate" in m:
        head = f"win rate {m['judge/win_rate']:.3f}"
    elif "judge/win_rate_spread" in m:
        head = f"|win rate − ½| {m['judge/win_rate_spread']:.3f}"
    else:
        head = f"margin {m.get('judge/margin', math.nan):.3f}"
    return (f"{head}  loss {m.get('loss/total', math.nan):.4f}  "
            f"gen {m['lm/generation_tokens_per_s']:,.0f} tok/s  "
            f"update {m['lm/update_tokens_per_s']:,.0f} tok/s")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# learning curve
# ---------------------------------------------------------------------------------------------
#: Panels of the plot, in order; a key missing from the metrics is left out.
CURVE_KEYS = (
    ("judge/score", "judge reward (mean over samples)"),
    ("judge/win_rate", "win rate against the mixture"),
    ("judge/margin", "judge margin of training pairs"),
    ("judge/win_rate_spread", "mean |win rate − 1/2| (SPPO)"),
    ("eval/gold_reward", "task gold reward"),
    ("eval/exploitability", "task exploitability"),
    ("loss/total", "loss"),
)


def plot_learning_curve(metrics_path: str | Path, png: str | Path) -> str | None:
    """Plot the run's metrics per iteration into ``png``; returns its path (None without data)."""
    rows = [json.loads(x) for x in Path(metrics_path).read_text().splitlines() if x.strip()]
    panels = []
    for key, title in CURVE_KEYS:
        pts = [(r["step"], r[key]) for r in rows
               if isinstance(r.get(key), int | float) and math.isfinite(r[key])]  # fmt: skip
        if pts:
            panels.append((key, title, pts))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, title, pts) in zip(axes[0], panels):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return str(png)
