"""The main job: align a Pendulum-v1 policy to simulated preference feedback.

``unialign demo`` runs A-PARL (PEBBLE + the bilevel hypergradient correction) with an oracle
teacher and a few hundred queries, sized to finish in about five minutes on two CPU cores, and
writes into its run directory: ``metrics.jsonl``, ``summary.json``, ``learning_curve.png``,
``feedback.sqlite`` (every query and label) and ``checkpoint.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from unialign.control.config import ControlConfig

#: The demo's budget on Pendulum-v1 (also the CPU tier of benchmarks/control_feedback.py):
#: sized for about a minute and a half per run on two CPU cores.
PENDULUM_BUDGET: dict = dict(
    total_steps=8_000,
    random_steps=1_000,
    unsup_steps=1_000,
    hidden=[128, 128],
    batch_size=128,
    lr=1e-3,
    max_queries=300,
    queries_per_round=30,
    feedback_interval=500,
    segment_length=25,
    reward_hidden=[64, 64],
    reward_lr=1e-3,
    reward_epochs=20,
    aparl_steps=5,
    eval_every=1_000,
)


def demo_config(out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> ControlConfig:
    """The demo's configuration (``quick`` shrinks it to a smoke test of a few seconds)."""
    cfg = ControlConfig(
        env="Pendulum-v1",
        algo="aparl",
        seed=seed,
        output_dir=str(out_dir),
        **PENDULUM_BUDGET,
        eval_episodes=3,
        checkpoint_every=2_000,
        log_every=500,
    )
    if quick:
        cfg = cfg.model_copy(
            update=dict(
                total_steps=600,
                random_steps=200,
                unsup_steps=100,
                hidden=[32, 32],
                batch_size=32,
                max_queries=20,
                queries_per_round=10,
                feedback_interval=200,
                segment_length=10,
                reward_hidden=[16, 16],
                reward_epochs=3,
                aparl_steps=1,
                aparl_states=32,
                eval_every=300,
                eval_episodes=1,
                checkpoint_every=300,
                log_every=100,
            )
        )
    return ControlConfig.model_validate(cfg.model_dump())


def run_demo(
    out_dir: str | Path = "runs/demo", *, seed: int = 0, quick: bool = False, oracle: bool = True
) -> dict:
    """Run the demo (and, with ``oracle``, SAC on the true reward for comparison).

    Returns the summary also written to ``summary.json``: the aligned policy's true return,
    the queries used and, when computed, the oracle's return and the ratio of the two
    improvements over a random policy.
    """
    from unialign.control.report import plot_learning_curve
    from unialign.control.train import train_control

    console = Console()
    cfg = demo_config(out_dir, seed=seed, quick=quick)
    out = Path(cfg.output_dir)
    console.print(
        f"[bold]unialign demo[/bold]: A-PARL on {cfg.env}, {cfg.max_queries} simulated queries "
        f"({cfg.teacher} teacher), {cfg.total_steps} environment steps → {out}/"
    )
    summary = _run_or_resume(cfg, train_control)
    if summary.get("interrupted"):
        return summary
    if oracle:
        ocfg = cfg.model_copy(update={"algo": "oracle", "output_dir": str(out / "oracle")})
        console.print(
            f"[bold]oracle[/bold]: SAC on the true reward, same budget → {ocfg.output_dir}/"
        )
        osum = _run_or_resume(ocfg, train_control)
        if osum.get("interrupted"):
            return osum
        summary["oracle/true_return"] = osum["eval/true_return"]
        plot_learning_curve(
            out / "metrics.jsonl",
            out / "learning_curve.png",
            title=f"A-PARL on {cfg.env} ({summary['queries_used']} queries)",
            reference=Path(ocfg.output_dir) / "metrics.jsonl",
        )
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print_json(json.dumps(summary))
    console.print(f"outputs: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return summary


def _run_or_resume(cfg: ControlConfig, train_control) -> dict:
    """Resume an interrupted run in ``cfg.output_dir``; start afresh when it had finished."""
    out = Path(cfg.output_dir)
    finished = (out / "summary.json").exists()
    if finished:
        (out / "checkpoint.pt").unlink(missing_ok=True)
        (out / "summary.json").unlink()
    return train_control(cfg, resume=(out / "checkpoint.pt").exists())
