"""One readable loop for preference-based RL on control tasks: oracle, PEBBLE and A-PARL.

Phases, in the order they run at each environment step::

    collect      act (random at first), step the environments, store transitions
    pretrain     PEBBLE's unsupervised phase: SAC on a k-NN state-entropy reward
    feedback     when the query schedule is due: sample segment pairs, select queries,
                 let the teacher label them, store both in SQLite
    fit_reward   train the reward ensemble on every label (Bradley–Terry); for A-PARL, follow
                 with hypergradient-corrected updates; then relabel the whole replay buffer
    update       SAC gradient updates on the buffer's (relabelled) rewards
    evaluate     deterministic episodes scored by the true reward

Every component is built here and called through its own small API; the config object stays
in this file (components take plain arguments).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from unialign.config import dump_config
from unialign.control.buffer import ReplayBuffer
from unialign.control.config import ControlConfig
from unialign.control.entropy import StateEntropyReward
from unialign.control.envs import env_dims
from unialign.control.query import QuerySchedule, select_queries
from unialign.control.reward_model import RewardEnsemble
from unialign.control.runner import EpisodeRunner
from unialign.control.sac import SAC, SACConfig, evaluate
from unialign.control.types import SegmentBatch
from unialign.feedback.store import FeedbackStore
from unialign.feedback.teachers import Teacher, TeacherConfig, mean_segment_return
from unialign.runlog import MetricsLog

CHECKPOINT = "checkpoint.pt"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was requested but torch sees no CUDA device; use device: cpu"
        )
    return torch.device(name)


def _take(seg: SegmentBatch, idx: np.ndarray) -> SegmentBatch:
    """The segments at positions ``idx`` (a CPU index works for tensors on any device)."""
    i = torch.as_tensor(idx, dtype=torch.long)
    return SegmentBatch(seg.obs[i], seg.actions[i], seg.true_rewards[i], seg.indices[i])


class ControlRun:
    """The components of one run and the phases that call them."""

    def __init__(self, cfg: ControlConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = _device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        obs_dim, act_dim, self.episode_steps = env_dims(cfg.env)
        self.runner = EpisodeRunner(cfg.env, cfg.num_envs, cfg.seed)
        self.buffer = ReplayBuffer(
            min(cfg.buffer_size, cfg.total_steps), obs_dim, act_dim, seed=cfg.seed
        )
        sac_cfg = SACConfig(
            hidden=tuple(cfg.hidden),
            lr=cfg.lr,
            gamma=cfg.gamma,
            tau=cfg.tau,
            batch_size=cfg.batch_size,
            init_alpha=cfg.init_alpha,
        )
        self.agent = SAC(obs_dim, act_dim, sac_cfg, device=self.device, seed=cfg.seed)
        self.learns_reward = cfg.algo != "oracle"
        if self.learns_reward:
            self.reward_model = RewardEnsemble(
                obs_dim,
                act_dim,
                ensemble_size=cfg.reward_ensemble,
                hidden=tuple(cfg.reward_hidden),
                lr=cfg.reward_lr,
                seed=cfg.seed,
            ).to(self.device)
            self.entropy_reward = StateEntropyReward(k=5)
            self.teacher = Teacher(
                TeacherConfig(
                    kind=cfg.teacher,
                    beta=cfg.teacher_beta,
                    gamma=cfg.teacher_gamma,
                    eps_mistake=cfg.teacher_eps_mistake,
                    eps_skip=cfg.teacher_eps_skip,
                    eps_equal=cfg.teacher_eps_equal,
                )
            )
            self.schedule = QuerySchedule(
                budget=cfg.max_queries,
                per_round=cfg.queries_per_round,
                interval=cfg.feedback_interval,
                start=cfg.random_steps + cfg.unsup_steps,
            )
            self.store = FeedbackStore(run_dir / "feedback.sqlite")
            # SAC must never see the true reward: from the first step, stored transitions are
            # labelled by the (still untrained) reward model, and relabelled after each fit
            self.buffer.relabel(self.reward_model.numpy_reward, absorbing_gamma=cfg.gamma)
        else:
            self.buffer.use_true_rewards()
        self.step = 0
        self.update_credit = 0.0
        self.recent_returns: list[float] = []
        self.last_metrics: dict[str, float] = {}
        self.aparl_diag: dict[str, float] = {}

    # ---------------------------------------------------------------- phases
    def collect(self) -> list[tuple[int, float, int, float | None]]:
        cfg = self.cfg
        if self.step < cfg.random_steps:
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
        return res.finished

    def in_pretraining(self) -> bool:
        cfg = self.cfg
        return self.learns_reward and self.step <= cfg.random_steps + cfg.unsup_steps

    def update(self) -> None:
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
                batch = replace(
                    batch, rewards=self.entropy_reward(batch.next_obs, self.buffer.observations())
                )
            self.last_metrics = self.agent.update(batch)

    def feedback(self) -> int:
        """Ask the teacher for the queries due now; returns how many were asked."""
        cfg = self.cfg
        n = self.schedule.due(self.step)
        if n == 0:
            return 0
        pool = n * cfg.pool_factor
        # segments may run past a termination, padded with the absorbing state (buffer docs)
        seg1 = self.buffer.sample_segments(pool, cfg.segment_length, absorbing=True)
        seg2 = self.buffer.sample_segments(pool, cfg.segment_length, absorbing=True)
        # B-Pref asks its first round uniformly: an untrained ensemble's disagreement is noise
        method = "uniform" if self.store.count_queries() == 0 else cfg.query_selection
        idx = select_queries(seg1, seg2, self.reward_model, n, method, self.rng)
        seg1, seg2 = _take(seg1, idx), _take(seg2, idx)
        self.teacher.update_mean_segment_return(self._mean_segment_return())
        labels, keep = self.teacher.label(seg1, seg2, self.rng)
        ids = self.store.add_queries(seg1, seg2, step=self.step, selection=method)
        self.store.add_labels(ids, labels, labeler=self.teacher.name, keep_mask=keep)
        self.schedule.consume(n)
        self.fit_reward()
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
        cfg = self.cfg
        seg1, seg2, labels = self.store.labelled_pairs()
        if len(labels) == 0:
            return
        seg1, seg2 = self._to_device(seg1), self._to_device(seg2)
        labels = labels.to(self.device)
        metrics = self.reward_model.train_epochs(
            seg1, seg2, labels, epochs=cfg.reward_epochs, batch_size=cfg.reward_batch, rng=self.rng
        )
        if cfg.algo == "aparl" and cfg.aparl_steps > 0:
            metrics.update(self.aparl_updates(seg1, seg2, labels))
        self.last_metrics.update(metrics)
        self.buffer.relabel(self.reward_model.numpy_reward, absorbing_gamma=cfg.gamma)

    def aparl_updates(
        self, seg1: SegmentBatch, seg2: SegmentBatch, labels: torch.Tensor
    ) -> dict[str, float]:
        """A-PARL: reward updates along the BT gradient plus the implicit term (docs/aparl.md)."""
        from unialign.control.aparl import aparl_reward_gradient

        cfg = self.cfg
        params = [p for p in self.reward_model.parameters() if p.requires_grad]
        opt = self.reward_model.optimizer
        diag: dict[str, float] = {}
        for _ in range(cfg.aparl_steps):
            take = self.rng.choice(
                len(labels), size=min(cfg.reward_batch, len(labels)), replace=False
            )
            t = torch.as_tensor(take, device=self.device)
            states = self.buffer.sample(cfg.aparl_states, self.device).obs
            grads, diag = aparl_reward_gradient(
                self.reward_model,
                self.agent.actor,
                _take(seg1, take),
                _take(seg2, take),
                labels[t],
                obs_for_lower=states,
                alpha=float(self.agent.alpha),
                cg_iters=cfg.aparl_cg_iters,
                damping=cfg.aparl_damping,
                correction_weight=cfg.aparl_weight,
            )
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.grad = g.detach()
            opt.step()
        self.aparl_diag = diag
        return diag

    def evaluate(self) -> dict[str, float]:
        return evaluate(
            self.agent, self.cfg.env, episodes=self.cfg.eval_episodes, seed=10_000 + self.cfg.seed
        )

    # ------------------------------------------------------------ helpers
    def _to_device(self, seg: SegmentBatch) -> SegmentBatch:
        d = self.device
        return SegmentBatch(seg.obs.to(d), seg.actions.to(d), seg.true_rewards.to(d), seg.indices)

    def queries_used(self) -> int:
        return self.store.count_queries() if self.learns_reward else 0

    def labels_used(self) -> int:
        return self.store.count_labels() if self.learns_reward else 0

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
        if self.learns_reward:
            state["reward_model"] = self.reward_model.state_dict()
            state["reward_optimizer"] = self.reward_model.optimizer.state_dict()
            state["entropy_reward"] = self.entropy_reward.state_dict()
            state["schedule"] = self.schedule.state_dict()
            state["teacher"] = self.teacher.state_dict()
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
        if self.learns_reward:
            self.reward_model.load_state_dict(state["reward_model"])
            self.reward_model.optimizer.load_state_dict(state["reward_optimizer"])
            self.entropy_reward.load_state_dict(state["entropy_reward"])
            # for rows added from now on (stored rows keep their saved training rewards)
            self.buffer.reward_fn = self.reward_model.numpy_reward
            self.buffer.absorbing_gamma = self.cfg.gamma
            self.schedule.load_state_dict(state["schedule"])
            self.teacher.load_state_dict(state["teacher"])
        self.last_metrics = dict(state["last_metrics"])

    def close(self) -> None:
        self.runner.close()
        if self.learns_reward:
            self.store.close()


def _crossed(prev: int, step: int, every: int) -> bool:
    """True when the step counter passed a multiple of ``every`` since ``prev``."""
    return step // every > prev // every


def _save_checkpoint(run: ControlRun, path: Path, metrics_offset: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"run": run.state_dict(), "metrics_offset": metrics_offset}, tmp)
    tmp.replace(path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def train_control(
    cfg: ControlConfig, *, resume: bool = False, stop_after: int | None = None
) -> dict:
    """Run one configuration; returns the summary written to ``summary.json``.

    ``stop_after`` (environment steps) checkpoints and returns early, as an interruption
    would (used by the resume test). SIGINT/SIGTERM also checkpoint before exiting.
    """
    from unialign.control.report import ProgressReporter, plot_learning_curve

    env_dims(cfg.env)  # an unknown id or a discrete action space fails before anything is written
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
        for stale in (
            "metrics.jsonl",
            "feedback.sqlite",
            "feedback.sqlite-wal",
            "feedback.sqlite-shm",
        ):
            (run_dir / stale).unlink(missing_ok=True)
    dump_config(cfg, run_dir / "config.yaml")

    run = ControlRun(cfg, run_dir)
    metrics_offset = None
    if resume:
        saved = torch.load(ckpt_path, weights_only=False)
        run.load_state_dict(saved["run"])
        metrics_offset = saved["metrics_offset"]
    log = MetricsLog(
        run_dir / "metrics.jsonl",
        offset=metrics_offset,
        tensorboard_dir=run_dir / "tensorboard",
        start_step=run.step,
    )

    interrupted = {"flag": False}

    def _on_signal(signum, frame):  # checkpoint at the next step boundary, then stop
        interrupted["flag"] = True

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    eval_row: dict[str, float] = {}
    reporter = ProgressReporter(
        cfg.total_steps, enabled=cfg.progress, title=f"{cfg.algo} on {cfg.env}"
    )
    try:
        reporter.start(run.step)
        while run.step < cfg.total_steps:
            prev = run.step
            run.collect()
            run.update()
            if run.learns_reward and not run.in_pretraining():
                run.feedback()
            if _crossed(prev, run.step, cfg.eval_every) or run.step >= cfg.total_steps:
                eval_row = run.evaluate()
                eval_row["step"] = run.step
            if (
                _crossed(prev, run.step, cfg.log_every)
                or "step" in eval_row
                and eval_row["step"] == run.step
            ):
                row = {
                    "feedback/queries": run.queries_used(),
                    "feedback/labels": run.labels_used(),
                }
                if run.recent_returns:
                    row["train/episode_return"] = float(np.mean(run.recent_returns))
                row.update({k: float(v) for k, v in run.last_metrics.items()})
                if eval_row.get("step") == run.step:
                    row.update({k: v for k, v in eval_row.items() if k != "step"})
                log.write(run.step, row)
            if run.step % 50 < run.runner.num_envs:  # refreshing the bar every step costs time
                reporter.update(run.step, eval_row.get("eval/true_return"), run.queries_used())
            stop = interrupted["flag"] or (stop_after is not None and run.step >= stop_after)
            if (
                _crossed(prev, run.step, cfg.checkpoint_every)
                or run.step >= cfg.total_steps
                or stop
            ):
                _save_checkpoint(run, ckpt_path, log.offset())
            if stop:
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
        for s, h in old_handlers.items():
            signal.signal(s, h)
        log.close()
        run.close()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_learning_curve(
        run_dir / "metrics.jsonl", run_dir / "learning_curve.png", title=f"{cfg.algo} on {cfg.env}"
    )
    return summary
