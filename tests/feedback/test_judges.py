"""Judges: the contract checks, Python reward/preference functions named by a spec, simulated
teachers over a score judge, and the config factory (every error names what is wrong)."""

import math
import textwrap

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from unialign.config import ConfigError
from unialign.feedback.human import HumanJudge
from unialign.feedback.judges import (
    JUDGE_KINDS,
    JudgeConfig,
    JudgeConfigError,
    JudgeError,
    PairJudge,
    ScoreJudge,
    build_judge,
    checked_preferences,
    checked_scores,
    parse_judge_config,
)
from unialign.feedback.python_judges import (
    PreferenceFunctionJudge,
    RewardFunctionJudge,
    load_preference_function,
    load_reward_function,
)
from unialign.feedback.teacher_judge import TeacherJudge
from unialign.feedback.teachers import TeacherConfig

PROMPTS = ["p0", "p1", "p2"]


def _fn_judge(fn, name="f"):
    return RewardFunctionJudge(fn, name=name)


def _pair_judge(fn, name="g"):
    return PreferenceFunctionJudge(fn, name=name)


@pytest.fixture
def rewards_file(tmp_path):
    """A reward-function file with good and broken functions (and a preference function)."""
    path = tmp_path / "my_rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            def length(prompts, completions):
                return [float(len(c)) for c in completions]

            def three_args(prompts, completions, extra):
                return []

            def rps(prompts, a, b):
                # rock-paper-scissors: every style beats one and loses to one (intransitive)
                beats = {("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")}
                return [1.0 if (x, y) in beats else 0.0 if (y, x) in beats else 0.5
                        for x, y in zip(a, b)]

            def out_of_range(prompts, a, b):
                return [2.0] * len(a)

            def skipper(prompts, a, b):
                return [float("nan")] * len(a)

            class Scorer:
                @staticmethod
                def shout(prompts, completions):
                    return [float(c.count("!")) for c in completions]

            NOT_A_FUNCTION = 3
            """
        )
    )
    return path


# -- the contract checks ------------------------------------------------------------------------


def test_checked_scores_passes_finite_numbers_of_any_numeric_type():
    judge = _fn_judge(lambda p, c: [1, np.float32(2.5), torch.tensor(-3.0)])
    assert checked_scores(judge, PROMPTS, ["a", "b", "c"]) == [1.0, 2.5, -3.0]


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda p, c: 1 / 0, r"judge 'judge:f' raised ZeroDivisionError.*batch of 3 completions"),
        (lambda p, c: [1.0, 2.0], "returned 2 scores for 3 completions"),
        (lambda p, c: [1.0, math.nan, 2.0], r"returned nan for sample 1 \(prompt 'p1'"),
        (lambda p, c: [1.0, math.inf, 2.0], "returned inf for sample 1"),
        (lambda p, c: [1.0, "x", 2.0], "returned 'x' for sample 1"),
        (lambda p, c: 7.0, "returned a float; it must return a list"),
        (lambda p, c: "abc", "returned a str"),
    ],
)
def test_checked_scores_turns_every_contract_breach_into_a_judge_error(fn, message):
    with pytest.raises(JudgeError, match=message):
        checked_scores(_fn_judge(fn), PROMPTS, ["a", "b", "c"])


def test_checked_scores_rejects_mismatched_inputs_before_calling_the_judge():
    with pytest.raises(ValueError, match="3 prompts but 2 completions"):
        checked_scores(_fn_judge(lambda p, c: 1 / 0), PROMPTS, ["a", "b"])


@pytest.mark.parametrize(
    ("values", "allow_skip", "message"),
    [
        ([0.0, 1.5, 1.0], True, r"returned 1.5 for pair 1 \(prompt 'p1'\).*\[0, 1\]"),
        ([0.0, -0.1, 1.0], True, "returned -0.1 for pair 1"),
        ([0.0, math.nan, 1.0], False, "returned nan for pair 1.*may not skip"),
        ([0.0, 1.0], True, "returned 2 preferences for 3 pairs"),
        ([0.0, None, 1.0], True, "returned None for pair 1"),
    ],
)
def test_checked_preferences_enforces_probabilities_and_skips(values, allow_skip, message):
    judge = _pair_judge(lambda p, a, b: values)
    with pytest.raises(JudgeError, match=message):
        checked_preferences(judge, PROMPTS, ["a"] * 3, ["b"] * 3, allow_skip=allow_skip)


def test_checked_preferences_passes_skips_as_nan_and_wraps_exceptions():
    judge = _pair_judge(lambda p, a, b: [1.0, math.nan, 0.5])
    got = checked_preferences(judge, PROMPTS, ["a"] * 3, ["b"] * 3)
    assert got[0] == 1.0 and math.isnan(got[1]) and got[2] == 0.5
    boom = _pair_judge(lambda p, a, b: {}["missing"])
    with pytest.raises(JudgeError, match=r"judge 'judge:g' raised KeyError.*batch of 3 pairs"):
        checked_preferences(boom, PROMPTS, ["a"] * 3, ["b"] * 3)
    with pytest.raises(ValueError, match="one pair per prompt"):
        checked_preferences(judge, PROMPTS, ["a"] * 3, ["b"] * 2)


# -- Python functions named by a spec -------------------------------------------------------------


def test_reward_function_from_a_file_scores_and_is_named_after_the_function(rewards_file):
    judge = load_reward_function(f"{rewards_file}:length")
    assert isinstance(judge, ScoreJudge) and not isinstance(judge, PairJudge)
    assert judge.name == "judge:length"
    assert checked_scores(judge, PROMPTS, ["a", "bbb", ""]) == [1.0, 3.0, 0.0]
    # conversational samples reach the function unchanged
    conv = [[{"role": "assistant", "content": "hi"}]]
    assert judge.score([[{"role": "user", "content": "q"}]], conv) == [1.0]
    assert load_reward_function(f"{rewards_file}:length", name="len").name == "judge:len"
    assert load_reward_function(f"{rewards_file}:Scorer.shout").score(["p"], ["a!!"]) == [2.0]


def test_reward_function_from_a_relative_path_and_from_a_module(rewards_file, monkeypatch):
    monkeypatch.chdir(rewards_file.parent)
    assert load_reward_function("./my_rewards.py:length").score(["p"], ["ab"]) == [2.0]
    assert load_reward_function("my_rewards.py:length").score(["p"], ["ab"]) == [2.0]
    monkeypatch.syspath_prepend(str(rewards_file.parent))
    judge = load_reward_function("my_rewards:length")
    assert judge.score(["p"], ["abc"]) == [3.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", r"'no_colon_here' must be 'module:function' or .*colon"),
        ("mod:", "must be 'module:function'"),
        ("missing/file.py:fn", r"the file missing/file.py does not exist \(resolved to /"),
        ("DIR:fn", "is a directory"),
        ("surely_no_such_module_xyz:fn", "no module named 'surely_no_such_module_xyz'.*PYTHONPATH"),
        ("bad name:fn", "neither a dotted module name nor a path"),
        ("FILE:nope", r"has no attribute 'nope'; it defines: Scorer, length, out_of_range"),
        ("FILE:Scorer.nope", "FILE:Scorer has no attribute 'nope'"),
        ("FILE:NOT_A_FUNCTION", "NOT_A_FUNCTION is a int, not a function"),
        ("FILE:three_args", r"must accept 2 positional arguments \(prompts, completions\)"),
    ],
)
def test_reward_function_spec_errors_name_the_spec_and_the_fix(spec, message, rewards_file):
    spec = spec.replace("FILE", str(rewards_file)).replace("DIR", str(rewards_file.parent))
    message = message.replace("FILE", str(rewards_file))
    with pytest.raises(JudgeConfigError, match=message) as err:
        load_reward_function(spec)
    assert "reward function" in str(err.value)
    assert isinstance(err.value, ConfigError)  # the CLI reports it like any config error


def test_a_file_that_fails_to_import_names_the_file_and_the_missing_dependency(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(
        JudgeConfigError, match=r"executing .*broken.py raised RuntimeError: no GPU"
    ):
        load_reward_function(f"{broken}:fn")
    needs = tmp_path / "needs_dep.py"
    needs.write_text("import surely_missing_dep_abc\n")
    with pytest.raises(JudgeConfigError, match="No module named 'surely_missing_dep_abc'"):
        load_reward_function(f"{needs}:fn")


def test_a_module_that_imports_a_missing_module_is_not_reported_as_missing(tmp_path, monkeypatch):
    (tmp_path / "mod_with_bad_import.py").write_text("import surely_missing_dep_def\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        JudgeConfigError, match="imports the missing module 'surely_missing_dep_def'"
    ):
        load_reward_function("mod_with_bad_import:fn")


def test_preference_function_may_be_intransitive(rewards_file):
    judge = load_preference_function(f"{rewards_file}:rps")
    assert isinstance(judge, PairJudge) and not isinstance(judge, ScoreJudge)
    a, b = ["rock", "scissors", "paper", "rock"], ["scissors", "paper", "rock", "rock"]
    assert checked_preferences(judge, ["p"] * 4, a, b) == [1.0, 1.0, 1.0, 0.5]


def test_preference_function_errors(rewards_file):
    with pytest.raises(JudgeConfigError, match=r"preference function .* must accept 3 positional"):
        load_preference_function(f"{rewards_file}:length")
    with pytest.raises(JudgeError, match=r"judge 'judge:out_of_range' returned 2.0 for pair 0"):
        checked_preferences(load_preference_function(f"{rewards_file}:out_of_range"), ["p"], ["a"], ["b"])  # fmt: skip
    skipper = load_preference_function(f"{rewards_file}:skipper")
    assert math.isnan(checked_preferences(skipper, ["p"], ["a"], ["b"])[0])
    with pytest.raises(JudgeError, match="may not skip"):
        checked_preferences(skipper, ["p"], ["a"], ["b"], allow_skip=False)


# -- simulated teachers over a score judge ---------------------------------------------------------


def _table_judge(table, name="table"):
    """A score judge reading each completion's score from ``table``."""
    return _fn_judge(lambda p, c: [table[x] for x in c], name=name)


