"""Training targets of every online method on hand-worked 3-sample examples, Nash-MD's
objective, and the mixture sampler's log-probs against full forward passes.

Notation: one prompt (or two), K = 3 samples y_0, y_1, y_2; sample k of prompt p has index
p·3 + k. Values are binary fractions where the test compares exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from unialign.lm.online_methods import (
    METHODS,
    Judgements,
    MixtureLogps,
    all_pairs,
    best_worst_pairs,
    large_margin_pairs,
    mixture_samples,
    nash_md_pg,
    preferences_from_scores,
    self_play_samples,
    win_rates,
)
from unialign.lm.online_mixture import mixture_log_probs, sample_mixture
from unialign.lm.tiny import build_tiny_model, train_tiny_tokenizer
from unialign.losses import REGISTRY

NAN = math.nan


def pair_judgements(p01: float, p02: float, p12: float) -> Judgements:
    """One prompt, a PairJudge's three verdicts P(y_i ≻ y_j), i < j; the rest by complement."""
    m = torch.full((1, 3, 3), NAN, dtype=torch.float64)
    for (i, j), v in {(0, 1): p01, (0, 2): p02, (1, 2): p12}.items():
        m[0, i, j], m[0, j, i] = v, 1 - v
    return Judgements(m)


def score_judgements(*rows: tuple[float, ...], temperature: float = 1.0) -> Judgements:
    s = torch.tensor(rows, dtype=torch.float64)
    return Judgements(preferences_from_scores(s, temperature), s)


def as_lists(ex):
    rej = None if ex.rejected is None else ex.rejected.tolist()
    return ex.chosen.tolist(), rej, ex.target.tolist(), ex.dropped


# ---------------------------------------------------------------------------------------------
# shared rules
# ---------------------------------------------------------------------------------------------
def test_preferences_from_scores_bradley_terry_rule():
    """r = (0, ln 3, 0), τ = 1: σ(0 − ln 3) = 1/4, σ(0) = 1/2, σ(ln 3) = 3/4; the lower
    triangle is the exact complement and the diagonal NaN. τ = 2 halves the exponent:
    σ(−ln 3 / 2) = 1/(1 + √3)."""
    p = preferences_from_scores(torch.tensor([[0.0, math.log(3), 0.0]]), 1.0)[0]
    assert p[0, 1] == pytest.approx(0.25) and p[0, 2] == 0.5 and p[1, 2] == pytest.approx(0.75)
    assert torch.equal(p[1, 0], 1 - p[0, 1]) and torch.isnan(p.diagonal()).all()
    p2 = preferences_from_scores(torch.tensor([[0.0, math.log(3), 0.0]]), 2.0)[0]
    assert p2[0, 1] == pytest.approx(1 / (1 + math.sqrt(3)))


def test_win_rates_skip_missing_comparisons():
    """P(0≻1) skipped (NaN), P(0≻2) = 3/4, P(1≻2) skipped: y_0 was compared only with y_2
    (win rate 3/4), y_2 only with y_0 (1/4), y_1 with nobody (NaN)."""
    w = win_rates(pair_judgements(NAN, 0.75, NAN).preference)[0]
    assert w[0] == 0.75 and w[2] == 0.25 and math.isnan(w[1])


# ---------------------------------------------------------------------------------------------
# online DPO (and INPO, which uses the same pair rules)
# ---------------------------------------------------------------------------------------------
def test_online_dpo_best_worst_from_scores():
    """Scores (0.25, 1.5, −0.25): best y_1, worst y_2, margin 1.5 − (−0.25) = 1.75."""
    ex = best_worst_pairs(score_judgements((0.25, 1.5, -0.25)))
    assert as_lists(ex) == ([1], [2], [1.75], 0)


def test_online_dpo_all_pairs_from_scores_skip_ties():
    """Scores (1, 1, 0): (0,1) ties → skipped; (0,2) and (1,2) oriented by score, margin 1."""
    ex = all_pairs(score_judgements((1.0, 1.0, 0.0)))
    assert as_lists(ex) == ([0, 1], [2, 2], [1.0, 1.0], 1)


