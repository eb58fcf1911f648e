"""Policy-gradient objectives and helpers: hand-derived values, masks, gradients, bad input, and
parity with TRL 1.16's GRPO and RLOO trainers on identical inputs.

Constants used below: e^{0.5} = 1.6487212707, e^{−0.5} = 0.6065306597, e^{0.1} = 1.1051709181,
e^{0.3} = 1.3498588076, e^{−1} = 0.3678794412, 1/√2 = 0.7071067812, √3 = 1.7320508076.

Shapes, dtypes, NaN/inf, extreme inputs, float64 gradchecks at the registry defaults and the
padding / π_θ = π_old invariants of every registered objective are in ``test_registry.py``.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from unialign.losses import REGISTRY
from unialign.losses.policy_gradient import (
    ReinforceBatch,
    RolloutBatch,
    ValueBatch,
    bnpo,
    clipped_value_loss,
    dapo,
    dr_grpo,
    gae,
    grpo,
    grpo_advantages,
    gspo,
    kl_estimate,
    kl_penalized_rewards,
    ppo_clip,
    reinforce,
    rloo_advantages,
    rloo_baseline,
)

F64 = torch.float64
E05, EM05, E01 = math.exp(0.5), math.exp(-0.5), math.exp(0.1)
TOKEN_LEVEL = {"ppo_clip": ppo_clip, "grpo": grpo, "dr_grpo": dr_grpo, "dapo": dapo, "bnpo": bnpo}


def t(*rows, dtype=F64, grad=False):
    return torch.tensor(rows if len(rows) > 1 else rows[0], dtype=dtype, requires_grad=grad)


def mask(*rows):
    return torch.tensor(rows, dtype=torch.bool)


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_derived():
    """ℓ_θ = (−1, −2, −0.5), ℓ_ref = (−1, −1.5, −1.5) → u = ℓ_ref − ℓ_θ = (0, 0.5, −1).
    k1 = −u = (0, −0.5, 1); k2 = u²/2 = (0, 0.125, 0.5);
    k3 = e^u − u − 1 = (0, 1.6487212707 − 1.5, 0.3678794412 + 1 − 1) = (0, 0.1487212707, 0.3678794412).
    """
    lp, ref = t([-1.0, -2.0, -0.5]), t([-1.0, -1.5, -1.5])
    assert kl_estimate(lp, ref, estimator="k1").tolist() == pytest.approx([0.0, -0.5, 1.0])
    assert kl_estimate(lp, ref, estimator="k2").tolist() == pytest.approx([0.0, 0.125, 0.5])
    assert kl_estimate(lp, ref).tolist() == pytest.approx([0.0, E05 - 1.5, math.exp(-1)])
    with pytest.raises(ValueError, match="estimator"):
        kl_estimate(lp, ref, estimator="k4")
    with pytest.raises(ValueError, match="ref_logps"):
        kl_estimate(lp, ref[:2])


def test_k1_and_k3_are_unbiased_k3_nonnegative():
    """Exact expectations under a 3-token distribution p = π_θ, q = π_ref:
    Σ p·k1 = Σ p log(p/q) = KL(p‖q), and Σ p·k3 = Σ q − 1 + KL = KL; k3 ≥ 0 everywhere."""
    p, q = t([0.5, 0.3, 0.2]), t([0.2, 0.3, 0.5])
    kl = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        assert float((p * kl_estimate(p.log(), q.log(), estimator=est)).sum()) == pytest.approx(kl)
    assert bool((kl_estimate(torch.randn(50, dtype=F64), torch.randn(50, dtype=F64)) >= 0).all())


def test_kl_penalized_rewards_hand_derived():
    """k1 per token with β = 0.5. Row 0: mask (T, T, F), ℓ_θ − ℓ_ref = (0.2, −0.4, ·), score 1:
    r = (−0.1, 0.2 + 1, 0) = (−0.1, 1.2, 0). Row 1: mask (T, F, T) — a hole at t = 1 —
    ℓ_θ − ℓ_ref = (0.6, ·, 0.2), score −2: r = (−0.3, 0, −0.1 − 2) = (−0.3, 0, −2.1).
    Sequence-level rewards (sum): 1.1 and −2.4 = score − β Σ k1."""
    lp = t([[-1.0, -2.0, -3.0], [-0.4, 5.0, -1.0]])
    ref = t([[-1.2, -1.6, 9.0], [-1.0, 0.0, -1.2]])
    m = mask([True, True, False], [True, False, True])
    r = kl_penalized_rewards(t([1.0, -2.0]), lp, ref, m, kl_coef=0.5)
    torch.testing.assert_close(r, t([[-0.1, 1.2, 0.0], [-0.3, 0.0, -2.1]]))
    assert r.sum(-1).tolist() == pytest.approx([1.1, -2.4])
    with pytest.raises(ValueError, match="without tokens"):
        kl_penalized_rewards(t([1.0, 1.0]), lp, ref, mask([True] * 3, [False] * 3), kl_coef=0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        kl_penalized_rewards(t([1.0, 1.0]), lp, ref, m, kl_coef=-0.1)
    with pytest.raises(ValueError, match="scores"):
        kl_penalized_rewards(t([1.0]), lp, ref, m, kl_coef=0.1)


# ---------------------------------------------------------------- RLOO and GRPO advantages


def test_rloo_hand_derived():
    """One group of K = 4 rewards (1, 0, 2, 1), sum 4: b_i = (4 − r_i)/3 = (1, 4/3, 2/3, 1);
    A = r − b = (0, −4/3, 4/3, 0) = K/(K−1)·(r − mean) = 4/3·(0, −1, 1, 0).
    The same two groups given as interleaved group_ids give the same advantages per sample."""
    r = t([1.0, 0.0, 2.0, 1.0])
    assert rloo_baseline(r, group_size=4).tolist() == pytest.approx([1.0, 4 / 3, 2 / 3, 1.0])
    assert rloo_advantages(r, group_size=4).tolist() == pytest.approx([0.0, -4 / 3, 4 / 3, 0.0])
    # groups {1, 0, 2, 1} and {3, 5}: the second group's A = (3 − 5, 5 − 3) = (−2, 2)
    r2 = t([1.0, 3.0, 0.0, 2.0, 5.0, 1.0])
    ids = torch.tensor([7, 9, 7, 7, 9, 7])
    assert rloo_advantages(r2, group_ids=ids).tolist() == pytest.approx(
        [0.0, -2.0, -4 / 3, 4 / 3, 2.0, 0.0]
    )


def test_grpo_advantages_hand_derived():
    """Group of 3: r = (3, 0, 0), mean 1, centered (2, −1, −1), sample var (4 + 1 + 1)/2 = 3:
    A = (2, −1, −1)/√3 = (1.1547005, −0.5773503, −0.5773503) (eps = 0).
    Two groups of 2: (0, 2) and (1, 3): centered (−1, 1, −1, 1);
    group: each group's sample std is √2 → ±1/√2; batch: the std of (0, 2, 1, 3) is √(5/3)
    → ±√(3/5) = ±0.7745967; none: (−1, 1, −1, 1).
    With the default eps = 1e-4: A = (2, −1, −1)/(√3 + 1e-4)."""
    a = grpo_advantages(t([3.0, 0.0, 0.0]), group_size=3, eps=0.0)
    assert a.tolist() == pytest.approx([2 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)])
    default = grpo_advantages(t([3.0, 0.0, 0.0]), group_size=3)
    assert default.tolist() == pytest.approx([v / (math.sqrt(3) + 1e-4) for v in (2, -1, -1)])
    r = t([0.0, 2.0, 1.0, 3.0])
    s = [-1.0, 1.0, -1.0, 1.0]
    group = grpo_advantages(r, group_size=2, eps=0.0)
    assert group.tolist() == pytest.approx([v / math.sqrt(2) for v in s])
    batch = grpo_advantages(r, group_size=2, scale_rewards="batch", eps=0.0)
    assert batch.tolist() == pytest.approx([v * math.sqrt(3 / 5) for v in s])
    assert grpo_advantages(r, group_size=2, scale_rewards="none").tolist() == s
    # interleaved ids: groups {r_0, r_2} = (0, 1) and {r_1, r_3} = (2, 3), means 0.5 and 2.5
    ids = torch.tensor([0, 1, 0, 1])
    none = grpo_advantages(r, group_ids=ids, scale_rewards="none")
    assert none.tolist() == pytest.approx([-0.5, -0.5, 0.5, 0.5])


def test_group_helpers_bad_input():
    r = t([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="exactly one"):
        grpo_advantages(r)
    with pytest.raises(ValueError, match="exactly one"):
        rloo_advantages(r, group_size=3, group_ids=torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(r, group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(r, group_size=0)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(r, group_ids=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="group_ids"):
        rloo_advantages(r, group_ids=t([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(r, group_size=3, scale_rewards="std")
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages(t([1.0, float("nan"), 0.0]), group_size=3)
    # a group of one has advantage 0 under every scaling (GRPO's std is 0 there, not NaN)
    one = grpo_advantages(t([1.0, 0.0, 5.0]), group_ids=torch.tensor([0, 0, 1]))
    assert one[2].item() == 0.0


# ---------------------------------------------------------------- GAE


def test_gae_three_steps_hand_derived():
    """r = (0, 0, 1), V = (0.5, 0.4, 0.8), γ = 0.9, λ = 0.5 (γλ = 0.45), episode ends after t = 2:
    δ_2 = 1 − 0.8 = 0.2;  δ_1 = 0.9·0.8 − 0.4 = 0.32;  δ_0 = 0.9·0.4 − 0.5 = −0.14.
    A_2 = 0.2;  A_1 = 0.32 + 0.45·0.2 = 0.41;  A_0 = −0.14 + 0.45·0.41 = 0.0445.
    Returns A + V = (0.5445, 0.81, 1.0).
    Bootstrapped with V_3 = 2 (a truncated segment): δ_2 = 1 + 1.8 − 0.8 = 2.0, A_1 = 0.32 + 0.9
    = 1.22, A_0 = −0.14 + 0.549 = 0.409.
    The same steps with a masked-out position inside and at the end: the same A and R there,
    0 at the masked positions, whatever they hold."""
    r, v, full = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.4, 0.8]]), mask([True] * 3)
    adv, ret = gae(r, v, full, gamma=0.9, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.0445, 0.41, 0.2])
    assert ret[0].tolist() == pytest.approx([0.5445, 0.81, 1.0])
    adv_b, _ = gae(r, v, full, gamma=0.9, lam=0.5, bootstrap_values=t([2.0]))
    assert adv_b[0].tolist() == pytest.approx([0.409, 1.22, 2.0])
    r_h, v_h = t([[0.0, 9.0, 0.0, 1.0, -4.0]]), t([[0.5, -3.0, 0.4, 0.8, 7.0]])
    holes = mask([True, False, True, True, False])
    adv_h, ret_h = gae(r_h, v_h, holes, gamma=0.9, lam=0.5)
    assert adv_h[0].tolist() == pytest.approx([0.0445, 0.0, 0.41, 0.2, 0.0])
    assert ret_h[0].tolist() == pytest.approx([0.5445, 0.0, 0.81, 1.0, 0.0])


@pytest.mark.parametrize("gamma", [0.5, 0.99, 1.0])
def test_gae_constant_value_function(gamma):
    """The Stable-Baselines3-style analytic check (tests/test_gae.py there uses a constant-value
    policy): with V ≡ c, λ = 1 gives A_t = G_t − c with G_t = Σ_k γ^k r_{t+k} the Monte-Carlo
    return, so the returns are G_t; λ = 0 gives the one-step error r_t + γc − c (r_T − c at the
    end). Rows of different lengths (right padding) are independent episodes."""
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 6, generator=g, dtype=F64)
    lengths = [6, 4, 1]
    m = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    c = 2.5
    v = torch.full_like(r, c)
    adv, ret = gae(r, v, m, gamma=gamma, lam=1.0)
    td, _ = gae(r, v, m, gamma=gamma, lam=0.0)
    for i, n in enumerate(lengths):
        for s in range(n):
            g_t = sum(gamma**k * float(r[i, s + k]) for k in range(n - s))
            assert float(ret[i, s]) == pytest.approx(g_t)
            assert float(adv[i, s]) == pytest.approx(g_t - c)
            next_v = c if s < n - 1 else 0.0
            assert float(td[i, s]) == pytest.approx(float(r[i, s]) + gamma * next_v - c)
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0


def test_gae_bad_input():
    r, full = t([[0.0, 1.0]]), mask([True, True])
    with pytest.raises(ValueError, match="gamma"):
        gae(r, r, full, gamma=1.5)
    with pytest.raises(ValueError, match="lam"):
        gae(r, r, full, lam=-0.1)
    with pytest.raises(ValueError, match="values"):
        gae(r, t([[0.0, 1.0, 2.0]]), full)
    with pytest.raises(ValueError, match="mask"):
        gae(r, r, full.double())
    with pytest.raises(ValueError, match="bootstrap_values"):
        gae(r, r, full, bootstrap_values=t([0.0, 1.0]))


# ---------------------------------------------------------------- REINFORCE


def test_reinforce_hand_derived():
    """Row 0: tokens (−1, −2, pad=9) → ℓ = −3, R = 3; row 1: (−0.5, pad=9, −0.5) → ℓ = −1, R = 1.
    Batch-mean baseline b = 2: A = (1, −1), L = −A·ℓ = (3, −1). Gradient ∂L_i/∂logp_it = −A_i on
    completion tokens, 0 on padding.
    Given baseline (2.5, 0.5): A = (0.5, 0.5), L = (1.5, 0.5).
    RLOO (K = 2, one group): b = (1, 3), A = (2, −2), L = (6, −2)."""
    lp = t([[-1.0, -2.0, 9.0], [-0.5, 9.0, -0.5]], grad=True)
    m = mask([True, True, False], [True, False, True])
    r = t([3.0, 1.0])
    out = reinforce(ReinforceBatch(lp, m, r))
    assert out.losses.tolist() == pytest.approx([3.0, -1.0])
    assert out.metrics["pg/baseline"].tolist() == [2.0, 2.0]
    assert out.metrics["pg/advantage_mean"].tolist() == [1.0, -1.0]
    assert out.metrics["pg/logp"].tolist() == [-3.0, -1.0]
    assert out.metrics["pg/tokens"].tolist() == [2.0, 2.0]
    out.losses.sum().backward()
    assert lp.grad.tolist() == [[-1.0, -1.0, 0.0], [1.0, 0.0, 1.0]]
    given = reinforce(ReinforceBatch(lp, m, r, t([2.5, 0.5])))
    assert given.losses.tolist() == pytest.approx([1.5, 0.5])
    rloo = reinforce(ReinforceBatch(lp, m, r, rloo_baseline(r, group_size=2)))
    assert rloo.losses.tolist() == pytest.approx([6.0, -2.0])


# ---------------------------------------------------------------- PPO clipping


def _one_token_rows(log_ratios, advantages, **hp):
    """B rows of one completion token each (so every aggregation is the per-token loss)."""
    lp = t([[0.0]] * len(log_ratios), grad=True)
    old = -t([[x] for x in log_ratios])
    out = ppo_clip(RolloutBatch(lp, mask(*[[True]] * len(log_ratios)), t(advantages), old), **hp)
    out.losses.sum().backward()
    return out, lp.grad[:, 0]


def test_ppo_clip_each_sign_case():
    """ε_low = 0.2, ε_high = 0.28 (clip range [0.8, 1.28]); ρ = e^{log ratio}; A = ±2.
    1. A > 0, ρ = e^{0.5} = 1.6487 > 1.28: min(3.2974, 1.28·2 = 2.56) → L = −2.56, clipped high,
       gradient 0.
    2. A < 0, ρ = e^{−0.5} = 0.6065 < 0.8: min(−1.2131, 0.8·(−2) = −1.6) → L = 1.6, clipped low,
       gradient 0.
    3. inside, A > 0, ρ = e^{0.1} = 1.1052: L = −2.2103, gradient ∂L/∂logp = −ρA = −2.2103.
    4. A > 0 with ρ = 0.6065 below 1 − ε_low: the unclipped term is the min, L = −1.2131, not
       clipped, gradient −1.2131 (the lower clip never binds for A > 0).
    5. A < 0 with ρ = 1.6487 above 1 + ε_high: L = 3.2974, not clipped, gradient +3.2974.
    """
    out, grad = _one_token_rows(
        [0.5, -0.5, 0.1, -0.5, 0.5], [2.0, -2.0, 2.0, 2.0, -2.0], epsilon_low=0.2, epsilon_high=0.28
    )
    expected = [-2.56, 1.6, -2 * E01, -2 * EM05, 2 * E05]
    assert out.losses.tolist() == pytest.approx(expected)
    assert grad.tolist() == pytest.approx([0.0, 0.0, -2 * E01, -2 * EM05, 2 * E05])
    assert out.metrics["pg/clip_high_fraction"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert out.metrics["pg/clip_low_fraction"].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert out.metrics["pg/clip_fraction"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert out.metrics["pg/ratio_mean"].tolist() == pytest.approx([E05, EM05, E01, EM05, E05])
    # symmetric ε = 0.2 (plain PPO): case 1 now clips at 1.2 → L = −2.4
    sym, _ = _one_token_rows([0.5], [2.0])
    assert sym.losses.item() == pytest.approx(-2.4)


# ---------------------------------------------------------------- GRPO aggregations


def _group_of_three(**kw):
    """Three completions of 1, 2 and 3 tokens (T = 3, right padding holding junk), on-policy."""
    lp = t([[-1.0, 7.0, 7.0], [-0.5, -1.5, 7.0], [-2.0, -0.1, -0.3]], grad=True)
    m = mask([True, False, False], [True, True, False], [True, True, True])
    return lp, RolloutBatch(lp, m, t([1.5, -0.5, -1.0]), **kw)


@pytest.mark.parametrize(
    ("name", "hp", "expected"),
    [
        ("grpo", {"kl_coef": 0.0}, [-1.5, 0.5, 1.0]),
        ("dr_grpo", {"max_completion_length": 4}, [-0.375, 0.25, 0.75]),
        ("dapo", {}, [-0.75, 0.5, 1.5]),
        ("bnpo", {}, [-0.75, 0.5, 1.5]),
        ("ppo_clip", {}, [-0.75, 0.5, 1.5]),
        ("dapo", {"mean_length": 4.0}, [-0.375, 0.25, 0.75]),
    ],
)
def test_grpo_aggregations_hand_derived(name, hp, expected):
    """On-policy (ratio 1), β = 0: the per-token loss is −A_i; with A = (1.5, −0.5, −1) and lengths
    n = (1, 2, 3) the token sums are S = −A·n = (−1.5, 1, 3).
    grpo (÷ n_i): (−1.5, 0.5, 1), batch mean 0.
    dr_grpo (÷ L_max = 4): (−0.375, 0.25, 0.75), mean 0.625/3 = 0.2083.
    dapo / bnpo / ppo_clip (÷ n̄ = 6/3 = 2): (−0.75, 0.5, 1.5), mean = ΣS/Σn = 2.5/6 = 0.4167.
    dapo with a global mean length 4 (other micro-batches hold longer completions): ÷ 4.
    Gradient of the batch mean w.r.t. logp_{i,t}: −A_i/(3·d_i); e.g. the 3-token completion
    (A = −1) under grpo: 1/9 per token, under dapo: 1/6; padding gets 0."""
    lp, batch = _group_of_three()
    out = TOKEN_LEVEL[name](batch, **hp)
    assert out.losses.tolist() == pytest.approx(expected)
    out.losses.mean().backward()
    divisor = {"grpo": 3.0, "dr_grpo": 4.0}.get(name, hp.get("mean_length", 2.0))
    assert lp.grad[2].tolist() == pytest.approx([1 / (3 * divisor)] * 3)
    assert lp.grad[0, 1:].tolist() == [0.0, 0.0]
    assert out.metrics["pg/tokens"].tolist() == [1.0, 2.0, 3.0]
    assert out.metrics["pg/advantage_mean"].tolist() == [1.5, -0.5, -1.0]


def test_grpo_kl_term_hand_derived():
    """One completion of 2 tokens, on-policy, A = 1, ℓ_ref − ℓ_θ = (0, 0.5): k3 = (0, 0.1487213).
    β = 0.1: per-token loss (−1, −1 + 0.01487213); grpo's token mean: −0.9925639;
    pg/kl = mean k3 = 0.0743606. With β = 0 the loss is −1 and pg/kl is still logged.
    ∂L/∂logp_t = −1 + β(1 − e^{u_t}): (−1, −1 + 0.1·(1 − 1.6487213))/2 = (−0.5, −0.5324361)."""
    lp = t([[-1.0, -2.0]], grad=True)
    b = RolloutBatch(lp, mask([True, True]), t([1.0]), ref_logps=t([[-1.0, -1.5]]))
    out = grpo(b, kl_coef=0.1)
    assert out.losses.item() == pytest.approx(-1 + 0.05 * (E05 - 1.5))
    assert out.metrics["pg/kl"].item() == pytest.approx((E05 - 1.5) / 2)
    out.losses.sum().backward()
    assert lp.grad[0].tolist() == pytest.approx([-0.5, (-1 + 0.1 * (1 - E05)) / 2])
    plain = grpo(b, kl_coef=0.0)
    assert plain.losses.item() == pytest.approx(-1.0)
    assert plain.metrics["pg/kl"].item() == pytest.approx((E05 - 1.5) / 2)


# ---------------------------------------------------------------- GSPO


def test_gspo_sequence_ratio_hand_derived():
    """One completion of 2 tokens (and a padded slot) with log-ratios (0.2, 0.4): s = e^{0.3} =
    1.3498588, the geometric mean of the token ratios (e^{0.2}, e^{0.4}), whose arithmetic mean
    is 1.3566137. A = 1:
    - default ε = (3e-4, 4e-4): s > 1.0004 → L = −1.0004, clipped high, gradient 0;
    - ε = 0.5: L = −s = −1.3498588; ∂L/∂logp_t = −s/2 = −0.6749294 on both tokens, 0 on padding;
    - the token-level surrogate (grpo, β = 0, same ε) differs: −1.3566137.
    A = −1 with ε = 0.5: L = s = 1.3498588 (not clipped: A < 0 only clips below 1 − ε_low)."""
    lp = t([[-1.0, -1.0, 3.0]], grad=True)
    b = RolloutBatch(lp, mask([True, True, False]), t([1.0]), t([[-1.2, -1.4, 0.0]]))
    out = gspo(b)
    assert out.losses.item() == pytest.approx(-1.0004)
    assert out.metrics["pg/ratio_mean"].item() == pytest.approx(math.exp(0.3))
    assert out.metrics["pg/clip_high_fraction"].item() == 1.0
    wide = gspo(b, epsilon_low=0.5, epsilon_high=0.5)
    assert wide.losses.item() == pytest.approx(-math.exp(0.3))
    wide.losses.sum().backward()
    assert lp.grad[0].tolist() == pytest.approx([-math.exp(0.3) / 2] * 2 + [0.0])
    token = grpo(b, epsilon_low=0.5, epsilon_high=0.5, kl_coef=0.0)
    assert token.losses.item() == pytest.approx(-(math.exp(0.2) + math.exp(0.4)) / 2)
    neg = gspo(RolloutBatch(lp, b.mask, t([-1.0]), b.old_logps), epsilon_low=0.5, epsilon_high=0.5)
    assert neg.losses.item() == pytest.approx(math.exp(0.3))
    assert neg.metrics["pg/clip_fraction"].item() == 0.0


def test_gspo_needs_sequence_advantages():
    lp = t([[-1.0, -1.0]])
    with pytest.raises(ValueError, match="advantages"):
        gspo(RolloutBatch(lp, mask([True, True]), t([[1.0, 1.0]])))


# ---------------------------------------------------------------- value loss


def test_clipped_value_loss_hand_derived():
    """ε_v = 0.2, one step per row:
    row 0: V = 1, V_old = 0.5, R = 2: V_clip = 0.7; (V − R)² = 1 < (V_clip − R)² = 1.69 →
      L = ½·1.69 = 0.845, the clipped term binds (gradient 0);
    row 1: V = 1, V_old = 0.5, R = 0: V_clip = 0.7; (1)² = 1 > 0.49 → L = 0.5, gradient V − R = 1;
    row 2: V = 0.6, V_old = 0.5, R = 2: inside the clip, L = ½·1.96 = 0.98, gradient −1.4.
    Rows of 2 and 1 steps: the token mean over the batch (n̄ = 1.5): row (V = (1, 1), V_old =
    (1, 1), R = (0, 2)) gives (½ + ½)/1.5 = 2/3 and row (V = 0, R = 1) gives ½/1.5 = 1/3."""
    v = t([[1.0], [1.0], [0.6]], grad=True)
    out = clipped_value_loss(
        ValueBatch(
            v, t([[0.5], [0.5], [0.5]]), t([[2.0], [0.0], [2.0]]), mask([True], [True], [True])
        )
    )
    assert out.losses.tolist() == pytest.approx([0.845, 0.5, 0.98])
    assert out.metrics["value/clip_fraction"].tolist() == [1.0, 0.0, 0.0]
    assert out.metrics["value/error"].tolist() == pytest.approx([1.0, 1.0, 1.96])
    out.losses.sum().backward()
    assert v.grad[:, 0].tolist() == pytest.approx([0.0, 1.0, -1.4])
    two = clipped_value_loss(
        ValueBatch(
            t([[1.0, 1.0], [0.0, 5.0]]),
            t([[1.0, 1.0], [0.0, -5.0]]),
            t([[0.0, 2.0], [1.0, 9.0]]),
            mask([True, True], [True, False]),
        )
    )
    assert two.losses.tolist() == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="clip_range"):
        clipped_value_loss(ValueBatch(v, v, v, mask([True], [True], [True])), clip_range=0.0)


# ---------------------------------------------------------------- masks, gradients, bad input


@pytest.mark.parametrize("name", sorted(TOKEN_LEVEL) + ["gspo"])
def test_padding_changes_nothing_and_gets_no_gradient(name):
    """Completions of 3, 1 and 2 tokens at T = 5 with a hole; the padding holds random values,
    then other random values: identical losses and metrics; the gradient at padding is 0."""
    g = torch.Generator().manual_seed(1)
    m = mask(
        [True, True, False, True, False], [True] + [False] * 4, [False, True, True, False, False]
    )

    def rand():
        return torch.randn(3, 5, generator=g, dtype=F64)

    lp, old, ref = rand(), rand(), rand()
    adv = torch.randn(3, generator=g, dtype=F64)
    outs, grads = [], []
    for _ in range(2):
        leaf = torch.where(m, lp, rand()).requires_grad_(True)
        b = RolloutBatch(leaf, m, adv, torch.where(m, old, rand()), torch.where(m, ref, rand()))
        out = REGISTRY[name].fn(b, **{**REGISTRY[name].hparams, "kl_coef": 0.1})
        out.losses.sum().backward()
        outs.append(out)
        grads.append(leaf.grad)
    torch.testing.assert_close(outs[0].losses, outs[1].losses, rtol=0, atol=0)
    for k in outs[0].metrics:
        torch.testing.assert_close(outs[0].metrics[k], outs[1].metrics[k], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert grads[0][~m].abs().sum() == 0


def test_gradcheck_float64_variants_and_helpers():
    """Beyond the registry defaults (test_registry.py): sequence advantages [B] for the token
    objectives, on-policy batches (old_logps None), k1/k2/k3 KL terms, and the helpers."""
    g = torch.Generator().manual_seed(2)
    m = mask([True, True, False], [True, False, True], [True, True, True])
    old, ref = (torch.randn(3, 3, generator=g, dtype=F64) for _ in range(2))
    lp = torch.randn(3, 3, generator=g, dtype=F64, requires_grad=True)
    adv = torch.randn(3, generator=g, dtype=F64)

    def check(fn, batch_of, **hp):
        """gradcheck of ``fn(batch_of(x), **hp).losses`` in x = logps."""
        return torch.autograd.gradcheck(lambda x: fn(batch_of(x), **hp).losses, (lp,))

    fixed = lp.detach().clone()
    for fn in TOKEN_LEVEL.values():
        for est in ("k1", "k2", "k3"):
            assert check(fn, lambda x: RolloutBatch(x, m, adv, old, ref), kl_coef=0.3, kl_estimator=est)  # fmt: skip
        # on-policy (old_logps None = π_θ detached, so finite differences cannot see the ratio):
        # the gradient is that of a fixed π_old equal to π_θ, which gradcheck can verify
        assert check(fn, lambda x: RolloutBatch(x, m, adv, fixed), kl_coef=0.0)
        on_policy = fn(RolloutBatch(lp, m, adv), kl_coef=0.0).losses.sum()
        fixed_old = fn(RolloutBatch(lp, m, adv, fixed), kl_coef=0.0).losses.sum()
        torch.testing.assert_close(
            torch.autograd.grad(on_policy, lp)[0], torch.autograd.grad(fixed_old, lp)[0]
        )
    assert check(gspo, lambda x: RolloutBatch(x, m, adv, fixed))
    r = torch.randn(6, generator=g, dtype=F64, requires_grad=True)
    for scale in ("group", "batch", "none"):
        hp = {"group_size": 3, "scale_rewards": scale}
        assert torch.autograd.gradcheck(lambda x, hp=hp: grpo_advantages(x, **hp), (r,))
    assert torch.autograd.gradcheck(lambda x: rloo_advantages(x, group_size=2), (r,))
    v = torch.randn(3, 3, generator=g, dtype=F64, requires_grad=True)
    rr = torch.randn(3, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gae(a, b, m, gamma=0.9, lam=0.8), (rr, v))
    assert torch.autograd.gradcheck(lambda a: kl_estimate(a, ref), (lp,))
    s = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: kl_penalized_rewards(a, b, ref, m, kl_coef=0.2), (s, lp))  # fmt: skip


def test_objective_specific_bad_input():
    lp, m = t([[-1.0, -1.0]]), mask([True, True])
    b = RolloutBatch(lp, m, t([1.0]))
    with pytest.raises(ValueError, match="ref_logps is required"):
        grpo(b)  # β = 0.04 by default
    with pytest.raises(ValueError, match="max_completion_length"):
        dr_grpo(b, max_completion_length=1)
    with pytest.raises(ValueError, match="max_completion_length"):
        dr_grpo(b, max_completion_length=2.5)
    with pytest.raises(ValueError, match="epsilon_low"):
        ppo_clip(b, epsilon_low=1.5)
    with pytest.raises(ValueError, match="epsilon_high"):
        gspo(b, epsilon_high=-0.1)
    with pytest.raises(ValueError, match="mean_length"):
        dapo(b, mean_length=-1.0)
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo_clip(b, kl_estimator="k5")
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip(RolloutBatch(lp, m, t([[1.0, 1.0, 1.0]])))
    with pytest.raises(ValueError, match="old_logps"):
        ppo_clip(RolloutBatch(lp, m, t([1.0]), t([[-1.0, float("nan")]])))
    with pytest.raises(ValueError, match="baseline"):
        reinforce(ReinforceBatch(lp, m, t([1.0]), t([1.0, 2.0])))


def test_empty_completion_contributes_zero():
    """A completion whose mask is all False (e.g. a truncated one that is masked out) adds 0 to
    every objective, as in TRL."""
    lp = t([[-1.0, -1.0], [-3.0, -3.0]], grad=True)
    b = RolloutBatch(lp, mask([True, True], [False, False]), t([1.0, 5.0]), lp.detach() - 0.1)
    for name in sorted(TOKEN_LEVEL) + ["gspo"]:
        out = REGISTRY[name].fn(b, **{**REGISTRY[name].hparams, "kl_coef": 0.0})
        assert out.losses[1].item() == 0.0, name


def test_registry_entries():
    names = {"reinforce", "ppo_clip", "grpo", "dr_grpo", "dapo", "bnpo", "gspo", "ppo_value"}
    assert {n for n, s in REGISTRY.items() if s.family == "policy-gradient"} == names
    assert REGISTRY["ppo_value"].kind == "value"
    assert REGISTRY["dapo"].hparams["epsilon_high"] == 0.28
    assert REGISTRY["gspo"].hparams["epsilon_low"] == 3e-4


# ---------------------------------------------------------------- parity with TRL 1.16


class _Accelerator:
    """One process: gather/reduce are the identity."""

    num_processes = 1
    process_index = 0
    device = torch.device("cpu")

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def gather_for_metrics(self, x):
        return x


def _trl_grpo_loss(batch: RolloutBatch, *, loss_type, level="token", beta=0.0, eps=(0.2, 0.28),
                   max_len=8, gas=1, num_items=None):  # fmt: skip
    """TRL's own ``GRPOTrainer._compute_loss`` on a bare instance whose model forward returns
    ``batch.logps``: the loss and TRL's logged metrics."""
    trl = pytest.importorskip("trl.trainer.grpo_trainer")
    tr = trl.GRPOTrainer.__new__(trl.GRPOTrainer)
    m = batch.mask.long()
    attrs = dict(
        loss_type=loss_type, epsilon_low=eps[0], epsilon_high=eps[1], beta=beta,
        importance_sampling_level=level, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        use_vllm=False, max_completion_length=max_len, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, accelerator=_Accelerator(), _metrics={"train": defaultdict(list)},
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=gas,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=gas),
    )  # fmt: skip
    for k, v in attrs.items():
        setattr(tr, k, v)
    logps = batch.logps
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    b, n = m.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
        "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": torch.zeros(b, n, dtype=torch.long),
        "completion_mask": m,
        "advantages": batch.advantages,
        "old_per_token_logps": batch.old_logps,
        "num_items_in_batch": m.sum() if num_items is None else torch.tensor(float(num_items)),
    }
    if batch.ref_logps is not None:
        inputs["ref_per_token_logps"] = batch.ref_logps
    loss = tr._compute_loss(None, inputs)
    return loss, {k: v[0] for k, v in tr._metrics["train"].items()}


