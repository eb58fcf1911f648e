"""Policy-gradient methods in the online loop on a tiny random Qwen2 (hidden 64, 2 layers): each
method end to end, every GRPO loss variant's aggregation, PPO's epochs × minibatches on a fixed
rollout, exact accumulation, resume, a pair judge refused, several rewards combined.

The judge is a Python function of the completion text (share of vowels); a random model's
completions are random text, so these tests check what is computed, stored and restored, not
that the policy improves (``test_online_rl_task.py``, slow tier, watches a learning signal).
"""

from __future__ import annotations

import json
import math
import signal
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import get_scheduler

from unialign.config import ConfigError
from unialign.feedback.store import FeedbackStore
from unialign.lm import online_rl
from unialign.lm.generation import SamplingParams, generate
from unialign.lm.model import load_policy, load_tokenizer
from unialign.lm.online import train_lm_online
from unialign.lm.online_judging import FunctionPairJudge, FunctionScoreJudge, as_completion
from unialign.lm.online_methods import METHODS, Judgements, preferences_from_scores
from unialign.lm.online_rl import (
    RolloutSettings,
    collect_rollout,
    prepare_policy,
    update_rollout,
)
from unialign.lm.online_update import plan_steps
from unialign.lm.tiny import save_tiny
from unialign.lm.value_head import token_outputs
from unialign.losses import REGISTRY

from .test_online import cfg, lines  # the online loop's tiny config and metric lines

pytestmark = pytest.mark.integration

PROMPTS = ["abc def ghi", "hello there", "qwe rty uio", "zz top"]
LOGPS = dict(pad_id=0, chunk_size=1024, max_tokens_per_row=None)


def vowel_score(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(1, len(c)) for c in completions]


SCORE = FunctionScoreJudge(vowel_score, "vowels")
PAIR = FunctionPairJudge(lambda p, a, b: [0.5] * len(a), "coin")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("online-rl")
    save_tiny(d / "model")
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (d / "rewards.py").write_text(
        "def vowels(prompts, completions):\n"
        "    return [sum(ch in 'aeiou' for ch in c) / max(1, len(c)) for c in completions]\n"
        "def length(prompts, completions):\n"
        "    return [len(c) / 10 for c in completions]\n"
    )
    return d


