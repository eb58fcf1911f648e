"""``unialign train rm``: reward models on preference pairs, end to end on a tiny Qwen2.

The task: synthetic pairs labelled by a known reward, "the chosen completion contains the
keyword", which a random-init 2-layer model learns in a few dozen steps (the last token must
attend to the keyword wherever it is). Measured on this machine (fp32, 1 thread): 60 steps of
8 pairs reach 0.984 held-out accuracy (63 of 64 pairs) in about 3 s; the test asks for 0.9.

Score parity with the judges: training-time held-out scores (``eval_scores.jsonl``) and the
scores of the exported model loaded by ``RewardModelJudge`` come from the same weights, token
ids and forward; they can differ only in float32 rounding, because the judge pads its batches
to other widths (sorted by length) than training does. A score is a dot product of a 64-wide
head with the last hidden state after 2 layers: with |score| ≲ 10 and a relative float32 error
of a few ulp per reduction (n·ε·Σ|terms| for a sum of n terms, n ≤ 128, ε = 1.2e-7), 1e-4
absolute bounds it with a wide margin: measured at most 2.1e-6 over judge batch sizes 1, 5
and 8, for the scalar, shared-trunk, merged-adapter and conversational models here.
"""

import json
import math
import random
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from unialign.cli import main
from unialign.config import ConfigError, dump_config, load_config
from unialign.feedback.judges import (
    JudgeConfigError,
    PairJudge,
    build_judge,
    checked_preferences,
)
from unialign.feedback.reward_models import RewardModelJudge, RewardModelMember
from unialign.lm import rm as rm_mod
from unialign.lm.model import load_tokenizer
from unialign.lm.rm import (
    GPMJudge,
    bootstrap_counts,
    load_rm_examples,
    scalar_pair_losses,
    train_rm,
)
from unialign.lm.rm_config import RMTrainConfig
from unialign.lm.tiny import save_tiny, synthetic_words

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEYWORD = "zebra"
TOL = 1e-4  # float32 parity bound, module docstring


