"""Tokenization that reproduces TRL 1.16's ``DPOTrainer``/``KTOTrainer`` preprocessing, so that
the same rows give the same token ids (checked against TRL in ``tests/lm/test_data.py``):

* standard rows: ``tokenizer(prompt)`` and ``tokenizer(prompt + completion + eos)`` with the
  tokenizer's default special tokens (so BOS is added if the tokenizer adds it); the EOS *string*
  is appended to the completion unless the completion already ends with it;
* conversational rows: ``apply_chat_template(prompt, add_generation_prompt=True)`` and
  ``apply_chat_template(prompt + completion)``; no EOS is appended (the template ends the turn);
* the completion ids are the prompt+completion ids after the prompt's ids; TRL silently takes
  the longest common prefix when the prompt's ids are not a prefix — here that is an error by
  default (``prefix_mismatch="trim"`` gives TRL's behaviour);
* truncation ``keep_start`` (TRL's default) cuts prompt+completion to its first ``max_length``
  tokens, i.e. cuts the completion's end; rows whose prompt alone fills ``max_length`` are an
  error here (TRL drops them silently; ``drop_long_prompts=True`` does the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .types import (
    _CHUNK,
    DataError,
    DataFormat,
    PrefixMismatch,
    Problem,
    TokenizedPair,
    TokenizedUnpaired,
    Truncation,
    _raise_if,
)
from .validation import _columns, _common_prefix, _pair_view, validate_records

# ---------------------------------------------------------------------------------------------
# Tokenization


def _check_lengths(max_length: int, max_prompt_length: int | None, truncation: str) -> None:
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    if max_prompt_length is not None and not (
        isinstance(max_prompt_length, int) and 1 <= max_prompt_length < max_length
    ):
        raise ValueError(
            f"max_prompt_length must be None or an integer in [1, max_length={max_length}), "
            f"got {max_prompt_length!r}"
        )
    if truncation not in ("keep_start", "keep_end", "error"):
        raise ValueError(
            f"truncation must be 'keep_start', 'keep_end' or 'error', got {truncation!r}"
        )


def _chunks(n: int) -> Iterable[range]:
    for s in range(0, n, _CHUNK):
        yield range(s, min(n, s + _CHUNK))


def _encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """``tokenizer(text)["input_ids"]`` for each text (TRL's ``_tokenize`` on a string)."""
    out: list[list[int]] = []
    for idx in _chunks(len(texts)):
        out.extend(list(ids) for ids in tokenizer([texts[i] for i in idx])["input_ids"])
    return out


def _encode_chats(
    tokenizer: Any,
    convs: list[list[dict]],
    rows: list[int],
    source: str,
    problems: list[Problem],
    *,
    add_generation_prompt: bool,
    field_name: str,
) -> list[list[int] | None]:
    """``apply_chat_template(conv, tokenize=True)`` for each conversation (batched); rows whose
    template rendering fails become problems (and ``None``)."""
    out: list[list[int] | None] = []
    kw = {"tokenize": True, "return_dict": True, "add_generation_prompt": add_generation_prompt}
    for idx in _chunks(len(convs)):
        batch = [convs[i] for i in idx]
        try:
            out.extend(list(ids) for ids in tokenizer.apply_chat_template(batch, **kw)["input_ids"])
            continue
        except Exception:  # noqa: BLE001 - find the failing rows one by one
            pass
        for i in idx:
            try:
                out.append(list(tokenizer.apply_chat_template(convs[i], **kw)["input_ids"]))
            except Exception as e:  # noqa: BLE001
                problems.append(
                    Problem(
                        source,
                        rows[i],
                        field_name,
                        f"the chat template failed on this row ({type(e).__name__}: {e})",
                    )
                )
                out.append(None)
    return out


def _require_chat_template(tokenizer: Any, source: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{source}: conversational data needs a tokenizer with a chat template, and this "
            "tokenizer has none. Set tokenizer.chat_template (a Jinja string), or convert the "
            "rows to standard format (prompt/chosen/rejected strings)."
        )


def _eos_suffix(tokenizer: Any, add_eos: bool) -> str:
    if not add_eos:
        return ""
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError(
            "the tokenizer has no eos_token, so completions cannot be terminated; set "
            "tokenizer.eos_token or pass add_eos=False"
        )
    return eos


def _tok_repr(tokenizer: Any, ids: Sequence[int], k: int) -> str:
    if k >= len(ids):
        return "end of sequence"
    try:
        text = tokenizer.decode([ids[k]])
    except Exception:  # noqa: BLE001
        text = "?"
    return f"{ids[k]} {text!r}"


@dataclass
class _Tokenized:
    prompt: list[list[int]]
    completions: list[list[list[int]]]  # per row, one list of ids per completion
    rows: list[int]
    truncated: list[int]
    dropped: list[int]
    trimmed: list[int]


def _tokenize_core(
    prompts: list[Any],
    completions: list[list[Any]],
    rows: list[int],
    tokenizer: Any,
    *,
    conversational: bool,
    names: tuple[str, ...],
    max_length: int,
    max_prompt_length: int | None,
    truncation: Truncation,
    source: str,
    add_eos: bool,
    prefix_mismatch: PrefixMismatch,
    drop_long_prompts: bool,
) -> _Tokenized:
    """Tokenize prompt + each completion TRL's way, check the prefix property, truncate."""
    _check_lengths(max_length, max_prompt_length, truncation)
    if prefix_mismatch not in ("error", "trim"):
        raise ValueError(f"prefix_mismatch must be 'error' or 'trim', got {prefix_mismatch!r}")
    problems: list[Problem] = []
    n = len(prompts)
    k = len(names)
    if conversational:
        _require_chat_template(tokenizer, source)
        p_ids = _encode_chats(
            tokenizer,
            prompts,
            rows,
            source,
            problems,
            add_generation_prompt=True,
            field_name="prompt",
        )
        full_ids = [
            _encode_chats(
                tokenizer,
                [prompts[i] + completions[i][j] for i in range(n)],
                rows,
                source,
                problems,
                add_generation_prompt=False,
                field_name=names[j],
            )
            for j in range(k)
        ]
    else:
        eos = _eos_suffix(tokenizer, add_eos)
        p_ids = _encode_texts(tokenizer, prompts)

        def term(c: str) -> str:  # TRL's add_eos: append unless already there
            return c if (not eos or c.endswith(eos)) else c + eos

        full_ids = [
            _encode_texts(tokenizer, [prompts[i] + term(completions[i][j]) for i in range(n)])
            for j in range(k)
        ]

    out = _Tokenized([], [], [], [], [], [])
    for i in range(n):
        row = rows[i]
        p = p_ids[i]
        fulls = [full_ids[j][i] for j in range(k)]
        if p is None or any(f is None for f in fulls):
            continue  # template failure, already reported
        # Prefix property: the prompt's ids must begin every prompt+completion.
        cps = [_common_prefix(p, f) for f in fulls]
        plen = min(cps)
        if plen < len(p):
            if prefix_mismatch == "error":
                j = cps.index(plen)
                why = (
                    "the chat template renders the prompt alone (with the generation prompt) "
                    "differently from the prompt followed by the completion"
                    if conversational
                    else "tokens merge across the prompt/completion boundary (e.g. the prompt "
                    "ends with a space, or the tokenizer adds EOS after every text)"
                )
                problems.append(
                    Problem(
                        source,
                        row,
                        "prompt",
                        f"the tokenized prompt ({len(p)} tokens) is not a prefix of the tokenized "
                        f"prompt+{names[j]}: first difference at token position {plen} (prompt "
                        f"alone: {_tok_repr(tokenizer, p, plen)}; prompt+{names[j]}: "
                        f"{_tok_repr(tokenizer, fulls[j], plen)}); {why}. Fix the template/data "
                        "so that they agree, or pass prefix_mismatch='trim' to start the "
                        "completion where they diverge (TRL's behaviour)",
                    )
                )
                continue
            out.trimmed.append(row)
        prompt_ids = p[:plen]
        comps = [f[plen:] for f in fulls]
        empty = [names[j] for j in range(k) if not comps[j]]
        if empty:
            for name in empty:
                problems.append(
                    Problem(source, row, name, "the completion tokenizes to nothing; fill it in")
                )
            continue
        if not prompt_ids:
            problems.append(
                Problem(
                    source,
                    row,
                    "prompt",
                    "the prompt tokenizes to nothing (empty prompt, and the tokenizer adds no "
                    "BOS), so the first completion token has no context; add a prompt",
                )
            )
            continue
        truncated = False
        # 1. max_prompt_length: a hard cap, cut from the left only with keep_end.
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            if truncation == "keep_end":
                prompt_ids = prompt_ids[-max_prompt_length:]
                truncated = True
            else:
                problems.append(
                    Problem(
                        source,
                        row,
                        "prompt",
                        f"prompt has {len(prompt_ids)} tokens, more than max_prompt_length="
                        f"{max_prompt_length}; raise max_prompt_length, shorten the prompt, or "
                        "pass truncation='keep_end' to keep its last tokens",
                    )
                )
                continue
        longest = max(len(c) for c in comps)
        # 2. keep_end: cut the prompt from the left so the longest completion fits, keeping at
        #    least min(len(prompt), max_length // 2) prompt tokens.
        if truncation == "keep_end" and len(prompt_ids) + longest > max_length:
            keep = max(max_length - longest, min(len(prompt_ids), max_length // 2))
            if keep < len(prompt_ids):
                prompt_ids = prompt_ids[-keep:]
                truncated = True
        # 3. The prompt alone must leave room for a completion token.
        if len(prompt_ids) >= max_length:
            if drop_long_prompts:
                out.dropped.append(row)
                continue
            problems.append(
                Problem(
                    source,
                    row,
                    "prompt",
                    f"prompt has {len(prompt_ids)} tokens, leaving no room for the completion "
                    f"within max_length={max_length}; raise max_length, shorten the prompt, pass "
                    "truncation='keep_end' to cut the prompt from the left, or "
                    "drop_long_prompts=True to skip such rows (TRL drops them silently)",
                )
            )
            continue
        # 4. Completions: cut at their end (keep_start/keep_end) or refuse (error).
        room = max_length - len(prompt_ids)
        if longest > room:
            if truncation == "error":
                for j, c in enumerate(comps):
                    if len(c) > room:
                        problems.append(
                            Problem(
                                source,
                                row,
                                names[j],
                                f"prompt+{names[j]} has {len(prompt_ids) + len(c)} tokens, more "
                                f"than max_length={max_length}; raise max_length, shorten it, or "
                                "pass truncation='keep_start' (cut the completion's end, TRL's "
                                "default) or 'keep_end'",
                            )
                        )
                continue
            comps = [c[:room] for c in comps]
            truncated = True
        if truncated:
            out.truncated.append(row)
        out.prompt.append(prompt_ids)
        out.completions.append(comps)
        out.rows.append(row)
    _raise_if(problems, source, "found while tokenizing")
    return out


def _pair_inputs(
    records: list[dict], fmt: DataFormat
) -> tuple[list[Any], list[list[Any]], list[int]]:
    has_prompt = "prompt" in _columns(records)
    prompts, comps = [], []
    for row in records:
        p, c, r, _ = _pair_view(row, fmt, has_prompt)
        prompts.append(p)
        comps.append([c, r])
    return prompts, comps, list(range(len(records)))


def _unpaired_inputs(records: list[dict]) -> tuple[list[Any], list[list[Any]], list[int], bool]:
    prompts = [r["prompt"] for r in records]
    comps = [[r["completion"]] for r in records]
    conv = [isinstance(p, list) for p in prompts]
    return prompts, comps, list(range(len(records))), any(conv)


def _pairs_impl(
    records: list[dict],
    tokenizer: Any,
    fmt: DataFormat,
    *,
    max_length: int,
    max_prompt_length: int | None,
    source: str,
    truncation: Truncation,
    add_eos: bool,
    prefix_mismatch: PrefixMismatch,
    drop_long_prompts: bool,
    validate: bool,
) -> tuple[list[TokenizedPair], _Tokenized]:
    if fmt not in ("standard", "conversational"):
        raise ValueError(f"tokenize_pairs takes 'standard' or 'conversational' data, got {fmt!r}")
    if validate:
        validate_records(records, fmt, source)
    prompts, comps, rows = _pair_inputs(records, fmt)
    t = _tokenize_core(
        prompts,
        comps,
        rows,
        tokenizer,
        conversational=fmt == "conversational",
        names=("chosen", "rejected"),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation=truncation,
        source=source,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
    )
    pairs = [TokenizedPair(p, c[0], c[1]) for p, c in zip(t.prompt, t.completions)]
    return pairs, t


def tokenize_pairs(
    records: list[dict],
    tokenizer: Any,
    fmt: DataFormat,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    source: str = "<records>",
    truncation: Truncation = "keep_start",
    add_eos: bool = True,
    prefix_mismatch: PrefixMismatch = "error",
    drop_long_prompts: bool = False,
    validate: bool = True,
) -> list[TokenizedPair]:
    """Tokenize standard or conversational pairs the way TRL 1.16's DPOTrainer does.

    ``truncation``: ``"keep_start"`` (TRL's default) cuts each prompt+completion to its first
    ``max_length`` tokens (the completion's end goes); ``"keep_end"`` first cuts the prompt from
    the left (to ``max_prompt_length`` if given, and so the longer completion fits, keeping at
    least ``max_length // 2`` prompt tokens), then cuts completions' ends; ``"error"`` raises
    for any row that does not fit. A prompt that fills ``max_length`` (or exceeds
    ``max_prompt_length`` outside ``keep_end``) is an error unless ``drop_long_prompts``.
    Raises :class:`DataError` listing every bad row.
    """
    pairs, _ = _pairs_impl(
        records,
        tokenizer,
        fmt,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        source=source,
        truncation=truncation,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
        validate=validate,
    )
    return pairs


def _unpaired_impl(
    records: list[dict],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int | None,
    source: str,
    truncation: Truncation,
    add_eos: bool,
    prefix_mismatch: PrefixMismatch,
    drop_long_prompts: bool,
    validate: bool,
) -> tuple[list[TokenizedUnpaired], _Tokenized]:
    if validate:
        validate_records(records, "unpaired", source)
    prompts, comps, rows, conversational = _unpaired_inputs(records)
    t = _tokenize_core(
        prompts,
        comps,
        rows,
        tokenizer,
        conversational=conversational,
        names=("completion",),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation=truncation,
        source=source,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
    )
    examples = [
        TokenizedUnpaired(p, c[0], bool(records[r]["label"]))
        for p, c, r in zip(t.prompt, t.completions, t.rows)
    ]
    return examples, t


def tokenize_unpaired(
    records: list[dict],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    source: str = "<records>",
    truncation: Truncation = "keep_start",
    add_eos: bool = True,
    prefix_mismatch: PrefixMismatch = "error",
    drop_long_prompts: bool = False,
    validate: bool = True,
) -> list[TokenizedUnpaired]:
    """Tokenize unpaired (KTO-style) rows the way TRL 1.16's KTOTrainer does; prompts and
    completions are strings, or message lists rendered with the chat template. Truncation and
    errors as in :func:`tokenize_pairs`."""
    examples, _ = _unpaired_impl(
        records,
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        source=source,
        truncation=truncation,
        add_eos=add_eos,
        prefix_mismatch=prefix_mismatch,
        drop_long_prompts=drop_long_prompts,
        validate=validate,
    )
    return examples
