"""A-PARL's estimator options (pair weights, full-Q cross term) and the LQ diagnosis plumbing.

The key check: on the soft LQ problem the shipped solve and cross term
(``implicit_correction``), given the exact score gradient, the full Q_ν and no damping,
reproduce the exact implicit term of ∇G computed independently by autograd through θ*(ν).
"""

import pytest
import torch

from unialign.bilevel.lq import SoftLQ
from unialign.control.aparl import aparl_reward_gradient, importance_weights
from unialign.control.aparl_diagnosis import (
    EstimatorVariant,
    LinearGaussianActor,
    QuadraticReward,
    estimator_draws,
    stale_policy,
    summarise,
)
from unialign.control.types import SegmentBatch

DT = torch.float64
NU = torch.tensor([0.5, 0.2, 0.0, 1.0, 0.1, 0.4], dtype=DT)


def _problem(gamma=0.9):
    return SoftLQ.example(gamma=gamma, horizon=5)


def _setup(n=12, seed=0):
    p = _problem()
    gen = torch.Generator().manual_seed(seed)
    actor = LinearGaussianActor.from_policy(p.optimal_policy(NU.clone()))
    model = QuadraticReward(p, NU)
    segs = []
    for _ in range(2):
        o, a = p.rollout(stale_policy(p.optimal_policy(NU), 0.5), p.sample_noise(n, generator=gen))
        segs.append(
            SegmentBatch(o.detach(), a.detach(), torch.zeros(n, 5, dtype=DT), torch.arange(n))
        )
    labels = torch.bernoulli(torch.full((n,), 0.5, dtype=DT), generator=gen)
    states = torch.randn(32, 2, dtype=DT, generator=gen)
    return p, actor, model, segs, labels, states


def _correction(model, actor, segs, labels, states, **kw):
    torch.manual_seed(7)
    total, _ = aparl_reward_gradient(
        model, actor, *segs, labels, obs_for_lower=states, alpha=0.1, **kw
    )
    torch.manual_seed(7)
    bt, _ = aparl_reward_gradient(
        model, actor, *segs, labels, obs_for_lower=states, alpha=0.1, correction_weight=0.0
    )
    return total[0] - bt[0]


def test_linear_actor_densities():
    """log_prob is the Normal log-density; sample's log-prob equals log_prob of its sample."""
    actor = LinearGaussianActor.from_policy(_problem().optimal_policy(NU), hidden=4)
    s = torch.randn(16, 2, dtype=DT)
    a, logp = actor.sample(s)
    mean, log_std = actor(s)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    torch.testing.assert_close(actor.log_prob(s, a), ref)
    torch.testing.assert_close(logp, ref)
    pol = _problem().optimal_policy(NU)  # the two-layer actor represents θ* exactly
    torch.testing.assert_close(actor.as_policy().gain, pol.gain)


def test_unit_pair_weights_change_nothing_and_zero_weight_drops_a_pair():
    """w ≡ 1 is the unweighted estimator. w = (1, …, 1, 0): g_θ = Σ_{n<N} (ℓ_n − ℓ̄') ∇log ρ_n / N
    with ℓ̄' the mean over the first N − 1 pairs, i.e. (N − 1)/N times the estimator on those
    N − 1 pairs; the correction is linear in g_θ, so it scales the same way."""
    _, actor, model, segs, labels, states = _setup()
    n = len(labels)
    base = _correction(model, actor, segs, labels, states, damping=0.0, cg_tol=1e-12)
    ones = _correction(model, actor, segs, labels, states, damping=0.0, cg_tol=1e-12,
                       pair_weights=torch.ones(n, dtype=DT))  # fmt: skip
    torch.testing.assert_close(ones, base, rtol=1e-10, atol=1e-14)
    w = torch.ones(n, dtype=DT)
    w[-1] = 0.0
    dropped = _correction(
        model, actor, segs, labels, states, damping=0.0, cg_tol=1e-12, pair_weights=w
    )
    first = [s.take(list(range(n - 1))) for s in segs]
    fewer = _correction(model, actor, first, labels[:-1], states, damping=0.0, cg_tol=1e-12)
    torch.testing.assert_close(dropped, (n - 1) / n * fewer, rtol=1e-8, atol=1e-14)
    with pytest.raises(ValueError, match="pair_weights"):
        _correction(model, actor, segs, labels, states, pair_weights=-torch.ones(n, dtype=DT))