def keyword_pairs(n: int, seed: int, *, conversational: bool = False) -> list[dict]:
    """Pairs whose chosen completion contains KEYWORD and whose rejected one does not."""
    rng = random.Random(seed)
    words = synthetic_words(300, seed=1)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        good = [rng.choice(words) for _ in range(rng.randint(3, 8))]
        good.insert(rng.randint(0, len(good)), KEYWORD)
        bad = [rng.choice(words) for _ in range(rng.randint(3, 8))]
        if conversational:
            rows.append({
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": " ".join(good)}],
                "rejected": [{"role": "assistant", "content": " ".join(bad)}],
            })  # fmt: skip
        else:
            rows.append({"prompt": prompt, "chosen": " " + " ".join(good),
                         "rejected": " " + " ".join(bad)})  # fmt: skip
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def kw(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    save_tiny(d / "model")
    _write(d / "train.jsonl", keyword_pairs(256, 0))
    _write(d / "eval.jsonl", keyword_pairs(64, 1))
    _write(d / "small.jsonl", keyword_pairs(8, 2))
    _write(d / "conv.jsonl", keyword_pairs(24, 3, conversational=True))
    return d


def _cfg(kw, out, **kw_args):
    base = dict(model=str(kw / "model"), train_data=str(kw / "train.jsonl"),
                eval_data=str(kw / "eval.jsonl"), batch_size=8, lr=1e-3, max_length=96,
                precision="fp32", output_dir=str(out))  # fmt: skip
    base.update(kw_args)
    return RMTrainConfig(**base)


def _eval_rows(out):
    return [json.loads(x) for x in (out / "eval_scores.jsonl").read_text().splitlines()]


def _texts(path):
    rows = [json.loads(x) for x in Path(path).read_text().splitlines()]
    return [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]


@pytest.fixture(scope="module")
def scalar_run(kw, tmp_path_factory):
    out = tmp_path_factory.mktemp("scalar")
    return out, train_rm(_cfg(kw, out, max_steps=60, eval_every=20))


# ---------------------------------------------------------------------------------------------
# learning and the judge
# ---------------------------------------------------------------------------------------------
def test_learns_the_keyword_preference_on_held_out_pairs(scalar_run):
    out, summary = scalar_run
    assert summary["steps"] == 60 and not summary["interrupted"]
    assert summary["eval"]["eval/accuracy"] >= 0.9  # measured 0.984 (module docstring)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first, final = lines[0], lines[-1]
    assert first["loss/total"] == pytest.approx(math.log(2), abs=0.05)  # head init ≈ 0
    assert [x["step"] for x in lines if "eval/accuracy" in x] == [20, 40, 60]
    assert final["eval/accuracy"] == summary["eval"]["eval/accuracy"]
    assert {"rewards/margins", "rewards/accuracies", "rm/lr", "rm/grad_norm"} <= set(lines[-2])


def test_the_saved_model_is_a_reward_model_judge_with_the_training_scores(kw, scalar_run):
    out, summary = scalar_run
    assert summary["outputs"]["model"] == str(out / "model")
    judge = RewardModelJudge([out / "model"], max_length=96, device="cpu", batch_size=5)
    prompts, chosen, rejected = _texts(kw / "eval.jsonl")
    got_c = torch.tensor(judge.score(prompts, chosen))
    got_r = torch.tensor(judge.score(prompts, rejected))
    rows = _eval_rows(out)
    want_c = torch.tensor([r["chosen"][0] for r in rows])
    want_r = torch.tensor([r["rejected"][0] for r in rows])
    assert (got_c - want_c).abs().max() < TOL and (got_r - want_r).abs().max() < TOL
    assert torch.equal(got_c > got_r, want_c > want_r)  # the same ranking of every pair
    assert float((got_c > got_r).float().mean()) == summary["eval"]["eval/accuracy"]


def test_trained_sequences_are_the_judges_text(kw, scalar_run):
    """Standard rows: tokenizer(prompt + completion + EOS); conversational rows: the chat
    template of the whole conversation; both cut on the left to max_length (here 24, so that
    some are cut) — token for token what RewardModelMember reads."""
    tok = load_tokenizer(str(kw / "model"))
    member = RewardModelMember(scalar_run[0] / "model", max_length=24)
    for name in ("small.jsonl", "conv.jsonl"):
        cfg = _cfg(kw, kw / "unused", train_data=str(kw / name), eval_data=None, max_length=24)
        train, _ = load_rm_examples(cfg, tok)
        prompts, chosen, rejected = _texts(kw / name)
        for i in range(len(prompts)):
            assert train.chosen[i] == member._ids(prompts[i], chosen[i], i)
            assert train.rejected[i] == member._ids(prompts[i], rejected[i], i)
        assert train.truncated > 0


def test_conversational_pairs_train_and_score_like_the_judge(kw, tmp_path):
    out = tmp_path / "conv"
    conv = str(kw / "conv.jsonl")
    summary = train_rm(_cfg(kw, out, train_data=conv, eval_data=conv, max_steps=3))
    assert summary["data"]["eval_pairs"] == 24
    judge = RewardModelJudge([out / "model"], max_length=96, device="cpu")
    prompts, chosen, rejected = _texts(kw / "conv.jsonl")
    got = torch.tensor([judge.score(prompts, chosen), judge.score(prompts, rejected)])
    rows = _eval_rows(out)
    want = torch.tensor([[r["chosen"][0] for r in rows], [r["rejected"][0] for r in rows]])
    assert (got - want).abs().max() < TOL


# ---------------------------------------------------------------------------------------------
# the objective: margin and centering
# ---------------------------------------------------------------------------------------------
def test_margin_and_centering_reach_the_loss_hand_checked():
    """Two pairs, c = 0.1: (R_w, R_l, m) = (1, 0, 0) and (0.5, 0.5, 1).

    Pair 1: −log σ(1 − 0 − 0) = log(1 + e⁻¹) = 0.3132617; c·(1 + 0)² = 0.1 → 0.4132617.
    Pair 2: −log σ(0.5 − 0.5 − 1) = log(1 + e) = 1.3132617; c·(0.5 + 0.5)² = 0.1 → 1.4132617.
    A second member with the rewards swapped within each pair sees the same margins:
    pair 1: −log σ(0 − 1 − 0) + 0.1 = 1.4132617; pair 2 is symmetric: 1.4132617.
    """
    chosen = torch.tensor([[1.0, 0.5], [0.0, 0.5]])
    rejected = torch.tensor([[0.0, 0.5], [1.0, 0.5]])
    out = scalar_pair_losses(chosen, rejected, torch.tensor([0.0, 1.0]), centering=0.1)
    expected = torch.tensor([[0.4132617, 1.4132617], [1.4132617, 1.4132617]])
    assert torch.allclose(out.losses, expected, atol=1e-6)
    assert out.metrics["rewards/margins"].tolist() == [[1.0, 0.0], [-1.0, 0.0]]  # without m
    plain = scalar_pair_losses(chosen, rejected, torch.zeros(2))
    assert plain.losses[0].tolist() == pytest.approx([math.log1p(math.exp(-1)), math.log(2)])


def test_row_margins_and_centering_are_what_the_loop_passes(kw, tmp_path, monkeypatch):
    rows = keyword_pairs(2, 5)
    rows[0]["margin"], rows[1]["margin"] = 0.0, 1.5
    data = _write(tmp_path / "m.jsonl", rows)
    seen = []
    real = rm_mod.bradley_terry

    def spy(c, r, *, margin, centering):
        seen.append((sorted(margin.tolist()), centering))
        return real(c, r, margin=margin, centering=centering)

    monkeypatch.setattr(rm_mod, "bradley_terry", spy)
    train_rm(_cfg(kw, tmp_path / "o", train_data=data, eval_data=None, batch_size=2,
                  max_steps=1, centering=0.25))  # fmt: skip
    assert seen == [([0.0, 1.5], 0.25)]
    ignored = _cfg(kw, tmp_path / "x", train_data=data, eval_data=None, margin_field=None)
    train, _ = load_rm_examples(ignored, load_tokenizer(str(kw / "model")))
    assert train.margins.tolist() == [0.0, 0.0]


def test_bad_margins_are_named_by_row_and_field(kw, tmp_path):
    rows = keyword_pairs(3, 6)
    rows[1]["margin"], rows[2]["margin"] = -1, "lots"
    data = _write(tmp_path / "bad.jsonl", rows)
    cfg = _cfg(kw, tmp_path / "o", train_data=data, eval_data=None)
    with pytest.raises(ConfigError) as e:
        load_rm_examples(cfg, load_tokenizer(str(kw / "model")))
    msg = str(e.value)
    assert "row 1 (0-based), field 'margin'" in msg and "row 2 (0-based), field 'margin'" in msg


# ---------------------------------------------------------------------------------------------
# ensembles
# ---------------------------------------------------------------------------------------------
def test_bootstrap_counts_are_seeded_resamples():
    w = bootstrap_counts(10, 3, seed=4)
    assert w.shape == (3, 10) and w.sum(1).tolist() == [10.0, 10.0, 10.0]
    assert torch.equal(w, bootstrap_counts(10, 3, seed=4))
    assert not torch.equal(w[0], w[1]) and not torch.equal(w, bootstrap_counts(10, 3, seed=5))


def _member_scores(paths, kw, aggregate="mean"):
    prompts, chosen, _ = _texts(kw / "eval.jsonl")
    judge = RewardModelJudge(paths, aggregate=aggregate, max_length=96, device="cpu")
    return judge, judge.member_scores(prompts, chosen), judge.score(prompts, chosen)


@pytest.mark.parametrize(
    "extra",
    [{"ensemble_size": 3},
     {"ensemble_size": 2, "ensemble_kind": "lora_adapters", "finetune": "lora", "lora_r": 4}],
    ids=["shared_trunk", "lora_adapters"],
)  # fmt: skip
def test_ensemble_members_differ_load_as_judges_and_aggregate(kw, tmp_path, extra):
    out = tmp_path / "ens"
    summary = train_rm(_cfg(kw, out, max_steps=15, **extra))
    k = extra["ensemble_size"]
    paths = summary["outputs"]["members"]
    assert paths == [str(out / "members" / f"member-{i}") for i in range(k)]
    if "lora_adapters" in extra.values():
        assert all((out / "adapters" / f"member-{i}" / "adapter_config.json").is_file()
                   for i in range(k))  # fmt: skip
    judge, members, agg = _member_scores(paths, kw, aggregate="min")
    assert members.shape == (k, 64)
    for i in range(k):  # members differ from each other
        for j in range(i):
            assert (members[i] - members[j]).abs().max() > 1e-3
    assert agg == pytest.approx(members.min(0).values.tolist(), abs=1e-6)
    rows = _eval_rows(out)  # each member's scores are its training-time scores
    want = torch.tensor([r["chosen"] for r in rows]).T
    assert (members - want).abs().max() < TOL
    ev = summary["eval"]
    assert 0.0 <= ev["eval/disagreement"] <= 1.0 and ev["eval/margin_std"] > 0
    assert ev["eval/member_accuracy"] == pytest.approx(
        sum(ev[f"eval/member_{i}/accuracy"] for i in range(k)) / k
    )


def test_gradient_accumulation_is_exact_with_bootstrap_weights(kw, tmp_path):
    """4 × 1 and 1 × 4 (SGD, whose update is linear in the gradient) end at the same weights:
    every pair's bootstrap weight goes with the pair, not with its micro-batch."""
    common = dict(train_data=str(kw / "small.jsonl"), eval_data=None, max_steps=2,
                  optimizer="sgd", lr=0.5, ensemble_size=2, max_grad_norm=None)  # fmt: skip
    train_rm(_cfg(kw, tmp_path / "a", batch_size=4, grad_accum=1, **common))
    train_rm(_cfg(kw, tmp_path / "b", batch_size=1, grad_accum=4, **common))
    for i in range(2):
        wa = load_file(str(tmp_path / "a" / "members" / f"member-{i}" / "model.safetensors"))
        wb = load_file(str(tmp_path / "b" / "members" / f"member-{i}" / "model.safetensors"))
        for name, t in wa.items():
            assert torch.allclose(t, wb[name], atol=1e-6, rtol=1e-5), name


# ---------------------------------------------------------------------------------------------
# GPM
# ---------------------------------------------------------------------------------------------
def test_gpm_trains_and_its_judge_is_an_exact_pair_judge(kw, tmp_path):
    out = tmp_path / "gpm"
    summary = train_rm(_cfg(kw, out, head="gpm", gpm_dim=4, max_steps=40))
    assert summary["eval"]["eval/accuracy"] >= 0.9  # measured 0.984 (63 of 64 pairs)
    judge = GPMJudge(out / "model", max_length=96, device="cpu", batch_size=3)
    assert isinstance(judge, PairJudge) and judge.name == "judge:gpm:model"
    prompts, chosen, rejected = _texts(kw / "eval.jsonl")
    p_cr = checked_preferences(judge, prompts, chosen, rejected, allow_skip=False)
    p_rc = judge.compare(prompts, rejected, chosen)
    assert all(a + b == 1.0 for a, b in zip(p_cr, p_rc))  # exactly
    assert judge.compare(prompts[:3], chosen[:3], chosen[:3]) == [0.5, 0.5, 0.5]
    # the judge's P is σ(s/τ) of the training-time score of each held-out pair
    s = torch.tensor([r["score"] for r in _eval_rows(out)], dtype=torch.float64)
    p = torch.tensor(p_cr, dtype=torch.float64)
    assert torch.allclose(p, torch.sigmoid(s / 0.1), atol=TOL / 0.1 / 4)  # σ' ≤ 1/4
    accuracy = sum(p > 0.5 for p in p_cr) / len(p_cr)
    assert accuracy == summary["eval"]["eval/accuracy"]
    # the online loop's YAML reaches it as a preference function: file.py:judge.compare
    spec = tmp_path / "gpm_judge.py"
    spec.write_text(f"from unialign.lm.rm import GPMJudge\njudge = GPMJudge({str(out / 'model')!r}, "
                    "max_length=96, device='cpu')\n")  # fmt: skip
    built = build_judge({"kind": "preference_function", "path": f"{spec}:judge.compare"})
    assert built.compare(prompts[:4], chosen[:4], rejected[:4]) == pytest.approx(p_cr[:4], abs=1e-6)
    with pytest.raises(JudgeConfigError, match="num_labels = 4"):
        RewardModelJudge([out / "model"], device="cpu")
    with pytest.raises(JudgeConfigError, match="not a GPM"):
        GPMJudge(kw / "model")


# ---------------------------------------------------------------------------------------------
# interrupt and resume
# ---------------------------------------------------------------------------------------------
def _lines(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in rm_mod.TIMING_KEYS} for r in rows]


