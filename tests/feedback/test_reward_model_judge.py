"""RewardModelJudge on tiny sequence-classification models saved to disk: the scored text
(chat template / concatenation + EOS), left truncation, padding invariance, ensembles."""

import math

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from unialign.feedback.judges import (
    JudgeConfigError,
    JudgeError,
    ScoreJudge,
    build_judge,
    checked_scores,
)
from unialign.feedback.reward_models import RewardModelJudge
from unialign.lm.tiny import train_tiny_tokenizer
from unialign.losses.reward import ensemble_mean, ensemble_min, ensemble_uwo

pytestmark = pytest.mark.integration

PROMPTS = ["ab cd ef", "gh", "ij kl mn op qr st uv"]
COMPLETIONS = [" xyz", " hello world and more words here", " q"]
CONV_P = [
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
    [{"role": "user", "content": "what is up"}],
]
CONV_C = [
    [{"role": "assistant", "content": "hello"}],
    [{"role": "assistant", "content": "not much at all, thanks for asking"}],
]


def _save_model(path, tok, *, seed, num_labels=1, chat_template=True):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForSequenceClassification(cfg)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # scores of order 1, not 0.02
    model.save_pretrained(path)
    template = tok.chat_template
    if not chat_template:
        tok.chat_template = None
    tok.save_pretrained(path)
    tok.chat_template = template
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    tok = train_tiny_tokenizer(vocab_size=300, n_texts=100)
    return {
        "a": _save_model(root / "rm_a", tok, seed=0),
        "b": _save_model(root / "rm_b", tok, seed=1),
        "two_labels": _save_model(root / "cls2", tok, seed=0, num_labels=2),
        "no_template": _save_model(root / "rm_plain", tok, seed=0, chat_template=False),
    }


def _forward(path, ids):
    """The head's output on one unpadded sequence, computed directly."""
    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_standard_text_is_prompt_plus_completion_plus_eos(models):
    judge = RewardModelJudge(models["a"], device="cpu")
    assert isinstance(judge, ScoreJudge) and judge.name == "judge:rm:rm_a"
    tok = AutoTokenizer.from_pretrained(models["a"])
    got = checked_scores(judge, PROMPTS, COMPLETIONS)
    for p, c, score in zip(PROMPTS, COMPLETIONS, got):
        ids = tok(p + c + tok.eos_token)["input_ids"]
        assert score == pytest.approx(_forward(models["a"], ids), abs=1e-5)
    no_eos = RewardModelJudge(models["a"], device="cpu", append_eos=False)
    ids = tok(PROMPTS[0] + COMPLETIONS[0])["input_ids"]
    assert no_eos.score(PROMPTS[:1], COMPLETIONS[:1])[0] == pytest.approx(
        _forward(models["a"], ids), abs=1e-5
    )


def test_conversational_text_is_the_chat_template_of_the_whole_conversation(models):
    judge = RewardModelJudge(models["a"], device="cpu")
    tok = AutoTokenizer.from_pretrained(models["a"])
    got = judge.score(CONV_P, CONV_C)
    for p, c, score in zip(CONV_P, CONV_C, got):
        text = tok.apply_chat_template(p + c, tokenize=False)
        assert text.startswith("<|im_start|>system") or text.startswith("<|im_start|>user")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert score == pytest.approx(_forward(models["a"], ids), abs=1e-5)


def test_without_a_chat_template_the_contents_are_joined(models, caplog):
    judge = RewardModelJudge(models["no_template"], device="cpu")
    tok = AutoTokenizer.from_pretrained(models["no_template"])
    (score,) = judge.score(CONV_P[:1], CONV_C[:1])
    ids = tok("be brief\nhi there\nhello", add_special_tokens=False)["input_ids"]
    assert score == pytest.approx(_forward(models["no_template"], ids), abs=1e-5)
    assert "has no chat template" in caplog.text


def test_batching_and_padding_do_not_change_the_scores(models):
    prompts = PROMPTS * 3 + [p[0]["content"] for p in CONV_P]
    completions = COMPLETIONS * 3 + [c[0]["content"] for c in CONV_C]
    one = RewardModelJudge(models["a"], device="cpu", batch_size=1).score(prompts, completions)
    four = RewardModelJudge(models["a"], device="cpu", batch_size=4).score(prompts, completions)
    assert four == pytest.approx(one, abs=1e-5)
    assert len(set(round(s, 4) for s in one[:3])) == 3  # distinct texts, distinct scores