# ---------------------------------------------------------------------------------------------
# each method end to end
# ---------------------------------------------------------------------------------------------
CASES = {
    "reinforce": dict(method="reinforce"),
    "rloo_kl_penalty": dict(method="rloo", kl_penalty="k1", kl_penalty_coef=0.1),
    "grpo_lora": dict(method="grpo", finetune="lora", lora_r=4),
    "grpo_dapo_clip_higher": dict(method="grpo", loss="dapo", update_epochs=2,
                                  loss_params={"epsilon_low": 0.2, "epsilon_high": 0.28}),
    "ppo": dict(method="ppo", update_epochs=2, updates_per_epoch=2, kl_penalty="k3"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_method_runs_two_iterations(tmp_path, tiny, case):
    """Two iterations: a metrics line each with the objective's and the rollout's diagnostics,
    every sample's score stored with its pairs, the final model (PPO: its value head beside it,
    not inside the LM's weights)."""
    extra = CASES[case]
    out = tmp_path / "run"
    summary = train_lm_online(cfg(tiny, out, **extra), judge=SCORE)
    assert summary["iterations"] == 2
    rows = lines(out)
    assert [r["step"] for r in rows] == [1, 2]
    key = "pg/baseline" if extra["method"] in ("reinforce", "rloo") else "pg/ratio_mean"
    for r in rows:
        assert r["online/examples"] == 6 and key in r and "rl/advantage_std" in r
        assert math.isfinite(r["loss/total"]) and "judge/score" in r
    if extra.get("kl_penalty") or extra["method"] == "grpo" and "loss" not in extra:
        assert all("rl/kl" in r and "online/logp_reference" in r for r in rows)
    with FeedbackStore(out / "feedback.sqlite", create=False) as s:
        assert s.count_queries("completion") == 2 * 2 * 3  # K(K−1)/2 pairs per prompt
    outputs = summary["outputs"]
    if extra["method"] == "ppo":
        assert "value/error" in rows[0] and "rl/explained_variance" in rows[0]
        head = load_file(outputs["value_head"])
        assert head["linear.weight"].shape == (1, 64)
        lm = load_file(str(out / "model" / "model.safetensors"))
        assert not any("value_head" in k for k in lm)
    assert Path(outputs.get("model", outputs.get("adapter"))).is_dir()


# ---------------------------------------------------------------------------------------------
# the update on a fixed rollout
# ---------------------------------------------------------------------------------------------
def rollout_case(tiny, method: str, *, loss: str | None = None, params=None, micro=2, epochs=1,
                 steps=1, lr=1e-3, value_lr=None, **settings_kw):  # fmt: skip
    """A fresh tiny policy, 2 prompts × 3 samples scored by the vowel judge, the method's
    examples, its plan, settings and optimizer, and the rollout (before any update)."""
    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny / "model"))
    policy = load_policy(str(tiny / "model"), dtype=torch.float32, attn_implementation="sdpa")
    gens = generate(policy, tok, PROMPTS[:2], SamplingParams(num_samples=3, max_new_tokens=8,
                                                             seed=1))  # fmt: skip
    scores = torch.tensor(vowel_score(None, list(gens.texts)), dtype=torch.float64).view(2, 3)
    examples = METHODS[method].build(Judgements(preferences_from_scores(scores, 1.0), scores), {})
    rule = METHODS[method].rollout
    spec = REGISTRY[loss or rule.losses[0]]
    settings = RolloutSettings(rule, spec, {**spec.hparams, **(params or {})}, 3, **settings_kw)
    groups = prepare_policy(policy, settings, lr=lr, value_lr=value_lr)
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = get_scheduler("constant", opt)
    plan = plan_steps(len(examples), epochs=epochs, groups=steps, micro=micro,
                      seeds=list(range(epochs)))  # fmt: skip
    kw = dict(LOGPS, pad_id=tok.pad_token_id)
    ro = collect_rollout(policy, None, gens, examples, plan[:steps], settings, **kw)
    return policy, gens, examples, plan, settings, opt, sched, ro, kw


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo", "bnpo", "gspo"])
def test_grpo_loss_variants_aggregate_as_documented(tiny, loss):
    """One step over all six samples in micro-batches of 2, at the rollout's own weights
    (ratio 1, no KL): the per-sample surrogate is −A_i·Σ_t 1/d_i, so the logged mean loss is
    mean_i(−A_i·n_i/d_i) with d_i = n_i (grpo, gspo), L_max = 8 (dr_grpo), the step's mean
    length n̄ (dapo) or the micro-batch's (bnpo)."""
    params = {"kl_coef": 0.0} | ({"max_completion_length": 8} if loss == "dr_grpo" else {})
    policy, gens, ex, plan, st, opt, sched, ro, kw = rollout_case(tiny, "grpo", loss=loss,
                                                                  params=params)  # fmt: skip
    res = update_rollout(policy, opt, sched, gens, ex, plan, ro, st, max_grad_norm=None, **kw)
    n = ro.mask.sum(-1).double()
    adv = ro.targets.advantages.double()
    order = [ex.chosen[i].item() for mb in plan[0] for i in mb]
    if loss in ("grpo", "gspo"):
        d = n
    elif loss == "dr_grpo":
        d = torch.full_like(n, 8.0)
    elif loss == "dapo":
        d = torch.full_like(n, float(n.mean()))
    else:
        d = torch.empty_like(n)
        for mb in plan[0]:
            rows = [ex.chosen[i].item() for i in mb]
            d[rows] = n[rows].mean()
    want = float((-adv * n / d)[order].mean())
    assert res.metrics["loss/total"] == pytest.approx(want, abs=1e-6)
    assert res.metrics["pg/ratio_mean"] == pytest.approx(1.0, abs=1e-6)