SCORES = {"a": 10.0, "b": 4.0, "c": 9.5, "d": 1.0, "e": 0.2, "f": 0.1}


def test_oracle_teacher_labels_from_the_scores():
    judge = TeacherJudge(_table_judge(SCORES), TeacherConfig("oracle"), seed=0)
    assert judge.name == "teacher:oracle" and isinstance(judge, PairJudge)
    got = checked_preferences(judge, ["p"] * 3, ["a", "d", "b"], ["c", "b", "b"])
    assert got == [1.0, 0.0, 0.5]


def test_equal_and_skip_teachers_use_the_running_mean_of_scores_seen():
    """First call, scores a=10, b=4 vs c=9.5, d=1: R̄ = (10 + 4 + 9.5 + 1)/4 = 6.125,
    θ_equal = 0.1·6.125 = 0.6125: |10 − 9.5| = 0.5 < θ → ½; |4 − 1| = 3 → 1 (b better).

    Second call, e=0.2 vs f=0.1 (skip teacher, ε_skip = 0.1): R̄ = (24.5 + 0.3)/6 = 4.1333,
    θ_skip = 0.41333 ≥ max(0.2, 0.1) → skipped (NaN).
    """
    equal = TeacherJudge(_table_judge(SCORES), TeacherConfig("equal", eps_equal=0.1))
    assert equal.compare(["p"] * 2, ["a", "b"], ["c", "d"]) == [0.5, 1.0]
    assert equal.running_mean == pytest.approx(6.125)
    skip = TeacherJudge(_table_judge(SCORES), TeacherConfig("skip", eps_skip=0.1))
    assert skip.compare(["p"] * 2, ["a", "b"], ["c", "d"]) == [1.0, 1.0]
    (label,) = skip.compare(["p"], ["e"], ["f"])
    assert math.isnan(label) and skip.running_mean == pytest.approx(24.8 / 6)


