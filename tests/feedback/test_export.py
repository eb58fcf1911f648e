"""Export labelled completion comparisons as preference JSONL, read back by the LM loader."""

import json

import pytest
import torch

from unialign.cli import main
from unialign.feedback.export import export_preference_jsonl
from unialign.feedback.store import FeedbackStore
from unialign.feedback.types import SegmentBatch
from unialign.lm.data import load_preference_data
from unialign.lm.tiny import train_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(vocab_size=300, n_texts=100)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _standard_store(path):
    """q1 teacher 1 + human 0, q2 teacher 0, q3 tie, q4 skipped, q5 identical completions."""
    store = FeedbackStore(path)
    ids = store.add_completion_queries(
        ["The sky is", "Two plus two is", "Cats are", "Dogs are", "Snow is"],
        [" blue.", " five.", " cute.", " loyal.", " white."],
        [" green.", " four.", " small.", " loud.", " white."],
        step=0,
        policy_version="it-0",
    )
    store.add_labels(ids, [1, 0, 0.5, 0, 1], labeler="teacher:oracle", keep_mask=[1, 1, 1, 0, 1])
    store.add_labels([ids[0]], [0.0], labeler="human:ada")
    seg = SegmentBatch(
        torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.zeros(1, 2), torch.zeros(1)
    )
    seg_id = store.add_segment_queries(seg, seg, step=0, selection="uniform")
    store.add_labels(seg_id, [1.0], labeler="teacher:oracle")  # not a completion: never exported
    return store


def test_standard_export_loads_with_the_lm_loader(tmp_path, tok):
    with _standard_store(tmp_path / "fb.sqlite") as store:
        report = export_preference_jsonl(store, tmp_path / "prefs.jsonl")
    assert (report.rows, report.fmt, report.ties, report.skipped, report.unusable) == (
        3, "standard", 1, 1, 1,
    )  # fmt: skip
    assert report.labelers == ("human:ada", "teacher:oracle")
    rows = _rows(tmp_path / "prefs.jsonl")
    assert [(r["prompt"], r["chosen"], r["rejected"], r["labeler"]) for r in rows] == [
        ("The sky is", " blue.", " green.", "teacher:oracle"),  # label 1: the first completion
        ("The sky is", " green.", " blue.", "human:ada"),  # label 0: the second
        ("Two plus two is", " four.", " five.", "teacher:oracle"),
    ]
    assert [r["query_id"] for r in rows] == [1, 1, 2]
    data = load_preference_data(tmp_path / "prefs.jsonl", tok, max_length=64)
    assert data.fmt == "standard" and len(data) == 3
    for pair, row in zip(data.pairs, rows):
        assert pair.prompt_ids == tok(row["prompt"])["input_ids"]
        assert tok.decode(pair.chosen_ids) == row["chosen"] + tok.eos_token
        assert tok.decode(pair.rejected_ids) == row["rejected"] + tok.eos_token


def test_export_one_labeller(tmp_path, tok):
    _standard_store(tmp_path / "fb.sqlite").close()
    report = export_preference_jsonl(
        tmp_path / "fb.sqlite", tmp_path / "ada.jsonl", labeler="human:ada"
    )
    assert (report.rows, report.ties, report.skipped, report.unusable) == (1, 0, 0, 0)
    assert _rows(tmp_path / "ada.jsonl")[0]["chosen"] == " green."


def test_conversational_export_loads_with_the_chat_template(tmp_path, tok):
    user = [{"role": "user", "content": "Name a fruit."}]
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_completion_queries(
            [user, user],
            [
                [{"role": "assistant", "content": "Apple."}],
                [{"role": "assistant", "content": "Pear."}],
            ],
            [
                [{"role": "assistant", "content": "Brick."}],
                [{"role": "assistant", "content": "Plum."}],
            ],
            step=1,
        )
        store.add_labels(ids, [1.0, 0.0], labeler="judge:rm")
        report = export_preference_jsonl(store, tmp_path / "conv.jsonl")
    assert (report.rows, report.fmt) == (2, "conversational")
    rows = _rows(tmp_path / "conv.jsonl")
    assert rows[0]["prompt"] == user
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Apple."}]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "Plum."}]
    data = load_preference_data(tmp_path / "conv.jsonl", tok, max_length=64)
    assert data.fmt == "conversational" and data.conversational and len(data) == 2
    assert "Plum." in tok.decode(data.pairs[1].chosen_ids)
    assert "Pear." in tok.decode(data.pairs[1].rejected_ids)


def test_mixed_formats_need_a_choice(tmp_path):
    with _standard_store(tmp_path / "fb.sqlite") as store:
        ids = store.add_completion_queries(
            [[{"role": "user", "content": "Hi"}]],
            [[{"role": "assistant", "content": "Hello."}]],
            [[{"role": "assistant", "content": "Go away."}]],
            step=2,
        )
        store.add_labels(ids, [1.0], labeler="teacher:oracle")
        with pytest.raises(ValueError, match="mix standard and conversational.*fmt="):
            export_preference_jsonl(store, tmp_path / "x.jsonl")
        assert not (tmp_path / "x.jsonl").exists()
        report = export_preference_jsonl(store, tmp_path / "conv.jsonl", fmt="conversational")
    assert (report.rows, report.other_format, report.unusable) == (1, 4, 0)


def test_cli_feedback_export(tmp_path, capsys):
    _standard_store(tmp_path / "fb.sqlite").close()
    out = tmp_path / "sub" / "prefs.jsonl"
    assert (
        main(
            [
                "feedback",
                "export",
                str(tmp_path / "fb.sqlite"),
                str(out),
                "--labeler",
                "teacher:oracle",
            ]
        )
        == 0
    )
    assert "wrote 2 preference rows (standard)" in capsys.readouterr().out
    assert len(_rows(out)) == 2

    assert main(["feedback", "export", str(tmp_path / "missing.sqlite"), str(out)]) == 2
    assert "no feedback store at" in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite").exists()
    (tmp_path / "notes.txt").write_text("not a database, clearly\n" * 50)
    assert main(["feedback", "export", str(tmp_path / "notes.txt"), str(out)]) == 2
    assert "notes.txt is not a unialign feedback store" in capsys.readouterr().err
    assert (
        main(["feedback", "export", str(tmp_path / "fb.sqlite"), str(out), "--labeler", "bob"]) == 0
    )
    captured = capsys.readouterr().out
    assert "wrote 0 preference rows" in captured and "warning" in captured
