"""B-Pref simulated teachers: each labelling rule on hand-built per-step rewards and on scalar
returns (completions' hidden rewards)."""

import math

import numpy as np
import pytest
import torch

from unialign.control.types import SegmentBatch
from unialign.feedback.store import FeedbackStore
from unialign.feedback.teachers import Teacher, TeacherConfig, mean_segment_return
from unialign.feedback.types import CompletionPairs


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def _teacher(kind, segment_return_mean=None, **params):
    teacher = Teacher(TeacherConfig(kind=kind, **params))
    if segment_return_mean is not None:
        teacher.update_mean_segment_return(segment_return_mean)
    return teacher


RNG = np.random.default_rng(0)


def test_oracle_higher_return_wins_ties_are_half():
    """Returns 6 vs 5 → 1; 0 vs 1 → 0; 3 vs 3 → ½; 5 vs 4 → 1 (the step order is irrelevant)."""
    r1 = _t([[1, 2, 3], [0, 0, 0], [1, 1, 1], [5, 0, 0]])
    r2 = _t([[3, 2, 0], [1, 0, 0], [1, 1, 1], [0, 0, 4]])
    labels, keep = _teacher("oracle").label_rewards(r1, r2, RNG)
    assert labels.tolist() == [1.0, 0.0, 0.5, 1.0]
    assert keep.tolist() == [True, True, True, True]


def test_label_reads_the_segments_true_rewards():
    r1, r2 = _t([[1.0, 0.0]]), _t([[0.0, 0.5]])
    seg = lambda r: SegmentBatch(torch.zeros(1, 2, 3), torch.zeros(1, 2, 1), r, torch.zeros(1))  # noqa: E731
    assert _teacher("oracle").label(seg(r1), seg(r2), RNG).labels.tolist() == [1.0]


def test_myopic_weights_step_t_by_gamma_to_the_h_minus_t():
    """γ = ½, H = 3: weights (γ², γ, 1) = (¼, ½, 1).

    [4,0,0] vs [0,0,2]: weighted 1 vs 2 → 0 (the oracle says 1: 4 > 2).
    [0,0,1] vs [3,0,0]: weighted 1 vs ¾ → 1 (the oracle says 0).
    [0,2,0] vs [4,0,0]: weighted 1 vs 1 → ½.
    """
    r1 = _t([[4, 0, 0], [0, 0, 1], [0, 2, 0]])
    r2 = _t([[0, 0, 2], [3, 0, 0], [4, 0, 0]])
    assert _teacher("myopic", gamma=0.5).label_rewards(r1, r2, RNG).labels.tolist() == [
        0.0,
        1.0,
        0.5,
    ]
    assert _teacher("oracle").label_rewards(r1, r2, RNG).labels.tolist() == [1.0, 0.0, 0.0]


def test_mistake_with_certainty_flips_every_label_and_keeps_ties():
    r1, r2 = _t([[2.0], [0.0], [1.0]]), _t([[1.0], [3.0], [1.0]])
    labels = _teacher("mistake", eps_mistake=1.0).label_rewards(r1, r2, RNG).labels
    assert labels.tolist() == [0.0, 1.0, 0.5]


def test_mistake_flip_frequency():
    """20 000 pairs the oracle labels 1; flips ~ Binomial(n, 0.3): sd = √(0.21/n) ≈ 0.0032,
    tolerance 0.015 (> 4.5 sd)."""
    n = 20_000
    r1, r2 = torch.ones(n, 2), torch.zeros(n, 2)
    labels = (
        _teacher("mistake", eps_mistake=0.3).label_rewards(r1, r2, np.random.default_rng(1)).labels
    )
    assert set(labels.unique().tolist()) == {0.0, 1.0}
    assert abs((labels == 0).float().mean().item() - 0.3) < 0.015


@pytest.mark.parametrize("beta", [0.7, 2.0])
def test_stochastic_frequency_matches_bradley_terry(beta):
    """Each return gap d repeated 20 000 times; the share of label 1 must be σ(βd) within 0.015
    (the binomial sd is at most 0.5/√20000 ≈ 0.0035, so > 4 sd)."""
    gaps = [-2.0, -0.5, 0.0, 0.5, 3.0]
    n = 20_000
    r1 = torch.tensor(gaps).repeat_interleave(n).unsqueeze(1)
    r2 = torch.zeros_like(r1)
    labels = (
        _teacher("stochastic", beta=beta).label_rewards(r1, r2, np.random.default_rng(2)).labels
    )
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    freq = labels.view(len(gaps), n).mean(dim=1)
    for d, f in zip(gaps, freq.tolist()):
        assert abs(f - 1.0 / (1.0 + math.exp(-beta * d))) < 0.015, (d, f)


