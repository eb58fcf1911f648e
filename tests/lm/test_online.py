"""The online loop end to end on a tiny random Qwen2 (hidden 64, 2 layers): every method, the
log-probs it trains on, padding, resume, judge failures, config errors and the CLI.

Judges are small Python functions behind the ScoreJudge/PairJudge protocols (adapters from
``unialign.lm.online_judging``); the completions of a random model are random text, so the
tests check what the loop computes and stores, not that the policy gets better (the slow test
on the task suite watches a learning signal).
"""

from __future__ import annotations

import json
import math
import signal
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from unialign.cli import main
from unialign.config import ConfigError, load_config
from unialign.feedback.judges import JudgeError
from unialign.feedback.store import FeedbackStore
from unialign.lm.generation import completion_logps, encode_prompts
from unialign.lm.online import TIMING_KEYS, train_lm_online
from unialign.lm.online_config import LMOnlineConfig
from unialign.lm.online_judging import FunctionPairJudge, FunctionScoreJudge
from unialign.lm.online_update import sample_logps
from unialign.lm.tiny import save_tiny

PROMPTS = ["abc def ghi", "hello there", "qwe rty uio", "zz top", "one two", "lorem ipsum"]


def vowel_score(prompts, completions):
    """A ScoreJudge: the share of vowels (a float in [0, 1]) of the completion text."""
    return [sum(ch in "aeiou" for ch in _text(c)) / max(1, len(_text(c))) for c in completions]


def _text(c) -> str:
    return c if isinstance(c, str) else c[-1]["content"]


def e_preference(prompts, a, b):
    """A PairJudge: P(a ≻ b) = σ(#e(a) − #e(b) + (len(a) − len(b))/4): ½ only for texts of equal
    length and "e" count (a tie)."""
    return [
        1 / (1 + math.exp(-(_text(x).count("e") - _text(y).count("e")
                            + (len(_text(x)) - len(_text(y))) / 4)))
        for x, y in zip(a, b)
    ]  # fmt: skip