def _random_rollout(seed, b=4, n=6, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 1, 4, 3][:b])
    m = torch.arange(n)[None, :] < lengths[:, None]
    old = -torch.rand(b, n, generator=g, dtype=F64) * 3
    lp = (old + spread * torch.randn(b, n, generator=g, dtype=F64)).requires_grad_(True)
    ref = old + 0.3 * torch.randn(b, n, generator=g, dtype=F64)
    adv = torch.randn(b, generator=g, dtype=F64)
    return RolloutBatch(lp, m, adv, old, ref)


def _token_weighted(metric, batch):
    """A per-sequence token-mean metric → TRL's global token mean."""
    n = batch.mask.sum(-1).to(metric.dtype)
    return float((metric * n).sum() / n.sum())


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_parity_trl_grpo_token_level(name, beta):
    """Identical inputs (4 completions of 6, 1, 4, 3 tokens, ratios spread so that both clips
    bind, asymmetric ε = (0.2, 0.28), k3 KL at β): TRL's loss_type=<name> loss and gradient equal
    the batch mean of ours; TRL's clip_ratio/{low,high,region}_mean and kl equal our metrics
    weighted by tokens."""
    ours_batch, trl_batch = _random_rollout(0), _random_rollout(0)
    hp = {"epsilon_low": 0.2, "epsilon_high": 0.28, "kl_coef": beta}
    if name == "dr_grpo":
        hp["max_completion_length"] = 8
    out = REGISTRY[name].fn(ours_batch, **hp)
    out.losses.mean().backward()
    loss, metrics = _trl_grpo_loss(trl_batch, loss_type=name, beta=beta)
    loss.backward()
    assert out.losses.mean().item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(ours_batch.logps.grad, trl_batch.logps.grad, rtol=1e-12, atol=1e-12)
    assert 0 < metrics["clip_ratio/region_mean"] < 1  # the test exercises clipping
    for ours_key, trl_key in [
        ("pg/clip_low_fraction", "clip_ratio/low_mean"),
        ("pg/clip_high_fraction", "clip_ratio/high_mean"),
        ("pg/clip_fraction", "clip_ratio/region_mean"),
    ] + ([("pg/kl", "kl")] if beta else []):
        assert _token_weighted(out.metrics[ours_key], ours_batch) == pytest.approx(metrics[trl_key])


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_parity_trl_gspo_sequence_level(beta):
    """GSPO = TRL's importance_sampling_level='sequence' with loss_type='grpo' (the setting TRL
    recommends for GSPO), with the paper's ε = (3e-4, 4e-4) and a wider range that leaves some
    sequences unclipped."""
    for eps in ((3e-4, 4e-4), (0.05, 0.1)):
        ours_batch, trl_batch = _random_rollout(3, spread=0.1), _random_rollout(3, spread=0.1)
        out = gspo(ours_batch, epsilon_low=eps[0], epsilon_high=eps[1], kl_coef=beta)
        out.losses.mean().backward()
        loss, _ = _trl_grpo_loss(trl_batch, loss_type="grpo", level="sequence", beta=beta, eps=eps)
        loss.backward()
        assert out.losses.mean().item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
        torch.testing.assert_close(ours_batch.logps.grad, trl_batch.logps.grad)