def test_stochastic_uses_the_myopic_returns_when_combined():
    """stochastic+myopic with a huge β labels like myopic alone (γ = ½ example above)."""
    r1, r2 = _t([[4, 0, 0], [0, 0, 1]]), _t([[0, 0, 2], [3, 0, 0]])
    labels = _teacher("stochastic+myopic", beta=1e4, gamma=0.5).label_rewards(r1, r2, RNG).labels
    assert labels.tolist() == [0.0, 1.0]


def test_beta_to_infinity_is_the_oracle():
    gen = torch.Generator().manual_seed(3)
    r1, r2 = torch.randn(500, 5, generator=gen), torch.randn(500, 5, generator=gen)
    oracle = _teacher("oracle").label_rewards(r1, r2, RNG).labels
    inf = _teacher("stochastic", beta=math.inf).label_rewards(r1, r2, RNG).labels
    big = _teacher("stochastic", beta=1e6).label_rewards(r1, r2, np.random.default_rng(4)).labels
    assert torch.equal(inf, oracle)
    gap = (r1.double().sum(1) - r2.double().sum(1)).abs()
    assert gap.min() > 1e-4  # σ(1e6 · 1e-4) = σ(100) rounds to 1 in float64
    assert torch.equal(big, oracle)


def test_beta_zero_is_a_coin_flip():
    r1, r2 = torch.full((20_000, 1), 5.0), torch.zeros(20_000, 1)
    labels = _teacher("stochastic", beta=0.0).label_rewards(r1, r2, np.random.default_rng(5)).labels
    assert abs(labels.mean().item() - 0.5) < 0.015


def test_skip_drops_queries_at_or_below_eps_times_mean_segment_return():
    """R̄_seg = 10, ε_skip = 0.1 → θ = 1: max(R¹, R²) = 1 is dropped (≤), 1.5 kept, both
    negative dropped. Skipped labels are NaN."""
    teacher = _teacher("skip", 10.0, eps_skip=0.1)
    r1 = _t([[0.5, 0.5], [1.0, 0.5], [-1.0, 0.0], [0.0, 0.0]])
    r2 = _t([[0.0, 0.0], [0.0, 0.0], [-3.0, 0.0], [2.0, 1.0]])
    labels, keep = teacher.label_rewards(r1, r2, RNG)
    assert keep.tolist() == [False, True, False, True]
    assert labels[keep].tolist() == [1.0, 0.0]
    assert torch.isnan(labels[~keep]).all()


def test_thresholds_apply_epsilon_once():
    """B-Pref's script multiplies ε twice after its first round; here θ = ε · R̄_seg always."""
    teacher = _teacher("skip+equal", 10.0, eps_skip=0.1, eps_equal=0.2)
    assert teacher.thresholds() == pytest.approx((1.0, 2.0))
    teacher.update_mean_segment_return(10.0)
    teacher.update_mean_segment_return(30.0)
    assert teacher.thresholds() == pytest.approx((3.0, 6.0))


def test_skip_and_equal_need_the_mean_segment_return():
    with pytest.raises(RuntimeError, match="update_mean_segment_return"):
        _teacher("equal").label_rewards(_t([[1.0]]), _t([[0.0]]), RNG)
    # teachers without those rules do not
    _teacher("myopic").label_rewards(_t([[1.0]]), _t([[0.0]]), RNG)


def test_equal_labels_half_below_the_threshold_on_undiscounted_returns():
    """θ_equal = 0.1 · 10 = 1: gaps 0.99 → ½; 1.0 → not equal (strict <) → 1; 3 → 1.

    myopic+equal, γ = ¼, H = 2 (weights ¼, 1): [2, 0] vs [0, 1.5] weigh 0.5 vs 1.5 (myopic
    label 0), but the undiscounted gap |2 − 1.5| = 0.5 < 1 → ½.
    """
    teacher = _teacher("equal", 10.0, eps_equal=0.1)
    r1 = _t([[0.99, 0.0], [1.0, 0.0], [3.0, 0.0]])
    r2 = torch.zeros(3, 2)
    assert teacher.label_rewards(r1, r2, RNG).labels.tolist() == [0.5, 1.0, 1.0]
    both = _teacher("myopic+equal", 10.0, gamma=0.25, eps_equal=0.1)
    assert both.label_rewards(_t([[2.0, 0.0]]), _t([[0.0, 1.5]]), RNG).labels.tolist() == [0.5]


