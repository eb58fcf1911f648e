"""The offline LM loop end to end on a tiny model: the CLI, LoRA export, config errors, KTO."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from unialign.cli import main
from unialign.config import ConfigError, dump_config, load_config
from unialign.lm import train as train_mod
from unialign.lm.config import LMTrainConfig
from unialign.lm.tiny import save_tiny, synthetic_preferences

ROOT = Path(__file__).resolve().parents[2]
# At step 1 π_θ = π_ref, up to the reduction order: the reference log-probs ℓ come from another
# packing (the whole data set, or a separate forward) than the policy's. ℓ ≈ 10² in float32
# (resolution ~1e-5), so a few ulps of ℓ, times β ≤ 1/2 in the loss's first-order term, stay
# well below this; a misaligned reference would move the loss by O(β·|ℓ_i − ℓ_j|) ≈ O(1).
STEP1_ABS = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny Qwen2 (hidden 64, 2 layers) and short synthetic data in three formats."""
    d = tmp_path_factory.mktemp("tiny")
    save_tiny(d / "model")
    for fmt, n in (("standard", 8), ("unpaired", 8)):
        rows = synthetic_preferences(n, fmt=fmt, prompt_words=(3, 8), completion_words=(3, 10))
        (d / f"{fmt}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def _config(tmp_path, tiny, **fields) -> Path:
    cfg = {
        "model": str(tiny / "model"),
        "train_data": str(tiny / "standard.jsonl"),
        "max_length": 64,
        "batch_size": 4,
        "max_steps": 3,
        "output_dir": str(tmp_path / "run"),
        **fields,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_cli_run_learns_and_writes_outputs(tmp_path, tiny):
    """20 steps of DPO at lr 1e-3 on 8 fixed pairs: the first loss is ln 2 (π_θ = π_ref),
    the loss falls, train accuracy reaches 1, and every output is written and loadable."""
    cfg = _config(tmp_path, tiny, lr=1e-3, max_steps=20, schedule="constant", beta=0.5)
    assert (
        main(["train", "lm", "--config", str(cfg), "--eval-data", str(tiny / "standard.jsonl")])
        == 0
    )
    run = tmp_path / "run"
    lines = [m for m in _metrics(run) if "loss/total" in m]
    assert [m["step"] for m in lines] == list(range(1, 21))
    assert lines[0]["loss/total"] == pytest.approx(math.log(2), abs=STEP1_ABS)
    assert sum(m["loss/total"] for m in lines[-3:]) / 3 < lines[0]["loss/total"] - 0.2
    assert lines[-1]["rewards/accuracies"] == 1.0
    for key in ("rewards/margins", "lm/tokens_per_s", "lm/lr", "lm/grad_norm"):
        assert key in lines[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 20 and not summary["interrupted"]
    # evaluated on the same pairs it trained on: the held-out metrics must show the learning
    assert summary["eval"]["eval/accuracy"] > 0.5 and summary["eval"]["eval/margin"] > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 1e-3
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.hidden_size == 64
    assert (run / "model" / "tokenizer.json").is_file()


@pytest.mark.integration
def test_lora_saves_adapter_and_merged_model(tmp_path, tiny):
    """LoRA: the adapter and the merged model give the same logits; the base is unchanged."""
    from peft import PeftModel

    cfg = _config(tmp_path, tiny, finetune="lora", lora_r=4, lr=1e-2, max_steps=2)
    assert main(["train", "lm", "--config", str(cfg)]) == 0
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(run / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny / "model")
    base_logits = base(torch.arange(10)[None]).logits
    adapted = PeftModel.from_pretrained(base, run / "adapter")
    x = torch.arange(10)[None]
    with torch.no_grad():
        a, m = adapted(x).logits, merged(x).logits
    assert torch.allclose(a, m, atol=1e-5)
    assert not torch.allclose(m, base_logits, atol=1e-4)  # the adapter did train


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"lerning_rate": 1e-3}, "unknown field(s) lerning_rate"),
        ({"loss": "dpo_typo"}, "field 'loss': unknown objective 'dpo_typo'"),
        ({"loss_params": {"gamma": 1.0}}, "loss_params: gamma not a hyperparameter of 'sigmoid'"),
        ({"loss_params": {"beta": -1.0}}, "loss_params: beta must be a finite number > 0"),
        ({"lora_r": 8}, "lora_r: LoRA fields need finetune: lora"),
        ({"batch_size": 0}, "field 'batch_size'"),
        ({"loss": "kto", "format": "standard"}, "format: objective 'kto' needs unpaired data"),
    ],
)
def test_bad_config_fails_before_loading_the_model(
    tmp_path, tiny, monkeypatch, capsys, fields, expected
):
    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the config was validated")

    monkeypatch.setattr(train_mod, "load_policy", no_loading)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)
    assert main(["train", "lm", "--config", str(_config(tmp_path, tiny, **fields))]) == 2
    assert expected in capsys.readouterr().err