@pytest.mark.parametrize("name", ["dapo", "bnpo"])
def test_parity_trl_gradient_accumulation(name):
    """Two micro-batches of one optimizer step (TRL: gradient_accumulation_steps =
    steps_per_generation = 2). TRL's dapo divides every micro-batch by the token count of the
    whole step (num_items_in_batch); ours reaches the same sum with mean_length = N/B of the
    step and the mean over micro-batches. bnpo normalizes each micro-batch by its own tokens."""
    full = _random_rollout(5)
    halves = [
        RolloutBatch(*(getattr(full, f)[s].detach() for f in ("logps", "mask", "advantages", "old_logps", "ref_logps")))  # noqa: E501
        for s in (slice(0, 2), slice(2, 4))
    ]  # fmt: skip
    n_total = int(full.mask.sum())
    hp = {"mean_length": n_total / 4} if name == "dapo" else {}
    hp.update(epsilon_low=0.2, epsilon_high=0.2, kl_coef=0.0)
    ours = sum(float(REGISTRY[name].fn(h, **hp).losses.mean()) for h in halves) / 2
    theirs = sum(
        float(_trl_grpo_loss(h, loss_type=name, eps=(0.2, 0.2), gas=2, num_items=n_total)[0])
        for h in halves
    )
    assert ours == pytest.approx(theirs, rel=1e-12)