def test_ppo_epochs_and_minibatches_fit_the_value_head(tiny):
    """PPO with 2 epochs × 2 minibatches on one fixed rollout: four optimizer steps; the value
    loss falls from the first epoch to the second, and the head's squared error to the GAE
    returns over the whole rollout ends below its start (V ≡ 0 at the start)."""
    policy, gens, ex, plan, st, opt, sched, ro, kw = rollout_case(
        tiny, "ppo", micro=2, epochs=2, steps=2, lr=1e-5, value_lr=1e-3
    )
    ids = list(range(len(gens)))
    mask, ret = ro.mask, ro.targets.returns

    def value_error():
        with torch.no_grad():
            v = token_outputs(policy, gens, ids, width=mask.shape[1],
                              value_head=policy.value_head, **kw).values  # fmt: skip
        return float(((v - ret)[mask] ** 2).mean())

    before = value_error()
    res = update_rollout(policy, opt, sched, gens, ex, plan, ro, st, max_grad_norm=1.0, **kw)
    assert len(res.steps) == 4
    first, second = (
        [s["loss/value"] for s in res.steps[:2]],
        [s["loss/value"] for s in res.steps[2:]],
    )
    assert sum(second) < sum(first)
    assert value_error() < before
    assert "value/clip_fraction" in res.metrics and "loss/policy" in res.metrics


@pytest.mark.parametrize("method", ["ppo", "grpo_dapo"])
def test_gradient_accumulation_is_exact(tiny, method):
    """One step over the same six samples in micro-batches of 1 or of 6: the same mean loss and
    gradient norm (PPO's token means and DAPO's mean length are the step's, not the
    micro-batch's)."""
    got = []
    for micro in (1, 6):
        m, loss = ("ppo", None) if method == "ppo" else ("grpo", "dapo")
        policy, gens, ex, plan, st, opt, sched, ro, kw = rollout_case(tiny, m, loss=loss,
                                                                      micro=micro, lr=1e-12)  # fmt: skip
        res = update_rollout(policy, opt, sched, gens, ex, plan, ro, st, max_grad_norm=1e9, **kw)
        got.append((res.metrics["loss/total"], res.grad_norm))
    assert got[0][0] == pytest.approx(got[1][0], rel=1e-5, abs=1e-7)
    assert got[0][1] == pytest.approx(got[1][1], rel=1e-5)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_deferred_old_logps_equal_the_frozen_pass(tiny, method, monkeypatch):
    """One optimizer step per rollout, no KL penalty, no value head, no dropout: the rollout
    skips the ℓ_old pass and the update's first forward (at the same weights) supplies it.
    Against the same rollout with the frozen pass forced: the summed ℓ_old per sample, the
    mean loss, the gradient norm, the ``rl/*`` metrics and the updated weights agree to float32
    rounding (rel 1e-5: the two forwards differ only in grad mode, so at most in the kernels'
    summation order), and GRPO's ratio is exactly 1 (exp(ℓ − ℓ.detach()) = exp(0))."""
    got = []
    for forced in (False, True):
        if forced:
            monkeypatch.setattr(online_rl, "defers_old_logps", lambda *a: False)
        params = {"kl_coef": 0.0} if method == "grpo" else None
        policy, gens, ex, plan, st, opt, sched, ro, kw = rollout_case(tiny, method, params=params,
                                                                      micro=4)  # fmt: skip
        assert ro.deferred is not forced
        res = update_rollout(policy, opt, sched, gens, ex, plan, ro, st, max_grad_norm=1e9, **kw)
        assert not ro.deferred and torch.isfinite(ro.previous).all()
        got.append(
            (ro.previous, res, torch.cat([p.detach().flatten() for p in policy.parameters()]))
        )
    (prev_a, res_a, w_a), (prev_b, res_b, w_b) = got
    torch.testing.assert_close(prev_a, prev_b, rtol=1e-5, atol=1e-5)
    assert res_a.grad_norm == pytest.approx(res_b.grad_norm, rel=1e-5)
    for k in ("loss/total", "rl/reward", "rl/advantage_mean", "rl/advantage_std"):
        assert res_a.metrics[k] == pytest.approx(res_b.metrics[k], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(w_a, w_b, rtol=1e-5, atol=1e-7)
    if method == "grpo":
        assert res_a.metrics["pg/ratio_mean"] == 1.0


# ---------------------------------------------------------------------------------------------
# resume, judges
# ---------------------------------------------------------------------------------------------
def interrupt_at(k):
    def hook(rec):
        if rec.iteration == k:
            signal.raise_signal(signal.SIGINT)

    return hook


def store_rows(out: Path) -> list:
    con = sqlite3.connect(out / "feedback.sqlite")
    rows = con.execute("SELECT q.id, q.step, p.* FROM queries q JOIN completion_pairs p "
                       "ON p.query_id = q.id ORDER BY q.id").fetchall()  # fmt: skip
    con.close()
    return rows


RESUME = {
    "grpo": dict(method="grpo", update_epochs=2),
    "ppo_lora_dropout": dict(method="ppo", finetune="lora", lora_r=4, lora_dropout=0.2,
                             updates_per_epoch=2, kl_penalty="k1", value_lr=1e-2),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RESUME))
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, tiny, case):
    """SIGINT after iteration 2 of 3, then ``resume=True``: the metrics lines (wall-clock values
    aside), the store rows and the final weights — PPO's value head included — equal the
    uninterrupted run's, bit for bit."""
    extra = RESUME[case]
    train_lm_online(cfg(tiny, tmp_path / "a", iterations=3, **extra), judge=SCORE)
    cut = cfg(tiny, tmp_path / "b", iterations=3, **extra)
    first = train_lm_online(cut, judge=SCORE, on_iteration=interrupt_at(2))
    assert first["interrupted"] and first["iterations"] == 2
    second = train_lm_online(cut, judge=SCORE, resume=True)
    assert second["iterations"] == 3 and not second["interrupted"]
    assert lines(tmp_path / "a") == lines(tmp_path / "b")
    assert store_rows(tmp_path / "a") == store_rows(tmp_path / "b")
    subs = ["adapter/adapter_model.safetensors", "value_head.safetensors"] if "lora" in case else [
        "model/model.safetensors"]  # fmt: skip
    for sub in subs:
        a, b = load_file(str(tmp_path / "a" / sub)), load_file(str(tmp_path / "b" / sub))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_pair_judge_is_refused_naming_the_field(tmp_path, tiny):
    """method grpo with a PairJudge object: a ConfigError naming ``judge`` before any model
    loads (the config-file path is tested in test_online_rl.py)."""
    with pytest.raises(ConfigError, match="judge: method grpo needs a ScoreJudge .* 'coin' is a "
                                          "PairJudge"):  # fmt: skip
        train_lm_online(cfg(tiny, tmp_path / "run", method="grpo"), judge=PAIR)
    assert not (tmp_path / "run" / "model").exists()


