"""People as a pair judge: post comparisons to the feedback store, wait for their labels.

:meth:`HumanJudge.compare` posts the pairs as completion queries (``selection="human"``) to
the SQLite feedback store that annotators label through (a labelling app or scripts calling
``FeedbackStore.add_labels(..., labeler="human:<name>")``), then polls the store until every
posted query has a label from a ``human:*`` labeller (only the named ``annotators``, when
given), showing ``waiting for labels: 3/8``, or until ``timeout_s`` passes.

What the loop gets, per pair: the mean of the human labels of its query (1: a better, 0: b
better, ½: tie; two annotators who disagree give ½), or **NaN** where every annotator skipped
the pair or, at the timeout, nobody has labelled it yet. A timeout never raises: the missing
pairs come back as NaN (skips the loop drops), the console says how many, and
:attr:`HumanJudge.last_wait` records it. Their queries stay in the store, open for labelling.

Posting is idempotent, so a run stopped while waiting resumes without duplicates: before
posting, the judge looks for queries it (any ``HumanJudge``) posted earlier with the same
prompt, the same two completions in the same order and the same policy version, and reuses
them — the oldest one that already has a label from an accepted annotator if any, else the
oldest. Labels given while the run was down therefore count at once. Identical pairs within
one call share one query (an annotator labels a pair once). Pass a ``policy_version`` that
changes per iteration, so that a later iteration's identical pair is asked again.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from unialign.feedback.judges import JudgeConfigError
from unialign.feedback.store import BUSY_TIMEOUT_S, FeedbackStore
from unialign.feedback.types import Text, text_format

__all__ = ["HUMAN_SELECTION", "HumanJudge", "HumanWait"]

#: The ``selection`` of queries a :class:`HumanJudge` posts (and the ones it may reuse).
HUMAN_SELECTION = "human"
_CHUNK = 500


@dataclass(frozen=True)
class HumanWait:
    """How the last :meth:`HumanJudge.compare` went.

    Attributes:
        query_ids: the store's query id of each pair (identical pairs share one).
        posted: new queries posted by this call.
        reused: queries found in the store and reused (resume, or a repeated pair).
        labelled: queries with at least one non-skip label from an accepted annotator.
        skipped: queries that every accepted annotator who answered skipped (→ NaN).
        missing: queries without any accepted label when the wait ended (→ NaN).
        waited_s: seconds spent waiting.
        timed_out: the wait ended at ``timeout_s`` with labels missing.
        stopped: the wait ended because ``stop_fn`` returned True.
    """

    query_ids: list[int]
    posted: int
    reused: int
    labelled: int
    skipped: int
    missing: int
    waited_s: float
    timed_out: bool
    stopped: bool


def _key(prompt: Text, completion_a: Text, completion_b: Text) -> str:
    return json.dumps([prompt, completion_a, completion_b], sort_keys=True, ensure_ascii=False)


def _decode(fmt: str, value: str) -> Text:
    return value if fmt == "standard" else json.loads(value)


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


class _Display:
    """The visible count: a status line on a terminal, a printed line per change elsewhere."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status = None
        self.last: tuple[int, int] | None = None

    def update(self, done: int, total: int) -> None:
        if (done, total) == self.last:
            return
        self.last = (done, total)
        text = f"waiting for labels: {done}/{total}"
        if not self.console.is_terminal:
            self.console.print(text)
        elif self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()


