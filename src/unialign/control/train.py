"""One readable loop for preference-based RL on control tasks, built from injected parts.

Phases, in the order they run at each environment step (``docs/control-training.md``)::

    collect       act (random at first), step the environments, store transitions
    update_agent  SAC gradient updates on the buffer's rewards — during PEBBLE's unsupervised
                  pre-training on the k-NN state-entropy reward instead
    ask_feedback  when the schedule is due: draw candidate segment pairs, select queries, let
                  the labeller label them, write both to the feedback store
    fit_reward    after a feedback round: fit the reward learner on every label so far, then
                  relabel the whole replay buffer with its reward
    evaluate      deterministic episodes scored by the true reward

The parts (:mod:`unialign.control.components`) are built from the configuration by
:func:`build_parts`; the algorithm (``oracle``, ``pebble``, ``aparl``) only decides which
reward learner is given (:mod:`unialign.control.algorithms`). Without a reward learner the
feedback phases do not run and SAC trains on the true reward. The configuration object stays
in this file: parts take plain arguments.

Checkpoints (every ``checkpoint_every`` steps, at the end, on SIGINT/SIGTERM) hold every part's
state and a mark of the feedback store; ``--resume`` after a crash or ``kill -9`` rolls the
store back to that mark, so the replayed steps write their queries and labels exactly once.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from unialign.config import dump_config
from unialign.control.algorithms import get_algorithm
from unialign.control.buffer import ReplayBuffer
from unialign.control.components import (
    Agent,
    FeedbackSchedule,
    FitContext,
    Labeller,
    QuerySelector,
    RewardLearner,
)
from unialign.control.config import ControlConfig
from unialign.control.entropy import StateEntropyReward
from unialign.control.envs import env_dims
from unialign.control.human import HumanLabeller
from unialign.control.learners import TeacherLabeller
from unialign.control.query import PoolSelector, QuerySchedule
from unialign.control.runner import EpisodeRunner
from unialign.control.sac import SAC, SACConfig, evaluate
from unialign.feedback.store import FeedbackStore, StoreMark
from unialign.feedback.teachers import Teacher, TeacherConfig, mean_segment_return
from unialign.interrupt import StopOnSignal
from unialign.runlog import MetricsLog

__all__ = ["ControlRun", "FeedbackParts", "RunParts", "build_parts", "train_control"]

CHECKPOINT = "checkpoint.pt"
STORE = "feedback.sqlite"


class ExperimentalWarning(UserWarning):
    """The algorithm has not met its promotion criterion yet (see its docs page)."""


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was requested but torch sees no CUDA device; use device: cpu"
        )
    return torch.device(name)


# ------------------------------------------------------------------------------------- parts
@dataclass
class FeedbackParts:
    """What a run that learns its reward needs besides the agent.

    ``exploration`` is PEBBLE's unsupervised pre-training reward (None: no pre-training).
    """

    learner: RewardLearner
    labeller: Labeller
    selector: QuerySelector
    schedule: FeedbackSchedule
    store: FeedbackStore
    exploration: StateEntropyReward | None = None


@dataclass
class RunParts:
    """Everything the loop calls. ``feedback`` is None when SAC trains on the true reward."""

    agent: Agent
    runner: EpisodeRunner
    buffer: ReplayBuffer
    episode_steps: int
    feedback: FeedbackParts | None = None


def build_parts(cfg: ControlConfig, run_dir: Path, device: torch.device) -> RunParts:
    """The parts of ``cfg``'s run: the agent, environments and buffer of every algorithm, and
    the reward learner of the algorithm's registry entry with the shared feedback parts."""
    torch.manual_seed(cfg.seed)
    obs_dim, act_dim, episode_steps = env_dims(cfg.env)
    runner = EpisodeRunner(cfg.env, cfg.num_envs, cfg.seed)
    buffer = ReplayBuffer(min(cfg.buffer_size, cfg.total_steps), obs_dim, act_dim, seed=cfg.seed)
    sac_cfg = SACConfig(
        hidden=tuple(cfg.hidden),
        lr=cfg.lr,
        gamma=cfg.gamma,
        tau=cfg.tau,
        batch_size=cfg.batch_size,
        init_alpha=cfg.init_alpha,
    )
    agent = SAC(obs_dim, act_dim, sac_cfg, device=device, seed=cfg.seed)
    parts = RunParts(agent, runner, buffer, episode_steps)
    algorithm = get_algorithm(cfg.algo)
    if algorithm.build_learner is None:
        return parts
    if cfg.teacher == "human":
        labeller: Labeller = HumanLabeller(
            timeout_s=cfg.human_timeout_s, poll_s=cfg.human_poll_s, source={"env": cfg.env}
        )
    else:
        labeller = TeacherLabeller(
            Teacher(
                TeacherConfig(
                    kind=cfg.teacher,
                    beta=cfg.teacher_beta,
                    gamma=cfg.teacher_gamma,
                    eps_mistake=cfg.teacher_eps_mistake,
                    eps_skip=cfg.teacher_eps_skip,
                    eps_equal=cfg.teacher_eps_equal,
                )
            )
        )
    parts.feedback = FeedbackParts(
        learner=algorithm.build_learner(cfg, obs_dim, act_dim, device),
        labeller=labeller,
        selector=PoolSelector(cfg.query_selection, cfg.pool_factor),
        schedule=QuerySchedule(
            budget=cfg.max_queries,
            per_round=cfg.queries_per_round,
            interval=cfg.feedback_interval,
            start=cfg.random_steps + cfg.unsup_steps,
        ),
        store=FeedbackStore(run_dir / STORE),
        exploration=StateEntropyReward(k=5) if cfg.unsup_steps > 0 else None,
    )
    return parts


# ------------------------------------------------------------------------------------- loop
class ControlRun:
    """The phases of one run, each a call on an injected part."""

    def __init__(self, cfg: ControlConfig, parts: RunParts, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.agent, self.runner, self.buffer = parts.agent, parts.runner, parts.buffer
        self.episode_steps = parts.episode_steps
        self.fb = parts.feedback
        self.rng = np.random.default_rng(cfg.seed)
        if self.fb is None:
            self.buffer.use_true_rewards()
        else:  # SAC never sees the true reward: from the first step, stored transitions get
            # the (still untrained) learner's reward, and are relabelled after each fit
            self.buffer.relabel(self.fb.learner.reward_fn(), absorbing_gamma=cfg.gamma)
        self.should_stop: Callable[[], bool] = lambda: False  # set by train_control
        self.step = 0
        self.update_credit = 0.0
        self.recent_returns: list[float] = []
        self.last_metrics: dict[str, float] = {}

    # ---------------------------------------------------------------- phases
    def collect(self) -> None:
        """Act in every environment once and store the transitions."""
        if self.step < self.cfg.random_steps:
            actions = self.rng.uniform(
                -1.0, 1.0, size=(self.runner.num_envs, self.buffer.act_dim)
            ).astype(np.float32)
        else:
            actions = self.agent.act(self.runner.obs)
        obs = self.runner.obs.copy()
        res = self.runner.step(actions)
        self.buffer.add(obs, actions, res.true_reward, res.next_obs, res.terminated, res.truncated)
        self.step += self.runner.num_envs
        for _, ret, _, _ in res.finished:
            self.recent_returns = (self.recent_returns + [ret])[-10:]

    def in_pretraining(self) -> bool:
        cfg = self.cfg
        return (
            self.fb is not None
            and self.fb.exploration is not None
            and self.step <= cfg.random_steps + cfg.unsup_steps
        )

    def update_agent(self) -> None:
        """SAC updates; during pre-training the reward is the state-entropy bonus."""
        cfg = self.cfg
        if self.step < cfg.random_steps or len(self.buffer) < cfg.batch_size:
            return
        self.update_credit += cfg.updates_per_step * self.runner.num_envs
        while self.update_credit >= 1.0:
            self.update_credit -= 1.0
            batch = self.buffer.sample(cfg.batch_size, self.device)
            if self.in_pretraining():
                # the entropy reward subsamples the buffer's states itself before copying
                rewards = self.fb.exploration(batch.next_obs, self.buffer.observations())
                batch = replace(batch, rewards=rewards)
            self.last_metrics = self.agent.update(batch)

    def ask_feedback(self) -> int:
        """Ask the labeller for the queries due now and store them; returns how many."""
        fb, cfg = self.fb, self.cfg
        n = fb.schedule.due(self.step) if fb is not None and not self.in_pretraining() else 0
        if n == 0:
            return 0
        pool = fb.selector.pool_size(n)
        # segments may run past a termination, padded with the absorbing state (buffer docs)
        seg1 = self.buffer.sample_segments(pool, cfg.segment_length, absorbing=True)
        seg2 = self.buffer.sample_segments(pool, cfg.segment_length, absorbing=True)
        first = fb.store.count_queries() == 0
        idx, method = fb.selector.select(seg1, seg2, fb.learner, n, self.rng, first_round=first)
        fb.labeller.label(
            seg1.take(idx),
            seg2.take(idx),
            store=fb.store,
            step=self.step,
            selection=method,
            mean_segment_return=self._mean_segment_return(),
            rng=self.rng,
            should_stop=self.should_stop,
        )
        fb.schedule.consume(n)
        return n

    def _mean_segment_return(self) -> float:
        """R̄_seg for the skip/equal teachers: mean return of the last 10 episodes × H / T
        (B-Pref); before any episode has ended, the buffer's mean true reward × H."""
        if self.recent_returns:
            return mean_segment_return(
                self.recent_returns, self.episode_steps, self.cfg.segment_length
            )
        return float(self.buffer.true_rewards().mean()) * self.cfg.segment_length

    def fit_reward(self) -> None:
        """Fit the reward learner on every label so far, then relabel the replay buffer."""
        seg1, seg2, labels = self.fb.store.labelled_segment_pairs()
        if len(labels) == 0:
            return
        ctx = FitContext(self.agent, self.buffer, self.rng, self.device)
        metrics = self.fb.learner.fit(
            seg1.to(self.device), seg2.to(self.device), labels.to(self.device), ctx
        )
        self.last_metrics.update(metrics)
        self.buffer.relabel(self.fb.learner.reward_fn(), absorbing_gamma=self.cfg.gamma)

    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        return evaluate(self.agent, cfg.env, episodes=cfg.eval_episodes, seed=10_000 + cfg.seed)

    # ------------------------------------------------------------ helpers
    def queries_used(self) -> int:
        return self.fb.store.count_queries() if self.fb is not None else 0

    def labels_used(self) -> int:
        return self.fb.store.count_labels() if self.fb is not None else 0

    # --------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "update_credit": self.update_credit,
            "recent_returns": list(self.recent_returns),
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
            "runner": self.runner.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "last_metrics": {k: float(v) for k, v in self.last_metrics.items()},
        }
        if self.fb is not None:
            state["learner"] = self.fb.learner.state_dict()
            state["labeller"] = self.fb.labeller.state_dict()
            state["schedule"] = self.fb.schedule.state_dict()
            state["store_mark"] = self.fb.store.mark().as_dict()
            if self.fb.exploration is not None:
                state["exploration"] = self.fb.exploration.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.update_credit = state["update_credit"]
        self.recent_returns = list(state["recent_returns"])
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])  # stored training rewards included
        self.runner.load_state_dict(state["runner"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if self.fb is not None:
            self.fb.learner.load_state_dict(state["learner"])
            self.fb.labeller.load_state_dict(state["labeller"])
            self.fb.schedule.load_state_dict(state["schedule"])
            if self.fb.exploration is not None:
                self.fb.exploration.load_state_dict(state["exploration"])
            # rows added from now on get the learner's reward (stored rows keep theirs)
            self.buffer.reward_fn = self.fb.learner.reward_fn()
            self.buffer.absorbing_gamma = self.cfg.gamma
            # queries and labels written after this checkpoint (a crash, kill -9) are replayed
            # by the resumed run: drop them, so each is stored once with the same ids. People's
            # labels are never dropped (a human labeller finds its posted queries again).
            if self.fb.labeller.replayable:
                self.fb.store.rollback(StoreMark.from_dict(state["store_mark"]))
        self.last_metrics = dict(state["last_metrics"])

    def close(self) -> None:
        self.runner.close()
        if self.fb is not None:
            self.fb.store.close()


def _crossed(prev: int, step: int, every: int) -> bool:
    """True when the step counter passed a multiple of ``every`` since ``prev``."""
    return step // every > prev // every


def _save_checkpoint(
    run: ControlRun, path: Path, metrics_offset: int, eval_row: dict[str, float]
) -> None:
    tmp = path.with_suffix(".tmp")
    state = {"run": run.state_dict(), "metrics_offset": metrics_offset, "eval": dict(eval_row)}
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def _prepare_run_dir(cfg: ControlConfig, resume: bool) -> Path:
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise ValueError(
            f"{run_dir} already holds a run (checkpoint.pt); pass --resume to continue it "
            "or choose another output_dir"
        )
    if resume and not ckpt_path.exists():
        raise ValueError(f"--resume: no checkpoint at {ckpt_path}")
    if not resume:
        for stale in ("metrics.jsonl", STORE, STORE + "-wal", STORE + "-shm"):
            (run_dir / stale).unlink(missing_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    return run_dir


def train_control(
    cfg: ControlConfig,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    build: Callable[[ControlConfig, Path, torch.device], RunParts] = build_parts,
) -> dict:
    """Run one configuration; returns the summary written to ``summary.json``.

    ``stop_after`` (environment steps) checkpoints and returns early, as an interruption
    would (used by the resume test). SIGINT/SIGTERM also checkpoint before exiting.
    ``build(cfg, run_dir, device)`` makes the run's parts (default :func:`build_parts`); pass
    another to give the loop a custom reward learner, labeller or selector.
    """
    from unialign.control.report import ProgressReporter, plot_learning_curve

    env_dims(cfg.env)  # an unknown id or a discrete action space fails before anything is written
    algorithm = get_algorithm(cfg.algo)
    if algorithm.experimental:
        warnings.warn(
            f"algo {cfg.algo!r} is experimental: it has not met its promotion criterion yet "
            f"(see {algorithm.docs})",
            ExperimentalWarning,
            stacklevel=2,
        )
    run_dir = _prepare_run_dir(cfg, resume)
    ckpt_path = run_dir / CHECKPOINT
    device = _device(cfg.device)
    run = ControlRun(cfg, build(cfg, run_dir, device), device)
    metrics_offset = None
    eval_row: dict[str, float] = {}  # the latest evaluation (the summary reports it)
    if resume:
        saved = torch.load(ckpt_path, weights_only=False)
        run.load_state_dict(saved["run"])
        metrics_offset, eval_row = saved["metrics_offset"], saved["eval"]
    log = MetricsLog(
        run_dir / "metrics.jsonl",
        offset=metrics_offset,
        tensorboard_dir=run_dir / "tensorboard",
        start_step=run.step,
    )

    t0 = time.perf_counter()
    reporter = ProgressReporter(
        cfg.total_steps, enabled=cfg.progress, title=f"{cfg.algo} on {cfg.env}"
    )
    try:
        with StopOnSignal() as signals:
            run.should_stop = lambda: signals.requested
            reporter.start(run.step)
            while run.step < cfg.total_steps:
                prev = run.step
                run.collect()
                run.update_agent()
                if run.ask_feedback():
                    run.fit_reward()
                if _crossed(prev, run.step, cfg.eval_every) or run.step >= cfg.total_steps:
                    eval_row = {**run.evaluate(), "step": run.step}
                evaluated_now = eval_row.get("step") == run.step
                if _crossed(prev, run.step, cfg.log_every) or evaluated_now:
                    row = {
                        "feedback/queries": run.queries_used(),
                        "feedback/labels": run.labels_used(),
                    }
                    if run.recent_returns:
                        row["train/episode_return"] = float(np.mean(run.recent_returns))
                    row.update({k: float(v) for k, v in run.last_metrics.items()})
                    if evaluated_now:
                        row.update({k: v for k, v in eval_row.items() if k != "step"})
                    log.write(run.step, row)
                if run.step % 50 < run.runner.num_envs:  # refreshing every step costs time
                    reporter.update(run.step, eval_row.get("eval/true_return"), run.queries_used())
                stop = signals.requested or (stop_after is not None and run.step >= stop_after)
                done = run.step >= cfg.total_steps
                if _crossed(prev, run.step, cfg.checkpoint_every) or done or stop:
                    _save_checkpoint(run, ckpt_path, log.offset(), eval_row)
                if stop and not done:
                    reporter.stop()
                    return {"interrupted": True, "step": run.step}
        reporter.stop()
        summary = {
            "env": cfg.env,
            "algo": cfg.algo,
            "seed": cfg.seed,
            "env_steps": run.step,
            "queries_used": run.queries_used(),
            "labels_used": run.labels_used(),
            "eval/true_return": eval_row.get("eval/true_return"),
            "wall_time_s": round(time.perf_counter() - t0, 1),
        }
        if "eval/success_rate" in eval_row:
            summary["eval/success_rate"] = eval_row["eval/success_rate"]
    finally:
        reporter.stop()
        log.close()
        run.close()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_learning_curve(
        run_dir / "metrics.jsonl", run_dir / "learning_curve.png", title=f"{cfg.algo} on {cfg.env}"
    )
    return summary
