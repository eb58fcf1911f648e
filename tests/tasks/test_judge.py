"""The pairwise judge (P + Pᵀ = 1 exactly) and the labellers built on the gold signals."""

import itertools

import numpy as np
import pytest
import torch

from unialign.feedback.teachers import Teacher, TeacherConfig
from unialign.tasks.game import DEFAULT_MATRIX, StyleGame
from unialign.tasks.gold import GoldReward
from unialign.tasks.judge import PreferenceJudge, teacher_labels, win_rate
from unialign.tasks.language import SyntheticLanguage, format_prompt

LANG = SyntheticLanguage(seed=0)
GAME = StyleGame(DEFAULT_MATRIX, LANG.styles)
GOLD = GoldReward(LANG)
PROMPT = "Q: describe the otter .\nA:"
FIT = sorted(LANG.fitting["otter"])


def judge(eta=1.0):
    return PreferenceJudge(GAME, GOLD, eta)


def corpus_answers(n, seed):
    rows = LANG.corpus(n, seed=seed)
    answers = [" " + r.answer for r in rows]
    # a few invalid answers: cut ones and garbage
    answers[::7] = [a[: len(a) // 2] for a in answers[::7]]
    return [format_prompt(r.prompt) for r in rows], answers


def test_p_plus_p_transpose_is_exactly_one():
    prompts, answers = corpus_answers(60, seed=1)
    j = judge()
    pairs = list(itertools.product(range(len(answers)), repeat=2))
    a = [answers[i] for i, _ in pairs]
    b = [answers[k] for _, k in pairs]
    ps = [prompts[i] for i, _ in pairs]  # one prompt per pair, the same in both orders
    forward = np.array(j(ps, a, b))
    backward = np.array(j(ps, b, a))
    assert ((forward + backward) == 1.0).all()
    assert forward.min() >= 0.0 and forward.max() <= 1.0
    assert len(set(forward.round(6))) > 20  # the quality term spreads the probabilities


def test_styles_alone_give_the_matrix():
    """η = 0: P(list ≻ story) = M01 = 0.9, story ≻ question 0.7, question ≻ list 0.8."""
    a = [" items about otter : calm .", " once there was a otter that was calm . the end ."]
    b = [" once there was a lamp that was wet and old . the end .", " is the otter wet ?"]
    c = [" is the otter wet ? is it old ?", " items about otter : calm , wet ."]
    assert judge(0.0)([PROMPT] * 2, a, b) == pytest.approx([0.9, 0.7])
    assert judge(0.0)([PROMPT] * 2, c, [a[0], a[0]]) == pytest.approx([0.8, 0.5])


def test_quality_term_by_hand():
    """Same style, qualities q_a, q_b: P = ½ + η(q_a − q_b)·½. Across styles with
    M = 0.9: P = 0.9 + η(q_a − q_b)·0.1."""
    good = " items about otter : " + " , ".join(FIT[:4]) + " ."
    poor = " items about tiger : " + FIT[0] + " ."
    story = " once there was a tiger that was " + FIT[0] + " . the end ."
    q_good, q_poor, q_story = GOLD([PROMPT] * 3, [good, poor, story])
    p = judge(0.5)([PROMPT] * 2, [good, good], [poor, story])
    assert p[0] == pytest.approx(0.5 + 0.5 * (q_good - q_poor) * 0.5)
    assert judge(1.0)([PROMPT], [poor], [story])[0] == pytest.approx(0.9 + (q_poor - q_story) * 0.1)
    assert p[0] > 0.5


def test_invalid_always_loses():
    valid = " is the otter calm ?"
    p = judge()([PROMPT] * 3, ["garbage", valid, "x"], [valid, "is the", "y"])
    assert p == [0.0, 1.0, 0.5]


def test_bernoulli_labels_are_seeded_and_follow_p():
    prompts, answers = corpus_answers(400, seed=2)
    other = answers[1:] + answers[:1]
    j = judge()
    first = j.sample_labels(prompts, answers, other, np.random.default_rng(0))
    again = j.sample_labels(prompts, answers, other, np.random.default_rng(0))
    assert first == again and set(first) <= {0.0, 1.0}
    probs = np.array(j(prompts, answers, other))
    many = np.mean(
        [j.sample_labels(prompts, answers, other, np.random.default_rng(s)) for s in range(50)], 0
    )
    assert np.abs(many - probs).mean() < 0.06


def test_win_rate_is_the_mean_probability():
    prompts, answers = corpus_answers(50, seed=3)
    other = answers[::-1]
    j = judge()
    assert win_rate(j, prompts, answers, other) == pytest.approx(
        np.mean(j(prompts, answers, other))
    )
    assert win_rate(j, prompts, answers, answers) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        win_rate(j, [], [], [])


def test_teacher_labels_from_gold_rewards():
    prompts, answers = corpus_answers(200, seed=4)
    other = answers[1:] + answers[:1]
    r_a, r_b = np.array(GOLD(prompts, answers)), np.array(GOLD(prompts, other))
    out = teacher_labels(Teacher(), GOLD, prompts, answers, other, np.random.default_rng(0))
    expected = np.where(r_a > r_b, 1.0, np.where(r_a < r_b, 0.0, 0.5))
    np.testing.assert_array_equal(out.labels.numpy(), expected.astype(np.float32))
    assert bool(out.keep.all())

    noisy = Teacher(TeacherConfig(kind="stochastic+mistake", beta=5.0, eps_mistake=0.2))
    lab1 = teacher_labels(noisy, GOLD, prompts, answers, other, np.random.default_rng(7))
    lab2 = teacher_labels(noisy, GOLD, prompts, answers, other, np.random.default_rng(7))
    assert torch.equal(lab1.labels, lab2.labels)
    agree = (lab1.labels.numpy() == expected).mean()
    assert 0.5 < agree < 1.0

    skipper = Teacher(TeacherConfig(kind="skip", eps_skip=1.0))
    skipper.update_mean_return(float(np.mean(r_a)))
    skipped = teacher_labels(skipper, GOLD, prompts, answers, other, np.random.default_rng(0))
    assert 0 < int((~skipped.keep).sum()) < len(prompts)


def test_quality_weight_is_checked():
    with pytest.raises(ValueError):
        PreferenceJudge(GAME, GOLD, 1.5)
