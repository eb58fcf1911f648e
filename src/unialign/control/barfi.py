"""BARFI on a control task: ``unialign train barfi --config F``.

Gupta, Chandak, Jordan, Thomas, da Silva, *Behavior Alignment via Reward Function Optimization*
(NeurIPS 2023, arXiv 2310.19007). One loop, four phases per iteration:

1. **collect** ``episodes_per_update`` whole episodes with the current policy π_θ;
2. **outer** (``method: barfi``, every ``outer_every`` iterations): on those episodes,
   g = ∇_θ J_p (primary-return policy gradient), then φ ← φ + Adam(dJ_p/dφ) with the
   hypergradient of :func:`unialign.bilevel.barfi.barfi_hypergradient` (Neumann or first-order);
3. **inner**: θ ← θ + Adam(∇_θ J_φ), REINFORCE with entropy on the blended reward
   r_φ = φ₁(s) + r_p + φ₃(s)·r_aux and discount γ_φ;
4. **log**: ``metrics.jsonl`` (``eval/primary_return``, ``barfi/phi3_mean``, ``barfi/discount``,
   ...), the progress bar, a checkpoint every ``checkpoint_every`` iterations.

The baselines are the same loop with φ frozen: ``primary`` (r_p alone), ``naive``
(r_p + r_aux), ``shaping`` (r_p + γ h(s') − h(s), potential-based shaping with the same
heuristic h). Auxiliary rewards: :mod:`unialign.control.barfi_aux`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field, model_validator

from unialign.bilevel.barfi import BlendedReward, barfi_hypergradient
from unialign.config import dump_config
from unialign.control.barfi_aux import aux_reward, task_name
from unialign.control.barfi_learner import (
    EpisodeBatch,
    collect_episodes,
    inner_objective,
    make_policy,
    primary_objective,
)
from unialign.control.envs import make_env
from unialign.interrupt import StopOnSignal
from unialign.runlog import MetricsLog, atomic_file, progress_bar

__all__ = ["BarfiConfig", "train_barfi", "make_barfi_env"]

METHODS = ("primary", "naive", "shaping", "barfi")


class BarfiConfig(BaseModel):
    """BARFI and its baselines on one task (``unialign train barfi``)."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("CartPole-v1", description="Gymnasium id with auxiliary rewards (barfi_aux)")
    aux: str = Field("good", description="auxiliary reward name for the task: good or bad")
    method: Literal[METHODS] = Field(  # type: ignore[valid-type]
        "barfi",
        description="barfi: learn the blend; primary: r_p only; naive: r_p + r_aux; "
        "shaping: r_p + γ h(s') − h(s)",
    )
    variant: Literal["neumann", "first_order"] = Field(
        "neumann", description="barfi's inverse Hessian: Neumann series or identity (first-order)"
    )
    seed: int = Field(0, description="random seed (networks, action sampling, env resets)")
    output_dir: str = Field("runs/barfi", description="run directory")
    total_steps: int = Field(50_000, ge=1, description="environment steps in total")
    episodes_per_update: int = Field(5, ge=2, description="episodes collected per iteration")
    max_episode_steps: int | None = Field(
        200, ge=1, description="episode length cap (None: the env's own limit)"
    )
    hidden: list[int] = Field([32], description="hidden sizes of the policy MLP")
    policy_lr: float = Field(5e-3, gt=0, description="Adam step size of the inner learner")
    entropy_coef: float = Field(0.01, ge=0, description="entropy bonus β of the inner learner")
    discount: float = Field(
        0.99, gt=0, lt=1, description="γ: fixed for the baselines and shaping, initial for barfi"
    )
    primary_discount: float = Field(
        0.99, gt=0, le=1, description="discount of the outer primary-return policy gradient"
    )
    learn_discount: bool = Field(True, description="barfi: learn γ_φ = σ(θ_γ)")
    blend_hidden: list[int] = Field([], description="hidden sizes of the φ₁, φ₃ network")
    outer_lr: float = Field(1e-2, gt=0, description="Adam step size of the blend φ")
    outer_every: int = Field(1, ge=1, description="iterations between outer updates")
    neumann_terms: int = Field(5, ge=1, description="Neumann series terms K")
    neumann_alpha: float | None = Field(
        0.1, gt=0, description="Neumann step α; None: 1/|μ|_max of the batch's inner Hessian"
    )
    power_iters: int = Field(
        10, ge=1, description="power iterations for |μ|_max when neumann_alpha is None"
    )
    neumann_damping: float = Field(0.0, ge=0, description="λ added to the inner Hessian")
    first_order_scale: float | None = Field(
        None, gt=0, description="first-order H⁻¹ ≈ η I; None uses policy_lr"
    )
    score_window: int = Field(5, ge=1, description="summary score: mean of the last N returns")
    checkpoint_every: int = Field(10, ge=1, description="iterations between checkpoints")
    progress: bool = Field(True, description="show a progress bar")

    @model_validator(mode="after")
    def _check_aux(self) -> BarfiConfig:
        aux_reward(self.env, self.aux)  # raises ValueError naming env/aux and the choices
        return self