def test_long_texts_are_truncated_on_the_left_keeping_the_completions_end(models):
    judge = RewardModelJudge(models["a"], device="cpu", max_length=6)
    tok = AutoTokenizer.from_pretrained(models["a"])
    ids = tok(PROMPTS[2] + COMPLETIONS[1] + tok.eos_token)["input_ids"]
    assert len(ids) > 6
    (score,) = judge.score(PROMPTS[2:], COMPLETIONS[1:2])
    assert score == pytest.approx(_forward(models["a"], ids[-6:]), abs=1e-5)


@pytest.mark.parametrize("aggregate", ["mean", "min", "uwo"])
def test_an_ensemble_aggregates_its_members(models, aggregate):
    paths = [str(models["a"]), str(models["b"])]
    judge = RewardModelJudge(paths, aggregate=aggregate, uwo_coef=0.5, device="cpu")
    assert judge.name == f"judge:rm-{aggregate}:rm_a+rm_b"
    members = torch.stack(
        [torch.tensor(RewardModelJudge(p, device="cpu").score(PROMPTS, COMPLETIONS)) for p in paths]
    )
    assert torch.allclose(judge.member_scores(PROMPTS, COMPLETIONS), members, atol=1e-5)
    expected = {
        "mean": ensemble_mean(members),
        "min": ensemble_min(members),
        "uwo": ensemble_uwo(members, coef=0.5),
    }[aggregate]
    assert judge.score(PROMPTS, COMPLETIONS) == pytest.approx(expected.tolist(), abs=1e-5)
    # hand check of uwo for sample 0 with K = 2: mean − ½·((r₁ − r₂)/2)²
    if aggregate == "uwo":
        r1, r2 = members[:, 0].tolist()
        hand = (r1 + r2) / 2 - 0.5 * ((r1 - r2) / 2) ** 2
        assert judge.score(PROMPTS[:1], COMPLETIONS[:1])[0] == pytest.approx(hand, abs=1e-5)


def test_build_judge_makes_a_reward_model_ensemble(models):
    judge = build_judge(
        {
            "kind": "reward_model",
            "paths": [str(models["a"]), str(models["b"])],
            "aggregate": "min",
            "device": "cpu",
            "dtype": "float32",
            "name": "rm-pair",
        }
    )
    assert isinstance(judge, RewardModelJudge) and judge.name == "judge:rm-pair"
    assert len(judge.members) == 2 and judge.aggregate == "min"
    single = build_judge({"kind": "reward_model", "paths": str(models["a"]), "device": "cpu"})
    assert len(single.members) == 1 and single.score([], []) == []


def test_loading_errors_name_the_path_and_the_fix(models, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.bin").write_bytes(b"x")
    cases = [
        ({"paths": tmp_path / "nowhere"}, "reward model path .*nowhere' does not exist"),
        ({"paths": tmp_path / "file.bin"}, "is a file, not a directory"),
        ({"paths": tmp_path / "empty"}, "cannot load the tokenizer of reward model .*empty"),
        ({"paths": models["two_labels"]}, r"has num_labels = 2; a reward model has one output"),
        ({"paths": [models["a"]], "aggregate": "max"}, "aggregate must be one of"),
        ({"paths": [models["a"]], "uwo_coef": -0.1}, "uwo_coef must be >= 0"),
        ({"paths": [models["a"]], "uwo_coef": math.nan}, "uwo_coef must be >= 0"),
        ({"paths": [models["a"]], "batch_size": 0}, "batch_size must be >= 1"),
        ({"paths": [models["a"]], "max_length": 1}, "max_length must be >= 2"),
        ({"paths": [models["a"]], "dtype": "float64"}, "dtype must be one of"),
        ({"paths": []}, "needs at least one model path"),
    ]
    for kwargs, message in cases:
        with pytest.raises(JudgeConfigError, match=message):
            RewardModelJudge(device="cpu", **kwargs)


def test_non_finite_scores_and_bad_samples_are_judge_errors(models):
    judge = RewardModelJudge([models["a"], models["b"]], device="cpu", name="ens")
    with torch.no_grad():
        judge.members[1].model.score.weight.fill_(math.nan)
    with pytest.raises(JudgeError, match=r"judge 'judge:ens': member .*rm_b scored sample 0 nan"):
        checked_scores(judge, PROMPTS, COMPLETIONS)
    good = RewardModelJudge(models["a"], device="cpu")
    with pytest.raises(JudgeError, match="judge 'judge:rm:rm_a' raised ValueError: sample 0"):
        checked_scores(good, ["a string prompt"], CONV_C[:1])
