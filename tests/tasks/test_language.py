"""The synthetic language: the style classifier on hand-written strings, prompts, corpus."""

import collections

import pytest

from unialign.tasks.language import (
    INVALID,
    PROMPT_TEMPLATES,
    STYLES,
    TOPICS,
    LanguageConfig,
    ParsedAnswer,
    SyntheticLanguage,
    classify_style,
    format_prompt,
    parse_answer,
    raw_prompt,
    topic_of,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "items about otter : calm , wet , small .",
            ParsedAnswer("list", "otter", ("calm", "wet", "small")),
        ),
        ("items about otter : calm .", ParsedAnswer("list", "otter", ("calm",))),
        (
            "once there was a lamp that was calm and wet . the end .",
            ParsedAnswer("story", "lamp", ("calm", "wet")),
        ),
        ("is the river calm ? is it wet ?", ParsedAnswer("question", "river", ("calm", "wet"))),
        ("is the river calm ?", ParsedAnswer("question", "river", ("calm",))),
        ("wow , the comet ! calm ! wet !", ParsedAnswer("exclaim", "comet", ("calm", "wet"))),
        (
            "report on tiger : calm ; wet ; old . end of report .",
            ParsedAnswer("report", "tiger", ("calm", "wet", "old")),
        ),
        # the model's decoded completions start with a space; </s> may be left in
        (" items about otter : calm .", ParsedAnswer("list", "otter", ("calm",))),
        ("items about otter : calm .</s>", ParsedAnswer("list", "otter", ("calm",))),
        # unknown words parse (the gold reward does not credit them)
        ("items about zzz : qq , calm .", ParsedAnswer("list", "zzz", ("qq", "calm"))),
    ],
)
def test_parse_answer_reads_each_style(text, expected):
    assert parse_answer(text) == expected
    assert classify_style(text) == expected.style


@pytest.mark.parametrize(
    "text",
    [
        "",
        "items about otter : calm , wet",  # cut before the closing " ."
        "items about otter : .",  # no descriptor
        "items about otter calm .",  # missing ":"
        "items about otter : calm , , wet .",
        "once there was a lamp that was calm and wet .",  # no "the end ."
        "is the river calm ? is it wet",  # cut
        "is the river calm ? it wet ?",
        "items about otter : calm . is the river calm ?",  # two answers
        "Items about otter : calm .",  # capital
        "items about otter : calm .  extra",
        "wow , the comet !",  # no descriptor
    ],
)
def test_unparseable_answers_are_invalid(text):
    assert parse_answer(text) == ParsedAnswer(INVALID)


def test_every_style_renders_and_parses_back():
    lang = SyntheticLanguage(LanguageConfig(styles=STYLES, style_weights=(1,) * len(STYLES)))
    rows = lang.corpus(500, seed=3)
    assert {r.style for r in rows} == set(STYLES)
    for r in rows:
        parsed = parse_answer(r.answer)
        assert (parsed.style, parsed.topic) == (r.style, r.topic)


def test_conversational_completions_and_prompts():
    conv = [{"role": "assistant", "content": "is the river calm ?"}]
    assert classify_style(conv) == "question"
    prompt = [{"role": "user", "content": "describe the river ."}]
    assert raw_prompt(prompt) == "describe the river ."
    assert raw_prompt(format_prompt("describe the river .")) == "describe the river ."
    assert topic_of(prompt) == topic_of("Q: describe the river .\nA:") == "river"
    assert topic_of("nothing here") == ""


def test_prompts_are_deterministic_and_splits_disjoint():
    lang, again = SyntheticLanguage(seed=5), SyntheticLanguage(seed=5)
    train, evals = lang.prompts("train"), lang.prompts("eval")
    assert train == again.prompts("train") and evals == again.prompts("eval")
    assert not set(train) & set(evals)
    assert len(train) + len(evals) == len(PROMPT_TEMPLATES) * len(TOPICS)
    assert len(evals) == round(0.25 * len(PROMPT_TEMPLATES) * len(TOPICS))
    assert all(p.startswith("Q: ") and p.endswith("\nA:") for p in train)
    assert lang.prompts("eval", n=7, seed=1) == again.prompts("eval", n=7, seed=1)
    assert lang.prompts("eval", n=7, seed=1) != lang.prompts("eval", n=7, seed=2)
    conv = lang.prompts("train", n=3, seed=0, conversational=True)
    assert [format_prompt(c[0]["content"]) for c in conv] == lang.prompts("train", n=3, seed=0)
    assert SyntheticLanguage(seed=6).prompts("eval") != evals
    with pytest.raises(ValueError):
        lang.prompts("test")


def test_corpus_is_deterministic_and_spread_over_styles():
    lang = SyntheticLanguage(seed=0)
    rows = lang.corpus(3000, seed=0)
    assert rows == SyntheticLanguage(seed=0).corpus(3000, seed=0)
    assert rows != lang.corpus(3000, seed=1)
    counts = collections.Counter(r.style for r in rows)
    for style, weight in zip(lang.styles, lang.config.style_weights):
        assert abs(counts[style] / 3000 - weight) < 0.04
    train = set(lang.prompts("train"))
    assert all(format_prompt(r.prompt) in train for r in rows)
    # mostly on topic, answers mostly short; long ones exist but are rare
    assert 0.8 < sum(r.topic == topic_of(r.prompt) for r in rows) / 3000 < 0.9
    n_items = [len(parse_answer(r.answer).items) for r in rows]
    assert 0.02 < sum(n >= 8 for n in n_items) / 3000 < 0.08
    assert max(n_items) >= 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"styles": ("list",), "style_weights": (1.0,)},
        {"styles": ("list", "poem"), "style_weights": (1.0, 1.0)},
        {"styles": ("list", "story"), "style_weights": (1.0,)},
        {"stop_prob": 0.0},
        {"eval_fraction": 1.0},
    ],
)
def test_bad_language_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        LanguageConfig(**kwargs)