def test_paired_loss_on_unpaired_data_names_the_field(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    cfg = _config(tmp_path, tiny, train_data=str(tiny / "unpaired.jsonl"))
    assert main(["train", "lm", "--config", str(cfg)]) == 2
    assert "format: objective 'sigmoid' needs paired data" in capsys.readouterr().err


def test_unreadable_data_file_names_the_file_and_line(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff"}\n')
    assert main(["train", "lm", "--config", str(_config(tmp_path, tiny, train_data=str(bad)))]) == 2
    err = capsys.readouterr().err
    assert f"train_data/eval_data: 1 problem in {bad}" in err
    assert "line 2 (1-based), byte 13: not valid UTF-8" in err and "save the file as UTF-8" in err


@pytest.mark.integration
def test_unpaired_kto_run(tmp_path, tiny):
    """KTO on {prompt, completion, label} rows; the KL baseline uses mismatched completions."""
    cfg = _config(tmp_path, tiny, loss="kto", train_data=str(tiny / "unpaired.jsonl"), lr=1e-3,
                  max_steps=4, eval_fraction=0.25)  # fmt: skip
    assert main(["train", "lm", "--config", str(cfg)]) == 0
    lines = _metrics(tmp_path / "run")
    # step 1: π_θ = π_ref ⇒ r = z₀ = 0 ⇒ every loss is 1 − σ(0) = 0.5
    assert lines[0]["loss/total"] == pytest.approx(0.5, abs=STEP1_ABS)
    assert "kl/baseline" in lines[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "eval/loss" in summary["eval"] and "eval/accuracy" in summary["eval"]


@pytest.mark.integration
def test_reference_free_and_on_the_fly_reference(tmp_path, tiny):
    """SimPO needs no reference; DPO with precompute_ref: false runs a frozen copy per step
    and gets the same first-step loss (ln 2) as the precomputed path."""
    cfg = _config(tmp_path, tiny, loss="simpo", max_steps=1)
    assert main(["train", "lm", "--config", str(cfg)]) == 0
    assert not (tmp_path / "run" / "ref_cache").exists()
    cfg = _config(tmp_path, tiny, precompute_ref=False, max_steps=1, output_dir=str(tmp_path / "b"))
    assert main(["train", "lm", "--config", str(cfg)]) == 0
    assert _metrics(tmp_path / "b")[0]["loss/total"] == pytest.approx(math.log(2), abs=STEP1_ABS)


@pytest.mark.slow  # three process start-ups: ~40 s of CPU on 2 cores
def test_benchmark_tiny_mode(tmp_path):
    """The throughput benchmark's --tiny mode runs end to end (TRL and unialign on CPU). No
    timing assertion: how long it takes is the benchmark's output, not a property to test; the
    subprocess timeout only keeps a hung run from hanging the suite."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "lm_throughput.py"), "--tiny",
         "--out", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "bench.json").read_text())
    assert {r["name"] for r in out["runs"]} >= {"trl_default", "unialign"}
    for r in out["runs"]:
        assert r["tokens_per_s"] > 0 and math.isfinite(r["step1_loss"])


def test_a_written_full_finetune_config_validates_again(tmp_path, tiny):
    """config.yaml lists every field, LoRA ones at their defaults: `--resume` must accept it,
    and a LoRA field that changes something still needs finetune: lora."""
    cfg = load_config(LMTrainConfig, _config(tmp_path, tiny))
    assert cfg.finetune != "lora"
    dump_config(cfg, tmp_path / "written.yaml")
    assert load_config(LMTrainConfig, tmp_path / "written.yaml") == cfg
    with pytest.raises(ConfigError, match="lora_r: LoRA fields need finetune: lora"):
        load_config(LMTrainConfig, tmp_path / "written.yaml", {"lora_r": cfg.lora_r + 1})
