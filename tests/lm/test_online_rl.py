"""Policy-gradient methods of the online loop, by hand: the training targets each method's build
rule and :func:`~unialign.lm.online_rl.rollout_targets` give on a 3-sample group, the reward
combination of several judges, and the config rules (no model is loaded here).

Layout as in the loop: sample k of prompt p is entry p·K + k; per-token tensors are ``[N, T]``
with a completion mask.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from unialign.config import ConfigError, load_config
from unialign.lm.online_config import LMOnlineConfig
from unialign.lm.online_judging import FunctionScoreJudge
from unialign.lm.online_methods import METHODS, Judgements, preferences_from_scores
from unialign.lm.online_rewards import CombinedScoreJudge, combine_rewards
from unialign.lm.online_rl import rollout_targets

F64 = torch.float64


def judged(scores: list[list[float]]) -> Judgements:
    s = torch.tensor(scores, dtype=F64)
    return Judgements(preferences_from_scores(s, 1.0), s)


def build(method: str, scores: list[list[float]]):
    """The loop's build rule of ``method`` on ScoreJudge verdicts: (rule, examples)."""
    m = METHODS[method]
    return m.rollout, m.build(judged(scores), {})


def targets(method: str, scores, mask=None, **kw):
    rule, ex = build(method, scores)
    assert ex.chosen.tolist() == list(range(ex.target.numel())) and ex.rejected is None
    n = ex.target.numel()
    mask = torch.ones(n, 1, dtype=torch.bool) if mask is None else mask
    return rollout_targets(rule, ex.target, mask, group_size=len(scores[0]), **kw)


# ---------------------------------------------------------------------------------------------
# targets of each method on one group of K = 3 samples with scores r = (1, 2, 4)
# ---------------------------------------------------------------------------------------------
def test_reinforce_baseline_is_the_iteration_mean():
    """b = (1 + 2 + 4)/3 = 7/3 for every sample; A = r − b = (−4/3, −1/3, 5/3)."""
    t = targets("reinforce", [[1.0, 2.0, 4.0]])
    assert torch.allclose(t.baseline, torch.full((3,), 7 / 3, dtype=F64))
    assert torch.allclose(t.advantages, torch.tensor([-4 / 3, -1 / 3, 5 / 3], dtype=F64))
    assert torch.equal(t.rewards, torch.tensor([1.0, 2.0, 4.0], dtype=F64))