def _trl_generate_and_score(cls, rewards, k, completion_lengths, **attrs):
    """TRL's ``_generate_and_score_completions`` on a bare instance: generation, reward functions
    and the model forward replaced by fixed outputs; everything from the rewards on is TRL's."""
    tr = cls.__new__(cls)
    b = len(rewards)
    base = dict(
        environment_factories=None, tools=None, environments=None, pad_to_multiple_of=None,
        mask_truncated_completions=False, accelerator=_Accelerator(), num_iterations=1,
        use_vllm=False, vllm_importance_sampling_correction=False, beta=0.0, num_generations=k,
        multi_objective_aggregation="sum_then_normalize", reward_weights=torch.ones(1),
        reward_func_names=["r"], _metrics={"train": defaultdict(list)},
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list), "images": []},
        _pending_extra_logs={}, _pending_metrics={}, log_multimodal=False,
        _tokenizer=SimpleNamespace(pad_token_id=0), reward_clip_range=None,
        normalize_advantages=False, ref_model=None,
        model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        args=SimpleNamespace(per_device_train_batch_size=b, steps_per_generation=1,
                             gradient_accumulation_steps=1, gradient_checkpointing_kwargs=None),
    )  # fmt: skip
    base.update(attrs)
    for key, value in base.items():
        setattr(tr, key, value)
    completions = [[1] * n for n in completion_lengths]
    if cls.__name__ == "GRPOTrainer":
        generated = ([[5]] * b, completions, None, ["c"] * b, None, {}, None, None)
    else:  # RLOOTrainer._generate returns (prompt ids, completion ids, completion texts)
        generated = ([[5]] * b, completions, ["c"] * b)
    tr._generate = lambda prompts: generated
    tr._calculate_rewards = lambda *a: torch.tensor(rewards, dtype=torch.float32)[:, None]
    return tr