def test_a_fixed_mean_score_replaces_the_running_mean():
    """R̄ = 100, ε_equal = 0.1: θ = 10 > |10 − 4| = 6 → ½."""
    judge = TeacherJudge(_table_judge(SCORES), TeacherConfig("equal"), mean_score=100.0)
    assert judge.compare(["p"], ["a"], ["b"]) == [0.5]


def test_stochastic_teacher_is_deterministic_given_the_seed_and_resumes_from_its_state():
    table = {f"x{i}": float(i % 5) for i in range(40)}
    a, b = [f"x{i}" for i in range(20)], [f"x{i}" for i in range(20, 40)]
    cfg = TeacherConfig("stochastic+mistake", beta=0.5, eps_mistake=0.2)
    first = TeacherJudge(_table_judge(table), cfg, seed=3)
    again = TeacherJudge(_table_judge(table), cfg, seed=3)
    other = TeacherJudge(_table_judge(table), cfg, seed=4)
    run = [first.compare(["p"] * 20, a, b) for _ in range(3)]
    assert run == [again.compare(["p"] * 20, a, b) for _ in range(3)]
    assert other.compare(["p"] * 20, a, b) != run[0]
    assert all(v in (0.0, 1.0) for v in run[0])
    # a checkpoint taken after call 1 continues with calls 2 and 3
    resumed = TeacherJudge(_table_judge(table), cfg, seed=99)
    replay = TeacherJudge(_table_judge(table), cfg, seed=3)
    replay.compare(["p"] * 20, a, b)
    resumed.load_state_dict(replay.state_dict())
    assert [resumed.compare(["p"] * 20, a, b) for _ in range(2)] == run[1:]
    assert resumed.running_mean == replay.running_mean


def test_teacher_errors_name_the_score_judge():
    broken = _fn_judge(lambda p, c: [math.nan] * len(c), name="broken")
    judge = TeacherJudge(broken, TeacherConfig("oracle"))
    with pytest.raises(JudgeError, match=r"judge 'judge:broken' returned nan for sample 0"):
        checked_preferences(judge, ["p"], ["a"], ["b"])
    with pytest.raises(JudgeConfigError, match="'over' must be a score judge"):
        TeacherJudge(_pair_judge(lambda p, a, b: [1.0]), TeacherConfig())
    with pytest.raises(JudgeConfigError, match="mean_score must be finite"):
        TeacherJudge(broken, TeacherConfig(), mean_score=math.nan)


