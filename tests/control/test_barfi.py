"""``train barfi``: the REINFORCE-with-entropy learner by hand, the loop's resume after a crash
and after Ctrl-C, config errors, the CLI and the benchmark's cell function.

The hypergradient itself is checked against the exact one in ``tests/bilevel/test_barfi.py``.
"""

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from unialign.bilevel.barfi import BlendedReward
from unialign.cli import main
from unialign.config import ConfigError, load_config
from unialign.control.barfi import BarfiConfig, train_barfi
from unialign.control.barfi_learner import (
    DiscretePolicy,
    EpisodeBatch,
    GaussianPolicy,
    inner_objective,
)

TINY = {"total_steps": 400, "episodes_per_update": 2, "max_episode_steps": 30, "progress": False}


def _batch(obs, actions, primary, aux):
    return EpisodeBatch(
        obs=torch.tensor(obs, dtype=torch.float32),
        actions=actions,
        primary=torch.tensor(primary),
        aux=torch.tensor(aux),
        shaping=torch.zeros(len(primary)),
        ends=torch.tensor([False, True]),
        episode_returns=torch.tensor([sum(primary)]),
    )


def test_discrete_learner_gradient_by_hand():
    """One episode of two steps; a linear categorical policy on 1-d states s₁ = 0, s₂ = 1 with
    bias (0, 0) and weights (ln 3, 0), so logits z₁ = (0, 0), z₂ = (ln 3, 0), π₂ = (¾, ¼).
    Actions (0, 0); r_p = (1, 2), r_aux = (0, 2), blend φ₁ = 0, φ₃ = ½ → r_φ = (1, 3); γ = ½.
    G = (1 + ½·3, 3) = (2.5, 3); the learner divides by std(G) = 1/√8 (n − 1 = 1, held
    constant), so advantages are √8·(−¼, ¼).
    ∇_z log π(a|z) = e_a − π; ∇_z H = −π ⊙ (log π + H), zero at uniform.
    ∂J/∂z₁ = ½·√8·(−¼)·(½, −½) = √8·(−1/16, 1/16);
    ∂J/∂z₂ = ½·√8·¼·(¼, −¼) + β·½·∇H(π₂) = √8·(1/32, −1/32) + β/2·∇H(π₂).
    Bias gradient = ∂J/∂z₁ + ∂J/∂z₂; weight gradient = s₂·∂J/∂z₂."""
    beta = 0.1
    pol = DiscretePolicy(1, 2, [])
    with torch.no_grad():
        pol.net[0].bias.zero_()
        pol.net[0].weight.copy_(torch.tensor([[math.log(3.0)], [0.0]]))
    blend = BlendedReward(1, init_aux_weight=0.5, init_discount=0.5)
    batch = _batch([[0.0], [1.0]], torch.tensor([0, 0]), [1.0, 2.0], [0.0, 2.0])
    j = inner_objective(pol, blend, batch, batch.aux, entropy_coef=beta)
    gw, gb = torch.autograd.grad(j, [pol.net[0].weight, pol.net[0].bias])
    r8 = math.sqrt(8.0)
    pi2 = torch.tensor([0.75, 0.25])
    h2 = -(pi2 * pi2.log()).sum()
    dz1 = r8 * torch.tensor([-1 / 16, 1 / 16])
    dz2 = r8 * torch.tensor([1 / 32, -1 / 32]) + beta / 2 * (-pi2 * (pi2.log() + h2))
    torch.testing.assert_close(gb, dz1 + dz2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw[:, 0], dz2, rtol=1e-5, atol=1e-6)


def test_gaussian_learner_gradient_by_hand():
    """μ(s) = 0 (zero weights and bias), log σ = 0; actions a = (1, −½); rewards r_φ = r_p =
    (1, 3) (r_aux = 0), γ = ½ → G = (2.5, 3), advantages (−1/√2, 1/√2) after the std.
    ∂ log N(a; μ, σ²)/∂μ = (a − μ)/σ² = a; ∂/∂ log σ = (a − μ)²/σ² − 1 = a² − 1; ∂H/∂ log σ = 1.
    ∂J/∂bias = ½(−1/√2·1 + 1/√2·(−½)) = −0.75/√2;
    ∂J/∂ log σ = ½(−1/√2·0 + 1/√2·(¼ − 1)) + β = −0.375/√2 + β."""
    beta = 0.1
    pol = GaussianPolicy(1, 1, [])
    with torch.no_grad():
        pol.net[0].weight.zero_()
        pol.net[0].bias.zero_()
        pol.log_std.zero_()
    blend = BlendedReward(1, init_discount=0.5)
    batch = _batch([[0.3], [-0.2]], torch.tensor([[1.0], [-0.5]]), [1.0, 3.0], [0.0, 0.0])
    j = inner_objective(pol, blend, batch, batch.aux, entropy_coef=beta)
    gb, gs = torch.autograd.grad(j, [pol.net[0].bias, pol.log_std])
    assert gb.item() == pytest.approx(-0.75 / math.sqrt(2), rel=1e-5)
    assert gs.item() == pytest.approx(-0.375 / math.sqrt(2) + beta, rel=1e-5)


def _cfg(tmp_path: Path, name: str, **kw) -> BarfiConfig:
    return BarfiConfig(**(TINY | {"checkpoint_every": 2} | kw), output_dir=str(tmp_path / name))