def test_log_sigmoid_combination_of_two_reward_functions(tmp_path, tiny):
    """judges: [vowels, length] with log_sigmoid and method rloo, from the config: the reward of
    every sample (stored with its pairs) is Σ_p log σ(r_p(y) − r_p(y_ref)), y_ref the initial
    policy's greedy completion of the prompt (recomputed here with ``generate``)."""
    rewards = tiny / "rewards.py"
    c = cfg(tiny, tmp_path / "run", method="rloo", iterations=1,
            judges=[f"{rewards}:vowels", f"{rewards}:length"],
            reward_combination="log_sigmoid")  # fmt: skip
    records = []
    train_lm_online(c, on_iteration=records.append)
    rec = records[0]
    tok = load_tokenizer(str(tiny / "model"))
    initial = load_policy(str(tiny / "model"), dtype=torch.float32, attn_implementation="sdpa")
    greedy = generate(initial, tok, rec.prompts, SamplingParams(max_new_tokens=8,
                                                                temperature=0.0))  # fmt: skip
    refs = [as_completion(p, t) for p, t in zip(rec.prompts, greedy.texts)]
    texts = list(rec.generations.texts)
    owner = [rec.prompts[i] for i in rec.generations.prompt_index]
    ref_of = [refs[i] for i in rec.generations.prompt_index]
    length = lambda cs: [len(c) / 10 for c in cs]  # noqa: E731
    want = [math.log(1 / (1 + math.exp(-(a - b)))) + math.log(1 / (1 + math.exp(-(c - d))))
            for a, b, c, d in zip(vowel_score(owner, texts), vowel_score(owner, ref_of),
                                  length(texts), length(ref_of))]  # fmt: skip
    assert rec.judgements.scores.reshape(-1).tolist() == pytest.approx(want, abs=1e-9)
    with FeedbackStore(tmp_path / "run" / "feedback.sqlite", create=False) as s:
        pairs = s.labelled_completion_pairs().pairs
    assert pairs.rewards_1[0] == pytest.approx(want[0], abs=1e-9)
