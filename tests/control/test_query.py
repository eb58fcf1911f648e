"""Query selection (uniform / disagreement / entropy) and the feedback schedule."""

import numpy as np
import pytest
import torch

from unialign.control.query import QuerySchedule, select_queries
from unialign.control.reward_model import RewardEnsemble
from unialign.control.types import SegmentBatch


class _FixedProbs:
    """A hand-built 'ensemble' whose members' P_k(σ¹ ≻ σ²) are given directly."""

    def __init__(self, probs):
        self.probs = torch.tensor(probs, dtype=torch.float64)

    def preference_probs(self, seg1, seg2):
        return self.probs


def _pool(m, h=2, obs_dim=1):
    return SegmentBatch(
        torch.zeros(m, h, obs_dim), torch.zeros(m, h, 1), torch.zeros(m, h), torch.arange(m)
    )


# Columns are candidate pairs, rows the K = 3 members.
#   pair:        0     1     2     3     4     5
#   mean P:     .50   .45   .10   .58   .99   .60
#   std P:       0   .334    0   .108    0   .082   (population std)
PROBS = [
    [0.5, 0.90, 0.1, 0.63, 0.99, 0.7],
    [0.5, 0.10, 0.1, 0.68, 0.99, 0.5],
    [0.5, 0.35, 0.1, 0.43, 0.99, 0.6],
]


def test_disagreement_picks_the_largest_member_std():
    """std(.9, .1, .35) = √(.335/3) = .334 > std(.63, .68, .43) = √(.035/3) = .108
    > std(.7, .5, .6) = √(.02/3) = .082 > 0 (pairs 0, 2, 4: the members agree)."""
    pool = _pool(6)
    idx = select_queries(
        pool, pool, _FixedProbs(PROBS), 3, "disagreement", np.random.default_rng(0)
    )
    assert idx.tolist() == [1, 3, 5]


def test_entropy_picks_the_most_uncertain_mean_probability():
    """Binary entropy of the ensemble mean is largest nearest ½: .50 > .45 > .58 > .60 > .10 >
    .99 — pair 0, where every member says ½, comes first although nobody disagrees."""
    pool = _pool(6)
    idx = select_queries(pool, pool, _FixedProbs(PROBS), 3, "entropy", np.random.default_rng(0))
    assert idx.tolist() == [0, 1, 3]
    idx = select_queries(pool, pool, _FixedProbs(PROBS), 6, "entropy", np.random.default_rng(0))
    assert idx.tolist() == [0, 1, 3, 5, 2, 4]


def test_selection_on_a_reward_ensemble_with_known_members():
    """Members r̂_k(s, a) = k·s (k = 0, 1, 2), one-step segments, σ² at s = 0:
    P_k = σ(k·x). x = 0: all ½ (max entropy, no disagreement); x = 10: (½, ≈1, ≈1) has the
    largest std among x ∈ {0, 0.3, 1, 10}: std(½, σ(x), σ(2x)) grows with x."""
    ens = RewardEnsemble(1, 1, ensemble_size=3, hidden=(), output_activation="none")
    with torch.no_grad():
        ens.members.weights[0].zero_()  # [K, in = (s, a), out = 1]
        ens.members.weights[0][:, 0, 0] = torch.tensor([0.0, 1.0, 2.0])
        ens.members.biases[0].zero_()
    x = torch.tensor([0.3, 10.0, 0.0, 1.0])
    seg1 = SegmentBatch(x.view(4, 1, 1), torch.zeros(4, 1, 1), torch.zeros(4, 1), torch.arange(4))
    seg2 = SegmentBatch(
        torch.zeros(4, 1, 1), torch.zeros(4, 1, 1), torch.zeros(4, 1), torch.arange(4)
    )
    rng = np.random.default_rng(0)
    assert select_queries(seg1, seg2, ens, 1, "disagreement", rng).tolist() == [1]
    assert select_queries(seg1, seg2, ens, 1, "entropy", rng).tolist() == [2]


def test_uniform_returns_distinct_indices_in_range():
    pool = _pool(30)
    for seed in range(5):
        idx = select_queries(pool, pool, None, 10, "uniform", np.random.default_rng(seed))
        assert idx.dtype == np.int64 and len(set(idx.tolist())) == 10
        assert idx.min() >= 0 and idx.max() < 30
    full = select_queries(pool, pool, None, 30, "uniform", np.random.default_rng(0))
    assert sorted(full.tolist()) == list(range(30))


def test_selection_errors():
    pool = _pool(4)
    with pytest.raises(ValueError, match="pool of 4"):
        select_queries(pool, pool, None, 5, "uniform", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown query selection"):
        select_queries(pool, pool, _FixedProbs([[0.5] * 4]), 2, "kcenter", np.random.default_rng(0))
    with pytest.raises(ValueError, match="seg2"):
        select_queries(pool, _pool(3), None, 2, "uniform", np.random.default_rng(0))


def _run(schedule, steps):
    """Drive the schedule as the loop does: ask what is due, then consume it."""
    fired = []
    for step in steps:
        n = schedule.due(step)
        if n:
            fired.append((step, n))
            schedule.consume(n)
    return fired


def test_schedule_fires_at_the_right_steps_and_stops_at_the_budget():
    """Budget 50, 20 per round, every 100 steps from 300: 20 at 300, 20 at 400, the last 10
    at 500, then nothing."""
    schedule = QuerySchedule(budget=50, per_round=20, interval=100, start=300)
    assert _run(schedule, range(2000)) == [(300, 20), (400, 20), (500, 10)]
    assert schedule.asked == 50 and schedule.due(10_000) == 0


def test_schedule_with_coarse_steps_fires_at_the_first_step_past_each_round():
    """Three environments: the step advances by 3, so rounds due at 300, 400, 500 fire at
    300, 402, 501."""
    schedule = QuerySchedule(budget=60, per_round=20, interval=100, start=300)
    assert _run(schedule, range(0, 2000, 3)) == [(300, 20), (402, 20), (501, 20)]


@pytest.mark.parametrize(
    "budget, per_round, interval", [(0, 5, 10), (7, 3, 1), (100, 7, 13), (5, 10, 50)]
)
def test_schedule_never_exceeds_the_budget(budget, per_round, interval):
    schedule = QuerySchedule(budget=budget, per_round=per_round, interval=interval, start=0)
    fired = _run(schedule, range(5000))
    assert sum(n for _, n in fired) == budget
    assert all(0 < n <= per_round for _, n in fired)
    with pytest.raises(ValueError, match="budget"):
        schedule.consume(1)


def test_schedule_state_round_trip():
    a = QuerySchedule(budget=50, per_round=20, interval=100, start=300)
    _run(a, range(450))
    b = QuerySchedule(budget=50, per_round=20, interval=100, start=300)
    b.load_state_dict(a.state_dict())
    assert _run(b, range(450, 2000)) == [(500, 10)]


def test_schedule_validation():
    with pytest.raises(ValueError, match="per_round"):
        QuerySchedule(budget=10, per_round=0, interval=5)
