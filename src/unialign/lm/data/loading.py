"""Reading rows from disk: JSONL, JSON, Parquet, CSV, or a ``datasets`` ``save_to_disk``
directory (with an optional split, ``split=...`` or a ``"path:split"`` suffix).

:func:`load_records` returns the rows as plain dicts. Every error met while reading is a
:class:`DataError` that names the file, the line where the format has lines, and what to do:
a missing, unknown, unreadable or empty source; bytes that are not UTF-8 (line and byte
column); JSON syntax (line and column; in JSON lines every bad line at once); CSV quoting and
rows whose field count differs from the header's (line); an unreadable Parquet file or saved
dataset. Text files are read as UTF-8, with or without a byte-order mark.
"""

from __future__ import annotations

import codecs
import csv
import io
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
    if p.is_file() and p.stat().st_size == 0:
        raise DataError(
            f"{p}: empty file (0 bytes): no rows. Point to a file with preference rows."
        )
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


_WHAT_TO_DO_UTF8 = "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE)"


def _read_bytes(p: Path) -> bytes:
    """The file's bytes without a UTF-8 byte-order mark."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(
            f"{p}: cannot read ({e.strerror or e}); check the path and its permissions."
        ) from None
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def _not_utf8(data: bytes, e: UnicodeDecodeError, first_line: int = 1) -> str:
    """Where ``e`` is in ``data`` (1-based line and byte column) and what to do."""
    line = first_line + data.count(b"\n", 0, e.start)
    col = e.start - data.rfind(b"\n", 0, e.start)
    return (
        f"line {line} (1-based), byte {col}: not valid UTF-8 ({e.reason}: "
        f"{data[e.start : e.end]!r}); {_WHAT_TO_DO_UTF8}"
    )


def _read_text(p: Path) -> str:
    data = _read_bytes(p)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: {_not_utf8(data, e)}.") from None


def _load_jsonl(p: Path) -> list[dict]:
    records: list[Any] = []
    problems: list[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(str(p), len(records), None, message))
        records.append(None)

    for lineno, raw in enumerate(_read_bytes(p).split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problem(_not_utf8(raw, e, first_line=lineno))
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            problem(
                f"line {lineno} (1-based) is not valid JSON ({e.msg} at column {e.colno});"
                " each line must be one JSON object"
            )
            continue
        if not isinstance(value, dict):
            problem(
                f"line {lineno} (1-based): expected a JSON object (one row), got {_describe(value)}"
            )
            continue
        records.append(value)
    _raise_if(problems, str(p), "unreadable JSON lines")
    return records


def _load_json(p: Path) -> list[dict]:
    text = _read_text(p)
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON lines in a .json file
            return _load_jsonl(p)
        raise DataError(
            f"{p}: line {e.lineno} (1-based), column {e.colno}: not valid JSON ({e.msg}). "
            "A .json file holds one list of row objects (or JSON lines: one object per line); "
            "fix the syntax there."
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
        raise DataError(
            f"{p}: cannot read as Parquet ({type(e).__name__}: {e}). The file is truncated, "
            "damaged or not Parquet: write it again (e.g. Dataset.to_parquet, "
            "DataFrame.to_parquet) or convert it to JSON lines."
        ) from e


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
    # strict: an unclosed quote or text after a closing quote is an error, not a silently
    # merged or truncated field
    reader = csv.DictReader(io.StringIO(_read_text(p), newline=""), strict=True)
    records: list[dict] = []
    problems: list[Problem] = []
    end = 0  # the last line read; a record spans lines end + 1 ... (a quoted field may span lines)

    def where(start: int) -> str:
        last = reader.reader.line_num  # lines read so far (DictReader's own lags on errors)
        return f"line {last}" if last <= start else f"lines {start}-{last}"

    while True:
        try:
            if end == 0:
                header = reader.fieldnames  # reads the header line
                if header is None:
                    break
                end = reader.reader.line_num
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(
                f"{p}: {where(end + 1)} (1-based): not valid CSV ({e}). Put double quotes around "
                "a field that contains a comma, a quote or a line break, and double every quote "
                'inside it ("").'
            ) from None
        n_header = len(header)
        extra, missing = row.get(None), [k for k, v in row.items() if k is not None and v is None]
        if extra or missing:
            n = n_header + len(extra or ()) - len(missing)
            problems.append(
                Problem(
                    str(p),
                    len(records),
                    None,
                    f"{where(end + 1)} (1-based): {n} fields, but the header has {n_header}; put "
                    'double quotes around fields that contain commas ("a, b")',
                )
            )
        records.append({k: _csv_cell(k, v) for k, v in row.items() if k is not None and k != ""})
        end = reader.reader.line_num
    _raise_if(problems, str(p), "rows with the wrong number of fields")
    return records


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
    try:
        return ds.to_list()
    except Exception as e:  # noqa: BLE001 - e.g. a truncated Arrow file
        raise DataError(
            f"{p}: cannot read the saved dataset ({type(e).__name__}: {e}); save it again "
            "with save_to_disk."
        ) from e