def test_online_dpo_pair_judge_ranks_by_win_rate():
    """P(0≻1) = 3/4, P(0≻2) = 1/2, P(1≻2) = 1/4. Win rates against the other two samples:
    w_0 = (3/4 + 1/2)/2 = 5/8, w_1 = (1/4 + 1/4)/2 = 1/4, w_2 = (1/2 + 3/4)/2 = 5/8.
    best_worst: y_0 and y_2 tie for best → the first (y_0); worst y_1; margin P(0≻1) − ½ = 1/4.
    all: (0,1) with margin 1/4; (0,2) is a tie (skipped); (1,2) has P = 1/4 < ½ → (2,1),
    margin 3/4 − ½ = 1/4."""
    j = pair_judgements(0.75, 0.5, 0.25)
    assert as_lists(best_worst_pairs(j)) == ([0], [1], [0.25], 0)
    assert as_lists(all_pairs(j)) == ([0, 2], [1, 1], [0.25, 0.25], 1)


def test_online_dpo_balanced_cycle_has_no_best():
    """Rock-paper-scissors: 0 ≻ 1, 1 ≻ 2, 2 ≻ 0, each with 3/4. Every win rate is
    (3/4 + 1/4)/2 = ½, so best_worst drops the prompt; all keeps the three direct verdicts:
    (0,1), (1,2) and (2,0), each with margin 1/4."""
    j = pair_judgements(0.75, 0.25, 0.75)
    assert as_lists(best_worst_pairs(j)) == ([], [], [], 1)
    assert as_lists(all_pairs(j)) == ([0, 2, 1], [1, 0, 2], [0.25, 0.25, 0.25], 0)


def test_inpo_targets_and_loss_on_three_samples():
    """INPO takes best-vs-worst pairs: scores (0.5, −1, 2) give (y_2, y_1). With
    ℓ_θ = (·, −4, −2), ℓ_t = (·, −3.5, −2.5), ℓ_ref = (·, −3, −3), η = 2, τ = 0.25 (ητ = ½):
    h = (−2 + 4) − ½(−3 + 3) − ½(−2.5 + 3.5) = 2 − 0 − ½ = 1.5; L = (h − η/2)² = 0.25."""
    method = METHODS["inpo"]
    ex = method.build(score_judgements((0.5, -1.0, 2.0)), {"pairs": "best_worst"})
    assert as_lists(ex) == ([2], [1], [3.0], 0)
    from unialign.lm.online_methods import ExampleLogps

    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    batch = method.batch(ExampleLogps(
        policy_chosen=t(-2.0), chosen_tokens=t(1.0), target=ex.target, policy_rejected=t(-4.0),
        rejected_tokens=t(1.0), previous_chosen=t(-2.5), previous_rejected=t(-3.5),
        ref_chosen=t(-3.0), ref_rejected=t(-3.0),
    ))  # fmt: skip
    out = REGISTRY["inpo"].fn(batch, eta=2.0, tau=0.25)
    assert out.losses.item() == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------
# SPPO
# ---------------------------------------------------------------------------------------------
def test_sppo_win_rates_from_scores():
    """Scores (0, ln 3, 0), τ = 1: P(0≻1) = 1/4, P(0≻2) = ½, P(1≻2) = 3/4, so
    P̂(y_0 ≻ π_t) = (1/4 + 1/2)/2 = 3/8, P̂(y_1) = (3/4 + 3/4)/2 = 3/4, P̂(y_2) = (1/2 + 1/4)/2
    = 3/8. Every sample is an example with its win rate as the target."""
    ch, rej, target, dropped = as_lists(self_play_samples(score_judgements((0, math.log(3), 0))))
    assert ch == [0, 1, 2] and rej is None and dropped == 0
    assert target == pytest.approx([0.375, 0.75, 0.375])