def make_barfi_env(env_id: str, max_episode_steps: int | None) -> gym.Env:
    """Discrete-action tasks as Gymnasium builds them; Box-action tasks through
    :func:`unialign.control.envs.make_env` (actions rescaled to [−1, 1])."""
    env = gym.make(task_name(env_id), max_episode_steps=max_episode_steps, disable_env_checker=True)
    if isinstance(env.action_space, spaces.Box):
        env.close()
        return make_env(env_id, max_episode_steps=max_episode_steps)
    return env


def _aux_signal(method: str, batch: EpisodeBatch) -> torch.Tensor:
    if method == "primary":
        return torch.zeros_like(batch.aux)
    return batch.shaping if method == "shaping" else batch.aux


def _outer_step(cfg, policy, blend, opt_phi, batch, aux) -> dict[str, float]:
    """Phase 2: φ ← φ + Adam(dJ_p/dφ) on this batch."""
    theta = list(policy.parameters())
    g = torch.autograd.grad(primary_objective(policy, batch, discount=cfg.primary_discount), theta)
    phi = blend.outer_parameters()
    res = barfi_hypergradient(
        lambda: inner_objective(policy, blend, batch, aux, entropy_coef=cfg.entropy_coef),
        g,
        theta,
        phi,
        variant=cfg.variant,
        neumann_terms=cfg.neumann_terms,
        neumann_alpha=cfg.neumann_alpha,
        damping=cfg.neumann_damping,
        first_order_scale=cfg.first_order_scale or cfg.policy_lr,
        power_iters=cfg.power_iters,
    )
    opt_phi.zero_grad()
    for p, hg in zip(phi, res.grads, strict=True):
        p.grad = -hg  # Adam minimises; the hypergradient ascends J_p
    opt_phi.step()
    norm = float(torch.sqrt(sum((h**2).sum() for h in res.grads)))
    return {"hypergrad/norm": norm, "hypergrad/neumann_residual": res.residual}


def _inner_step(cfg, policy, blend, opt_pi, batch, aux) -> float:
    """Phase 3: θ ← θ + Adam(∇_θ J_φ)."""
    theta = list(policy.parameters())
    j = inner_objective(policy, blend, batch, aux, entropy_coef=cfg.entropy_coef)
    grads = torch.autograd.grad(j, theta)
    opt_pi.zero_grad()
    for p, gr in zip(theta, grads, strict=True):
        p.grad = -gr
    opt_pi.step()
    return float(j.detach())