def test_parity_trl_grpo_advantages():
    """TRL's GRPO advantages (in float32) for scale_rewards = group / batch / none on two groups
    of 4 equal our grpo_advantages with the same eps = 1e-4."""
    trl = pytest.importorskip("trl.trainer.grpo_trainer")
    r = [1.0, 0.0, 0.5, 2.0, 0.0, 0.0, 1.0, 3.0]
    for scale in ("group", "batch", "none"):
        tr = _trl_generate_and_score(trl.GRPOTrainer, r, 4, [3] * 8, scale_rewards=scale)
        theirs = tr._generate_and_score_completions([{"prompt": "p"}] * 8)["advantages"]
        ours = grpo_advantages(t(r), group_size=4, scale_rewards=scale)
        torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-6)


def test_parity_trl_rloo_advantages_with_kl_penalty():
    """TRL's RLOO trainer puts β·Σ_t (ℓ_old − ℓ_ref) into each completion's reward (k1 summed
    over its tokens), then subtracts the leave-one-out baseline per group of K = 3. Ours:
    rloo_advantages(kl_penalized_rewards(scores, ℓ_old, ℓ_ref, mask, estimator='k1').sum(-1))."""
    trl = pytest.importorskip("trl.trainer.rloo_trainer")
    g = torch.Generator().manual_seed(7)
    scores = [1.0, 0.0, 2.0, 0.5, 0.5, -1.0]
    lengths = [4, 2, 3, 1, 4, 2]
    m = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    old = -torch.rand(6, 4, generator=g)
    ref = old + 0.5 * torch.randn(6, 4, generator=g)
    policy = SimpleNamespace(training=True, is_gradient_checkpointing=False)
    tr = _trl_generate_and_score(
        trl.RLOOTrainer, scores, 3, lengths, beta=0.05, ref_model=object(), model=policy
    )

    def forward(model, *args, **kwargs):  # the sampling policy's, then the reference's log-probs
        return (old if model is policy else ref) * m, None, None

    tr._get_per_token_logps_and_entropies = forward
    theirs = tr._generate_and_score_completions([{"prompt": "p"}] * 6)["advantages"]
    penalized = kl_penalized_rewards(t(scores), old.double(), ref.double(), m, kl_coef=0.05)
    ours = rloo_advantages(penalized.sum(-1), group_size=3)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-6)


