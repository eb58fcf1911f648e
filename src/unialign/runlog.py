"""What every training loop writes while it runs: a resumable metrics log and a progress bar.

``metrics.jsonl`` holds one JSON object per logged step (``{"step": N, "name": value, ...}``)
with the project's namespaced metric names; TensorBoard gets the same scalars when it imports.
A checkpoint stores the log's byte offset, and a resumed run truncates the file there, so the
lines of a resumed run equal those of an uninterrupted one (a line cut short by ``kill -9`` lies
past the offset and goes too). Whole files a run rewrites (its config, its summary) go through
:func:`atomic_file`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class MetricsLog:
    """Append-only ``metrics.jsonl`` (+ TensorBoard), truncated to ``offset`` on open.

    Args:
        path: the JSONL file.
        offset: byte offset saved with the checkpoint being resumed; ``None`` starts empty.
        enabled: False on non-main processes (nothing is written).
        tensorboard_dir: where TensorBoard event files go (skipped if tensorboard is missing).
        start_step: TensorBoard's purge step on resume.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        offset: int | None = None,
        enabled: bool = True,
        tensorboard_dir: str | Path | None = None,
        start_step: int = 0,
    ) -> None:
        self.path, self.enabled, self.tb = Path(path), enabled, None
        if not enabled:
            return
        with open(self.path, "a+b") as f:  # drop lines written after the checkpoint
            f.truncate(offset or 0)
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(tensorboard_dir), purge_step=start_step)
            except ImportError:
                pass

    def write(self, step: int, values: dict) -> None:
        """Append ``{"step": step, **values}`` (and the scalars to TensorBoard)."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def offset(self) -> int:
        """The byte offset to store in a checkpoint."""
        return self.path.stat().st_size if self.enabled and self.path.exists() else 0

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto ``path`` when the block ends without an
    error: a reader, or a run resumed after ``kill -9``, sees the old file or the new one, never
    a part of one. Use::

        with atomic_file(out / "summary.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def progress_bar(title: str, *, enabled: bool = True, fields: str = "") -> Progress:
    """A rich progress bar: title, bar, n/total, elapsed, remaining, then ``fields`` (a format
    string over the task's fields, e.g. ``"loss {task.fields[loss]}"``)."""
    columns = [
        TextColumn(f"[bold]{title}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if fields:
        columns.append(TextColumn(fields))
    return Progress(*columns, disable=not enabled)