# -- the factory --------------------------------------------------------------------------------------


def test_build_judge_makes_each_python_kind(rewards_file, tmp_path):
    spec = f"{rewards_file}:length"
    by_str = build_judge(spec)
    by_dict = build_judge({"kind": "reward_function", "path": spec, "name": "len"})
    assert isinstance(by_str, ScoreJudge) and by_str.name == "judge:length"
    assert by_dict.name == "judge:len" and by_dict.score(["p"], ["abcd"]) == [4.0]
    pref = build_judge({"kind": "preference_function", "path": f"{rewards_file}:rps"})
    assert isinstance(pref, PairJudge) and pref.compare(["p"], ["rock"], ["paper"]) == [0.0]
    teacher = build_judge(
        {"kind": "teacher", "teacher": "equal", "eps_equal": 0.5, "seed": 1, "over": spec}
    )
    assert isinstance(teacher, TeacherJudge) and teacher.name == "teacher:equal"
    assert teacher.compare(["p"] * 2, ["aaaa", "a"], ["aaa", "aaaaaa"]) == [0.5, 0.0]
    nested = build_judge({"kind": "teacher", "over": {"kind": "reward_function", "path": spec}})
    assert nested.name == "teacher:oracle"
    human = build_judge(
        {"kind": "human", "store": str(tmp_path / "fb.sqlite"), "timeout_s": 5, "poll_s": 0.5},
        policy_version=3,
    )
    assert isinstance(human, HumanJudge) and human.name == "human:*"
    assert human.timeout_s == 5.0 and human.policy_version == 3


def test_a_loop_config_embeds_the_judge_config(rewards_file):
    class LoopConfig(BaseModel):
        judge: JudgeConfig

    cfg = LoopConfig.model_validate({"judge": {"kind": "reward_function", "path": "m:f"}})
    assert cfg.judge.path == "m:f"
    cfg = LoopConfig.model_validate(
        {"judge": {"kind": "preference_function", "path": f"{rewards_file}:rps"}}
    )
    assert build_judge(cfg.judge).compare(["p"], ["paper"], ["rock"]) == [1.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["m:f"], "a judge config is a mapping with a 'kind' field.*got list"),
        ({"path": "m:f"}, "field 'kind' must be one of reward_function, .*no 'kind' field"),
        ({"kind": "llm"}, r"field 'kind' must be one of .*\(got 'llm'\)"),
        ({"kind": "reward_function", "path": "m:f", "paht": 1}, "unknown field.*paht.*path, name"),
        ({"kind": "reward_function"}, "field 'path': Field required"),
        ({"kind": "reward_model", "paths": []}, "field 'paths': List should have at least 1"),
        ({"kind": "reward_model", "paths": ["x"], "aggregate": "max"}, "field 'aggregate'"),
        ({"kind": "reward_model", "paths": ["x"], "uwo_coef": -1}, "field 'uwo_coef'"),
        ({"kind": "reward_model", "paths": ["x"], "batch_size": 0}, "field 'batch_size'"),
        (
            {"kind": "teacher", "over": "m:f", "teacher": "lazy"},
            "field 'teacher': unknown teacher kind 'lazy'",
        ),
        ({"kind": "teacher", "over": "m:f", "gamma": 2}, "field 'gamma': gamma must lie in"),
        ({"kind": "teacher"}, "field 'over': Field required"),
        ({"kind": "teacher", "over": {"kind": "reward_model"}}, "field 'over.paths'"),
        ({"kind": "teacher", "over": {"kind": "human"}}, "field 'over'"),
        ({"kind": "human", "store": "s"}, "field 'timeout_s': Field required"),
        ({"kind": "human", "store": "s", "timeout_s": -1}, "field 'timeout_s'"),
        ({"kind": "human", "store": "s", "timeout_s": 1, "poll_s": 0}, "field 'poll_s'"),
    ],
)
def test_config_errors_name_the_field(spec, message):
    with pytest.raises(JudgeConfigError, match=message) as err:
        parse_judge_config(spec, source="run.yaml: judge")
    assert str(err.value).startswith("run.yaml: judge")


def test_build_judge_errors_from_loading_name_the_spec(tmp_path):
    with pytest.raises(JudgeConfigError, match="reward function 'nothing/here.py:f'"):
        build_judge({"kind": "teacher", "over": "nothing/here.py:f"})
    with pytest.raises(JudgeConfigError, match="reward model path .* does not exist"):
        build_judge({"kind": "reward_model", "paths": [str(tmp_path / "no_model")]})
    assert set(JUDGE_KINDS) == {
        "reward_function",
        "reward_model",
        "preference_function",
        "teacher",
        "human",
    }