def test_sppo_pair_judge_skips_and_cycle():
    """A skipped comparison: P(0≻1) NaN, P(0≻2) = 3/4, P(1≻2) NaN → y_1 has no win rate and is
    dropped; y_0 → 3/4, y_2 → 1/4. The balanced cycle gives every sample ½ (target η·0)."""
    assert as_lists(self_play_samples(pair_judgements(NAN, 0.75, NAN))) == (
        [0, 2], None, [0.75, 0.25], 1,
    )  # fmt: skip
    assert as_lists(self_play_samples(pair_judgements(0.75, 0.25, 0.75)))[2] == [0.5] * 3


# ---------------------------------------------------------------------------------------------
# DNO
# ---------------------------------------------------------------------------------------------
def test_dno_keeps_only_large_margins():
    """Two prompts. A: scores (0.75, 0.25, 0.5) → best y_0, worst y_1, gap ½. B: scores
    (0.5, 0.625, 0.5) → best y_1 (index 4), worst the last of the tied y_0/y_2 (index 5), gap
    1/8. Threshold ¼ keeps A only; threshold ½ keeps neither (the filter is strict: >)."""
    j = score_judgements((0.75, 0.25, 0.5), (0.5, 0.625, 0.5))
    assert as_lists(large_margin_pairs(j, 0.0)) == ([0, 4], [1, 5], [0.5, 0.125], 0)
    assert as_lists(large_margin_pairs(j, 0.25)) == ([0], [1], [0.5], 1)
    assert as_lists(large_margin_pairs(j, 0.5)) == ([], [], [], 2)


def test_dno_pair_judge_margin_is_direct_preference():
    """P(0≻1) = 3/4, P(0≻2) = 1/2, P(1≻2) = 1/4: best y_0, worst y_1 (as for online DPO); the
    margin is P(0≻1) − ½ = ¼: kept at threshold 0.2, dropped at 0.25."""
    j = pair_judgements(0.75, 0.5, 0.25)
    assert as_lists(METHODS["dno"].build(j, {"margin_threshold": 0.2})) == ([0], [1], [0.25], 0)
    assert as_lists(METHODS["dno"].build(j, {"margin_threshold": 0.25}))[0] == []


# ---------------------------------------------------------------------------------------------
# Nash-MD
# ---------------------------------------------------------------------------------------------
def test_nash_md_targets_and_loss():
    """Verdicts against the mixture samples: P(y_0 ≻ y′_0) = 3/4, y_1's skipped, P(y_2 ≻ y′_2)
    = 1/4 → examples y_0, y_2 with those targets. With ℓ_θ = (−2, −3), ℓ_ref = (−2.5, −3),
    τ = ½: kl = (½, 0), advantage = (¼ − ½·½, −¼ − 0) = (0, −¼), L = −advantage·ℓ_θ =
    (0, −¾), and ∂L/∂ℓ_θ = −advantage = (0, ¼) (the KL term is a stop-gradient weight)."""
    j = Judgements(torch.full((1, 3, 3), NAN), None, torch.tensor([[0.75, NAN, 0.25]]))
    ch, rej, target, dropped = as_lists(mixture_samples(j))
    assert (ch, rej, target, dropped) == ([0, 2], None, [0.75, 0.25], 1)
    pol = torch.tensor([-2.0, -3.0], dtype=torch.float64, requires_grad=True)
    out = nash_md_pg(
        MixtureLogps(
            pol,
            torch.tensor(target, dtype=torch.float64),
            torch.tensor([-2.5, -3.0], dtype=torch.float64),
        ),
        kl_coef=0.5,
    )
    assert out.losses.tolist() == pytest.approx([0.0, -0.75])
    out.losses.sum().backward()
    assert pol.grad.tolist() == pytest.approx([0.0, 0.25])
    assert out.metrics["nash_md/kl"].tolist() == [0.5, 0.0]


