"""SAC: the squashed-Gaussian density, learning signals, exact resume, a trivial task."""

import io
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from unialign.control.buffer import ReplayBuffer
from unialign.control.nets import EnsembleMLP
from unialign.control.sac import SAC, SACConfig, evaluate
from unialign.control.types import TransitionBatch

SMALL = SACConfig(hidden=(32, 32), batch_size=64)


def _batch(n=64, obs_dim=3, act_dim=2, seed=0) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    return TransitionBatch(
        obs=torch.randn(n, obs_dim, generator=g),
        actions=torch.rand(n, act_dim, generator=g) * 2 - 1,
        rewards=torch.randn(n, generator=g),
        next_obs=torch.randn(n, obs_dim, generator=g),
        dones=(torch.rand(n, generator=g) < 0.1).float(),
    )


def test_log_prob_matches_hand_computed_tanh_gaussian_density():
    """With u ~ N(μ, σ²) per dimension and a = tanh(u), the change of variables gives
    p(a) = N(u; μ, σ) / |det ∂a/∂u| with ∂a_i/∂u_i = 1 − tanh²(u_i) = 1 − a_i², so

        log π(a) = Σ_i [ −(u_i − μ_i)² / (2σ_i²) − log σ_i − ½ log 2π − log(1 − a_i²) ].

    The actor's last layer is set to output μ = (0.3, −0.2), log σ = (log 0.5, log 0.8) for any
    input; u is recovered from the returned action as atanh(a), and the density is evaluated
    with the math module in double precision."""
    agent = SAC(obs_dim=3, act_dim=2, cfg=SMALL)
    mu, sigma = [0.3, -0.2], [0.5, 0.8]
    last = agent.actor.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(mu + [math.log(s) for s in sigma]))
    a, logp = agent.actor.sample(torch.randn(5, 3), generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 2) and logp.shape == (5,)
    for row in range(5):
        expected = 0.0
        for i in range(2):
            ai = float(a[row, i].detach())
            u = math.atanh(ai)
            expected += (
                -((u - mu[i]) ** 2) / (2 * sigma[i] ** 2)
                - math.log(sigma[i])
                - 0.5 * math.log(2 * math.pi)
                - math.log(1 - ai * ai)
            )
        assert float(logp[row].detach()) == pytest.approx(expected, abs=2e-5)
    # the deterministic action is tanh(μ)
    torch.testing.assert_close(
        agent.actor.mean_action(torch.zeros(1, 3)), torch.tanh(torch.tensor([mu]))
    )


def test_sample_is_differentiable_and_stable_far_in_the_tails():
    agent = SAC(obs_dim=3, act_dim=2, cfg=SMALL)
    a, logp = agent.actor.sample(torch.randn(8, 3))
    (a.sum() + logp.sum()).backward()
    assert all(p.grad is not None for p in agent.actor.parameters())
    # |u| = 20: 1 − tanh²(u) underflows in float32, the softplus form stays finite
    with torch.no_grad():
        agent.actor.net[-1].weight.zero_()
        agent.actor.net[-1].bias.copy_(torch.tensor([20.0, -20.0, -10.0, -10.0]))
    _, logp = agent.actor.sample(torch.zeros(2, 3))
    assert torch.isfinite(logp).all()


def test_act_shapes_and_bounds():
    agent = SAC(obs_dim=3, act_dim=2, cfg=SMALL)
    one = agent.act(np.zeros(3, np.float32))
    many = agent.act(np.random.randn(10, 3).astype(np.float32))
    det = agent.act(np.zeros(3, np.float32), deterministic=True)
    assert one.shape == (2,) and many.shape == (10, 2) and det.shape == (2,)
    assert np.abs(many).max() <= 1.0


def test_fused_critic_members_are_independent_mlps():
    """Member i of the ensemble, and its gradients, equal a plain ReLU MLP built from its
    slice of the stacked weights (the scalar head is a multiply-and-sum, not a matmul)."""
    ens = EnsembleMLP(2, 4, 1, (8, 8))
    x = torch.randn(5, 4, requires_grad=True)

    def member(i):
        h = x
        for j, (w, b) in enumerate(zip(ens.weights, ens.biases)):
            h = h @ w[i] + b[i]
            h = torch.relu(h) if j < 2 else h
        return h

    out = ens(x)
    assert out.shape == (2, 5, 1)
    ref = torch.stack([member(i) for i in range(2)])
    torch.testing.assert_close(out, ref)
    fused = torch.autograd.grad(out.square().sum(), [x, *ens.parameters()])
    plain = torch.autograd.grad(ref.square().sum(), [x, *ens.parameters()])
    for f, p in zip(fused, plain):
        torch.testing.assert_close(f, p)


def test_update_reduces_critic_loss_on_a_fixed_batch():
    """Random rewards on 64 fixed transitions: the critic can memorize them (the bootstrapped
    target moves slowly); 150 updates bring the loss well below its start (≈ 0.3× here)."""
    agent = SAC(obs_dim=3, act_dim=2, cfg=SACConfig(hidden=(64, 64), lr=1e-3), seed=0)
    batch = _batch()
    first = agent.update(batch)["loss/critic"]
    for _ in range(150):
        last = agent.update(batch)
    assert last["loss/critic"] < 0.5 * first
    assert set(last) >= {"loss/critic", "loss/actor", "loss/alpha", "sac/alpha", "sac/q_mean"}
    assert all(math.isfinite(v) for v in last.values())


