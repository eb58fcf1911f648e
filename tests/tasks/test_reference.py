"""The pretrained reference: cache, loading, determinism, chat template, multi-style samples."""

import json
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import unialign.tasks.reference as reference_mod
from unialign.tasks import StyleTask, style_task
from unialign.tasks.game import style_distribution
from unialign.tasks.language import SyntheticLanguage, format_prompt
from unialign.tasks.reference import (
    INFO_FILE,
    ReferenceConfig,
    default_cache_dir,
    fingerprint,
    reference_policy,
    sample_completions,
    train_tokenizer,
)

SMALL = ReferenceConfig.small()
# a few steps only: enough to compare weights
TINY = ReferenceConfig.small(steps=3, batch_size=8, hidden_size=16, intermediate_size=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("unialign-cache")


@pytest.fixture(scope="module")
def small(cache):
    return reference_policy(SMALL, cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def small_samples(small):
    model, tok = small.load()
    prompts = small.language.prompts("eval", n=32, seed=0)
    samples = sample_completions(model, tok, prompts, num_samples=4, seed=0, max_new_tokens=64)
    return [p for p, s in zip(prompts, samples) for _ in s], [c for s in samples for c in s]


def test_second_call_loads_from_the_cache_without_training(small, cache, monkeypatch):
    assert small.trained
    assert small.path.parent == cache and small.path.name == f"reference-{small.fingerprint[:16]}"
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]

    def no_training(*args, **kwargs):
        raise AssertionError("a cached reference must not be trained again")

    monkeypatch.setattr(reference_mod, "pretrain", no_training)
    again = reference_policy(SMALL, cache_dir=cache, progress=False)
    assert not again.trained and again.path == small.path and again.info == small.info
    record = json.loads((small.path / INFO_FILE).read_text())
    assert record["fingerprint"] == small.fingerprint == fingerprint(SMALL)
    assert record["info"]["parameters"] > 0


def test_the_directory_is_an_ordinary_local_model(small):
    model = AutoModelForCausalLM.from_pretrained(small.path)
    tok = AutoTokenizer.from_pretrained(small.path)
    prompt = small.language.prompts("train", n=1)[0]
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()
    gen = model.generation_config
    assert gen.do_sample and gen.top_k == 0 and gen.eos_token_id == tok.eos_token_id


def test_chat_template_renders_the_plain_format(small):
    tok = AutoTokenizer.from_pretrained(small.path)
    raw, answer = "describe the otter .", "is the otter calm ?"
    user = [{"role": "user", "content": raw}]
    full = user + [{"role": "assistant", "content": answer}]
    prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert prompt == format_prompt(raw)
    assert tok.apply_chat_template(full, tokenize=False) == prompt + " " + answer + tok.eos_token
    plain_ids = tok(prompt + " " + answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert plain_ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(plain_ids) == prompt + " " + answer + tok.eos_token


def test_small_reference_samples_several_styles(small, small_samples):
    """Temperature-1 samples of the test-size model spread over the styles."""
    _, completions = small_samples
    dist = style_distribution(completions, small.language.styles)
    assert (dist[:-1] >= 0.05).sum() >= 2, dist
    assert dist[-1] < 0.5, dist  # mostly valid answers


def test_same_seed_same_corpus_tokenizer_and_weights(tmp_path):
    a = reference_policy(TINY, cache_dir=tmp_path / "a", progress=False)
    b = reference_policy(TINY, cache_dir=tmp_path / "b", progress=False)
    c = reference_policy(
        ReferenceConfig.small(**{**TINY.__dict__, "seed": 1}),
        cache_dir=tmp_path / "c",
        progress=False,
    )
    assert a.path.name == b.path.name != c.path.name
    sa, sb, sc = (AutoModelForCausalLM.from_pretrained(r.path).state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].shape == sc[k].shape) or (
        sa.keys() != sc.keys()
    )
    ta, tb = (AutoTokenizer.from_pretrained(r.path) for r in (a, b))
    assert ta.get_vocab() == tb.get_vocab()
    assert a.language.corpus(50) == b.language.corpus(50)


def test_training_leaves_global_torch_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    reference_mod.pretrain(TINY, progress=False, threads=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == flag


def test_losing_a_cache_race_keeps_the_winner(tmp_path, monkeypatch):
    """Another process renames its copy into place while this one trains."""
    real = reference_mod.pretrain
    winner = reference_policy(TINY, cache_dir=tmp_path / "winner", progress=False)

    def slow_pretrain(config, **kwargs):
        out = real(config, **kwargs)
        target = tmp_path / "shared" / winner.path.name
        target.parent.mkdir(exist_ok=True)
        import shutil

        shutil.copytree(winner.path, target)
        return out

    monkeypatch.setattr(reference_mod, "pretrain", slow_pretrain)
    loser = reference_policy(TINY, cache_dir=tmp_path / "shared", progress=False)
    assert loser.trained and loser.info == winner.info
    assert [p.name for p in (tmp_path / "shared").iterdir()] == [winner.path.name]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIALIGN_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("UNIALIGN_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "unialign", "tasks")


def test_tokenizer_is_deterministic():
    lang = SyntheticLanguage(seed=0)
    assert train_tokenizer(lang).get_vocab() == train_tokenizer(lang).get_vocab()


def test_sampling_is_seeded(small):
    model, tok = small.load()
    prompts = small.language.prompts("eval", n=4, seed=0)
    conv = small.language.prompts("eval", n=4, seed=0, conversational=True)
    first = sample_completions(model, tok, prompts, num_samples=2, seed=3, max_new_tokens=24)
    assert first == sample_completions(
        model, tok, prompts, num_samples=2, seed=3, max_new_tokens=24
    )
    assert first == sample_completions(model, tok, conv, num_samples=2, seed=3, max_new_tokens=24)
    assert len(first) == 4 and all(len(s) == 2 for s in first)


def test_style_task_evaluate(small, cache, small_samples):
    task = style_task(SMALL, cache_dir=cache, progress=False)
    assert isinstance(task, StyleTask) and task.reference.path == small.path
    prompts, completions = small_samples
    metrics = task.evaluate(prompts, completions)
    dist = style_distribution(completions, task.language.styles)
    shares = [metrics[f"eval/style/{s}"] for s in (*task.language.styles, "invalid")]
    np.testing.assert_allclose(shares, dist)
    assert metrics["eval/exploitability"] == pytest.approx(task.game.exploitability(dist))
    assert metrics["eval/equilibrium_tv"] == pytest.approx(task.game.distance(dist))
    assert 0 <= metrics["eval/gold_reward"] <= 1 and 0 <= metrics["eval/peak_reached"] <= 1
    assert task.prompts("eval", n=3) == task.language.prompts("eval", n=3)


@pytest.mark.slow
def test_default_reference_is_multimodal(tmp_path):
    """The default setting pretrains within a few minutes on a loaded 2-core machine and its
    temperature-1 samples spread over all styles with few invalid answers."""
    start = time.perf_counter()
    task = style_task(cache_dir=tmp_path, progress=False)
    seconds = time.perf_counter() - start
    model, tok = task.reference.load()
    prompts = task.prompts("eval", n=128, seed=0)
    samples = sample_completions(model, tok, prompts, num_samples=4, seed=0)
    flat_prompts = [p for p, s in zip(prompts, samples) for _ in s]
    metrics = task.evaluate(flat_prompts, [c for s in samples for c in s])
    print(f"pretraining {seconds:.0f} s, info {task.reference.info}, metrics {metrics}")
    for style in task.language.styles:
        assert metrics[f"eval/style/{style}"] >= 0.1
    assert metrics["eval/style/invalid"] <= 0.1
    assert metrics["eval/peak_reached"] < 0.1
    assert metrics["eval/exploitability"] > 0.02  # the reference is not at the equilibrium
    assert seconds < 300