def test_nash_md_gradient_is_the_preference_policy_gradient():
    """On a 3-outcome bandit the expected surrogate gradient equals the exact gradient of
    P(π_θ ≻ π_mix) − τ KL(π_θ‖π_ref) with π_mix held fixed: Σ_y π(y)·∇[(P(y≻π_mix) − ½ −
    τ sg(log π(y)/π_ref(y))) log π(y)] = ∇[Σ_y π(y) P(y ≻ π_mix) − τ KL]."""
    torch.manual_seed(0)
    theta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(3, dtype=torch.float64), 0)
    pref = torch.tensor([[0.5, 0.9, 0.2], [0.1, 0.5, 0.7], [0.8, 0.3, 0.5]], dtype=torch.float64)
    mix = torch.softmax(0.5 * torch.log_softmax(theta, 0) + 0.5 * ref, 0).detach()
    p_vs_mix = pref @ mix
    tau = 0.3
    logp = torch.log_softmax(theta, 0)
    probs = logp.exp().detach()
    out = nash_md_pg(MixtureLogps(logp, p_vs_mix, ref), kl_coef=tau)
    (g_surrogate,) = torch.autograd.grad((probs * out.losses).sum(), theta)
    logp = torch.log_softmax(theta, 0)  # a fresh graph for the exact objective
    exact = (logp.exp() * p_vs_mix).sum() - tau * (logp.exp() * (logp - ref)).sum()
    (g_exact,) = torch.autograd.grad(exact, theta)
    assert torch.allclose(g_surrogate, -g_exact, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the mixture sampler
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


def _full_mixture_logp(policy, ref, prompt, completion, coef, temperature):
    """Σ_t log π_mix(y_t) from two full forwards (no cache, no padding) of prompt + completion."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        zp, zr = policy(input_ids=ids).logits[0], ref(input_ids=ids).logits[0]
    n = len(prompt)
    lp = mixture_log_probs(zp[n - 1 : -1], zr[n - 1 : -1], coef, temperature)
    return float(lp.gather(-1, torch.tensor(completion)[:, None]).sum())


@pytest.mark.parametrize("coef", [0.0, 0.3, 1.0])
def test_mixture_sampler_matches_full_forward(tok, coef):
    """Left-padded batches with KV caches: the log-prob of every sampled completion under the
    token-wise mixture equals the one from full forward passes of the unpadded sequence;
    completions end at EOS (kept) or at max_new_tokens; the same seed gives the same ids."""
    policy, ref = build_tiny_model(tok, seed=0).eval(), build_tiny_model(tok, seed=1).eval()
    prompts = [[1, 40, 41, 42, 43, 44], [1, 50], [1, 60, 61]] * 2
    eos = tok.eos_token_id
    kw = dict(coef=coef, max_new_tokens=6, eos_token_ids=[eos], pad_id=tok.pad_token_id,
              temperature=0.9, seed=3, batch_size=4)  # fmt: skip
    ids, logps = sample_mixture(policy, ref, prompts, **kw)
    assert ids == sample_mixture(policy, ref, prompts, **kw)[0]
    for p, c, lp in zip(prompts, ids, logps.tolist()):
        assert 1 <= len(c) <= 6 and (len(c) == 6 or c[-1] == eos) and eos not in c[:-1]
        assert lp == pytest.approx(_full_mixture_logp(policy, ref, p, c, coef, 0.9), abs=1e-4)


def test_mixture_sampler_lora_reference_is_the_adapter_disabled(tok):
    """A LoRA policy is its own reference with the adapter off: β = 1 samples score exactly as
    the base model's samples."""
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(tok, seed=0).eval()
    plain = build_tiny_model(tok, seed=0).eval()
    policy = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a visible adapter
    prompts = [[1, 40, 41], [1, 50, 51, 52]]
    kw = dict(max_new_tokens=5, eos_token_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
              temperature=1.0, seed=0)  # fmt: skip
    ids, logps = sample_mixture(policy, None, prompts, coef=0.4, **kw)
    for p, c, lp in zip(prompts, ids, logps.tolist()):
        with torch.no_grad():
            full = torch.tensor([p + c])
            zp = policy(input_ids=full).logits[0]
            zr = plain(input_ids=full).logits[0]
        mix = mixture_log_probs(zp[len(p) - 1 : -1], zr[len(p) - 1 : -1], 0.4)
        assert lp == pytest.approx(float(mix.gather(-1, torch.tensor(c)[:, None]).sum()), abs=1e-4)