def test_actor_loss_does_not_touch_critic_gradients():
    """The critic's gradient after an update equals the gradient of the critic loss alone."""
    agent = SAC(obs_dim=3, act_dim=2, cfg=SMALL, seed=0)
    batch = _batch()
    agent.optimizer.step = lambda: None  # keep parameters fixed to compare gradients
    gen_state = agent.generator.get_state()
    agent.update(batch)
    got = [p.grad.clone() for p in agent.critic.parameters()]
    agent.generator.set_state(gen_state)
    with torch.no_grad():
        a2, logp2 = agent.actor.sample(batch.next_obs, generator=agent.generator)
        alpha = agent.log_alpha.exp()
        y = batch.rewards + 0.99 * (1 - batch.dones) * (
            agent.critic_target(batch.next_obs, a2).amin(0) - alpha * logp2
        )
    for p in agent.critic.parameters():
        p.grad = None
    (0.5 * (agent.critic(batch.obs, batch.actions) - y).square().mean(1).sum()).backward()
    for g, p in zip(got, agent.critic.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_state_dict_round_trip_gives_identical_next_updates():
    cfg = SACConfig(hidden=(32, 32), actor_update_interval=2, target_update_interval=2)
    a = SAC(obs_dim=3, act_dim=2, cfg=cfg, seed=0)
    for i in range(3):
        a.update(_batch(seed=i))
    blob = io.BytesIO()
    torch.save(a.state_dict(), blob)
    blob.seek(0)
    b = SAC(obs_dim=3, act_dim=2, cfg=cfg, seed=123)
    b.load_state_dict(torch.load(blob, weights_only=False))
    for i in range(3, 6):
        ma, mb = dict(a.update(_batch(seed=i))), dict(b.update(_batch(seed=i)))
        assert ma.keys() == mb.keys()
        for k in ma:
            assert ma[k] == mb[k] or (math.isnan(ma[k]) and math.isnan(mb[k]))
    for pa, pb in zip(a.critic_target.parameters(), b.critic_target.parameters()):
        assert torch.equal(pa, pb)
    for pa, pb in zip(a.actor.parameters(), b.actor.parameters()):
        assert torch.equal(pa, pb)
    np.testing.assert_array_equal(a.act(np.ones(3)), b.act(np.ones(3)))


def test_reset_critic():
    agent = SAC(obs_dim=3, act_dim=2, cfg=SMALL)
    agent.update(_batch())
    before = [p.clone() for p in agent.critic.parameters()]
    agent.reset_critic()
    assert not torch.equal(before[0], agent.critic.q.weights[0])
    for p, t in zip(agent.critic.parameters(), agent.critic_target.parameters()):
        assert torch.equal(p, t)
    assert all(p not in agent.optimizer.state for p in agent.critic.parameters())
    agent.update(_batch())  # the optimizer re-creates the state


def test_sac_improves_on_a_trivial_task():
    """A contextual bandit (episodes of one step): s ~ U[-1, 1], r = −(a − 0.5)², done = 1,
    so Q(s, a) = r and the best action is 0.5 in every state. Off-policy data from uniform
    actions; after 400 updates the deterministic action is near 0.5 and better than at start."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(4096, obs_dim=1, act_dim=1, seed=0)
    obs = rng.uniform(-1, 1, (4096, 1)).astype(np.float32)
    act = rng.uniform(-1, 1, (4096, 1)).astype(np.float32)
    for o, a in zip(obs, act):
        r = -((a[0] - 0.5) ** 2)
        buf.add(o[None], a[None], [r], o[None], [True], [False])
    agent = SAC(
        obs_dim=1, act_dim=1, cfg=SACConfig(hidden=(64, 64), lr=1e-3, init_alpha=0.05), seed=0
    )
    probe = np.linspace(-1, 1, 9, dtype=np.float32)[:, None]
    start = np.abs(agent.act(probe, deterministic=True) - 0.5).mean()
    for _ in range(400):
        agent.update(buf.sample(128))
    final = agent.act(probe, deterministic=True)
    assert np.abs(final - 0.5).max() < 0.1, final.ravel()
    assert np.abs(final - 0.5).mean() < start


class _SuccessToy(gym.Env):
    """Three-step episodes; ``info["success"]`` is 1 at step 2 of even-seeded episodes; the
    reward is the action."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(-2, 2, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.lucky = 0, seed is not None and seed % 2 == 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        info = {"success": float(self.lucky and self.t == 2)}
        return np.zeros(1, np.float32), float(action[0]), self.t == 3, False, info


def test_evaluate_reports_return_and_success_rate():
    """A constant agent acting 0.5 in [-1, 1] plays 1.0 in the env's [-2, 2]: return 3.0.
    Seeds 10, 11, 12, 13 → two of four episodes succeed."""
    gym.register("UnialignSuccessToy-v0", entry_point=_SuccessToy)

    class Const:
        def act(self, obs, deterministic=False):
            return np.array([0.5], np.float32)

    out = evaluate(Const(), "UnialignSuccessToy-v0", episodes=4, seed=10)
    assert out["eval/true_return"] == pytest.approx(3.0)
    assert out["eval/success_rate"] == 0.5
    assert out["eval/episode_length"] == 3.0
    plain = evaluate(SAC(3, 1, cfg=SMALL), "Pendulum-v1", episodes=1, seed=0)
    assert "eval/success_rate" not in plain and plain["eval/episode_length"] == 200


def test_seed_fixes_initial_weights_without_touching_the_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = (
        SAC(3, 2, cfg=SMALL, seed=5),
        SAC(3, 2, cfg=SMALL, seed=5),
        SAC(3, 2, cfg=SMALL, seed=6),
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (next(x.critic.parameters()) for x in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    np.testing.assert_array_equal(a.act(np.ones(3)), b.act(np.ones(3)))