def test_rloo_leave_one_out_baseline():
    """b_i = mean of the other two: (2+4)/2 = 3, (1+4)/2 = 2.5, (1+2)/2 = 1.5, so
    A = (−2, −0.5, 2.5) = K/(K−1)·(r − mean) = 1.5·(−4/3, −1/3, 5/3). A second prompt's group
    [0, 0, 3] is its own: b = (1.5, 1.5, 0), A = (−1.5, −1.5, 3)."""
    t = targets("rloo", [[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(t.baseline, torch.tensor([3, 2.5, 1.5, 1.5, 1.5, 0], dtype=F64))
    assert torch.allclose(t.advantages, torch.tensor([-2, -0.5, 2.5, -1.5, -1.5, 3], dtype=F64))


def test_rloo_with_a_kl_penalty_in_the_reward():
    """kl_penalty k1, β = 0.1. Sample 0 has two tokens, ℓ_old = (−1, −2), ℓ_ref = (−1.5, −1):
    k1 = ℓ_old − ℓ_ref = (0.5, −1), Σ = −0.5, so R_0 = 1 − 0.1·(−0.5) = 1.05; samples 1, 2 have
    ℓ_old = ℓ_ref (R = 2, 4) and one token (the second position is padding, never counted).
    b = (3, (1.05 + 4)/2, (1.05 + 2)/2) = (3, 2.525, 1.525); A = (−1.95, −0.525, 2.475)."""
    mask = torch.tensor([[True, True], [True, False], [True, False]])
    old = torch.tensor([[-1.0, -2.0], [-3.0, 0.0], [-0.5, 0.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0], [-3.0, 9.0], [-0.5, 9.0]], dtype=F64)
    t = targets("rloo", [[1.0, 2.0, 4.0]], mask, old_logps=old, ref_logps=ref,
                kl_penalty="k1", kl_penalty_coef=0.1)  # fmt: skip
    assert torch.allclose(t.rewards, torch.tensor([1.05, 2.0, 4.0], dtype=F64))
    assert torch.allclose(t.advantages, torch.tensor([-1.95, -0.525, 2.475], dtype=F64))


def test_grpo_group_batch_and_no_scaling():
    """Group [1, 2, 4]: mean 7/3, deviations (−4/3, −1/3, 5/3), sample variance
    (16 + 1 + 25)/9 / 2 = 7/3, A = dev/(√(7/3) + 1e-4). Group [0, 0, 3]: mean 1, deviations
    (−1, −1, 2), variance 6/2 = 3, A = dev/(√3 + 1e-4). ``batch``: the same deviations over the
    std of all six rewards, mean 5/3, Σ(r − 5/3)² = 40/3, variance 8/3. ``none`` (Dr. GRPO): the
    deviations themselves."""
    scores = [[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]]
    dev = torch.tensor([-4 / 3, -1 / 3, 5 / 3, -1, -1, 2], dtype=F64)
    std = torch.tensor([math.sqrt(7 / 3)] * 3 + [math.sqrt(3)] * 3, dtype=F64)
    group = targets("grpo", scores)
    assert torch.allclose(group.advantages, dev / (std + 1e-4))
    batch = targets("grpo", scores, scale_rewards="batch")
    assert torch.allclose(batch.advantages, dev / (math.sqrt(8 / 3) + 1e-4))
    none = targets("grpo", scores, scale_rewards="none")
    assert torch.allclose(none.advantages, dev)
    assert group.baseline is None and group.returns is None


def test_ppo_gae_returns_with_the_reward_at_the_last_token():
    """γ = 1, λ = 0.5, kl_penalty k1 with β = 0.1; scores (1, 0, 2).

    Sample 0, three tokens, V_old = (0.5, 0.2, −0.1), ℓ_old = (−1, −1, −2), ℓ_ref = (−1.5, −1, −1):
    k1 = (0.5, 0, −1), r = −0.1·k1 + score at the last token = (−0.05, 0, 1.1);
    δ_2 = 1.1 + 0 − (−0.1) = 1.2, A_2 = 1.2; δ_1 = 0 + (−0.1) − 0.2 = −0.3, A_1 = −0.3 + 0.5·1.2
    = 0.3; δ_0 = −0.05 + 0.2 − 0.5 = −0.35, A_0 = −0.35 + 0.5·0.3 = −0.2; returns A + V =
    (0.3, 0.5, 1.1).
    Sample 1, one token, V = 0.25, ℓ_old = ℓ_ref: r = (0), A = −0.25, return 0.
    Sample 2, two tokens, V = (1, 1.5), ℓ_old = ℓ_ref: r = (0, 2); δ_1 = 2 − 1.5 = 0.5 = A_1;
    δ_0 = 0 + 1.5 − 1 = 0.5, A_0 = 0.5 + 0.5·0.5 = 0.75; returns (1.75, 2).
    Whitened: the six advantages (−0.2, 0.3, 1.2, −0.25, 0.75, 0.5) have mean 2.3/6 and
    population std √(Σ(A − mean)²/6); padding stays 0. The sequence rewards are Σ_t r_t =
    (1.05, 0, 2)."""
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    values = torch.tensor([[0.5, 0.2, -0.1], [0.25, 0, 0], [1.0, 1.5, 0]], dtype=F64)
    old = torch.tensor([[-1.0, -1.0, -2.0], [-2.0, 0, 0], [-1.0, -1.0, 0]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-2.0, 0, 0], [-1.0, -1.0, 0]], dtype=F64)
    kw = dict(old_logps=old, ref_logps=ref, old_values=values, gamma=1.0, lam=0.5,
              kl_penalty="k1", kl_penalty_coef=0.1)  # fmt: skip
    raw = targets("ppo", [[1.0, 0.0, 2.0]], mask, whiten_advantages=False, **kw)
    want = torch.tensor([[-0.2, 0.3, 1.2], [-0.25, 0, 0], [0.75, 0.5, 0]], dtype=F64)
    assert torch.allclose(raw.advantages, want)
    assert torch.allclose(raw.returns, torch.tensor([[0.3, 0.5, 1.1], [0, 0, 0], [1.75, 2, 0]],
                                                    dtype=F64))  # fmt: skip
    assert torch.allclose(raw.token_rewards, torch.tensor([[-0.05, 0, 1.1], [0, 0, 0], [0, 2, 0]],
                                                          dtype=F64))  # fmt: skip
    assert torch.allclose(raw.rewards, torch.tensor([1.05, 0.0, 2.0], dtype=F64))
    white = targets("ppo", [[1.0, 0.0, 2.0]], mask, **kw)
    a = torch.tensor([-0.2, 0.3, 1.2, -0.25, 0.75, 0.5], dtype=F64)
    mean = 2.3 / 6
    std = math.sqrt(float(((a - mean) ** 2).sum()) / 6)
    assert torch.allclose(white.advantages[mask], (a - mean) / (std + 1e-8))
    assert torch.equal(white.advantages[~mask], torch.zeros(3, dtype=F64))
    assert torch.allclose(white.returns, raw.returns)


def test_policy_gradient_methods_refuse_pair_verdicts():
    """A PairJudge's verdicts carry no scores: the build rule says what is missing."""
    pref = preferences_from_scores(torch.tensor([[0.0, 1.0, 2.0]], dtype=F64), 1.0)
    with pytest.raises(ValueError, match="judge: a policy-gradient method needs a ScoreJudge"):
        METHODS["grpo"].build(Judgements(pref, None), {})


# ---------------------------------------------------------------------------------------------
# several rewards combined
# ---------------------------------------------------------------------------------------------
def test_weighted_and_log_sigmoid_combination_by_hand():
    """Two samples, two judges: r_1 = (1, 0), r_2 = (0.5, 2).

    weighted, w = (2, −1): (2·1 − 0.5, 2·0 − 2) = (1.5, −2); default weights 1: (1.5, 2).
    log_sigmoid with references r_ref,1 = (0, 0), r_ref,2 = (0.5, 3):
    sample 1: log σ(1) + log σ(0) = −0.3132617 − 0.6931472 = −1.0064089;
    sample 2: log σ(0) + log σ(−1) = −0.6931472 − 1.3132617 = −2.0064089."""
    r = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=F64)
    w = combine_rewards(r, combination="weighted", weights=[2.0, -1.0])
    assert torch.allclose(w, torch.tensor([1.5, -2.0], dtype=F64))
    assert torch.allclose(combine_rewards(r, combination="weighted"),
                          torch.tensor([1.5, 2.0], dtype=F64))  # fmt: skip
    ref = torch.tensor([[0.0, 0.0], [0.5, 3.0]], dtype=F64)
    u = combine_rewards(r, combination="log_sigmoid", reference=ref)
    assert torch.allclose(u, torch.tensor([-1.0064089, -2.0064089], dtype=F64), atol=1e-7)


def test_combined_judge_scores_against_cached_reference_completions():
    """The judge behind the loop: each judge scores the samples; r_ref comes from the reference
    completion of each prompt (here the text "REF|<prompt>"), scored by the same judges once per
    chunk of the prompt source (chunk 2: prompts 0–1, then 2) and cached."""
    table = {"a": (1.0, 0.5), "b": (0.0, 2.0)}
    ref = {"REF|p0": (0.0, 0.5), "REF|p1": (0.0, 3.0), "REF|p2": (1.0, 1.0)}

    def judge(k):
        return FunctionScoreJudge(
            lambda ps, cs: [ref[c][k] if c in ref else table[c][k] for c in cs], f"j{k}"
        )

    calls = []

    def complete(prompts):
        calls.append(list(prompts))
        return [f"REF|{p}" for p in prompts]

    combined = CombinedScoreJudge([judge(0), judge(1)], combination="log_sigmoid")
    combined.bind_reference(["p0", "p1", "p2"], complete, chunk=2)
    got = combined.score(["p0", "p1"], ["a", "b"])
    assert got == pytest.approx([-1.0064089, -2.0064089], abs=1e-7)
    assert calls == [["p0", "p1"]]
    combined.score(["p1", "p2", "p0"], ["a", "a", "b"])  # p2 computes its chunk; p0, p1 cached
    assert calls == [["p0", "p1"], ["p2"]]
    assert combined.name == "log_sigmoid(j0+j1)"
    weighted = CombinedScoreJudge([judge(0), judge(1)], weights=[2.0, -1.0])
    assert weighted.score(["p0", "p1"], ["a", "b"]) == pytest.approx([1.5, -2.0])


# ---------------------------------------------------------------------------------------------
# config rules
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "rewards.py").write_text(
        "def score(prompts, completions):\n    return [0.0] * len(completions)\n"
        "def prefer(prompts, a, b):\n    return [0.5] * len(a)\n"
    )
    return tmp_path


