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


def demo_config(out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> ControlConfig:
    """The demo's configuration (``quick`` shrinks it to a smoke test of a few seconds)."""
    cfg = ControlConfig(
        env="Pendulum-v1",
        algo="aparl",
        seed=seed,
        output_dir=str(out_dir),
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


def run_demo(out_dir: str | Path = "runs/demo", *, seed: int = 0, quick: bool = False) -> dict:
    """Run the demo and print where its outputs are; returns the summary."""
    from unialign.control.train import train_control

    console = Console()
    cfg = demo_config(out_dir, seed=seed, quick=quick)
    out = Path(cfg.output_dir)
    resume = (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()
    if (out / "summary.json").exists():
        # a finished demo: start afresh so the command always produces a new run
        (out / "checkpoint.pt").unlink(missing_ok=True)
        (out / "summary.json").unlink()
    console.print(
        f"[bold]unialign demo[/bold]: A-PARL on {cfg.env}, {cfg.max_queries} simulated queries "
        f"({cfg.teacher} teacher), {cfg.total_steps} environment steps → {out}/"
        + (" (resuming)" if resume else "")
    )
    summary = train_control(cfg, resume=resume)
    console.print_json(json.dumps(summary))
    console.print(f"outputs: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return summary