def _all_weights(out):
    return {
        str(p.relative_to(out)): load_file(str(p))
        for p in sorted(out.rglob("*.safetensors"))
        if "checkpoints" not in p.parts
    }


@pytest.mark.parametrize(
    "extra",
    [{"ensemble_size": 2},
     {"ensemble_size": 2, "ensemble_kind": "lora_adapters", "finetune": "lora", "lora_r": 4,
      "lora_dropout": 0.2}],
    ids=["shared_trunk_bootstrap", "lora_adapters_dropout"],
)  # fmt: skip
def test_resume_after_interrupt_equals_uninterrupted(kw, tmp_path, extra):
    """Exact comparison, as in tests/lm/test_resume.py: the same float operations in the same
    order. 8 pairs, batch 3, 6 steps: the interrupted run stops at step 3, mid-epoch."""
    common = dict(train_data=str(kw / "small.jsonl"), eval_data=None, eval_fraction=0.25,
                  batch_size=3, max_steps=6, **extra)  # fmt: skip
    train_rm(_cfg(kw, tmp_path / "a", **common))

    def interrupt(step, metrics):
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    cut = _cfg(kw, tmp_path / "b", **common)
    summary = train_rm(cut, on_step=interrupt)
    assert summary["interrupted"] and summary["steps"] == 3
    assert not (tmp_path / "b" / "members").exists()
    assert train_rm(cut, resume=True)["steps"] == 6
    assert _lines(tmp_path / "a") == _lines(tmp_path / "b")
    assert (tmp_path / "a" / "eval_scores.jsonl").read_text() == (
        tmp_path / "b" / "eval_scores.jsonl"
    ).read_text()
    wa, wb = _all_weights(tmp_path / "a"), _all_weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and len(wa) >= 2
    for f, tensors in wa.items():
        for name, t in tensors.items():
            assert torch.equal(wb[f][name], t), (f, name)