def test_importance_weights_by_hand():
    """Behaviour = the actor itself ⇒ every ratio is 1 (plain and self-normalised). Shifting
    the behaviour log-prob of pair 0 by −log 4 makes its ratio 4: plain w = (4, 1, …);
    self-normalised w/mean(w); clipped at 2 × mean first."""
    _, actor, _, segs, _, _ = _setup(n=4)
    from unialign.control.aparl import segment_log_prob

    with torch.no_grad():
        lb1, lb2 = segment_log_prob(actor, segs[0]), segment_log_prob(actor, segs[1])
    for sn in (True, False):
        w = importance_weights(actor, *segs, lb1, lb2, self_normalise=sn)
        torch.testing.assert_close(w, torch.ones(4, dtype=DT))
    lb1 = lb1.clone()
    lb1[0] -= torch.log(torch.tensor(4.0, dtype=DT))
    plain = importance_weights(actor, *segs, lb1, lb2, self_normalise=False)
    torch.testing.assert_close(plain, torch.tensor([4.0, 1, 1, 1], dtype=DT))
    sn = importance_weights(actor, *segs, lb1, lb2)
    torch.testing.assert_close(sn, torch.tensor([4.0, 1, 1, 1], dtype=DT) / 1.75)
    clipped = importance_weights(actor, *segs, lb1, lb2, clip=2.0)  # 2 × 1.75 = 3.5 caps the 4
    torch.testing.assert_close(clipped, torch.tensor([3.5, 1, 1, 1], dtype=DT) / 1.625)


def test_q_nu_fn_equal_to_reward_is_the_one_step_term():
    """q_nu_fn = r_ν reproduces the default (one-step) cross term exactly; at γ = 0 the
    closed-form Q_ν is r_ν itself, so the full-Q variant equals the one-step one there."""
    _, actor, model, segs, labels, states = _setup()
    base = _correction(model, actor, segs, labels, states)
    same = _correction(model, actor, segs, labels, states, q_nu_fn=model.reward)
    torch.testing.assert_close(same, base, rtol=1e-12, atol=1e-15)
    p0 = _problem(gamma=0.0)
    m0 = QuadraticReward(p0, NU)
    a0 = LinearGaussianActor.from_policy(p0.optimal_policy(NU))
    one = _correction(m0, a0, segs, labels, states)
    full = _correction(m0, a0, segs, labels, states, q_nu_fn=lambda o, a: p0.soft_q(m0.nu, o, a))
    torch.testing.assert_close(full, one, rtol=1e-9, atol=1e-13)


def test_shipped_solve_reproduces_the_exact_implicit_term():
    """Exact score gradient (pathwise, 2·10⁴ pairs), full Q_ν, Fisher curvature, λ = 0, CG to
    convergence, 1 024 on-policy lower states: the implicit term matches the exact one from
    autograd through θ*(ν) (2·10⁴ pairs). Both sides carry Monte-Carlo error of a few per
    cent of the term (the exact side's standard error is printed in the diagnosis results:
    ≈ 2.4 % at 2·10⁵ pairs, so ≈ 7 % here; the score gradient’s is similar; measured 0.06), hence 0.2;
    the one-step term misses it by ≈ 0.75 at γ = 0.99 and ≈ 1 at 0.9 (asserted > 0.4)."""
    p = _problem(gamma=0.9)
    exact = p.hypergradient(NU, pairs=20_000, blocks=10, generator=torch.Generator().manual_seed(1))
    import unialign.control.aparl_diagnosis as diag

    old, diag.EXACT_SCORE_PAIRS = diag.EXACT_SCORE_PAIRS, 20_000
    try:
        v = EstimatorVariant(
            "t", sample="on_policy", score="exact", cross="full_q", damping=0.0, lower_states=2048
        )
        full = summarise(estimator_draws(p, NU, v, replicates=2, seed=0), exact)
        one = EstimatorVariant(
            "t", sample="on_policy", score="exact", damping=0.0, lower_states=2048
        )
        one_step = summarise(estimator_draws(p, NU, one, replicates=2, seed=0), exact)
    finally:
        diag.EXACT_SCORE_PAIRS = old
    assert full["implicit_rmse"] < 0.2 and full["implicit_cos_mean"] > 0.97
    assert one_step["implicit_bias"] > 0.4