def load(files, **fields):
    data = {"model": str(files / "model"), "prompts": str(files / "prompts.jsonl"),
            "output_dir": str(files / "run"), **fields}  # fmt: skip
    path = files / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(LMOnlineConfig, path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"method": "grpo", "judge": {"kind": "preference_function", "path": "R:prefer"}},
      "judge: method grpo needs a ScoreJudge (one reward per sample); a preference_function "
      "judge compares pairs"),
     ({"method": "ppo", "task": "style", "judge": "task:preference"},
      "judge: method ppo needs a ScoreJudge"),
     ({"method": "grpo", "loss": "sigmoid2"}, "field 'loss': grpo trains with: grpo, dr_grpo"),
     ({"method": "rloo", "loss": "dapo"}, "loss: only online_dpo takes a loss (and grpo"),
     ({"method": "rloo", "num_samples": 1}, "num_samples must be >= 2 for method rloo"),
     ({"method": "rloo", "scale_rewards": "none"}, "scale_rewards: grpo only"),
     ({"method": "grpo", "value_coef": 0.5}, "value_coef: ppo only"),
     ({"method": "sppo", "kl_penalty": "k1"}, "kl_penalty: the policy-gradient methods (reinforce, rloo, grpo, ppo) only"),
     ({"method": "ppo", "kl_penalty_coef": 0.1}, "kl_penalty_coef: needs kl_penalty"),
     ({"method": "ppo", "lam": 1.5}, "lam must lie in [0, 1]"),
     ({"method": "rloo", "loss_params": {"kl_coef": 0.1}},
      "loss_params: kl_coef not a hyperparameter of 'reinforce'"),
     ({"method": "grpo", "loss_params": {"epsilon_low": 1.5}}, "loss_params: epsilon_low"),
     ({"method": "grpo", "loss": "dr_grpo", "loss_params": {"max_completion_length": 8}},
      "loss_params.max_completion_length (8) must be >= max_new_tokens (64)"),
     ({"judge": "R:score", "judges": ["R:score"]}, "judges: give either judge (one) or judges"),
     ({"judges": ["R:score", {"kind": "preference_function", "path": "R:prefer"}]},
      "judges[1]: a preference_function judge compares pairs"),
     ({"judges": ["R:score", "R:score"], "reward_weights": [1.0]},
      "reward_weights: 1 weights for 2 judges"),
     ({"judges": ["R:score"], "reward_combination": "log_sigmoid", "reward_weights": [2.0]},
      "reward_weights: only with reward_combination: weighted"),
     ({"reward_combination": "log_sigmoid"}, "reward_combination: needs judges")],
)  # fmt: skip
def test_config_errors_name_the_field(files, fields, message):
    fields = yaml.safe_load(yaml.safe_dump(fields).replace("R:", f"{files / 'rewards.py'}:"))
    with pytest.raises(ConfigError) as err:
        load(files, **fields)
    assert message in str(err.value)