# ---------------------------------------------------------------------------------------------
# configuration and the command line
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"gpm_dim": 4}, "gpm_dim: GPM fields need head: gpm"),
        ({"head": "gpm", "gpm_dim": 3}, "field 'gpm_dim': gpm_dim must be even"),
        ({"ensemble_kind": "lora_adapters"}, "ensemble_kind: ensemble fields need"),
        ({"ensemble_size": 2, "ensemble_kind": "lora_adapters"},
         "ensemble_kind: lora_adapters needs finetune: lora"),
        ({"ensemble_size": 2, "head": "gpm"}, "ensemble_size: ensembles are of scalar heads"),
        ({"lora_r": 4}, "lora_r: LoRA fields need finetune: lora"),
        ({"centering": -0.1}, "field 'centering': centering must be a finite number >= 0"),
        ({"ensemble_size": 0}, "field 'ensemble_size': ensemble_size must be > 0"),
        ({"format": "unpaired"}, "field 'format'"),
        ({"eval_fraction": 0.1}, "eval_fraction: give either eval_data or eval_fraction"),
        ({"model": "/nowhere/model"}, "field 'model': model directory"),
        ({"learning_rate": 1.0}, "unknown field(s) learning_rate"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(kw, tmp_path, extra, field):
    data = {"model": str(kw / "model"), "train_data": str(kw / "small.jsonl"),
            "eval_data": str(kw / "small.jsonl"), **extra}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_config(RMTrainConfig, None, data)
    assert field in str(e.value)


def test_the_example_config_is_valid(kw):
    data = yaml.safe_load((ROOT / "examples" / "lm_rm.yaml").read_text())
    data.update(model=str(kw / "model"), train_data=str(kw / "small.jsonl"))
    cfg = load_config(RMTrainConfig, None, data)
    assert cfg.head == "scalar" and cfg.centering == 0.01


def test_eval_data_of_another_format_is_refused(kw, tmp_path):
    cfg = _cfg(
        kw, tmp_path / "o", train_data=str(kw / "small.jsonl"), eval_data=str(kw / "conv.jsonl")
    )
    with pytest.raises(
        ConfigError, match="eval_data: .* is conversational but train_data is standard"
    ):
        load_rm_examples(cfg, load_tokenizer(str(kw / "model")))


def test_unpaired_data_is_refused_naming_format(kw, tmp_path):
    rows = [{"prompt": "a b", "completion": " c d", "label": True}] * 2
    cfg = _cfg(kw, tmp_path / "o", train_data=_write(tmp_path / "u.jsonl", rows), eval_data=None)
    with pytest.raises(ConfigError, match="format: train_data .* is unpaired"):
        load_rm_examples(cfg, load_tokenizer(str(kw / "model")))


def test_cli_trains_and_reports_config_errors(kw, tmp_path, capsys):
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(
        f"model: {kw / 'model'}\ntrain_data: {kw / 'small.jsonl'}\nprecision: fp32\n"
        f"max_length: 96\nbatch_size: 4\noutput_dir: {tmp_path / 'run'}\n"
    )
    assert main(["train", "rm", "--config", str(cfg), "--max-steps", "2", "--lr", "1e-3"]) == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert main(["train", "rm", "--config", str(cfg), "--head", "gpm", "--gpm-dim", "3"]) == 2
    assert "gpm_dim" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [{}, {"head": "gpm"}, {"finetune": "lora", "ensemble_size": 2}])
def test_a_written_config_validates_again(kw, tmp_path, extra):
    """config.yaml lists every field at its value: `--resume` reads it back, so the cross-field
    rules must judge fields by their value, not by whether they were written."""
    cfg = _cfg(kw, tmp_path / "o", **extra)
    dump_config(cfg, tmp_path / "written.yaml")
    assert load_config(RMTrainConfig, tmp_path / "written.yaml") == cfg