def train_barfi(
    cfg: BarfiConfig,
    *,
    resume: bool = False,
    on_iteration: Callable[[int], None] | None = None,
) -> dict:
    """Run (or with ``resume`` continue) one BARFI or baseline run; returns the summary.

    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt`` and ``summary.json`` under
    ``output_dir``. ``on_iteration(i)`` is called after each iteration's checkpoint (tests use
    it to simulate a crash).
    """
    out = Path(cfg.output_dir)
    ckpt_path = out / "checkpoint.pt"
    if resume and not ckpt_path.exists():
        raise ValueError(f"--resume: no checkpoint at {ckpt_path}; start without --resume")
    if not resume and ckpt_path.exists():
        raise ValueError(f"{out} already holds a run; pass --resume or choose another output_dir")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    env = make_barfi_env(cfg.env, cfg.max_episode_steps)
    heuristic = aux_reward(cfg.env, cfg.aux)
    policy = make_policy(env, cfg.hidden)
    learned = cfg.method == "barfi"
    blend = BlendedReward(
        int(np.prod(env.observation_space.shape)),
        cfg.blend_hidden,
        init_discount=cfg.discount,
        learn_discount=learned and cfg.learn_discount,
    )
    if not learned:
        blend.requires_grad_(False)
    opt_pi = torch.optim.Adam(policy.parameters(), lr=cfg.policy_lr)
    opt_phi = torch.optim.Adam(blend.outer_parameters(), lr=cfg.outer_lr) if learned else None
    gen = torch.Generator().manual_seed(cfg.seed)
    state = {"iteration": 0, "env_steps": 0, "episodes": 0, "returns": []}
    offset = None
    if resume:
        ck = torch.load(ckpt_path, weights_only=False)
        policy.load_state_dict(ck["policy"])
        blend.load_state_dict(ck["blend"])
        opt_pi.load_state_dict(ck["opt_pi"])
        if opt_phi is not None:
            opt_phi.load_state_dict(ck["opt_phi"])
        gen.set_state(ck["generator"])
        state, offset = ck["state"], ck["metrics_offset"]
    log = MetricsLog(out / "metrics.jsonl", offset=offset, start_step=state["iteration"])

    def save() -> None:
        ck = {
            "policy": policy.state_dict(),
            "blend": blend.state_dict(),
            "opt_pi": opt_pi.state_dict(),
            "opt_phi": None if opt_phi is None else opt_phi.state_dict(),
            "generator": gen.get_state(),
            "state": state,
            "metrics_offset": log.offset(),
        }
        with atomic_file(ckpt_path) as tmp:
            torch.save(ck, tmp)

    start, interrupted, metrics = time.time(), False, {}
    bar = progress_bar("barfi", enabled=cfg.progress, fields="return {task.fields[ret]:.1f}")
    with StopOnSignal() as stop, bar:
        task = bar.add_task("barfi", total=cfg.total_steps, completed=state["env_steps"], ret=0.0)
        while state["env_steps"] < cfg.total_steps:
            # 1. collect
            first = cfg.seed * 1_000_003 + state["episodes"]
            seeds = [first + i for i in range(cfg.episodes_per_update)]
            batch = collect_episodes(
                env,
                policy,
                heuristic,
                episodes=cfg.episodes_per_update,
                seeds=seeds,
                shaping_discount=cfg.discount,
                generator=gen,
            )
            aux = _aux_signal(cfg.method, batch)
            metrics = {}
            # 2. outer
            if learned and state["iteration"] % cfg.outer_every == 0:
                metrics |= _outer_step(cfg, policy, blend, opt_phi, batch, aux)
            # 3. inner
            metrics["inner/objective"] = _inner_step(cfg, policy, blend, opt_pi, batch, aux)
            # 4. log
            state["iteration"] += 1
            state["env_steps"] += batch.steps
            state["episodes"] += cfg.episodes_per_update
            ret = float(batch.episode_returns.mean())
            state["returns"].append([state["env_steps"], ret])
            with torch.no_grad():
                phi1, phi3 = blend.components(batch.obs)
            metrics |= {
                "env_steps": state["env_steps"],
                "eval/primary_return": ret,
                "barfi/phi1_mean": float(phi1.mean()),
                "barfi/phi3_mean": float(phi3.mean()),
                "barfi/phi3_std": float(phi3.std()),
                "barfi/discount": float(blend.discount.detach()),
            }
            log.write(state["iteration"], metrics)
            bar.update(task, completed=state["env_steps"], ret=ret)
            done = state["env_steps"] >= cfg.total_steps
            if done or stop.requested or state["iteration"] % cfg.checkpoint_every == 0:
                save()
            if on_iteration is not None:
                on_iteration(state["iteration"])
            if stop.requested and not done:
                interrupted = True
                break
    log.close()
    env.close()
    rets = [r for _, r in state["returns"]]
    summary = {
        "method": cfg.method,
        "variant": cfg.variant,
        "env": cfg.env,
        "aux": cfg.aux,
        "iterations": state["iteration"],
        "env_steps": state["env_steps"],
        "score": float(np.mean(rets[-cfg.score_window :])) if rets else float("nan"),
        "curve": state["returns"],
        "phi3_mean": metrics.get("barfi/phi3_mean"),
        "discount": float(blend.discount.detach()),
        "interrupted": interrupted,
        "wall_s_this_session": time.time() - start,
    }
    with atomic_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary
