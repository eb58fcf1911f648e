"""The typed, flat configuration of a control run (``unialign train control``).

Every field is documented once, here; the CLI flags are derived from these fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unialign.control.algorithms import ALGORITHMS


class ControlConfig(BaseModel):
    """Preference-based RL on a control task; ``algo`` names an entry of
    :data:`unialign.control.algorithms.ALGORITHMS` (``oracle``, ``pebble``, ``aparl``)."""

    model_config = ConfigDict(extra="forbid")

    # --- what to run -------------------------------------------------------------------------
    env: str = Field(
        "Pendulum-v1",
        description="environment id: Gymnasium id, gym:ID, dmc:DOMAIN-TASK or metaworld:TASK-v3",
    )
    algo: Literal[tuple(ALGORITHMS)] = Field(  # type: ignore[valid-type]
        "aparl",
        description="; ".join(
            f"{a.name}: {a.description}" + (" (experimental)" if a.experimental else "")
            for a in ALGORITHMS.values()
        ),
    )
    seed: int = Field(0, description="random seed (environment resets, networks, sampling)")
    output_dir: str = Field(
        "runs/control", description="run directory (metrics, checkpoint, feedback store, plots)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch device; auto picks cuda when available"
    )

    # --- environment interaction -------------------------------------------------------------
    total_steps: int = Field(
        20_000, ge=1, description="environment steps in total (summed over parallel envs)"
    )
    num_envs: int = Field(1, ge=1, description="parallel environments stepped together")
    random_steps: int = Field(
        1_000, ge=0, description="initial steps with uniformly random actions"
    )
    unsup_steps: int = Field(
        2_000,
        ge=0,
        description="PEBBLE's unsupervised pre-training steps (state-entropy reward); ignored by oracle",
    )
    updates_per_step: float = Field(
        1.0, gt=0, description="SAC gradient updates per environment step"
    )

    # --- SAC ---------------------------------------------------------------------------------
    hidden: list[int] = Field([256, 256], description="hidden sizes of SAC's actor and critics")
    batch_size: int = Field(256, ge=1, description="SAC minibatch size")
    lr: float = Field(3e-4, gt=0, description="SAC learning rate (actor, critics, temperature)")
    gamma: float = Field(0.99, gt=0, lt=1, description="discount factor")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak factor of the target critics")
    init_alpha: float = Field(
        0.1, gt=0, description="initial entropy temperature (tuned automatically)"
    )
    buffer_size: int = Field(1_000_000, ge=1, description="replay buffer capacity")

    # --- feedback ----------------------------------------------------------------------------
    max_queries: int = Field(
        200, ge=0, description="query budget: preference labels asked in total"
    )
    queries_per_round: int = Field(20, ge=1, description="queries asked in each feedback round")
    feedback_interval: int = Field(
        1_000, ge=1, description="environment steps between feedback rounds"
    )
    segment_length: int = Field(50, ge=1, description="segment length H (steps)")
    query_selection: Literal["uniform", "disagreement", "entropy"] = Field(
        "disagreement", description="how queries are chosen from a candidate pool"
    )
    pool_factor: int = Field(
        10, ge=1, description="candidate pool size = pool_factor × queries per round"
    )
    teacher: Literal["oracle", "stochastic", "myopic", "mistake", "skip", "equal", "human"] = Field(
        "oracle",
        description="who labels queries: a simulated B-Pref teacher (from the true reward), or human (people, through `unialign label RUN_DIR`)",
    )
    human_timeout_s: float = Field(
        600.0, gt=0, description="teacher: human — seconds a feedback round waits for labels"
    )
    human_poll_s: float = Field(
        2.0, gt=0, description="teacher: human — seconds between looks at the feedback store"
    )
    teacher_beta: float = Field(1.0, gt=0, description="stochastic teacher's rationality β")
    teacher_gamma: float = Field(0.9, gt=0, le=1, description="myopic teacher's discount γ")
    teacher_eps_mistake: float = Field(
        0.1, ge=0, le=1, description="mistake teacher's flip probability ε"
    )
    teacher_eps_skip: float = Field(0.1, ge=0, le=1, description="skip teacher's threshold ε_skip")
    teacher_eps_equal: float = Field(
        0.1, ge=0, le=1, description="equal teacher's threshold ε_equal"
    )

    # --- reward model ------------------------------------------------------------------------
    reward_ensemble: int = Field(3, ge=1, description="reward-model ensemble size")
    reward_hidden: list[int] = Field(
        [256, 256], description="hidden sizes of each reward-model member"
    )
    reward_lr: float = Field(3e-4, gt=0, description="reward-model learning rate")
    reward_epochs: int = Field(
        50, ge=1, description="reward-model epochs over all labels per feedback round"
    )
    reward_batch: int = Field(128, ge=1, description="reward-model minibatch (pairs)")

    # --- A-PARL ------------------------------------------------------------------------------
    aparl_steps: int = Field(
        10,
        ge=0,
        description="hypergradient-corrected reward updates per feedback round (aparl only)",
    )
    aparl_cg_iters: int = Field(
        10, ge=1, description="conjugate-gradient iterations for the inverse-Hessian-vector product"
    )
    aparl_damping: float = Field(
        0.01, ge=0, description="damping λ added to the lower-level Hessian (H + λI)"
    )
    aparl_weight: float = Field(
        1.0,
        ge=0,
        description="scale of the implicit (distribution-shift) term; 0 keeps only the BT gradient in the aparl_steps updates (an ablation)",
    )
    aparl_states: int = Field(
        256, ge=1, description="replay states used to form the lower-level objective"
    )
    aparl_curvature: Literal["fisher", "hessian"] = Field(
        "fisher",
        description="lower-level curvature in the implicit term: fisher (α × the policy's Fisher matrix, PSD) or hessian (the actor loss's Hessian with SAC's critics; indefinite away from the optimum, see docs/aparl.md)",
    )

    # --- evaluation and bookkeeping ----------------------------------------------------------
    eval_every: int = Field(
        2_000, ge=1, description="environment steps between evaluations on the true reward"
    )
    eval_episodes: int = Field(
        5, ge=1, description="episodes per evaluation (deterministic policy)"
    )
    checkpoint_every: int = Field(5_000, ge=1, description="environment steps between checkpoints")
    log_every: int = Field(500, ge=1, description="environment steps between metric lines")
    progress: bool = Field(True, description="show a progress bar")

    @model_validator(mode="after")
    def _check(self) -> ControlConfig:
        learns_reward = ALGORITHMS[self.algo].learns_reward
        if learns_reward and self.max_queries > 0 and self.queries_per_round > self.max_queries:
            raise ValueError(
                f"queries_per_round ({self.queries_per_round}) exceeds max_queries ({self.max_queries})"
            )
        if self.random_steps + (self.unsup_steps if learns_reward else 0) >= self.total_steps:
            raise ValueError(
                "random_steps + unsup_steps must be smaller than total_steps, "
                f"got {self.random_steps} + {self.unsup_steps} >= {self.total_steps}"
            )
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(
                f"hidden must be a non-empty list of positive sizes, got {self.hidden}"
            )
        if not self.reward_hidden or any(h < 1 for h in self.reward_hidden):
            raise ValueError(
                f"reward_hidden must be a non-empty list of positive sizes, got {self.reward_hidden}"
            )
        return self
