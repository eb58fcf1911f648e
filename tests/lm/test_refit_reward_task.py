"""The refit reward model in the online loop on the hub-free style task (slow: the task's small
reference is pretrained first, about 5–20 s on 2 cores, into a temporary cache).

What it checks: RLOO with ``refit: {correction: aparl}`` runs end to end from a config (the
teacher's labels in the store under ``teacher:oracle``, the refit metrics logged, the judge's
scores from the refit head), and a run interrupted after iteration 2 of 3 and resumed equals the
uninterrupted one: metrics lines (wall-clock values aside), every stored query and label, the
final policy weights.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unialign.lm.online import train_lm_online
from unialign.lm.online_config import LMOnlineConfig

from .test_online import lines  # metric lines without timings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("task-cache")


def _cfg(cache, out, **kw) -> LMOnlineConfig:
    base = dict(
        task="style", task_cache_dir=str(cache), method="rloo", kl_penalty="k1",
        kl_penalty_coef=0.05, iterations=3, prompts_per_iteration=4, num_samples=4,
        max_new_tokens=24, micro_batch_size=16, lr=3e-3, output_dir=str(out),
        refit={"labels_per_iteration": 6, "correction": "aparl", "epochs": 5, "beta": 1.0,
               "teacher": {"kind": "stochastic", "beta": 20.0}},
    )  # fmt: skip
    return LMOnlineConfig(**{**base, **kw})


def _store(out: Path) -> list:
    con = sqlite3.connect(out / "feedback.sqlite")
    rows = con.execute(
        "SELECT q.id, q.step, q.selection, p.*, l.labeler, l.label FROM queries q JOIN "
        "completion_pairs p ON p.query_id = q.id LEFT JOIN labels l ON l.query_id = q.id "
        "ORDER BY q.id, l.id"
    ).fetchall()
    con.close()
    return rows


def test_aparl_refit_runs_and_resumes_exactly(tmp_path, cache):
    """3 iterations × 6 teacher labels (stochastic teacher: its draws are seeded by iteration,
    so the resumed run asks and gets the same labels); SIGINT after iteration 2, resume."""
    a = train_lm_online(_cfg(cache, tmp_path / "a"))
    assert a["iterations"] == 3
    rows = lines(tmp_path / "a")
    assert [r["refit/labels_used"] for r in rows] == [6, 12, 18]
    assert all(r["refit/cg_residual"] < 1 and r["refit/implicit_norm"] > 0 for r in rows)
    teacher = [r for r in _store(tmp_path / "a") if r[-2] == "teacher:stochastic"]
    assert len(teacher) == 18 and {r[2] for r in teacher} == {"refit"}

    def stop_after_2(rec):
        if rec.iteration == 2:
            signal.raise_signal(signal.SIGINT)

    cut = _cfg(cache, tmp_path / "b")
    first = train_lm_online(cut, on_iteration=stop_after_2)
    assert first["interrupted"] and first["iterations"] == 2
    second = train_lm_online(cut, resume=True)
    assert second["iterations"] == 3
    assert lines(tmp_path / "a") == lines(tmp_path / "b")
    assert _store(tmp_path / "a") == _store(tmp_path / "b")
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