def _fit(curvature):
    """Two corrected updates of the configured learner on random pairs; reward parameters."""
    from types import SimpleNamespace

    import numpy as np

    from unialign.control.algorithms import get_algorithm
    from unialign.control.components import FitContext
    from unialign.control.config import ControlConfig
    from unialign.control.sac import SAC, SACConfig

    cfg = ControlConfig(
        algo="aparl", reward_hidden=[8], reward_epochs=1, aparl_steps=2, aparl_states=16,
        aparl_curvature=curvature,
    )  # fmt: skip
    learner = get_algorithm("aparl").build_learner(cfg, 3, 1, torch.device("cpu"))
    assert learner.curvature == curvature
    gen = torch.Generator().manual_seed(0)
    segs = [
        SegmentBatch(torch.randn(6, 4, 3, generator=gen), torch.rand(6, 4, 1, generator=gen) * 1.8 - 0.9,
                     torch.zeros(6, 4), torch.arange(6))
        for _ in range(2)
    ]  # fmt: skip
    buffer = SimpleNamespace(
        sample=lambda n, device: SimpleNamespace(obs=torch.randn(n, 3, generator=gen))
    )
    ctx = FitContext(
        SAC(3, 1, SACConfig(hidden=(8,))), buffer, np.random.default_rng(0), torch.device("cpu")
    )
    torch.manual_seed(0)
    metrics = learner.fit(*segs, torch.tensor([1.0, 0, 1, 0, 0.5, 1]), ctx)
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["aparl/correction_norm"] > 0
    return torch.cat([p.detach().reshape(-1) for p in learner.base.model.parameters()])


def test_config_curvature_reaches_the_learner():
    """aparl_curvature: hessian makes the learner use the actor-loss Hessian with SAC's
    critics (a different update from the Fisher one); an unknown value is refused."""
    from pydantic import ValidationError

    from unialign.control.config import ControlConfig

    assert ControlConfig().aparl_curvature == "fisher"  # today's behaviour stays the default
    assert not torch.allclose(_fit("fisher"), _fit("hessian"))
    with pytest.raises(ValidationError, match="aparl_curvature"):
        ControlConfig(aparl_curvature="gauss-newton")


@pytest.mark.slow
def test_diagnosis_benchmark_quick(tmp_path):
    """``benchmarks/aparl_diagnosis.py --quick`` writes every section's variants with the
    figures docs/aparl.md quotes, the exact gradients with their errors, and the PNG."""
    import json

    from benchmark_scripts import load_benchmark

    bench = load_benchmark("aparl_diagnosis")
    out = tmp_path / "d.json"
    bench.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {r["section"][0] for r in result["variants"]} == set("ABCDEFGH")
    assert len(result["variants"]) == len(bench.grid(8))
    row = result["variants"][0]
    for key in ("implicit_bias", "implicit_bias_mc", "implicit_std", "aparl_rmse", "pebble_rmse"):
        assert row[key] >= 0
    assert set(result["problems"]) == set(bench.PROBLEMS)
    assert out.with_suffix(".png").exists()
