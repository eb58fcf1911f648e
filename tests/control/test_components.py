"""The control loop is built from injected parts: registry, custom learners, no name branches."""

import ast
import inspect
import json
import typing

import numpy as np
import pytest
import torch
from torch import nn

from unialign.control import train as train_module
from unialign.control.algorithms import ALGORITHMS, get_algorithm
from unialign.control.aparl import segment_log_prob
from unialign.control.components import FitContext
from unialign.control.config import ControlConfig
from unialign.control.demo import demo_config
from unialign.control.query import PoolSelector
from unialign.control.sac import SquashedGaussianActor
from unialign.control.types import SegmentBatch
from unialign.losses.reward import ensemble_preference_cross_entropy


def test_config_choices_are_the_registry():
    algo = ControlConfig.model_fields["algo"].annotation
    assert typing.get_args(algo) == tuple(ALGORITHMS)
    with pytest.raises(ValueError, match="oracle, pebble, aparl"):
        get_algorithm("ppo")


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_registry_entry_builds_its_learner(name, tmp_path):
    cfg = demo_config(tmp_path, quick=True).model_copy(update={"algo": name})
    algo = ALGORITHMS[name]
    if algo.build_learner is None:
        assert not algo.learns_reward
        return
    learner = algo.build_learner(cfg, 3, 1, torch.device("cpu"))
    seg = SegmentBatch(
        torch.randn(4, 5, 3), torch.rand(4, 5, 1), torch.zeros(4, 5), torch.arange(4)
    )
    probs = learner.preference_probs(seg, seg)
    assert probs.shape == (cfg.reward_ensemble, 4)
    torch.testing.assert_close(probs, torch.full_like(probs, 0.5))  # σ(R − R) = ½
    rewards = learner.reward_fn()(np.zeros((7, 3), np.float32), np.zeros((7, 1), np.float32))
    assert rewards.shape == (7,)
    learner.load_state_dict(learner.state_dict())


def test_the_loop_has_no_algorithm_name_branches():
    """No comparison in train.py involves an algorithm name or the ``algo`` field: the parts
    it is given decide what runs."""
    tree = ast.parse(inspect.getsource(train_module))
    names = set(ALGORITHMS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op in operands:
                assert not (isinstance(op, ast.Constant) and op.value in names), ast.unparse(node)
                assert not (isinstance(op, ast.Attribute) and op.attr == "algo"), ast.unparse(node)


def test_pool_selector_asks_the_first_round_uniformly():
    class Fixed:
        def preference_probs(self, seg1, seg2):  # member 0 certain, member 1 undecided
            return torch.stack([torch.linspace(0.5, 1.0, len(seg1)), torch.full((len(seg1),), 0.5)])

    seg = SegmentBatch(
        torch.zeros(6, 2, 1), torch.zeros(6, 2, 1), torch.zeros(6, 2), torch.arange(6)
    )
    sel = PoolSelector("disagreement", pool_factor=3)
    assert sel.pool_size(2) == 6
    idx, method = sel.select(seg, seg, Fixed(), 2, np.random.default_rng(0), first_round=False)
    assert method == "disagreement" and idx.tolist() == [5, 4]  # largest member std first
    _, method = sel.select(seg, seg, Fixed(), 2, np.random.default_rng(0), first_round=True)
    assert method == "uniform"
    with pytest.raises(ValueError, match="query selection"):
        PoolSelector("random")


def test_segment_log_prob_skips_absorbed_steps_by_mask_not_by_zero_action():
    """A real step whose action is exactly 0 counts; an absorbed step does not, whatever its
    stored action."""
    torch.manual_seed(0)
    actor = SquashedGaussianActor(2, 1, (8,))
    obs, act = torch.randn(1, 3, 2), torch.tensor([[[0.0], [0.3], [0.0]]])
    absorbed = torch.tensor([[False, False, True]])
    per_step = actor.log_prob(obs.reshape(3, 2), act.reshape(3, 1))
    seg = SegmentBatch(obs, act, torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), absorbed)
    torch.testing.assert_close(segment_log_prob(actor, seg), per_step[:2].sum().reshape(1))
    unmasked = SegmentBatch(obs, act, torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(segment_log_prob(actor, unmasked), per_step.sum().reshape(1))


class LinearRewardLearner:
    """A reward learner the registry does not know: r(s, a) = w·[s, a], fitted by
    Bradley–Terry with plain gradient descent (one member)."""

    def __init__(self, obs_dim: int, act_dim: int, *, lr: float = 0.1, epochs: int = 20):
        self.w = nn.Parameter(torch.zeros(obs_dim + act_dim))
        self.lr, self.epochs, self.fits = lr, epochs, 0

    def _returns(self, seg):
        return (torch.cat([seg.obs, seg.actions], -1) @ self.w).sum(-1).unsqueeze(0)  # [1, N]

    def reward_fn(self):
        w = self.w.detach().numpy()
        return lambda obs, act: np.concatenate([obs, act], -1) @ w

    def preference_probs(self, seg1, seg2):
        return torch.sigmoid(self._returns(seg1) - self._returns(seg2))

    def fit(self, seg1, seg2, labels, ctx: FitContext):
        assert isinstance(ctx.rng, np.random.Generator) and ctx.agent is not None
        opt = torch.optim.SGD([self.w], lr=self.lr)
        for _ in range(self.epochs):
            out = ensemble_preference_cross_entropy(
                self._returns(seg1), self._returns(seg2), labels
            )
            opt.zero_grad()
            out.losses.sum().backward()
            opt.step()
        self.fits += 1
        return {"reward_model/loss": float(out.losses.sum().detach())}

    def state_dict(self):
        return {"w": self.w.detach().clone(), "fits": self.fits}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.fits = state["fits"]


@pytest.mark.integration
def test_a_custom_reward_learner_runs_in_the_unchanged_loop(tmp_path):
    """Adding an algorithm needs no change to the loop: inject a learner through ``build``."""
    cfg = demo_config(tmp_path / "lin", quick=True).model_copy(
        update={"algo": "pebble", "progress": False}
    )
    learners = []

    def build(cfg, run_dir, device):
        parts = train_module.build_parts(cfg, run_dir, device)
        parts.feedback.learner = LinearRewardLearner(3, 1)
        learners.append(parts.feedback.learner)
        return parts

    summary = train_module.train_control(cfg, build=build)
    assert summary["queries_used"] == 20 and learners[0].fits == 2  # rounds at 300 and 500
    assert learners[0].w.abs().sum() > 0  # it learned from the labels
    rows = [json.loads(x) for x in (tmp_path / "lin" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_model/loss" in r for r in rows)
