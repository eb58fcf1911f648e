"""Reading rows from disk: JSONL, JSON, Parquet, CSV, or a ``datasets`` ``save_to_disk``
directory (with an optional split, ``split=...`` or a ``"path:split"`` suffix).

:func:`load_records` returns the rows as plain dicts and raises :class:`DataError` for a missing,
unknown, unreadable or empty source, naming the line of every unreadable JSON line at once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .types import _SUFFIXES, DataError, Problem, _describe, _raise_if

# ---------------------------------------------------------------------------------------------
# Loading


def _split_path(path: str | Path, split: str | None) -> tuple[Path, str | None]:
    text = str(path)
    p = Path(text)
    if not p.exists() and ":" in text:
        base, _, suffix = text.rpartition(":")
        if base and suffix and "/" not in suffix and Path(base).exists():
            if split is not None and split != suffix:
                raise DataError(
                    f"{base}: split {suffix!r} in the path and split={split!r} disagree; give one."
                )
            return Path(base), suffix
    return p, split


def load_records(path: str | Path, *, split: str | None = None) -> list[dict]:
    """Read rows from JSONL, JSON (a list of objects), Parquet, CSV, or a directory written by
    ``datasets``' ``save_to_disk``.

    For a ``DatasetDict`` directory the ``"train"`` split is taken unless ``split`` (or a
    ``"path:split"`` suffix) names another; CSV cells holding JSON message lists are decoded and
    ``label`` cells ``true``/``false``/``1``/``0`` become booleans. Raises :class:`DataError`
    for a missing/unknown/unreadable/empty source.
    """
    p, split = _split_path(path, split)
    source = str(p) if split is None else f"{p}:{split}"
    if not p.exists():
        raise DataError(f"{p}: file not found.")
    if p.is_dir():
        records = _load_dataset_dir(p, split, source)
    else:
        if split is not None:
            raise DataError(
                f"{p}: a split ({split!r}) applies only to a directory saved with "
                "datasets' save_to_disk; this is a file."
            )
        kind = _SUFFIXES.get(p.suffix.lower())
        if kind is None:
            raise DataError(
                f"{p}: unknown file type {p.suffix!r}; accepted: "
                + ", ".join(sorted(_SUFFIXES))
                + " or a directory saved with datasets' save_to_disk."
            )
        records = {
            "jsonl": _load_jsonl,
            "json": _load_json,
            "parquet": _load_parquet,
            "csv": _load_csv,
        }[kind](p)
    if not records:
        raise DataError(f"{source}: empty file: no rows. Point to a file with preference rows.")
    bad = [
        Problem(source, i, None, f"expected an object (one row), got {_describe(r)}")
        for i, r in enumerate(records)
        if not isinstance(r, dict)
    ]
    _raise_if(bad, source, "rows must be objects with named fields")
    return records


def _load_jsonl(p: Path) -> list[dict]:
    records: list[Any] = []
    problems: list[Problem] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                problems.append(
                    Problem(
                        str(p),
                        len(records),
                        None,
                        f"line {lineno} (1-based) is not valid JSON ({e.msg} at column {e.colno});"
                        " each line must be one JSON object",
                    )
                )
                records.append(None)
    _raise_if(problems, str(p), "unreadable JSON lines")
    return records


def _load_json(p: Path) -> list[dict]:
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file
            return _load_jsonl(p)
        raise DataError(
            f"{p}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})."
        ) from None
    if isinstance(data, dict):
        raise DataError(
            f"{p}: expected a JSON list of row objects, got an object with keys "
            f"{sorted(data)[:10]}; write a list of rows (or JSON lines, one row per line)."
        )
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of row objects, got {_describe(data)}.")
    return data


def _load_parquet(p: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p).to_pylist()
    except Exception as e:  # noqa: BLE001 - report any reader failure as a data error
        raise DataError(f"{p}: cannot read as Parquet ({type(e).__name__}: {e}).") from e


def _csv_cell(key: str, value: str | None) -> Any:
    if value is None:
        return None
    if key == "label":
        low = value.strip().lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        return value
    stripped = value.strip()
    if stripped.startswith("[") and stripped.endswith("]") and '"role"' in stripped:
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, list) and all(isinstance(m, dict) for m in decoded):
            return decoded
    return value


def _load_csv(p: Path) -> list[dict]:
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return [
            {k: _csv_cell(k, v) for k, v in row.items() if k is not None and k != ""}
            for row in reader
        ]


def _load_dataset_dir(p: Path, split: str | None, source: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001
        raise DataError(
            f"{p}: a directory, but not one written by datasets' save_to_disk "
            f"({type(e).__name__}: {e}). Point to a data file or a saved dataset."
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        splits = sorted(ds)
        name = split if split is not None else "train"
        if name not in ds:
            how = "pass split=... or use 'path:split'"
            raise DataError(
                f"{p}: no split {name!r} in this DatasetDict; available splits: "
                f"{', '.join(splits)}. {how.capitalize()}."
            )
        ds = ds[name]
    elif split is not None:
        raise DataError(
            f"{p}: split {split!r} requested, but this directory holds a single Dataset "
            "(no splits); drop the split."
        )
    return ds.to_list()
