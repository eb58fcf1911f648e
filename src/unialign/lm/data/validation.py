"""Format detection and validation: everything that can be wrong with the rows, found at once.

:func:`detect_format` tells ``standard``, ``conversational`` and ``unpaired`` rows apart;
:func:`validate_records` raises one :class:`DataError` listing every bad row (missing columns
and fields, wrong types, malformed messages, empty or identical completions, ...).
:func:`_pair_view` applies TRL's implicit-prompt extraction and prompt stripping to a row, and is
shared with tokenization.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .types import (
    _ALIASES,
    _FORMATS,
    ALLOWED_ROLES,
    DataError,
    DataFormat,
    Problem,
    _describe,
    _raise_if,
)

# ---------------------------------------------------------------------------------------------
# Format detection and validation


def _columns(records: Sequence[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records[:1000]:
        if isinstance(r, dict):
            seen.update(dict.fromkeys(r))
    return list(seen)


def _hint(name: str, columns: Iterable[str]) -> str:
    cols = {c.lower(): c for c in columns}
    for alias in _ALIASES.get(name, ()):
        if alias in cols:
            return f" Column {cols[alias]!r} may hold it: rename it to {name!r}."
    return ""


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def detect_format(records: list[dict], source: str) -> DataFormat:
    """``"unpaired"`` if rows have ``completion``; else ``"conversational"`` if ``chosen`` holds
    messages, ``"standard"`` if it holds strings. Raises :class:`DataError` when no rule applies.
    """
    if not records:
        raise DataError(f"{source}: empty file: no rows.")
    columns = _columns(records)
    if "chosen" in columns or "rejected" in columns:
        for r in records:
            for key in ("chosen", "rejected"):
                value = r.get(key) if isinstance(r, dict) else None
                if isinstance(value, list):
                    return "conversational"
                if isinstance(value, str):
                    return "standard"
        raise DataError(
            f"{source}: cannot tell the format: no row has a string or a message list in "
            "'chosen'/'rejected'. Standard rows hold strings, conversational rows hold lists of "
            "{'role', 'content'} messages."
        )
    if "completion" in columns or "label" in columns:
        return "unpaired"
    hints = "".join(_hint(n, columns) for n in ("prompt", "chosen", "rejected", "completion"))
    raise DataError(
        f"{source}: cannot tell the format from the columns {columns}. Paired data needs "
        "'prompt', 'chosen' and 'rejected' (strings, or lists of messages); unpaired data needs "
        f"'prompt', 'completion' and 'label'.{hints}"
    )


def _check_messages(
    value: Any,
    field_name: str,
    row: int,
    source: str,
    problems: list[Problem],
) -> bool:
    """Append problems for a malformed message list; True if it is well-formed."""
    if not isinstance(value, list):
        what = "a string" if isinstance(value, str) else _describe(value)
        problems.append(
            Problem(
                source,
                row,
                field_name,
                f"expected a list of {{'role', 'content'}} messages, got {what}"
                + (
                    " (a plain string belongs in standard-format data: pass fmt='standard' or "
                    "make every prompt/completion a message list)"
                    if isinstance(value, str)
                    else ""
                ),
            )
        )
        return False
    if not value:
        problems.append(Problem(source, row, field_name, "empty message list; add the messages"))
        return False
    ok = True
    for j, m in enumerate(value):
        f = f"{field_name}[{j}]"
        if not isinstance(m, dict):
            problems.append(
                Problem(
                    source, row, f, f"expected a {{'role', 'content'}} message, got {_describe(m)}"
                )
            )
            ok = False
            continue
        missing = [k for k in ("role", "content") if k not in m or m[k] is None]
        if missing:
            problems.append(
                Problem(
                    source,
                    row,
                    f,
                    f"message missing {' and '.join(repr(k) for k in missing)} "
                    f"(it has: {', '.join(map(str, m)) or 'nothing'}); every message needs both",
                )
            )
            ok = False
            continue
        if m["role"] not in ALLOWED_ROLES:
            problems.append(
                Problem(
                    source,
                    row,
                    f + ".role",
                    f"unknown role {m['role']!r}; use one of {', '.join(ALLOWED_ROLES)}",
                )
            )
            ok = False
        if not isinstance(m["content"], str):
            problems.append(
                Problem(
                    source,
                    row,
                    f + ".content",
                    f"expected a string, got {_describe(m['content'])} (multimodal or structured "
                    "content is not supported)",
                )
            )
            ok = False
    return ok


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any] | None:
    """TRL's ``extract_prompt``: the longest common prefix of chosen and rejected (messages, or
    characters backed off before a space for strings). None if there is no common prefix."""
    k = _common_prefix(chosen, rejected)
    if isinstance(chosen, str) and 0 < k < len(chosen) and chosen[k - 1] == " ":
        k -= 1
    if k == 0:
        return None
    return chosen[:k], chosen[k:], rejected[k:]


def _pair_view(row: dict, fmt: DataFormat, has_prompt: bool) -> tuple[Any, Any, Any, str]:
    """(prompt, chosen, rejected, how) after implicit-prompt extraction / prompt stripping.
    Assumes the raw types were checked. ``how``: "explicit", "implicit" or "stripped"."""
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt") if has_prompt else None
    if fmt == "conversational":
        if prompt is None or isinstance(prompt, str):
            got = _extract_prompt(chosen, rejected)
            return (*got, "implicit") if got else (None, chosen, rejected, "implicit")
        n = len(prompt)
        if (
            len(chosen) > n
            and len(rejected) > n
            and chosen[:n] == prompt
            and rejected[:n] == prompt
        ):
            return prompt, chosen[n:], rejected[n:], "stripped"
        return prompt, chosen, rejected, "explicit"
    if prompt is None:
        got = _extract_prompt(chosen, rejected)
        return (*got, "implicit") if got else (None, chosen, rejected, "implicit")
    return prompt, chosen, rejected, "explicit"


def _check_label(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))


def _collect_problems(records: list[dict], fmt: DataFormat, source: str) -> list[Problem]:
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {_FORMATS}, got {fmt!r}")
    problems: list[Problem] = []
    if not records:
        return [Problem(source, None, None, "empty file: no rows")]
    columns = _columns(records)
    col_list = ", ".join(columns) or "none"
    required = ("prompt", "completion", "label") if fmt == "unpaired" else ("chosen", "rejected")
    has_prompt = "prompt" in columns
    missing_cols = [c for c in required if c not in columns]
    if fmt == "unpaired" and not has_prompt and "prompt" not in missing_cols:
        missing_cols.insert(0, "prompt")
    for c in missing_cols:
        problems.append(
            Problem(
                source,
                None,
                c,
                f"column {c!r} is missing (available columns: {col_list}); add it"
                + ("" if fmt == "unpaired" else f" for {fmt} data")
                + "."
                + _hint(c, columns),
            )
        )
    if missing_cols:
        return problems
    for c in ("tools", "chat_template_kwargs", "images"):
        used = [i for i, r in enumerate(records) if r.get(c) not in (None, [], {}, "")]
        if used:
            problems.append(
                Problem(
                    source,
                    used[0],
                    c,
                    f"per-row {c!r} is not supported ({len(used)} row(s) set it); TRL would pass "
                    "it to the chat template, so the token ids would differ. Drop the column or "
                    "render those rows yourself",
                )
            )
    needed = ("prompt", *required) if (has_prompt and fmt != "unpaired") else required
    conv_kind: bool | None = None  # unpaired: are rows messages (True) or strings (False)?

    for i, row in enumerate(records):
        absent = [k for k in needed if k not in row or row[k] is None]
        for k in absent:
            problems.append(
                Problem(
                    source,
                    i,
                    k,
                    f"missing or null (the row has: {', '.join(k2 for k2 in row if row[k2] is not None) or 'nothing'}); "
                    "fill it in or remove the row",
                )
            )
        if absent:
            continue
        if fmt == "unpaired":
            kind = isinstance(row["prompt"], list) or isinstance(row["completion"], list)
            if conv_kind is None:
                conv_kind = kind
            elif kind != conv_kind:
                problems.append(
                    Problem(
                        source,
                        i,
                        "prompt",
                        f"this row holds {'messages' if kind else 'strings'} but earlier rows "
                        f"hold {'messages' if conv_kind else 'strings'}; make every row the same "
                        "kind",
                    )
                )
                continue
            _check_unpaired_row(row, i, source, problems)
        else:
            _check_pair_row(row, i, fmt, has_prompt, source, problems)
    return problems


def _check_text(value: Any, name: str, row: int, source: str, problems: list[Problem]) -> bool:
    if isinstance(value, str):
        return True
    extra = ""
    if isinstance(value, list):
        extra = (
            " (message lists belong in conversational data: pass fmt='conversational' or 'auto', "
            "and make every row conversational)"
        )
    problems.append(Problem(source, row, name, f"expected a string, got {_describe(value)}{extra}"))
    return False


def _check_pair_row(
    row: dict, i: int, fmt: DataFormat, has_prompt: bool, source: str, problems: list[Problem]
) -> None:
    before = len(problems)
    if fmt == "standard":
        for k in ("prompt", "chosen", "rejected") if has_prompt else ("chosen", "rejected"):
            if _check_text(row[k], k, i, source, problems) and not row[k].strip():
                what = "prompt; every pair needs a prompt" if k == "prompt" else "completion"
                problems.append(
                    Problem(source, i, k, f"empty {what}; fill it in or remove the row")
                )
    else:
        prompt = row.get("prompt") if has_prompt else None
        if prompt is not None and not isinstance(prompt, str):
            _check_messages(prompt, "prompt", i, source, problems)
        for k in ("chosen", "rejected"):
            _check_messages(row[k], k, i, source, problems)
    if len(problems) > before:
        return
    prompt, chosen, rejected, how = _pair_view(row, fmt, has_prompt)
    if prompt is None:
        problems.append(
            Problem(
                source,
                i,
                "prompt",
                "no prompt column and 'chosen'/'rejected' share no common beginning to take "
                "the prompt from; add a 'prompt' field." + _hint("prompt", row),
            )
        )
        return
    if fmt == "standard":
        if how == "implicit":
            for k, v in (("chosen", chosen), ("rejected", rejected)):
                if not v.strip():
                    problems.append(
                        Problem(
                            source, i, k, "empty completion after the prompt shared with the other"
                        )
                    )
    else:
        for k, msgs in (("chosen", chosen), ("rejected", rejected)):
            if not msgs:
                problems.append(
                    Problem(
                        source,
                        i,
                        k,
                        "empty completion: nothing after the prompt's messages; add the "
                        "assistant's answer",
                    )
                )
                continue
            last = msgs[-1]
            if last["role"] != "assistant":
                problems.append(
                    Problem(
                        source,
                        i,
                        k,
                        f"the completion must end with an 'assistant' message, its last message "
                        f"has role {last['role']!r}"
                        + (
                            "; if this is the whole conversation, the prompt should be its "
                            "beginning"
                            if how == "explicit"
                            else ""
                        ),
                    )
                )
            elif not last["content"].strip():
                problems.append(
                    Problem(source, i, k, "empty completion (the assistant message has no content)")
                )
    if chosen == rejected:
        problems.append(
            Problem(
                source,
                i,
                "rejected",
                "identical to 'chosen'; a pair needs two different completions (fix or remove "
                "the row)",
            )
        )


def _check_unpaired_row(row: dict, i: int, source: str, problems: list[Problem]) -> None:
    prompt, completion, label = row["prompt"], row["completion"], row["label"]
    if not _check_label(label):
        problems.append(
            Problem(
                source,
                i,
                "label",
                f"expected a boolean (true/false, or 0/1), got {_describe(label)}; true marks a "
                "desirable completion",
            )
        )
    if isinstance(prompt, list) or isinstance(completion, list):
        ok = _check_messages(prompt, "prompt", i, source, problems)
        ok = _check_messages(completion, "completion", i, source, problems) and ok
        if ok:
            last = completion[-1]
            if last["role"] != "assistant":
                problems.append(
                    Problem(
                        source,
                        i,
                        "completion",
                        f"the completion must end with an 'assistant' message, got role "
                        f"{last['role']!r}",
                    )
                )
            elif not last["content"].strip():
                problems.append(
                    Problem(source, i, "completion", "empty completion (no assistant content)")
                )
        return
    ok = _check_text(prompt, "prompt", i, source, problems)
    ok = _check_text(completion, "completion", i, source, problems) and ok
    if ok:
        if not prompt.strip():
            problems.append(Problem(source, i, "prompt", "empty prompt"))
        if not completion.strip():
            problems.append(
                Problem(source, i, "completion", "empty completion; remove the row or fill it in")
            )


def validate_records(records: list[dict], fmt: DataFormat, source: str) -> None:
    """Raise :class:`DataError` listing every problem with ``records`` as ``fmt`` data."""
    _raise_if(_collect_problems(records, fmt, source), source, f"as {fmt} preference data")