def _final(out: Path):
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return ck["policy"], ck["blend"], lines


def _same(a, b):
    pa, ba, la = a
    pb, bb, lb = b
    assert la == lb
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0)
    for k in ba:
        torch.testing.assert_close(ba[k], bb[k], rtol=0, atol=0)


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    """A crash at iteration 5 (checkpoints every 2 iterations: the last at 4) then --resume:
    the metrics lines, the policy and the blend equal an uninterrupted run's exactly (episode i
    resets with seed·1000003 + i, actions come from a generator saved in the checkpoint, and
    the log is truncated to the checkpoint's offset)."""
    full = train_barfi(_cfg(tmp_path, "full"))

    def crash(i):
        if i == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        train_barfi(_cfg(tmp_path, "crash"), on_iteration=crash)
    resumed = train_barfi(_cfg(tmp_path, "crash"), resume=True)
    _same(_final(tmp_path / "full"), _final(tmp_path / "crash"))
    assert resumed["score"] == full["score"] and resumed["curve"] == full["curve"]
    assert 0.0 < resumed["discount"] < 1.0


def test_ctrl_c_checkpoints_and_resume_continues(tmp_path):
    """SIGINT at iteration 3: StopOnSignal lets the iteration finish, the loop checkpoints and
    returns interrupted; --resume then ends where an uninterrupted run ends (first-order
    variant, so both hypergradient paths run through the loop)."""
    kw = {"variant": "first_order"}
    train_barfi(_cfg(tmp_path, "full", **kw))

    def interrupt(i):
        if i == 3:
            os.kill(os.getpid(), signal.SIGINT)

    first = train_barfi(_cfg(tmp_path, "int", **kw), on_iteration=interrupt)
    assert first["interrupted"] and first["iterations"] == 3
    second = train_barfi(_cfg(tmp_path, "int", **kw), resume=True)
    assert not second["interrupted"]
    _same(_final(tmp_path / "full"), _final(tmp_path / "int"))


def test_metrics_and_summary(tmp_path):
    """Each metrics line has the primary return, φ₃ statistics, γ and the hypergradient's
    norm; the summary's score is the mean of the last ``score_window`` returns."""
    s = train_barfi(_cfg(tmp_path, "m", score_window=2))
    rows = [json.loads(x) for x in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    need = {"eval/primary_return", "barfi/phi3_mean", "barfi/phi3_std", "barfi/discount"}
    assert need | {"hypergrad/norm", "env_steps"} <= set(rows[0])
    assert s["score"] == pytest.approx(sum(r["eval/primary_return"] for r in rows[-2:]) / 2)
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["env_steps"] >= 400


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="aux 'ugly' is not defined for CartPole-v1"):
        load_config(BarfiConfig, None, {"aux": "ugly"})
    with pytest.raises(ConfigError, match="no auxiliary rewards"):
        load_config(BarfiConfig, None, {"env": "Pendulum-v1"})
    with pytest.raises(ConfigError, match="variant"):
        load_config(BarfiConfig, None, {"variant": "cg"})
    with pytest.raises(ValueError, match="no checkpoint"):
        train_barfi(_cfg(tmp_path, "none"), resume=True)


def test_cli_gaussian_task_and_existing_run(tmp_path):
    """``unialign train barfi`` on a Box-action task (Gaussian policy), then again into the
    same directory without --resume: refused with exit status 2."""
    out = tmp_path / "ip"
    argv = ["train", "barfi", "--env", "InvertedPendulum-v5", "--aux", "bad", "--total-steps",
            "150", "--max-episode-steps", "20", "--episodes-per-update", "2", "--no-progress",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["env_steps"] >= 150
    assert main(argv) == 2


def test_benchmark_cell(tmp_path):
    """The sweep cell: task ENV/AUX, method names mapped to method + variant, result keys."""
    from benchmark_scripts import load_benchmark
    from unialign.sweep.grid import Cell

    bench = load_benchmark("barfi")
    params = {k: v for k, v in TINY.items() if k != "progress"}
    cell = Cell("barfi_first_order", "gym:CartPole-v1/good", 0, params, {}, "c")
    assert bench.cell_config(cell, tmp_path).variant == "first_order"
    res = bench.run_cell(cell, tmp_path)
    assert set(res) >= {"score", "curve", "low_score", "metrics"} and res["curve"]
    with pytest.raises(ValueError, match="ENV/AUX"):
        bench.cell_config(Cell("barfi", "CartPole-v1", 0, {}, {}, "d"), tmp_path)


@pytest.mark.slow
def test_barfi_recovers_from_a_bad_auxiliary_reward_on_cartpole(tmp_path):
    """CartPole-v1 with the bad bonus (upright costs reward): the naive sum learns to drop the
    pole, BARFI's blend moves away from it. Measured at 20k steps, seed 0: naive 9.4, BARFI
    105 (final φ₃ 0.53). Asserted with a wide margin: BARFI ≥ 2 × naive."""
    kw = {"aux": "bad", "total_steps": 20_000, "max_episode_steps": 200, "episodes_per_update": 5}
    naive = train_barfi(_cfg(tmp_path, "naive", method="naive", **kw))
    barfi = train_barfi(_cfg(tmp_path, "barfi", **kw))
    assert barfi["score"] >= 2 * naive["score"]
    assert barfi["phi3_mean"] < 1.0