class HumanJudge:
    """A :class:`PairJudge` whose labels come from people, through the feedback store.

    Args:
        store_path: the feedback store file (created when missing).
        timeout_s: the longest wait per :meth:`compare` (0: post, collect what is already
            there, return; ``math.inf``: wait until everything is labelled).
        poll_s: seconds between two reads of the store.
        annotators: accept labels only from these (``"ada"`` or ``"human:ada"``); None: from
            any ``human:*`` labeller.
        policy_version: the policy that generated the pairs, stored with each query and part
            of the identity of a query for reuse; a value, or a callable returning it per call.
        step_fn: returns the training step/iteration stored with the queries (default: the
            number of earlier :meth:`compare` calls of this judge).
        stop_fn: polled while waiting; when it returns True the wait ends early like a timeout
            (e.g. ``lambda: stop.requested`` of :class:`unialign.interrupt.StopOnSignal`).
        console: where the count is shown (default: standard error).
    """

    def __init__(
        self,
        store_path: str | Path,
        *,
        timeout_s: float,
        poll_s: float = 2.0,
        annotators: Sequence[str] | None = None,
        policy_version: str | int | Callable[[], str | int | None] | None = None,
        step_fn: Callable[[], int] | None = None,
        stop_fn: Callable[[], bool] | None = None,
        console: Console | None = None,
    ) -> None:
        if not (isinstance(timeout_s, int | float) and timeout_s >= 0):
            raise JudgeConfigError(
                f"human judge timeout_s must be >= 0 seconds (math.inf: no limit), got "
                f"{timeout_s!r}"
            )
        if not (isinstance(poll_s, int | float) and 0 < poll_s < math.inf):
            raise JudgeConfigError(f"human judge poll_s must be > 0 seconds, got {poll_s!r}")
        self.store_path = Path(store_path)
        if self.store_path.is_dir():
            raise JudgeConfigError(
                f"human judge store {str(store_path)!r} is a directory; give the feedback "
                "store's file path"
            )
        self.timeout_s = float(timeout_s)
        self.poll_s = float(poll_s)
        self.annotators = None if annotators is None else [_labeler(a) for a in annotators]
        if self.annotators is not None and not self.annotators:
            raise JudgeConfigError("human judge annotators is empty; give names or None (anyone)")
        self.policy_version = policy_version
        self.step_fn = step_fn
        self.stop_fn = stop_fn
        self.console = console or Console(stderr=True)
        self.calls = 0
        self.last_wait: HumanWait | None = None

    @property
    def name(self) -> str:
        """``human:*`` (anyone) or ``human:ada+bob`` (the accepted annotators)."""
        if self.annotators is None:
            return "human:*"
        return "human:" + "+".join(a.removeprefix("human:") for a in self.annotators)

    def compare(
        self,
        prompts: Sequence[Text],
        completions_a: Sequence[Text],
        completions_b: Sequence[Text],
    ) -> list[float]:
        """Post (or reuse) one query per distinct pair, wait, return P(a ≻ b) or NaN per pair."""
        n = len(prompts)
        if not (len(completions_a) == len(completions_b) == n):
            raise ValueError(
                f"{n} prompts, {len(completions_a)} completions_a and {len(completions_b)} "
                "completions_b: one pair per prompt"
            )
        step = self.step_fn() if self.step_fn is not None else self.calls
        self.calls += 1
        if n == 0:
            return []
        version = self.policy_version() if callable(self.policy_version) else self.policy_version
        version = None if version is None else str(version)
        for i in range(n):
            fmt = text_format(prompts[i], f"prompts[{i}]")
            for what, c in (("completions_a", completions_a), ("completions_b", completions_b)):
                if text_format(c[i], f"{what}[{i}]") != fmt:
                    raise ValueError(f"pair {i}: the prompt is {fmt} but {what}[{i}] is not")

        with FeedbackStore(self.store_path) as store, self._reader() as conn:
            keys = [_key(*t) for t in zip(prompts, completions_a, completions_b)]
            first = {}  # key → first position in this call
            for i, k in enumerate(keys):
                first.setdefault(k, i)
            reuse = self._existing(conn, set(first), version)
            new = [i for k, i in first.items() if k not in reuse]
            posted = store.add_completion_queries(
                [prompts[i] for i in new],
                [completions_a[i] for i in new],
                [completions_b[i] for i in new],
                step=int(step),
                policy_version=version,
                selection=HUMAN_SELECTION,
                source={"judge": self.name},
            ) if new else []  # fmt: skip
            query_of = dict(reuse)
            query_of.update((keys[i], q) for i, q in zip(new, posted))
            ids = sorted(set(query_of.values()))
            start = time.monotonic()
            labels, timed_out, stopped = self._wait(conn, ids, start)
            waited = time.monotonic() - start

        values = {q: [v for v in labels.get(q, []) if v is not None] for q in ids}
        wait = HumanWait(
            query_ids=[query_of[k] for k in keys],
            posted=len(posted),
            reused=len(reuse),
            labelled=sum(1 for q in ids if values[q]),
            skipped=sum(1 for q in ids if q in labels and not values[q]),
            missing=sum(1 for q in ids if q not in labels),
            waited_s=waited,
            timed_out=timed_out,
            stopped=stopped,
        )
        self.last_wait = wait
        if wait.missing:
            why = "stopped" if stopped else f"timed out after {self.timeout_s:g} s"
            self.console.print(
                f"[yellow]human judge {why}: {len(ids) - wait.missing}/{len(ids)} queries "
                f"labelled; the pairs of the {wait.missing} unlabelled ones are returned as NaN "
                f"(skipped). Their queries stay open in {self.store_path} and are reused when "
                "the same pairs are compared again.[/yellow]"
            )
        return [sum(values[q]) / len(values[q]) if values[q] else math.nan for q in wait.query_ids]

    # -- store reads (the schema is documented in docs/preference-rl.md) --------------------

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.store_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def _accepted(self) -> tuple[str, list[str]]:
        if self.annotators is None:
            return "labeler_kind = 'human'", []
        return f"labeler IN ({', '.join('?' * len(self.annotators))})", list(self.annotators)

    def _labels(self, conn: sqlite3.Connection, ids: list[int]) -> dict[int, list[float | None]]:
        """Accepted human labels per query id (None for a skip); queries without any absent."""
        where, args = self._accepted()
        out: dict[int, list[float | None]] = {}
        for chunk in _chunks(ids):
            rows = conn.execute(
                f"SELECT query_id, label FROM labels WHERE {where} AND query_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY id",
                (*args, *chunk),
            )
            for q, label in rows:
                out.setdefault(int(q), []).append(label)
        return out

    def _existing(
        self, conn: sqlite3.Connection, keys: set[str], version: str | None
    ) -> dict[str, int]:
        """Query ids of earlier human queries matching ``keys`` (see the module docstring)."""
        rows = conn.execute(
            "SELECT q.id, p.format, p.prompt, p.completion_1, p.completion_2 FROM queries q "
            "JOIN completion_pairs p ON p.query_id = q.id WHERE q.kind = 'completion' AND "
            "q.selection = ? AND p.policy_version IS ? ORDER BY q.id",
            (HUMAN_SELECTION, version),
        ).fetchall()
        matches: dict[str, list[int]] = {}
        for qid, fmt, prompt, c1, c2 in rows:
            k = _key(_decode(fmt, prompt), _decode(fmt, c1), _decode(fmt, c2))
            if k in keys:
                matches.setdefault(k, []).append(int(qid))
        answered = set(self._labels(conn, [q for qs in matches.values() for q in qs]))
        return {k: next((q for q in qs if q in answered), qs[0]) for k, qs in matches.items()}

    def _wait(
        self, conn: sqlite3.Connection, ids: list[int], start: float
    ) -> tuple[dict[int, list[float | None]], bool, bool]:
        deadline = start + self.timeout_s
        display = _Display(self.console)
        try:
            while True:
                labels = self._labels(conn, ids)
                display.update(len(labels), len(ids))
                if len(labels) == len(ids):
                    return labels, False, False
                if self.stop_fn is not None and self.stop_fn():
                    return labels, False, True
                now = time.monotonic()
                if now >= deadline:
                    return labels, True, False
                time.sleep(min(self.poll_s, deadline - now))
        finally:
            display.close()


def _labeler(annotator: str) -> str:
    if not isinstance(annotator, str) or not annotator.removeprefix("human:"):
        raise JudgeConfigError(
            f"human judge annotators must be names such as 'ada' or 'human:ada', got {annotator!r}"
        )
    if ":" in annotator and not annotator.startswith("human:"):
        raise JudgeConfigError(
            f"annotator {annotator!r} is not a human labeller; write 'ada' or 'human:ada'"
        )
    return annotator if annotator.startswith("human:") else f"human:{annotator}"
