"""The gold reward's shape on hand-written answers."""

import math

import pytest

from unialign.tasks.gold import GoldReward, hump
from unialign.tasks.language import DESCRIPTORS, SyntheticLanguage

LANG = SyntheticLanguage(seed=0)
PROMPT = "Q: describe the otter .\nA:"
FIT = sorted(LANG.fitting["otter"])
UNFIT = [d for d in DESCRIPTORS if d not in LANG.fitting["otter"]]


def listing(topic, items):
    return " items about " + topic + " : " + " , ".join(items) + " ."


def test_hump_values():
    """h(u) = (u e^{1−u})²: h(0) = 0, h(1) = 1 (the maximum), h(2) = 4/e², h(3) = 9/e⁴."""
    assert hump(0.0) == 0.0
    assert hump(1.0) == 1.0
    assert hump(2.0) == pytest.approx(4 / math.e**2)
    assert hump(3.0) == pytest.approx(9 / math.e**4)
    assert hump(0.5) < hump(0.9) < hump(1.0) > hump(1.1) > hump(2.0)


def test_worked_example():
    """On topic, descriptors (f1, f2, u1, u1): k = 4 items, D = {f1, f2, u1}, n = 3,
    fit = 2/3, so r = 0.2·1 + 0.2·(2/3) + 0.6·h(3/8)·(3/4) with h(3/8) = (0.375 e^{0.625})²."""
    answer = listing("otter", [FIT[0], FIT[1], UNFIT[0], UNFIT[0]])
    expected = 0.2 + 0.2 * 2 / 3 + 0.6 * (0.375 * math.exp(0.625)) ** 2 * 3 / 4
    assert GoldReward(LANG)([PROMPT], [answer])[0] == pytest.approx(expected, abs=1e-12)
    feats = GoldReward(LANG).features(PROMPT, answer)
    assert (feats.valid, feats.on_topic, feats.distinct, feats.items) == (True, True, 3, 4)


def test_detail_rises_to_the_peak_then_falls():
    """With only the detail term, n distinct fitting-or-not descriptors score h(n/8)."""
    gold = GoldReward(LANG, w_rel=0.0, w_fit=0.0, w_detail=1.0)
    scores = [gold([PROMPT], [listing("otter", DESCRIPTORS[:n])])[0] for n in range(1, 25)]
    assert scores == pytest.approx([hump(n / 8) for n in range(1, 25)])
    peak = scores.index(max(scores)) + 1
    assert peak == 8 and scores[7] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(scores[:7], scores[1:8]))  # rising up to n* = 8
    assert all(a > b for a, b in zip(scores[7:], scores[8:]))  # falling after it
    assert scores[23] < 0.2  # 24 descriptors are worth less than 3


def test_each_feature_moves_the_reward():
    gold = GoldReward(LANG)
    base = gold([PROMPT], [listing("otter", FIT[:4])])[0]
    off_topic = gold([PROMPT], [listing("tiger", FIT[:4])])[0]
    unfit = gold([PROMPT], [listing("otter", UNFIT[:4])])[0]
    repeated = gold([PROMPT], [listing("otter", FIT[:4] + FIT[:2])])[0]
    unknown = gold([PROMPT], [listing("otter", FIT[:4] + ["zzz"])])[0]
    assert base == pytest.approx(0.2 + 0.2 + 0.6 * hump(0.5))
    assert off_topic == pytest.approx(base - 0.2)
    assert unfit == pytest.approx(base - 0.2)
    assert repeated == pytest.approx(0.4 + 0.6 * hump(0.5) * 4 / 6)
    assert unknown == pytest.approx(0.4 + 0.6 * hump(0.5) * 4 / 5)


def test_invalid_scores_zero_and_style_does_not_matter():
    gold = GoldReward(LANG)
    items = FIT[:3]
    same = [
        listing("otter", items),
        f" once there was a otter that was {' and '.join(items)} . the end .",
        f" is the otter {items[0]} ? is it {items[1]} ? is it {items[2]} ?",
        f" wow , the otter ! {' ! '.join(items)} !",
    ]
    rewards = gold([PROMPT] * 4, same)
    assert rewards == pytest.approx([rewards[0]] * 4)
    assert gold([PROMPT, PROMPT], ["items about otter :", "hello"]) == [0.0, 0.0]


def test_conversational_inputs_score_like_plain_ones():
    gold = GoldReward(LANG)
    answer = listing("otter", FIT[:3])
    conv_prompt = [{"role": "user", "content": "describe the otter ."}]
    conv_answer = [{"role": "assistant", "content": answer.strip()}]
    assert gold([conv_prompt], [conv_answer]) == gold([PROMPT], [answer])


def test_corpus_rewards_lie_in_unit_interval_and_rarely_reach_the_peak():
    gold = GoldReward(LANG)
    rows = LANG.corpus(2000, seed=0)
    prompts = [f"Q: {r.prompt}\nA:" for r in rows]
    rewards = gold(prompts, [" " + r.answer for r in rows])
    assert all(0.0 <= r <= 1.0 for r in rewards)
    reached = [gold.features(p, " " + r.answer).distinct >= 8 for p, r in zip(prompts, rows)]
    assert sum(reached) / len(rows) < 0.06


def test_lengths_must_match():
    with pytest.raises(ValueError):
        GoldReward(LANG)([PROMPT], [])