def test_equal_overrides_a_mistake():
    teacher = _teacher("mistake+equal", 10.0, eps_mistake=1.0, eps_equal=0.1)
    labels = teacher.label_rewards(_t([[0.5], [3.0]]), _t([[0.0], [0.0]]), RNG).labels
    assert labels.tolist() == [0.5, 0.0]  # the close pair is equal; the other is flipped


def test_parameters_of_unnamed_irrationalities_are_ignored():
    """kind='oracle' with B-Pref's default β, γ, ε present labels like the oracle."""
    r1, r2 = _t([[4, 0, 0], [2, 0, 0]]), _t([[0, 0, 2], [3, 0, 0]])
    cfg = TeacherConfig(kind="oracle", beta=0.1, gamma=0.5, eps_mistake=1.0)
    assert Teacher(cfg).label_rewards(r1, r2, RNG).labels.tolist() == [1.0, 0.0]
    assert Teacher(cfg).name == "teacher:oracle"


def test_mean_segment_return_scales_episode_returns_to_the_segment():
    """mean(100, 200) = 150 per 1000-step episode → 150 · 50 / 1000 = 7.5 per 50-step segment."""
    assert mean_segment_return([100.0, 200.0], episode_length=1000, segment_length=50) == 7.5
    with pytest.raises(ValueError, match="empty"):
        mean_segment_return([], 1000, 50)