def test_config_defaults_and_variants(files):
    """grpo's default objective is grpo (β = 0.04 k3: the reference is needed); loss selects a
    variant; ppo trains ppo_clip and needs a reference only for a KL; a written config.yaml
    (every field, loss: sigmoid included) loads again."""
    g = load(files, method="grpo", judge=f"{files / 'rewards.py'}:score")
    assert g.objective.name == "grpo" and g.needs_reference
    d = load(files, method="grpo", loss="dapo", loss_params={"epsilon_high": 0.28})
    assert d.objective.name == "dapo" and not d.needs_reference
    assert d.resolved_params()["epsilon_high"] == 0.28
    p = load(files, method="ppo")
    assert p.objective.name == "ppo_clip" and not p.needs_reference
    assert load(files, method="ppo", kl_penalty="k3").needs_reference
    assert load(files, method="reinforce", num_samples=1).objective.name == "reinforce"
    dumped = files / "dumped.yaml"
    dumped.write_text(yaml.safe_dump(d.model_dump(mode="json")))
    assert load_config(LMOnlineConfig, dumped) == d


@pytest.mark.parametrize("name", ["lm_online_grpo", "lm_online_ppo_task"])
def test_examples_are_valid_configs(files, name):
    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    for key in ("model", "prompts"):
        if key in data:
            data[key] = str(files / {"model": "model", "prompts": "prompts.jsonl"}[key])
    if "judges" in data:
        data["judges"] = [f"{files / 'rewards.py'}:score" if not str(j).startswith("task:") else j
                          for j in data["judges"]]  # fmt: skip
    out = files / "example.yaml"
    out.write_text(yaml.safe_dump(data))
    cfg = load_config(LMOnlineConfig, out)
    assert cfg.online_method.rollout is not None