def test_parity_trl_rloo_loss():
    """TRL's RLOO loss clips the whole-sequence ratio π_θ(y)/π_old(y) = exp(Σ_t ℓ_θ − ℓ_old):
    ours is any token-level objective on one 'token' per completion holding its summed
    log-prob (here grpo, β = 0); loss and gradient match."""
    trl = pytest.importorskip("trl.trainer.rloo_trainer")
    batch = _random_rollout(11, spread=0.15)
    seq = (batch.logps * batch.mask).sum(-1, keepdim=True)
    old_seq = (batch.old_logps * batch.mask).sum(-1, keepdim=True)
    ones = torch.ones_like(seq, dtype=torch.bool)
    out = grpo(RolloutBatch(seq, ones, batch.advantages, old_seq), epsilon_high=0.28, kl_coef=0.0)
    grad_ours = torch.autograd.grad(out.losses.mean(), batch.logps)[0]
    tr = trl.RLOOTrainer.__new__(trl.RLOOTrainer)
    attrs = dict(epsilon_low=0.2, epsilon_high=0.28, aux_loss_enabled=False,
                 accelerator=_Accelerator(), _metrics={"train": defaultdict(list)},
                 model=SimpleNamespace(training=True))  # fmt: skip
    for key, value in attrs.items():
        setattr(tr, key, value)
    logps = batch.logps
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    b, n = batch.mask.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
        "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": torch.zeros(b, n, dtype=torch.long),
        "completion_mask": batch.mask.long(),
        "advantages": batch.advantages,
        "old_logps": old_seq[:, 0],
    }
    loss = tr._compute_loss(None, inputs)
    assert out.losses.mean().item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad_ours, torch.autograd.grad(loss, batch.logps)[0])