def test_state_dict_round_trip():
    teacher = _teacher("skip", 4.0)
    other = _teacher("skip")
    other.load_state_dict(teacher.state_dict())
    assert other.thresholds() == teacher.thresholds()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "lazy"}, "unknown teacher kind"),
        ({"kind": "oracle+lazy"}, "unknown teacher kind"),
        ({"gamma": 0.0}, "gamma"),
        ({"beta": -1.0}, "beta"),
        ({"eps_mistake": 1.5}, "eps_mistake"),
        ({"eps_skip": -0.1}, "eps_skip"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TeacherConfig(**kwargs)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\[N, H\]"):
        _teacher("oracle").label_rewards(torch.zeros(3, 2), torch.zeros(3, 4), RNG)


# -- scalar returns: any candidate with a return (a segment's sum, a completion's hidden reward)


class ScriptedRng:
    """Stands in for np.random.Generator: ``random(n)`` returns the next n scripted draws."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def random(self, n):
        out, self.draws = np.array(self.draws[:n]), self.draws[n:]
        assert len(out) == n, "the test scripted too few draws"
        return out


def _r(values):
    return torch.tensor(values, dtype=torch.float64)


def test_scalar_oracle():
    """R¹ = (3, −1, 2, 0.5), R² = (1, 4, 2, 0.25):
    3 > 1 → 1; −1 < 4 → 0; 2 = 2 → ½; 0.5 > 0.25 → 1."""
    out = _teacher("oracle").label_returns(_r([3, -1, 2, 0.5]), _r([1, 4, 2, 0.25]), RNG)
    assert out.labels.tolist() == [1.0, 0.0, 0.5, 1.0] and out.keep.all()


def test_scalar_myopic_is_the_oracle():
    """A scalar return is one step (H = 1): its weight γ^{H−1} = γ⁰ = 1, so with γ = ½ the
    labels are the oracle's (1, 0, ½, 1) — and the same as per-step rewards of shape [N, 1]."""
    r1, r2 = _r([3, -1, 2, 0.5]), _r([1, 4, 2, 0.25])
    teacher = _teacher("myopic", gamma=0.5)
    assert teacher.label_returns(r1, r2, RNG).labels.tolist() == [1.0, 0.0, 0.5, 1.0]
    per_step = teacher.label_rewards(r1.unsqueeze(1), r2.unsqueeze(1), RNG).labels
    assert per_step.tolist() == [1.0, 0.0, 0.5, 1.0]


def test_scalar_stochastic_with_scripted_draws():
    """β = 1. Gap ln 3: P(first) = σ(ln 3) = 3/(3+1) = ¾; draws 0.7 < ¾ → 1, 0.8 ≥ ¾ → 0.
    Gap −ln 3: σ = ¼; draw 0.2 < ¼ → 1, 0.3 → 0. Gap 0: σ = ½; draw 0.49 → 1."""
    ln3 = math.log(3.0)
    r1 = _r([ln3, ln3, 0.0, 0.0, 1.0])
    r2 = _r([0.0, 0.0, ln3, ln3, 1.0])
    rng = ScriptedRng(0.7, 0.8, 0.2, 0.3, 0.49)
    labels = _teacher("stochastic", beta=1.0).label_returns(r1, r2, rng).labels
    assert labels.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_scalar_mistake_with_scripted_draws():
    """ε = ¼; the oracle says (1, 0, ½, 1); draws (0.1, 0.3, 0.2, 0.25): flip where draw < ¼ →
    first flipped to 0, second kept 0, the tie stays ½ (1 − ½ = ½), the last kept (0.25 ≮ ¼)."""
    rng = ScriptedRng(0.1, 0.3, 0.2, 0.25)
    out = _teacher("mistake", eps_mistake=0.25).label_returns(
        _r([3, -1, 2, 0.5]), _r([1, 4, 2, 0.25]), rng
    )
    assert out.labels.tolist() == [0.0, 0.0, 0.5, 1.0]


def test_scalar_skip():
    """R̄ = 10, ε_skip = 0.2 → θ_skip = 2. Pairs (2, 1): max 2 ≤ 2 → skipped; (2.5, −1): kept,
    label 1; (−3, 1.9): max 1.9 ≤ 2 → skipped; (0, 3): kept, label 0."""
    out = _teacher("skip", 10.0, eps_skip=0.2).label_returns(
        _r([2, 2.5, -3, 0]), _r([1, -1, 1.9, 3]), RNG
    )
    assert out.keep.tolist() == [False, True, False, True]
    assert out.labels[out.keep].tolist() == [1.0, 0.0] and torch.isnan(out.labels[~out.keep]).all()


def test_scalar_equal():
    """R̄ = 10, ε_equal = 0.1 → θ_equal = 1. |5 − 4.5| = 0.5 < 1 → ½; |5 − 4| = 1 ≮ 1 → 1;
    |0 − 3| = 3 → 0."""
    out = _teacher("equal", 10.0, eps_equal=0.1).label_returns(_r([5, 5, 0]), _r([4.5, 4, 3]), RNG)
    assert out.labels.tolist() == [0.5, 1.0, 0.0]


def test_update_mean_return_is_the_general_name():
    teacher = _teacher("skip", eps_skip=0.5)
    teacher.update_mean_return(4.0)
    assert teacher.thresholds() == (2.0, 0.0)
    teacher.update_mean_segment_return(6.0)
    assert teacher.thresholds() == (3.0, 0.0)


def test_label_returns_shapes():
    with pytest.raises(ValueError, match=r"\[N\] \(scalar returns\) or \[N, H\]"):
        _teacher("oracle").label_returns(torch.zeros(3), torch.zeros(4), RNG)
    with pytest.raises(ValueError, match=r"\[N\] \(scalar returns\) or \[N, H\]"):
        _teacher("oracle").label_returns(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), RNG)
    with pytest.raises(ValueError, match=r"\[N, H\]"):  # label_rewards keeps its per-step contract
        _teacher("oracle").label_rewards(torch.zeros(3), torch.zeros(3), RNG)


def test_label_completions_from_stored_hidden_rewards(tmp_path):
    """Hidden rewards (0.9 vs 0.1, 0.2 vs 0.7) round-trip through the store; the oracle labels
    (1, 0) and the labels go back under the teacher's name."""
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ids = store.add_completion_queries(
            ["a", "b"],
            [" x", " y"],
            [" z", " w"],
            step=0,
            rewards_1=[0.9, 0.2],
            rewards_2=[0.1, 0.7],
        )
        teacher = _teacher("oracle")
        labels, keep = teacher.label_completions(store.completions(ids), RNG)
        assert labels.tolist() == [1.0, 0.0]
        store.add_labels(ids, labels, labeler=teacher.name, keep_mask=keep)
        assert store.labelled_completion_pairs().labels.tolist() == [1.0, 0.0]
        more = store.add_completion_queries(["c"], [" u"], [" v"], step=1, rewards_1=[1.0])
        with pytest.raises(ValueError, match=r"pairs \[0\] have no hidden reward"):
            teacher.label_completions(store.completions(more), RNG)


def test_label_completions_needs_rewards():
    with pytest.raises(ValueError, match="hidden rewards"):
        _teacher("oracle").label_completions(CompletionPairs(["a"], [" b"], [" c"]), RNG)
