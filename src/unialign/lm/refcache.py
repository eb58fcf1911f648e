"""Reference log-probs: computed once, in one pass over the data, and cached on disk.

The reference policy is frozen, so its log-probs of every training sequence can be computed
before training (packed, under ``no_grad``) and re-read on every later run with the same model,
data and settings. A cache entry is keyed by :func:`fingerprint`, a sha256 over everything that
changes the numbers: the model's config and weights, the tokenized data, the packing and
scoring settings, the dtype and this module's scoring version.

Layout of a cache directory::

    <directory>/<fingerprint>/logps.safetensors   # float32 tensors, e.g. chosen [N], rejected [N]
    <directory>/<fingerprint>/manifest.json       # fingerprint, tensor names/shapes, metadata

Entries are written to a temporary directory and renamed into place (an entry being replaced
is renamed aside first), so a crash or ``kill -9`` never leaves a half-written entry that a
later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unialign.lm.packing import pack_sequences, pair_sequences, unpaired_sequences

__all__ = [
    "SCORING_VERSION",
    "fingerprint",
    "weights_fingerprint",
    "parameters_fingerprint",
    "data_fingerprint",
    "ReferenceCache",
    "reference_logps",
    "compute_reference_logps",
    "compute_reference_logps_unpaired",
    "adapter_disabled",
]

#: Bumped whenever the scoring rule changes (invalidates every cache entry).
SCORING_VERSION = "unialign.lm.logps/1"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_HASH_BLOCK = 1 << 24


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(model_name_or_path: str | os.PathLike[str]) -> str | None:
    """sha256 over the weight files of a local model (a file, or a directory's weight files).

    Returns ``None`` when ``model_name_or_path`` is not a local path (a hub id: pin its revision
    in ``extra`` instead).
    """
    path = Path(model_name_or_path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
        )
    else:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(_sha256_file(f).encode())
    return h.hexdigest()


def parameters_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over a model's parameters and buffers (names, dtypes, shapes, bytes).

    For models that exist only in memory; for a model loaded from disk, hashing the files
    (:func:`weights_fingerprint`) is the same information and cheaper than a device copy.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(examples: Sequence[Any]) -> str:
    """sha256 over tokenized examples (``TokenizedPair``/``TokenizedUnpaired``-likes, in order)."""
    h = hashlib.sha256()
    for e in examples:
        parts: dict[str, Any] = {"prompt": list(e.prompt_ids)}
        for name in ("chosen_ids", "rejected_ids", "completion_ids"):
            if hasattr(e, name):
                parts[name] = list(getattr(e, name))
        if hasattr(e, "desirable"):
            parts["desirable"] = bool(e.desirable)
        h.update(json.dumps(parts, separators=(",", ":")).encode())
        h.update(b"\n")
    h.update(f"n={len(examples)}".encode())
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(
    model_name_or_path: str,
    model_config: Mapping[str, Any],
    data_fingerprint: str,
    extra: Mapping[str, Any],
) -> str:
    """The cache key: sha256 over the model, the data and the settings.

    Args:
        model_name_or_path: local path (its weight files are hashed) or hub id (only the name
            is hashed; put the revision, or :func:`parameters_fingerprint`, in ``extra``).
        model_config: the model's config as a dict (``model.config.to_dict()``).
        data_fingerprint: :func:`data_fingerprint` of the tokenized examples.
        extra: everything else that changes the numbers: max lengths, dtype, temperature,
            attention implementation, ``parameters_fingerprint`` for in-memory models...
    """
    config = {k: v for k, v in dict(model_config).items() if k not in ("_name_or_path",)}
    weights = weights_fingerprint(model_name_or_path)
    payload = {
        "scoring_version": SCORING_VERSION,
        "model": str(model_name_or_path) if weights is None else None,
        "weights": weights,
        "config": config,
        "data": data_fingerprint,
        "extra": dict(extra),
    }
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


class ReferenceCache:
    """Named float32 tensors per fingerprint, in ``directory`` (see the module docstring)."""

    FILE = "logps.safetensors"
    MANIFEST = "manifest.json"

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def path(self, fingerprint: str) -> Path:
        if not fingerprint or any(c in fingerprint for c in "/\\.") or len(fingerprint) > 128:
            raise ValueError(f"invalid fingerprint {fingerprint!r}")
        return self.directory / fingerprint

    def __contains__(self, fingerprint: str) -> bool:
        p = self.path(fingerprint)
        return (p / self.MANIFEST).is_file() and (p / self.FILE).is_file()

    def load(self, fingerprint: str) -> dict[str, Tensor] | None:
        """The cached tensors, or ``None`` when absent (or unreadable / not matching)."""
        if fingerprint not in self:
            return None
        from safetensors.torch import load_file

        p = self.path(fingerprint)
        try:
            manifest = json.loads((p / self.MANIFEST).read_text())
            tensors = load_file(str(p / self.FILE))
        except (OSError, ValueError):
            return None
        if manifest.get("fingerprint") != fingerprint:
            return None
        shapes = manifest.get("tensors", {})
        if set(shapes) != set(tensors) or any(list(tensors[k].shape) != shapes[k] for k in tensors):
            return None
        return tensors

    def store(
        self,
        fingerprint: str,
        tensors: Mapping[str, Tensor],
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write an entry atomically (temporary directory, then rename)."""
        from safetensors.torch import save_file

        final = self.path(fingerprint)
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        manifest = {
            "fingerprint": fingerprint,
            "scoring_version": SCORING_VERSION,
            "tensors": {k: list(v.shape) for k, v in data.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metadata": dict(metadata or {}),
        }
        # An entry appears and disappears only by rename: a process killed at any moment leaves
        # the old entry, the new one, or none (then recomputed), plus at most a hidden
        # temporary directory that is never read.
        tmp = Path(tempfile.mkdtemp(prefix=f".{fingerprint[:16]}-", dir=self.directory))
        aside = tmp.with_name(tmp.name + "-old")
        try:
            save_file(data, str(tmp / self.FILE))
            (tmp / self.MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if final.exists():
                os.replace(final, aside)
            os.replace(tmp, final)
        finally:
            for leftover in (tmp, aside):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
        return final

    def get_or_compute_tensors(
        self,
        fingerprint: str,
        compute_fn: Callable[[], Mapping[str, Tensor]],
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Cached tensors for ``fingerprint``; computed with ``compute_fn`` and stored on a miss."""
        cached = self.load(fingerprint)
        if cached is not None:
            return cached
        tensors = {k: v.detach().to("cpu", torch.float32) for k, v in compute_fn().items()}
        self.store(fingerprint, tensors, metadata)
        return tensors

    def get_or_compute(
        self,
        fingerprint: str,
        compute_fn: Callable[[], tuple[Tensor, Tensor]],
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(ref_chosen [N], ref_rejected [N])`` for ``fingerprint``, computed on a miss."""

        def fn() -> dict[str, Tensor]:
            chosen, rejected = compute_fn()
            if chosen.shape != rejected.shape:
                raise ValueError(
                    f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} differ"
                )
            return {"chosen": chosen, "rejected": rejected}

        t = self.get_or_compute_tensors(fingerprint, fn, metadata)
        return t["chosen"], t["rejected"]


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """Run a PEFT model as its base model (adapters off) without a second copy of the weights.

    Raises:
        TypeError: ``model`` has no ``disable_adapter()`` (it is not a PEFT model): silently
            scoring with the policy where the reference was meant would be a wrong result.
    """
    disable = getattr(model, "disable_adapter", None)
    if not callable(disable):
        raise TypeError(
            f"{type(model).__name__} has no disable_adapter(): adapter_disabled() needs a PEFT "
            "model (use a separate reference model otherwise)"
        )
    with disable():
        yield model


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def reference_logps(
    model: Any,
    seqs: Sequence[tuple[list[int], list[int]]],
    *,
    max_tokens_per_row: int,
    pad_id: int,
    disable_adapter: bool = False,
    chunk_size: int = 1024,
    rows_per_step: int | None = 1,
    temperature: float = 1.0,
    progress: bool = False,
    block_sequences: int = 4096,
) -> Tensor:
    """Summed log-probs of ``(prompt_ids, completion_ids)`` sequences under the reference.

    The one reference forward of the LM engine: the cached pass over a whole data set
    (:func:`compute_reference_logps`) and the training loop's per-micro-batch reference
    (``precompute_ref: false``) both call it. The model runs in eval mode (no dropout) without
    grad, and with ``disable_adapter`` a PEFT policy runs as its base model
    (:func:`adapter_disabled`); the previous mode is restored afterwards.

    Sequences are packed ``block_sequences`` at a time (the packed tensors of a large data set
    are never all in memory at once) and scored ``rows_per_step`` packed rows per forward
    (``None``: all rows of a block in one forward).

    Returns:
        ``[S]`` float32 on the model's device.
    """
    from rich.progress import Progress

    from unialign.lm.logps import sequence_logps

    if rows_per_step is not None and rows_per_step < 1:
        raise ValueError(f"rows_per_step must be >= 1, got {rows_per_step}")
    adapter = adapter_disabled(model) if disable_adapter else contextlib.nullcontext()
    parts: list[Tensor] = []
    bar = Progress(disable=not progress, transient=True)
    with adapter, _eval_mode(model), torch.no_grad(), bar:
        task = bar.add_task("reference log-probs", total=len(seqs))
        for b0 in range(0, len(seqs), block_sequences):
            block = seqs[b0 : b0 + block_sequences]
            batch = pack_sequences(block, max_tokens_per_row=max_tokens_per_row, pad_id=pad_id)
            step = batch.shape[0] if rows_per_step is None else rows_per_step
            total: Tensor | None = None  # each sequence lies in one row: the others add 0
            for r in range(0, batch.shape[0], step):
                sub = batch.rows(r, r + step)
                sums, _ = sequence_logps(model, sub, chunk_size=chunk_size, temperature=temperature)
                total = sums.float() if total is None else total + sums.float()
                bar.advance(task, int((sub.seq_row >= 0).sum()))
            if total is not None:
                parts.append(total)
    if not parts:
        return torch.zeros(0, dtype=torch.float32)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def compute_reference_logps(
    model: Any,
    pairs: Sequence[Any],
    *,
    max_tokens_per_row: int,
    pad_id: int,
    chunk_size: int = 1024,
    rows_per_step: int = 1,
    temperature: float = 1.0,
    disable_adapter: bool = False,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Reference log-probs of every pair, in one packed pass (eval mode, no grad).

    Args:
        model: the reference model (or the PEFT policy with ``disable_adapter=True``).
        pairs: ``TokenizedPair``-likes.
        max_tokens_per_row, pad_id: packing (:func:`~unialign.lm.packing.pack_pairs`).
        chunk_size: LM-head chunk.
        rows_per_step: packed rows per forward.
        temperature: as in training (it changes the numbers: part of the fingerprint).
        disable_adapter: score a PEFT model with its adapters off (:func:`adapter_disabled`).
        progress: show a progress bar.

    Returns:
        ``(ref_chosen [N], ref_rejected [N])`` float32 on the CPU.
    """
    logps = reference_logps(
        model,
        pair_sequences(pairs),
        disable_adapter=disable_adapter,
        max_tokens_per_row=max_tokens_per_row,
        pad_id=pad_id,
        rows_per_step=rows_per_step,
        chunk_size=chunk_size,
        temperature=temperature,
        progress=progress,
    ).cpu()
    return logps[0::2].clone(), logps[1::2].clone()


def compute_reference_logps_unpaired(
    model: Any,
    examples: Sequence[Any],
    *,
    max_tokens_per_row: int,
    pad_id: int,
    chunk_size: int = 1024,
    rows_per_step: int = 1,
    temperature: float = 1.0,
    disable_adapter: bool = False,
    progress: bool = True,
) -> Tensor:
    """:func:`compute_reference_logps` for unpaired examples: ``[N]`` float32 on the CPU."""
    return reference_logps(
        model,
        unpaired_sequences(examples),
        disable_adapter=disable_adapter,
        max_tokens_per_row=max_tokens_per_row,
        pad_id=pad_id,
        rows_per_step=rows_per_step,
        chunk_size=chunk_size,
        temperature=temperature,
        progress=progress,
    ).cpu()
