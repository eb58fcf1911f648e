"""SAC gradient updates per second: Stable-Baselines3 vs unialign, same run, same machine.

Both agents get the same Pendulum-v1 replay data (SB3 collects ``--prefill`` uniformly random
steps; the same transitions are copied into unialign's buffer), identical networks (actor and
two critics, ``--hidden`` × 2 ReLU layers), batch ``--batch``, the same hyperparameters (Adam
3e-4, τ = 0.005, γ = 0.99, automatic entropy tuning from α = 1) and the same torch thread
count. Each timed block is ``--updates`` gradient updates *including replay sampling*
(SB3: ``model.train(gradient_steps=N, batch_size=B)``; unialign: ``agent.update(buffer.sample(B))``
N times), after an untimed warm-up; the blocks of the two libraries alternate, ``--repeats``
times, and the medians are compared.

For reference the script also times the matrix multiplications that any SAC update with these
sizes performs (the 256-wide hidden layers' forward and backward products), a floor that no
implementation on this CPU can beat.

    python benchmarks/sac_throughput.py --updates 300 --repeats 5 --threads 1 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sb3_model(hidden: int, batch: int, prefill: int):
    import gymnasium as gym
    from stable_baselines3 import SAC as SB3SAC

    env = gym.make("Pendulum-v1")
    model = SB3SAC(
        "MlpPolicy",
        env,
        learning_rate=3e-4,
        buffer_size=max(prefill, 10_000),
        learning_starts=prefill,  # random actions while filling
        batch_size=batch,
        tau=0.005,
        gamma=0.99,
        gradient_steps=0,  # no training during collection
        ent_coef="auto",
        policy_kwargs={"net_arch": [hidden, hidden]},
        device="cpu",
        seed=0,
        verbose=0,
    )
    model.learn(prefill)
    return model


def _our_agent(model, hidden: int, batch: int):
    from unialign.control.buffer import ReplayBuffer
    from unialign.control.sac import SAC, SACConfig

    rb = model.replay_buffer
    n = rb.buffer_size if rb.full else rb.pos
    obs_dim = int(np.prod(rb.observations.shape[2:]))
    act_dim = int(np.prod(rb.actions.shape[2:]))
    buf = ReplayBuffer(n, obs_dim, act_dim, seed=0)
    for i in range(n):  # SB3 stores actions already scaled to [-1, 1], like ours
        buf.add(
            rb.observations[i].reshape(1, -1),
            rb.actions[i].reshape(1, -1),
            rb.rewards[i],
            rb.next_observations[i].reshape(1, -1),
            rb.dones[i].astype(bool) & ~rb.timeouts[i].astype(bool),
            rb.timeouts[i],
        )
    cfg = SACConfig(hidden=(hidden, hidden), batch_size=batch, lr=3e-4, init_alpha=1.0)
    agent = SAC(obs_dim, act_dim, cfg, seed=0)
    return agent, buf


def _matmul_floor(hidden: int, batch: int, n: int) -> float:
    """Updates/s if an update were only its hidden×hidden matrix products (16 of size
    batch×hidden×hidden: actor 4, twin critics 2×6)."""
    x = torch.randn(2, batch, hidden)
    w = torch.randn(2, hidden, hidden)
    a, v = x[0].contiguous(), w[0].contiguous()

    def products():
        for _ in range(6):  # twin critics: target fwd, fwd, 2 bwd, actor-loss fwd + bwd
            torch.bmm(x, w)
        for _ in range(4):  # actor: next-state fwd, fwd, 2 bwd
            a @ v

    for _ in range(5):
        products()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            products()
        best = min(best, (time.perf_counter() - t) / n)
    return 1.0 / best


def run(threads: int, args) -> dict:
    torch.set_num_threads(threads)
    model = _sb3_model(args.hidden, args.batch, args.prefill)
    agent, buf = _our_agent(model, args.hidden, args.batch)
    n, b = args.updates, args.batch

    def sb3_block():
        model.train(gradient_steps=n, batch_size=b)

    def ours_block():
        for _ in range(n):
            agent.update(buf.sample(b))

    model.train(gradient_steps=20, batch_size=b)  # warm-up, not timed
    for _ in range(20):
        agent.update(buf.sample(b))
    wall = {"sb3": [], "unialign": []}
    cpu = {"sb3": [], "unialign": []}
    blocks = [("sb3", sb3_block), ("unialign", ours_block)]
    for r in range(args.repeats):
        for name, block in blocks if r % 2 == 0 else blocks[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            block()
            wall[name].append(n / (time.perf_counter() - t0))
            cpu[name].append(n / (time.process_time() - c0))
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    floor = _matmul_floor(args.hidden, args.batch, 20)
    return {
        "threads": threads,
        "sb3_updates_per_s": round(med["sb3"], 2),
        "unialign_updates_per_s": round(med["unialign"], 2),
        "ratio": round(med["unialign"] / med["sb3"], 3),
        "cpu_time_ratio": round(med_cpu["unialign"] / med_cpu["sb3"], 3),
        "matmul_floor_updates_per_s": round(floor, 2),
        "max_ratio_at_matmul_floor": round(floor / med["sb3"], 3),
        "per_repeat_wall_updates_per_s": {k: [round(x, 2) for x in v] for k, v in wall.items()},
        "per_repeat_cpu_time_updates_per_s": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=300, help="gradient updates per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per library")
    p.add_argument("--hidden", type=int, default=256, help="width of the two hidden layers")
    p.add_argument("--batch", type=int, default=256, help="minibatch size")
    p.add_argument("--prefill", type=int, default=5000, help="random env steps in the buffer")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts")
    p.add_argument("--out", default="benchmarks/results/sac_throughput.json")
    args = p.parse_args(argv)

    import stable_baselines3

    results = []
    for t in args.threads:
        res = run(t, args)
        print(
            f"threads={t}: SB3 {res['sb3_updates_per_s']:.1f} updates/s, unialign "
            f"{res['unialign_updates_per_s']:.1f} updates/s, ratio {res['ratio']:.2f} "
            f"(matmul floor {res['matmul_floor_updates_per_s']:.1f} updates/s)",
            flush=True,
        )
        results.append(res)
    out = {
        "benchmark": "SAC gradient updates per second (replay sampling included), Pendulum-v1",
        "command": "python "
        + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "hidden": [args.hidden, args.hidden],
        "batch": args.batch,
        "updates_per_block": args.updates,
        "repeats": args.repeats,
        "prefill": args.prefill,
        "note": (
            "Blocks of the two libraries alternate within one process; medians over repeats. "
            "The machine's cores are shared with other jobs, so absolute rates vary between "
            "runs; the ratio is the figure to read. 'ratio' uses wall-clock medians, "
            "'cpu_time_ratio' process CPU time. 'matmul_floor_updates_per_s' times only the "
            "hidden×hidden matrix products every SAC update needs."
        ),
        "results": results,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
