"""Preference data: loaders, format detection, validation messages, TRL-compatible tokenization,
the prompt-prefix check, truncation, unpaired labels and held-out splits."""

from __future__ import annotations

import csv
import json
import tempfile

import pytest

from unialign.lm.data import (
    MAX_REPORTED_PROBLEMS,
    DataError,
    PreferenceData,
    TokenizedPair,
    TokenizedUnpaired,
    build_preference_data,
    detect_format,
    load_preference_data,
    load_records,
    split_heldout,
    tokenize_pairs,
    tokenize_unpaired,
    validate_records,
)
from unialign.lm.tiny import synthetic_preferences, synthetic_words, train_tiny_tokenizer

SRC = "prefs.jsonl"


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


@pytest.fixture(scope="module")
def bos_tok():
    """The tiny tokenizer, but adding BOS to every text like Llama's."""
    t = train_tiny_tokenizer()
    t.add_bos_token = True
    assert t("ab")["input_ids"][0] == t.bos_token_id
    return t


def _msgs(role, content):
    return [{"role": role, "content": content}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _err(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------------ loaders


def test_load_jsonl_json_parquet_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    std = synthetic_preferences(5, fmt="standard")
    conv = synthetic_preferences(4, fmt="conversational")
    unp = synthetic_preferences(4, fmt="unpaired")

    assert load_records(_write_jsonl(tmp_path / "a.jsonl", std)) == std
    (tmp_path / "b.json").write_text(json.dumps(conv))
    assert load_records(tmp_path / "b.json") == conv
    # JSON lines in a .json file are read too
    assert load_records(_write_jsonl(tmp_path / "c.json", std)) == std

    pq.write_table(pa.Table.from_pylist(conv), tmp_path / "d.parquet")
    assert load_records(tmp_path / "d.parquet") == conv

    with (tmp_path / "e.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["prompt", "completion", "label"])
        w.writeheader()
        for r in unp:
            w.writerow({**r, "label": "true" if r["label"] else "0"})
    got = load_records(tmp_path / "e.csv")
    assert got == unp and all(isinstance(r["label"], bool) for r in got)

    # message lists survive a CSV round trip as JSON cells
    with (tmp_path / "f.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["prompt", "chosen", "rejected"])
        w.writeheader()
        for r in conv:
            w.writerow({k: json.dumps(v) for k, v in r.items()})
    assert load_records(tmp_path / "f.csv") == conv
    assert detect_format(load_records(tmp_path / "f.csv"), "f.csv") == "conversational"


def test_load_save_to_disk_dirs(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = synthetic_preferences(6, fmt="standard")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert load_records(tmp_path / "single") == rows

    dd = DatasetDict(train=Dataset.from_list(rows[:4]), test=Dataset.from_list(rows[4:]))
    dd.save_to_disk(str(tmp_path / "dict"))
    assert load_records(tmp_path / "dict") == rows[:4]  # "train" by default
    assert load_records(f"{tmp_path / 'dict'}:test") == rows[4:]
    assert load_records(tmp_path / "dict", split="test") == rows[4:]

    DatasetDict(a=Dataset.from_list(rows), b=Dataset.from_list(rows)).save_to_disk(
        str(tmp_path / "nosplit")
    )
    msg = _err(load_records, tmp_path / "nosplit")
    assert "no split 'train'" in msg and "available splits: a, b" in msg
    msg = _err(load_records, tmp_path / "single", split="train")
    assert "single Dataset" in msg


def test_loader_errors(tmp_path):
    assert "file not found" in _err(load_records, tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    msg = _err(load_records, tmp_path / "x.txt")
    assert "unknown file type '.txt'" in msg and ".jsonl" in msg and ".parquet" in msg
    (tmp_path / "empty.jsonl").write_text("")
    msg = _err(load_records, tmp_path / "empty.jsonl")
    assert "empty.jsonl" in msg and "empty file" in msg
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    msg = _err(load_records, tmp_path / "bad.jsonl")
    assert "bad.jsonl: row 1 (0-based)" in msg and "line 2 (1-based)" in msg
    (tmp_path / "obj.json").write_text('{"train": []}')
    assert "expected a JSON list" in _err(load_records, tmp_path / "obj.json")
    (tmp_path / "dir").mkdir()
    assert "save_to_disk" in _err(load_records, tmp_path / "dir")


def _parquet_bytes(tmp_path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(synthetic_preferences(20)), tmp_path / "ok.parquet")
    return (tmp_path / "ok.parquet").read_bytes()


# (file name, content, fragments the message must contain: the file, the line, what to do)
READ_ERRORS = [
    (
        "latin1.jsonl",
        b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "caf\xe9"}\n',
        ["row 2 (0-based)", "line 3 (1-based), byte 16: not valid UTF-8", "save the file as UTF-8"],
    ),
    (
        "latin1.json",
        b'[\n  {"prompt": "a"},\n  {"prompt": "\xe9t\xe9"}\n]\n',
        ["line 3 (1-based), byte 15: not valid UTF-8", "save the file as UTF-8"],
    ),
    (
        "latin1.csv",
        b"prompt,chosen,rejected\nq,a,b\nq,caf\xe9,b\n",
        ["line 3 (1-based), byte 6: not valid UTF-8", "save the file as UTF-8"],
    ),
    (
        "bad_line.jsonl",
        b'{"prompt": "a"}\n\n{"prompt": "b",}\n[1, 2]\n',
        [
            "row 1 (0-based): line 3 (1-based) is not valid JSON",
            "row 2 (0-based): line 4 (1-based): expected a JSON object (one row), got a list",
        ],
    ),
    (
        "bad_syntax.json",
        b'[\n  {"prompt": "a"},\n  {"prompt": }\n]\n',
        ["line 3 (1-based), column 14: not valid JSON", "fix the syntax there"],
    ),
    (
        "quote.csv",
        b'prompt,chosen,rejected\nq,a,b\nq,"a"x,b\n',
        ["line 3 (1-based): not valid CSV", "double every quote"],
    ),
    (
        "unclosed.csv",
        b'prompt,chosen,rejected\nq,a,b\nq,"a,b\nq,a,b\n',
        ["lines 3-4 (1-based): not valid CSV", "unexpected end of data", "double quotes"],
    ),
    (
        "fields.csv",
        b"prompt,chosen,rejected\nq,a,b\nq,a, b,c\nq,a\n",
        [
            "row 1 (0-based): line 3 (1-based): 4 fields, but the header has 3",
            "row 2 (0-based): line 4 (1-based): 2 fields, but the header has 3",
            'put double quotes around fields that contain commas ("a, b")',
        ],
    ),
    ("truncated.parquet", None, ["cannot read as Parquet", "truncated", "write it again"]),
    *[
        (f"empty.{ext}", b"", ["empty file (0 bytes)"])
        for ext in ("jsonl", "json", "csv", "parquet")
    ],
    ("header_only.csv", b"prompt,chosen,rejected\n", ["empty file: no rows"]),
    ("blank.jsonl", b"\n  \n", ["empty file: no rows"]),
]


@pytest.mark.parametrize(
    ("name", "content", "fragments"), READ_ERRORS, ids=[c[0] for c in READ_ERRORS]
)
def test_read_errors_name_the_file_and_line(tmp_path, name, content, fragments):
    if content is None:  # a Parquet file cut in the middle
        content = _parquet_bytes(tmp_path)[:-100]
    (tmp_path / name).write_bytes(content)
    msg = _err(load_records, tmp_path / name)
    assert str(tmp_path / name) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_directory_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "rows.jsonl").write_text('{"prompt": "a"}\n')
    msg = _err(load_records, tmp_path / "d")
    assert str(tmp_path / "d") in msg and "not one written by datasets' save_to_disk" in msg
    assert "Point to a data file or a saved dataset" in msg


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    rows = synthetic_preferences(2)
    (tmp_path / "bom.csv").write_bytes(
        b"\xef\xbb\xbfprompt,chosen,rejected\n"
        + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in rows).encode()
    )
    assert load_records(tmp_path / "bom.csv") == rows
    (tmp_path / "bom.jsonl").write_bytes(
        b"\xef\xbb\xbf" + _write_jsonl(tmp_path / "x", rows).read_bytes()
    )
    assert load_records(tmp_path / "bom.jsonl") == rows


def test_load_preference_data_reports_read_errors(tmp_path, tok):
    (tmp_path / "p.jsonl").write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "\xff"}\n')
    msg = _err(load_preference_data, tmp_path / "p.jsonl", tok, max_length=64)
    assert "p.jsonl" in msg and "line 1 (1-based)" in msg and "not valid UTF-8" in msg


# ---------------------------------------------------------------------------- format detection


def test_detect_format():
    assert detect_format(synthetic_preferences(2, fmt="standard"), SRC) == "standard"
    assert detect_format(synthetic_preferences(2, fmt="conversational"), SRC) == "conversational"
    assert detect_format(synthetic_preferences(2, fmt="unpaired"), SRC) == "unpaired"
    implicit = [{"chosen": _msgs("user", "q") + _msgs("assistant", "a"), "rejected": []}]
    assert detect_format(implicit, SRC) == "conversational"
    msg = _err(detect_format, [{"question": "q", "response": "r"}], SRC)
    assert "prefs.jsonl" in msg and "['question', 'response']" in msg
    assert "rename it to 'prompt'" in msg and "rename it to 'completion'" in msg
    assert "empty" in _err(detect_format, [], SRC)


# -------------------------------------------------------------------------------- validation

S = {"prompt": "p q", "chosen": " good", "rejected": " bad"}
C = {
    "prompt": _msgs("user", "q"),
    "chosen": _msgs("assistant", "a"),
    "rejected": _msgs("assistant", "b"),
}
U = {"prompt": "p", "completion": " c", "label": True}

CASES = [
    # (rows, fmt, row, field, fragment)
    ([S, {"prompt": "p", "chosen": "x"}], "standard", 1, "rejected", "missing or null"),
    ([S, {**S, "chosen": "  "}], "standard", 1, "chosen", "empty completion"),
    ([S, S, {**S, "rejected": 42}], "standard", 2, "rejected", "expected a string, got int 42"),
    ([{**S, "chosen": _msgs("assistant", "a")}], "standard", 0, "chosen", "conversational"),
    ([S, {**S, "rejected": S["chosen"]}], "standard", 1, "rejected", "identical to 'chosen'"),
    ([C, {**C, "prompt": [{"content": "q"}]}], "conversational", 1, "prompt[0]", "missing 'role'"),
    (
        [C, {**C, "prompt": [{"role": "bot", "content": "q"}]}],
        "conversational",
        1,
        "prompt[0].role",
        "unknown role 'bot'",
    ),
    (
        [{**C, "chosen": [{"role": "assistant", "content": 3}]}],
        "conversational",
        0,
        "chosen[0].content",
        "expected a string",
    ),
    (
        [{**C, "chosen": "a"}],
        "conversational",
        0,
        "chosen",
        "expected a list of {'role', 'content'} messages, got a string",
    ),
    (
        [{**C, "rejected": _msgs("user", "b")}],
        "conversational",
        0,
        "rejected",
        "end with an 'assistant' message",
    ),
    ([{**C, "chosen": _msgs("assistant", "")}], "conversational", 0, "chosen", "empty completion"),
    ([C, {**C, "rejected": C["chosen"]}], "conversational", 1, "rejected", "identical to 'chosen'"),
    ([C, {**C, "tools": [{"name": "f"}]}], "conversational", 1, "tools", "not supported"),
    ([U, {**U, "label": "yes"}], "unpaired", 1, "label", "expected a boolean"),
    ([U, {**U, "label": 2}], "unpaired", 1, "label", "expected a boolean"),
    ([U, {**U, "completion": ""}], "unpaired", 1, "completion", "empty completion"),
    (
        [U, {**U, "prompt": _msgs("user", "q"), "completion": _msgs("assistant", "a")}],
        "unpaired",
        1,
        "prompt",
        "make every row the same kind",
    ),
]


@pytest.mark.parametrize(("rows", "fmt", "row", "field", "fragment"), CASES)
def test_validation_names_file_row_field(rows, fmt, row, field, fragment):
    with pytest.raises(DataError) as info:
        validate_records(rows, fmt, SRC)
    msg = str(info.value)
    line = next(ln for ln in msg.splitlines() if f"row {row} (0-based)" in ln)
    assert line.strip().startswith(f"- {SRC}: row {row} (0-based), field {field!r}: ")
    assert fragment in line
    assert info.value.rows == [row]


def test_missing_column_lists_available_columns():
    rows = [{"prompt": "p", "chosen": "a", "response_rejected": "b"}] * 2
    msg = _err(validate_records, rows, "standard", SRC)
    assert f"{SRC}, field 'rejected': column 'rejected' is missing" in msg
    assert "available columns: prompt, chosen, response_rejected" in msg
    assert "'response_rejected' may hold it" in msg
    msg = _err(validate_records, [{"prompt": "p", "completion": "c"}], "unpaired", SRC)
    assert "column 'label' is missing" in msg
    assert "empty file" in _err(validate_records, [], "standard", SRC)


def test_all_problems_reported_and_capped():
    rows = [{**S, "chosen": ""} for _ in range(30)] + [S]
    with pytest.raises(DataError) as info:
        validate_records(rows, "standard", SRC)
    msg = str(info.value)
    assert msg.startswith(f"30 problems in {SRC}")
    assert len(info.value.problems) == 30
    assert msg.count(f"- {SRC}: row ") == MAX_REPORTED_PROBLEMS
    assert "... and 10 more problems (rows 20, 21," in msg


def test_valid_synthetic_data_passes():
    for fmt in ("standard", "conversational", "unpaired"):
        validate_records(synthetic_preferences(20, fmt=fmt), fmt, SRC)


# ------------------------------------------------------------------- tokenization conventions


def test_standard_conventions(tok, bos_tok):
    rows = [{"prompt": "abc de", "chosen": " fgh", "rejected": " ij</s>"}]
    (p,) = tokenize_pairs(rows, tok, "standard", max_length=100)
    assert p.prompt_ids == tok("abc de")["input_ids"]
    assert p.chosen_ids == tok("abc de fgh</s>")["input_ids"][len(p.prompt_ids) :]
    assert p.chosen_ids[-1] == tok.eos_token_id
    assert p.rejected_ids.count(tok.eos_token_id) == 1  # EOS not doubled
    (q,) = tokenize_pairs(rows, tok, "standard", max_length=100, add_eos=False)
    assert q.chosen_ids[-1] != tok.eos_token_id
    (b,) = tokenize_pairs(rows, bos_tok, "standard", max_length=100)
    assert b.prompt_ids[0] == bos_tok.bos_token_id and b.prompt_ids[1:] == p.prompt_ids
    assert b.chosen_ids == p.chosen_ids


def test_conversational_conventions(tok):
    rows = synthetic_preferences(3, fmt="conversational", seed=1)
    pairs = tokenize_pairs(rows, tok, "conversational", max_length=10_000)
    for r, p in zip(rows, pairs):
        assert (
            p.prompt_ids
            == tok.apply_chat_template(r["prompt"], add_generation_prompt=True)["input_ids"]
        )
        full = tok.apply_chat_template(r["prompt"] + r["chosen"])["input_ids"]
        assert p.prompt_ids + p.chosen_ids == full
        assert tok.decode(p.chosen_ids).endswith("<|im_end|>\n")  # the template ends the turn
        assert tok.eos_token_id not in p.chosen_ids

    # implicit prompt (TRL's form) and whole conversations that start with the prompt
    implicit = [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows
    ]
    assert tokenize_pairs(implicit, tok, "conversational", max_length=10_000) == pairs
    whole = [
        {**r, "chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
        for r in rows
    ]
    assert tokenize_pairs(whole, tok, "conversational", max_length=10_000) == pairs


def test_implicit_prompt_standard(tok):
    rows = [{"chosen": "the sky is blue", "rejected": "the sky is green"}]
    (p,) = tokenize_pairs(rows, tok, "standard", max_length=100)
    explicit = [{"prompt": "the sky is", "chosen": " blue", "rejected": " green"}]
    assert [p] == tokenize_pairs(explicit, tok, "standard", max_length=100)


def test_no_chat_template(tok):
    bare = train_tiny_tokenizer()
    bare.chat_template = None
    msg = _err(
        tokenize_pairs,
        synthetic_preferences(2, fmt="conversational"),
        bare,
        "conversational",
        max_length=512,
        source=SRC,
    )
    assert "needs a tokenizer with a chat template" in msg and SRC in msg


# ------------------------------------------------------------------------- the prefix check

# Like Qwen3/Gemma: the generation prompt opens an empty thought block that a finished
# conversation does not contain, so the prompt's tokens are not a prefix of prompt+completion.
THINK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n' }}{% endif %}"
)


def test_prefix_check_fires_on_broken_template():
    broken = train_tiny_tokenizer()
    broken.chat_template = THINK_TEMPLATE
    rows = synthetic_preferences(4, fmt="conversational")
    with pytest.raises(DataError) as info:
        tokenize_pairs(rows, broken, "conversational", max_length=10_000, source=SRC)
    err = info.value
    assert err.rows == [0, 1, 2, 3]
    first = err.problems[0]
    assert (first.row, first.field) == (0, "prompt")
    p = broken.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True)["input_ids"]
    full = broken.apply_chat_template(rows[0]["prompt"] + rows[0]["chosen"])["input_ids"]
    k = next(i for i, (a, b) in enumerate(zip(p, full)) if a != b)
    assert f"first difference at token position {k} " in str(err)
    assert f"{SRC}: row 0 (0-based), field 'prompt': the tokenized prompt" in str(err)
    assert "prefix_mismatch='trim'" in str(err)

    # trim = TRL: the completion starts where the two tokenizations diverge
    pairs = tokenize_pairs(
        rows, broken, "conversational", max_length=10_000, prefix_mismatch="trim"
    )
    assert pairs[0].prompt_ids == p[:k] and pairs[0].prompt_ids + pairs[0].chosen_ids == full
    data = build_preference_data(rows, broken, max_length=10_000, prefix_mismatch="trim")
    assert data.stats.prefix_trimmed_rows == (0, 1, 2, 3)


def test_prefix_check_passes_on_chatml(tok):
    rows = synthetic_preferences(30, fmt="conversational", seed=5)
    data = build_preference_data(rows, tok, max_length=10_000)
    assert data.stats.prefix_trimmed_rows == () and len(data) == 30


def test_prefix_check_standard_boundary_merge(tok):
    rows = [S, {"prompt": "Q: x A: ", "chosen": "yes", "rejected": "no"}]
    msg = _err(tokenize_pairs, rows, tok, "standard", max_length=100, source=SRC)
    assert "row 1 (0-based), field 'prompt'" in msg and "merge across" in msg
    assert "row 0 " not in msg


# ------------------------------------------------------------------------------- truncation


def _long_rows():
    w = synthetic_words()
    return [
        {"prompt": " ".join(w[:12]), "chosen": " " + " ".join(w[12:42]), "rejected": " " + w[50]},
        {"prompt": w[60], "chosen": " " + w[61], "rejected": " " + w[62]},
    ]


def test_truncation_keep_start(tok):
    rows = _long_rows()
    full = tokenize_pairs(rows, tok, "standard", max_length=10_000)
    n_p = len(full[0].prompt_ids)
    assert len(full[0].rejected_ids) < 6 < len(full[0].chosen_ids)
    ml = n_p + 6
    data = build_preference_data(rows, tok, fmt="standard", max_length=ml)
    cut = data.pairs
    assert cut[0].prompt_ids == full[0].prompt_ids
    assert cut[0].chosen_ids == full[0].chosen_ids[:6]
    assert cut[0].rejected_ids == full[0].rejected_ids  # fits: untouched
    assert cut[1] == full[1]
    assert data.stats.truncated_rows == (0,) and data.stats.max_sequence_tokens == ml


def test_truncation_keep_end(tok):
    rows = _long_rows()
    full = tokenize_pairs(rows, tok, "standard", max_length=10_000)
    ml = 2 * len(full[0].prompt_ids) // 3 * 2  # the prompt alone is 3/4 of it
    assert len(full[0].chosen_ids) > ml
    cut = tokenize_pairs(rows, tok, "standard", max_length=ml, truncation="keep_end")
    # the prompt loses its beginning, down to max_length // 2 tokens; the completion its end
    assert cut[0].prompt_ids == full[0].prompt_ids[-(ml // 2) :]
    assert cut[0].chosen_ids == full[0].chosen_ids[: ml - ml // 2]
    assert cut[1] == full[1]
    # the prompt is cut only as far as needed for the longer completion to fit
    short = [{**rows[0], "chosen": rows[0]["rejected"] + " " + synthetic_words()[70]}]
    (f,) = tokenize_pairs(short, tok, "standard", max_length=10_000)
    n_p, n_c = len(f.prompt_ids), len(f.chosen_ids)
    (c,) = tokenize_pairs(short, tok, "standard", max_length=n_p, truncation="keep_end")
    assert c.prompt_ids == f.prompt_ids[-(n_p - n_c) :] and c.chosen_ids == f.chosen_ids
    # max_prompt_length: prompts cut from the left even when they would fit
    cut = tokenize_pairs(
        rows, tok, "standard", max_length=1000, max_prompt_length=4, truncation="keep_end"
    )
    assert cut[0].prompt_ids == full[0].prompt_ids[-4:] and cut[0].chosen_ids == full[0].chosen_ids


def test_truncation_error_and_long_prompts(tok):
    rows = _long_rows()
    full = tokenize_pairs(rows, tok, "standard", max_length=10_000)
    n_p = len(full[0].prompt_ids)
    msg = _err(
        tokenize_pairs, rows, tok, "standard", max_length=n_p + 6, truncation="error", source=SRC
    )
    assert f"{SRC}: row 0 (0-based), field 'chosen': prompt+chosen has" in msg
    assert f"more than max_length={n_p + 6}" in msg and "row 1" not in msg
    assert "field 'rejected'" not in msg

    msg = _err(tokenize_pairs, rows, tok, "standard", max_length=n_p, source=SRC)
    assert f"row 0 (0-based), field 'prompt': prompt has {n_p} tokens" in msg
    msg = _err(
        tokenize_pairs, rows, tok, "standard", max_length=100, max_prompt_length=3, source=SRC
    )
    assert "more than max_prompt_length=3" in msg and "row 0 (0-based), field 'prompt'" in msg

    data = build_preference_data(rows, tok, max_length=n_p, drop_long_prompts=True)
    assert data.stats.dropped_rows == (0,) and data.row_ids == (1,) and data.n_rows == 2
    with pytest.raises(ValueError, match="max_length"):
        tokenize_pairs(rows, tok, "standard", max_length=1)


# ---------------------------------------------------------------------------------- unpaired


def test_unpaired_labels_and_conversational(tok):
    rows = synthetic_preferences(6, fmt="unpaired")
    rows[1] = {**rows[1], "label": 0}
    rows[2] = {**rows[2], "label": 1}
    ex = tokenize_unpaired(rows, tok, max_length=10_000)
    assert [e.desirable for e in ex] == [True, False, True, False, True, False]
    assert all(
        isinstance(e, TokenizedUnpaired) and e.completion_ids[-1] == tok.eos_token_id for e in ex
    )
    assert (
        ex[0].prompt_ids + ex[0].completion_ids
        == tok(rows[0]["prompt"] + rows[0]["completion"] + "</s>")["input_ids"]
    )

    conv = [
        {
            "prompt": _msgs("user", "hello there"),
            "completion": _msgs("assistant", "hi"),
            "label": True,
        },
        {
            "prompt": _msgs("user", "hello there"),
            "completion": _msgs("assistant", "go away"),
            "label": False,
        },
    ]
    data = build_preference_data(conv, tok, max_length=512)
    assert data.fmt == "unpaired" and data.conversational
    assert (data.stats.n_desirable, data.stats.n_undesirable) == (1, 1)
    assert tok.decode(data.unpaired[1].completion_ids) == "go away<|im_end|>\n"


# ----------------------------------------------------------------------------- whole pipeline


def test_load_preference_data_end_to_end(tmp_path, tok):
    rows = synthetic_preferences(40, fmt="conversational", seed=2)
    data = load_preference_data(
        _write_jsonl(tmp_path / "c.jsonl", rows), tok, max_length=64, drop_long_prompts=True
    )
    assert isinstance(data, PreferenceData) and data.fmt == "conversational" and data.conversational
    assert data.source.endswith("c.jsonl") and data.n_rows == 40
    assert len(data) == len(data.pairs) == 40 - data.stats.n_dropped
    assert all(isinstance(p, TokenizedPair) for p in data.pairs)
    assert all(
        len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= 64 for p in data.pairs
    )
    assert 0 < data.stats.mean_prompt_tokens < 64 and data.stats.n_truncated > 0

    bad = rows[:3] + [{**rows[3], "chosen": rows[3]["rejected"]}]
    msg = _err(load_preference_data, _write_jsonl(tmp_path / "bad.jsonl", bad), tok, max_length=64)
    assert "bad.jsonl: row 3 (0-based), field 'rejected': identical" in msg


def test_split_heldout(tok):
    rows = synthetic_preferences(50, fmt="standard", seed=4)
    rows += [{**rows[0], "chosen": " other one"}]  # a second pair with row 0's prompt
    data = build_preference_data(rows, tok, max_length=10_000)
    train, held = split_heldout(data, 0.2, seed=0)
    again = split_heldout(data, 0.2, seed=0)
    assert (train.row_ids, held.row_ids) == (again[0].row_ids, again[1].row_ids)
    assert set(train.row_ids).isdisjoint(held.row_ids)
    assert sorted(train.row_ids + held.row_ids) == list(range(51))
    assert 9 <= len(held) <= 12 and len(train) + len(held) == 51
    assert ({0, 50} <= set(train.row_ids)) or ({0, 50} <= set(held.row_ids))  # grouped by prompt
    assert list(held.row_ids) == sorted(held.row_ids)
    assert held.pairs == [data.pairs[data.row_ids.index(r)] for r in held.row_ids]
    assert split_heldout(data, 0.2, seed=1)[1].row_ids != held.row_ids
    assert len(split_heldout(data, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError):
        split_heldout(data, 1.0, seed=0)


# ------------------------------------------------------------------------- parity with TRL


def _trl_trainer(kind, tok, rows, max_length):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from unialign.lm.tiny import build_tiny_model

    cfg, trainer = (DPOConfig, DPOTrainer) if kind == "dpo" else (KTOConfig, KTOTrainer)
    args = cfg(
        output_dir=tempfile.mkdtemp(),
        max_length=max_length,
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=2,
        bf16=False,
    )
    return trainer(
        model=build_tiny_model(tok, hidden_size=16, intermediate_size=32, num_layers=1),
        ref_model=build_tiny_model(tok, hidden_size=16, intermediate_size=32, num_layers=1),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )


@pytest.mark.parametrize(
    ("fmt", "which"), [("standard", "tok"), ("standard", "bos_tok"), ("conversational", "tok")]
)
def test_token_ids_match_trl_dpo(fmt, which, request):
    """Same rows → same prompt/chosen/rejected ids as TRL 1.16's DPOTrainer, the same rows
    dropped for over-long prompts, and the same sequences after its collator truncates."""
    pytest.importorskip("trl")
    tk = request.getfixturevalue(which)
    rows = synthetic_preferences(12, fmt=fmt, seed=3)
    max_length = 64
    trainer = _trl_trainer("dpo", tk, rows, max_length)
    ds = trainer.train_dataset
    data = build_preference_data(rows, tk, max_length=max_length, drop_long_prompts=True)
    full = tokenize_pairs(rows, tk, fmt, max_length=100_000)
    assert 0 < len(ds) == len(data) < len(rows)  # some rows dropped by both
    assert data.stats.n_truncated > 0
    for i, row in enumerate(data.row_ids):
        assert ds[i]["prompt_ids"] == full[row].prompt_ids
        assert ds[i]["chosen_ids"] == full[row].chosen_ids
        assert ds[i]["rejected_ids"] == full[row].rejected_ids
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    n = len(ds)
    for i, p in enumerate(data.pairs):
        for j, comp in ((i, p.chosen_ids), (n + i, p.rejected_ids)):
            mask = batch["attention_mask"][j].bool()
            assert batch["input_ids"][j][mask].tolist() == p.prompt_ids + comp
            assert batch["completion_mask"][j][mask].tolist() == [0] * len(p.prompt_ids) + [
                1
            ] * len(comp)


def test_token_ids_match_trl_kto(tok):
    pytest.importorskip("trl")
    rows = synthetic_preferences(12, fmt="unpaired", seed=3)
    trainer = _trl_trainer("kto", tok, rows, 64)
    ds = trainer.train_dataset
    data = build_preference_data(rows, tok, max_length=64, drop_long_prompts=True)
    full = tokenize_unpaired(rows, tok, max_length=100_000)
    assert len(ds) == len(data)
    for i, row in enumerate(data.row_ids):
        assert ds[i]["prompt_ids"] == full[row].prompt_ids
        assert ds[i]["completion_ids"] == full[row].completion_ids
        assert bool(ds[i]["label"]) == data.unpaired[i].desirable