SCORE = FunctionScoreJudge(vowel_score, "vowels")
PAIR = FunctionPairJudge(e_preference, "e-count")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("online")
    save_tiny(d / "model")
    rows = [{"prompt": p} for p in PROMPTS[:4]]
    rows += [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS[4:]]
    (d / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


def cfg(tiny, out, **kw) -> LMOnlineConfig:
    base = dict(
        model=str(tiny / "model"), prompts=str(tiny / "prompts.jsonl"), iterations=2,
        prompts_per_iteration=2, num_samples=3, max_new_tokens=8, lr=1e-3, micro_batch_size=2,
        output_dir=str(out), precision="fp32",
    )  # fmt: skip
    return LMOnlineConfig(**{**base, **kw})


def lines(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def store_rows(out: Path) -> tuple[list, list]:
    """Every query and label row of the run's store, without the wall-clock timestamps."""
    con = sqlite3.connect(out / "feedback.sqlite")
    q = con.execute(
        "SELECT q.id, q.kind, q.step, q.selection, q.source, p.* FROM queries q "
        "JOIN completion_pairs p ON p.query_id = q.id ORDER BY q.id"
    ).fetchall()
    labels = con.execute(
        "SELECT id, query_id, label, labeler, labeler_kind, reason, metadata FROM labels "
        "ORDER BY id"
    ).fetchall()
    con.close()
    return q, labels


# ---------------------------------------------------------------------------------------------
# every method, end to end
# ---------------------------------------------------------------------------------------------
METHOD_CASES = {
    "online_dpo": (dict(loss="ipo"), SCORE),
    "online_dpo_all_pairs": (dict(method="online_dpo", pairs="all", beta=0.5), PAIR),
    "sppo": (dict(loss_params={"eta": 10.0}), PAIR),
    "inpo": (dict(finetune="lora", lora_r=4), SCORE),
    "dno": (dict(margin_threshold=0.01), SCORE),
    "nash_md": (dict(mixture_coef=0.25), PAIR),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_method_runs_two_iterations(tmp_path, tiny, case):
    """Two iterations: two metrics lines with the method's diagnostics, every judged pair in
    the store with its label by the judge, the final model, summary and learning curve."""
    extra, judge = METHOD_CASES[case]
    extra = dict(extra)
    method = extra.pop("method", case)
    out = tmp_path / "run"
    summary = train_lm_online(cfg(tiny, out, method=method, **extra), judge=judge)
    assert summary["iterations"] == 2 and not summary["interrupted"]
    rows = lines(out)
    assert [r["step"] for r in rows] == [1, 2]
    key = {"sppo": "sppo/log_ratio", "nash_md": "nash_md/advantage"}.get(method, "rewards/margins")
    for r in rows:  # an iteration whose verdicts are all ties has no examples, and no loss
        assert r["online/samples"] == 6 and r["online/prompts"] == 2
        assert (r["online/examples"] == 0) != ("loss/total" in r and key in r)
    assert any(r["online/examples"] > 0 for r in rows)
    # the store: K(K−1)/2 = 3 pairs per prompt (Nash-MD: K pairs (y, y′)), all labelled
    with FeedbackStore(out / "feedback.sqlite", create=False) as s:
        assert s.count_queries("completion") == 2 * 6
        assert s.count_labels(include_skipped=True, labeler=f"judge:{judge.name}") == 12
        pairs = s.labelled_completion_pairs().pairs
        assert set(pairs.policy_versions) <= {"0", "1"}
        assert all(ids for ids in pairs.token_ids_1)
    assert (out / "learning_curve.png").stat().st_size > 0
    assert (out / "model" / "config.json").is_file()
    assert json.loads((out / "summary.json").read_text())["iterations"] == 2


# ---------------------------------------------------------------------------------------------
# the numbers the update trains on
# ---------------------------------------------------------------------------------------------
def fresh_logp(model, prompt, completion) -> float:
    """Σ log π(y_t | x, y_<t) from one unpacked, unpadded forward pass."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    return float(lp.gather(-1, torch.tensor(completion)[:, None]).sum())


@pytest.mark.integration
def test_logps_equal_a_fresh_forward_of_the_stored_tokens(tmp_path, tiny):
    """Iteration 1 of INPO (pairs: all, so every sample is used): ℓ_t and ℓ_ref of every sample
    equal one fresh forward of its stored prompt + completion tokens under the initial model
    (ℓ ≈ −50 in float32, so a few ulps of the packed sums stay far below 1e-3); the stored ids
    in the feedback store are the ones scored; and the first SPPO-style log-ratio ℓ_θ − ℓ_t of
    the update is exactly 0 (same packing, same weights)."""
    records = []
    c = cfg(tiny, tmp_path / "run", method="inpo", pairs="all", iterations=1)
    train_lm_online(c, judge=SCORE, on_iteration=records.append)
    rec = records[0]
    initial = AutoModelForCausalLM.from_pretrained(tiny / "model").eval()
    g = rec.generations
    used = rec.examples.samples()
    assert used == list(range(len(g)))
    for i in used:
        want = fresh_logp(initial, g.prompt_ids[i], g.completion_ids[i])
        assert rec.previous[i].item() == pytest.approx(want, abs=1e-3)
        assert rec.reference[i].item() == pytest.approx(want, abs=1e-3)
    with FeedbackStore(tmp_path / "run" / "feedback.sqlite", create=False) as s:
        stored = s.labelled_completion_pairs().pairs
    assert stored.token_ids_1[0] == list(g.completion_ids[0])
    assert stored.token_ids_2[0] == list(g.completion_ids[1])
    # SPPO: ℓ_t is computed on the update's own micro-batches, so the first log-ratio is 0.0
    sppo = []
    train_lm_online(cfg(tiny, tmp_path / "sppo", method="sppo", iterations=1), judge=PAIR,
                    on_iteration=sppo.append)  # fmt: skip
    assert sppo[0].metrics["sppo/log_ratio"] == 0.0


@pytest.mark.integration
def test_padding_never_enters_the_update(tmp_path, tiny):
    """The update's log-probs and their gradient do not depend on the pad id nor on how much
    padding the packing adds (one sequence per row vs all in one row); the stored ids hold
    exactly the prompt tokens and the sampled tokens."""
    records = []
    train_lm_online(cfg(tiny, tmp_path / "run", iterations=1), judge=SCORE,
                    on_iteration=records.append)  # fmt: skip
    g = records[0].generations
    model = AutoModelForCausalLM.from_pretrained(tiny / "model", attn_implementation="sdpa")
    ids = list(range(len(g)))
    longest = max(len(p) + len(c) for p, c in zip(g.prompt_ids, g.completion_ids))

    def run(pad_id, budget):
        model.zero_grad()
        lp, n, _ = sample_logps(model, g, ids, pad_id=pad_id, chunk_size=7,
                                max_tokens_per_row=budget)  # fmt: skip
        lp.sum().backward()
        return lp.detach(), n, model.lm_head.weight.grad.clone()

    base = run(3, longest * len(ids))
    other_pad = run(0, longest * len(ids))
    one_per_row = run(3, longest)
    assert torch.equal(base[0], other_pad[0]) and torch.equal(base[2], other_pad[2])
    assert torch.allclose(base[0], one_per_row[0], atol=1e-4, rtol=0)
    assert torch.allclose(base[2], one_per_row[2], atol=1e-5, rtol=1e-4)
    assert base[1].tolist() == [len(c) for c in g.completion_ids]
    # the loop's helper is completion_logps over exactly the stored ids
    ref, _ = completion_logps(model, g.prompt_ids, g.completion_ids, max_tokens_per_row=10_000,
                              pad_id=3)  # fmt: skip
    assert torch.allclose(ref.detach(), base[0], atol=1e-4, rtol=0)
    encoded = encode_prompts(AutoTokenizer.from_pretrained(tiny / "model"), records[0].prompts)
    for i, (p, c) in enumerate(zip(g.prompt_ids, g.completion_ids)):
        assert list(p) == encoded[g.prompt_index[i]]
        assert len(c) <= 8 and (g.stop_reason[i] != "length" or len(c) == 8)


@pytest.mark.integration
def test_gradient_accumulation_is_exact(tmp_path, tiny):
    """One optimizer step over the same examples (all pairs of 3 prompts × 3 samples) cut into
    micro-batches of 1 or of 16: the same mean loss and the same accumulated gradient norm,
    up to float32 summation order (per-example losses are summed and divided by the step's
    example count, not averaged per micro-batch). With 2 updates per epoch the examples are
    split into two steps instead (lr 1e-12: the second step sees the same weights to ~1e-12),
    and the logged loss is still the mean over all examples."""
    runs = {}
    for name, kw in {"micro1": dict(micro_batch_size=1), "micro16": dict(micro_batch_size=16),
                     "two_steps": dict(micro_batch_size=2, updates_per_epoch=2)}.items():  # fmt: skip
        c = cfg(tiny, tmp_path / name, iterations=1, prompts_per_iteration=3, pairs="all",
                max_grad_norm=1e9, lr=1e-12, **kw)  # fmt: skip
        runs[name] = train_lm_online(c, judge=SCORE)["train"]
    a, b = runs["micro1"], runs["micro16"]
    assert a["online/examples"] >= 6
    assert a["loss/total"] == pytest.approx(b["loss/total"], rel=1e-6)
    assert a["lm/grad_norm"] == pytest.approx(b["lm/grad_norm"], rel=1e-5)
    assert runs["two_steps"]["loss/total"] == pytest.approx(a["loss/total"], rel=1e-6)
    assert runs["two_steps"]["lm/optimizer_steps"] == 2


# ---------------------------------------------------------------------------------------------
# interrupt and resume
# ---------------------------------------------------------------------------------------------
def interrupt_at(k):
    def hook(rec):
        if rec.iteration == k:
            signal.raise_signal(signal.SIGINT)

    return hook


def crash_at(k):
    def hook(rec):
        if rec.iteration == k:
            raise RuntimeError("simulated crash")

    return hook


RESUME_CASES = {
    "online_dpo_full": dict(method="online_dpo", update_epochs=2, updates_per_epoch=2),
    "sppo_lora_dropout": dict(
        method="sppo", finetune="lora", lora_r=4, lora_dropout=0.2, loss_params={"eta": 10.0}
    ),  # fmt: skip
    "nash_md": dict(method="nash_md"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, tiny, case):
    """SIGINT after iteration 2 of 4 → a checkpoint and a clean return; ``resume=True`` then
    ends with the weights, metrics lines (wall-clock values aside) and feedback-store rows
    (timestamps aside) of the uninterrupted run, bit for bit (same operations, same order,
    restored RNG, optimizer and store)."""
    extra = RESUME_CASES[case]
    judge = PAIR if extra["method"] != "online_dpo" else SCORE
    full = cfg(tiny, tmp_path / "a", iterations=4, **extra)
    train_lm_online(full, judge=judge)
    cut = cfg(tiny, tmp_path / "b", iterations=4, **extra)
    first = train_lm_online(cut, judge=judge, on_iteration=interrupt_at(2))
    assert first["interrupted"] and first["iterations"] == 2
    assert not (tmp_path / "b" / "model").exists()
    second = train_lm_online(cut, judge=judge, resume=True)
    assert second["iterations"] == 4 and not second["interrupted"]
    assert lines(tmp_path / "a") == lines(tmp_path / "b")
    assert store_rows(tmp_path / "a") == store_rows(tmp_path / "b")
    sub = "adapter/adapter_model.safetensors" if "lora" in case else "model/model.safetensors"
    a, b = load_file(str(tmp_path / "a" / sub)), load_file(str(tmp_path / "b" / sub))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration
def test_resume_after_crash_rolls_the_store_back(tmp_path, tiny):
    """A crash in iteration 3 (after its verdicts were stored, before its checkpoint) with
    checkpoints every 2 iterations: resume continues from iteration 2, rolls the store back to
    that checkpoint's mark (iteration 3's rows are written once), and ends as the
    uninterrupted run."""
    full = cfg(tiny, tmp_path / "a", iterations=4, save_every=2)
    train_lm_online(full, judge=SCORE)
    cut = cfg(tiny, tmp_path / "b", iterations=4, save_every=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lm_online(cut, judge=SCORE, on_iteration=crash_at(3))
    with FeedbackStore(tmp_path / "b" / "feedback.sqlite", create=False) as s:
        assert s.count_queries() == 3 * 6  # iteration 3's verdicts are in the store
    train_lm_online(cut, judge=SCORE, resume=True)
    assert lines(tmp_path / "a") == lines(tmp_path / "b")
    assert store_rows(tmp_path / "a") == store_rows(tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# judge failures
# ---------------------------------------------------------------------------------------------
class FailingScore:
    """A ScoreJudge that answers ``vowel_score`` until call ``fail_on``, then misbehaves."""

    name = "flaky"

    def __init__(self, fail_on: int, how: str):
        self.calls, self.fail_on, self.how = 0, fail_on, how

    def score(self, prompts, completions):
        self.calls += 1
        good = vowel_score(prompts, completions)
        if self.calls < self.fail_on:
            return good
        if self.how == "raise":
            raise ConnectionError("the judge server went away")
        if self.how == "count":
            return good[:-1]
        return [math.nan] + good[1:]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("how", "message"),
    [("raise", "raised ConnectionError: the judge server went away"),
     ("count", "returned 2 scores for 3 completions"),
     ("nan", "returned nan for sample 0")],
)  # fmt: skip
def test_judge_failure_stops_the_run_and_keeps_earlier_verdicts(tmp_path, tiny, how, message):
    """The judge (one prompt, 3 samples per call) fails on its fourth call, the second chunk of
    iteration 2: the run stops with the JudgeError naming the judge; iteration 1 (2 prompts ×
    3 pairs) and the first chunk of iteration 2 (3 pairs) stay in the store, labelled."""
    judge = FailingScore(4, how)
    with pytest.raises(JudgeError, match=message) as err:
        train_lm_online(cfg(tiny, tmp_path / "run", judge_batch_size=1), judge=judge)
    assert "'flaky'" in str(err.value)
    with FeedbackStore(tmp_path / "run" / "feedback.sqlite", create=False) as s:
        assert s.count_queries() == 9 and s.count_labels(labeler="judge:flaky") == 9
    assert [r["step"] for r in lines(tmp_path / "run")] == [1]


@pytest.mark.integration
def test_pair_judge_skips_are_stored_and_out_of_range_stops(tmp_path, tiny):
    """A PairJudge's NaN is a skip (stored as a skipped label, the pair not trained on); a value
    outside [0, 1] is a JudgeError."""
    skip_all = FunctionPairJudge(lambda p, a, b: [math.nan] * len(p), "abstains")
    summary = train_lm_online(cfg(tiny, tmp_path / "a", iterations=1), judge=skip_all)
    assert summary["train"]["online/examples"] == 0 and summary["train"]["judge/skipped"] == 1.0
    with FeedbackStore(tmp_path / "a" / "feedback.sqlite", create=False) as s:
        assert s.count_labels() == 0 and s.count_labels(include_skipped=True) == 6
    bad = FunctionPairJudge(lambda p, a, b: [1.5] * len(p), "overconfident")
    with pytest.raises(JudgeError, match="a preference must be a probability"):
        train_lm_online(cfg(tiny, tmp_path / "b", iterations=1), judge=bad)


# ---------------------------------------------------------------------------------------------
# configuration and the command line
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [({"method": "xpo"}, "field 'method': unknown method 'xpo'"),
     ({"method": "sppo", "loss": "ipo"}, "loss: only online_dpo takes a loss"),
     ({"loss": "kto"}, "field 'loss': objective of kind 'unpaired'"),
     ({"loss_params": {"gamma": 1.0}}, "loss_params: gamma not a hyperparameter of 'sigmoid'"),
     ({"method": "inpo", "loss_params": {"eta": 5.0, "tau": 1.0}}, "loss_params: tau·eta"),
     ({"method": "sppo", "num_samples": 1}, "num_samples must be >= 2"),
     ({"method": "sppo", "margin_threshold": 0.1}, "margin_threshold: dno only"),
     ({"method": "nash_md", "stop": ["\n"]}, "stop: not supported with nash_md"),
     ({"pairs": "some"}, "field 'pairs'"),
     ({"prompts": None}, "prompts: required"),
     ({"lr": 0}, "field 'lr': lr must be > 0"),
     ({"lora_r": 4}, "lora_r: LoRA fields need finetune: lora"),
     ({"judge": "task:preference"}, "judge: task:preference needs task"),
     ({"judge": {"kind": "oracle"}}, "judge: field 'kind' must be one of"),
     ({"judge": {"kind": "human", "store": "RUN/feedback.sqlite", "timeout_s": 1}},
      "judge.store: RUN/feedback.sqlite is the run's own feedback store")],
)  # fmt: skip
def test_config_errors_name_the_field(tmp_path, tiny, fields, message):
    run = str(tmp_path / "run")
    fields = json.loads(json.dumps(fields).replace("RUN", run))
    message = message.replace("RUN", run)
    data = {"model": str(tiny / "model"), "prompts": str(tiny / "prompts.jsonl"),
            "output_dir": run, **fields}  # fmt: skip
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(LMOnlineConfig, path)
    assert not (tmp_path / "run").exists()


def test_prompt_file_errors_name_file_and_line(tmp_path, tiny):
    """A row without "prompt" and an empty prompt are named by their line (blank lines count);
    nothing is loaded before the prompts are read."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n\n{"text": "no prompt"}\n{"prompt": "  "}\n')
    c = cfg(tiny, tmp_path / "run", prompts=str(bad))
    with pytest.raises(ConfigError) as err:
        train_lm_online(c, judge=SCORE)
    assert f'{bad}: line 3 has no "prompt" field' in str(err.value)
    assert f"{bad}: line 4 has an empty prompt" in str(err.value)


@pytest.mark.integration
def test_a_fresh_run_never_overwrites_a_store_with_verdicts(tmp_path, tiny):
    """A second fresh run into the same output_dir stops before loading anything (the store
    holds the first run's verdicts); ``resume=True`` is the way to continue it."""
    c = cfg(tiny, tmp_path / "run", iterations=1)
    train_lm_online(c, judge=SCORE)
    with pytest.raises(ConfigError, match="already holds 6 feedback queries"):
        train_lm_online(c, judge=SCORE)
    assert train_lm_online(c, judge=SCORE, resume=True)["iterations"] == 1


def test_cli_help_lists_the_config_fields(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "lm-online", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--method", "--num-samples", "--judge", "--mixture-coef", "--resume"):
        assert flag in out


def test_cli_config_error_exits_2(tmp_path, tiny, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"prompts": str(tiny / "prompts.jsonl"),
                                    "output_dir": str(tmp_path / "run")}))  # fmt: skip
    assert main(["train", "lm-online", "--config", str(path), "--method", "sppo"]) == 2
    assert "model: required" in capsys.readouterr().err
    # a valid config without a judge: the judge is resolved before any model loads
    assert main(["train", "lm-online", "--config", str(path), "--model", str(tiny / "model")]) == 2
    assert "judge: required" in capsys.readouterr().err


@pytest.mark.integration
def test_cli_run_with_a_reward_function_judge(tmp_path, tiny):
    """The whole command: a judge spec naming a Python reward function in a file
    (``file.py:function``, built by ``unialign.feedback.judges.build_judge``), two iterations,
    exit 0, the verdicts in the store under ``judge:<function name>``; then ``--resume`` of the
    finished run changes nothing."""
    (tmp_path / "rewards.py").write_text(
        "def vowels(prompts, completions):\n"
        "    texts = [c if isinstance(c, str) else c[-1]['content'] for c in completions]\n"
        "    return [sum(ch in 'aeiou' for ch in t) / max(1, len(t)) for t in texts]\n"
    )
    out = tmp_path / "run"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(tiny / "model"), "prompts": str(tiny / "prompts.jsonl"),
        "judge": f"{tmp_path / 'rewards.py'}:vowels", "iterations": 2,
        "prompts_per_iteration": 2, "num_samples": 2, "max_new_tokens": 6, "lr": 1e-4,
        "output_dir": str(out),
    }))  # fmt: skip
    assert main(["train", "lm-online", "--config", str(path), "--method", "dno"]) == 0
    with FeedbackStore(out / "feedback.sqlite", create=False) as s:
        assert s.count_labels(labeler="judge:vowels") == 2 * 2
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", "lm-online", "--config", str(out / "config.yaml"), "--resume"]) == 0
    assert (out / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("name", ["lm_online_dpo", "lm_online_sppo_task", "lm_online_nash_md_task"])
def test_examples_are_valid_configs(tmp_path, tiny, name):
    """The example configs validate (local paths replaced by the test's tiny model, prompts
    and a reward-function file)."""
    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    (tmp_path / "rewards.py").write_text(
        "def score(prompts, completions):\n    return [0.0] * len(completions)\n"
    )
    for key, value in (("model", str(tiny / "model")), ("prompts", str(tiny / "prompts.jsonl")),
                       ("judge", f"{tmp_path / 'rewards.py'}:score")):  # fmt: skip
        if key in data and not str(data[key]).startswith("task:"):
            data[key] = value
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(LMOnlineConfig, cfg_path)
    methods = {"lm_online_dpo": "online_dpo", "lm_online_sppo_task": "sppo"}
    assert cfg.method == methods.get(name, "nash_md")
