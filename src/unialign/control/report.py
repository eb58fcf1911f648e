"""Progress display and learning-curve plots for control runs."""

from __future__ import annotations

import json
from pathlib import Path

from unialign.runlog import progress_bar


class ProgressReporter:
    """A rich progress bar over environment steps showing return and queries used."""

    def __init__(self, total: int, *, enabled: bool = True, title: str = "training") -> None:
        self.enabled = enabled
        self.total = total
        self.title = title
        self.progress = None
        self.task = None

    def start(self, completed: int = 0) -> None:
        if not self.enabled:
            return
        self.progress = progress_bar(
            self.title, fields="return {task.fields[ret]}  queries {task.fields[queries]}"
        )
        self.progress.start()
        self.task = self.progress.add_task(
            self.title, total=self.total, completed=completed, ret="-", queries=0
        )

    def update(self, step: int, true_return: float | None, queries: int) -> None:
        if self.progress is None:
            return
        ret = "-" if true_return is None else f"{true_return:.1f}"
        self.progress.update(self.task, completed=step, ret=ret, queries=queries)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a ``metrics.jsonl`` file."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_learning_curve(
    metrics_path: str | Path,
    out_path: str | Path,
    *,
    title: str,
    reference: str | Path | None = None,
    reference_label: str = "oracle (SAC on the true reward)",
) -> None:
    """True evaluation return against environment steps, queries used on a second axis.

    ``reference`` is another run's ``metrics.jsonl`` (e.g. the oracle's) drawn for comparison.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    evals = [r for r in rows if "eval/true_return" in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(
        [r["step"] for r in evals],
        [r["eval/true_return"] for r in evals],
        marker="o",
        label="aligned policy",
    )
    if reference is not None:
        ref = [r for r in read_metrics(reference) if "eval/true_return" in r]
        ax.plot(
            [r["step"] for r in ref],
            [r["eval/true_return"] for r in ref],
            color="grey",
            linestyle="--",
            marker=".",
            label=reference_label,
        )
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (true reward)")
    ax.set_title(title)
    if any(r.get("feedback/queries", 0) for r in rows):
        ax2 = ax.twinx()
        ax2.step(
            [r["step"] for r in rows],
            [r.get("feedback/queries", 0) for r in rows],
            where="post",
            color="tab:orange",
            alpha=0.6,
        )
        ax2.set_ylabel("queries used", color="tab:orange")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
