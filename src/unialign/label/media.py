"""Pictures of control segments for the labelling app, cached next to the store.

Each candidate of a segment query gets one picture, so the page can put them in whatever
left/right order it shows (both pictures of a query share axis limits):

1. **Frames** (a looping GIF) when the query's ``source`` JSON names an env id (``env`` or
   ``env_id``) whose state can be set from a stored observation: ``Pendulum-v1`` (the angle
   from (cos θ, sin θ), the velocity, the action drawn as the torque arrow) and MuJoCo envs
   whose observation is exactly ``qpos ‖ qvel`` (e.g. ``InvertedPendulum-v5``). The env renders
   offscreen with ``render_mode="rgb_array"``.
2. **Plot** (a PNG) otherwise, and whenever rendering fails (no pygame, no OpenGL, an env id
   that is not installed): observation dimensions, actions and the true reward over time, with
   absorbed steps (padding after a termination) shaded. ``show_reward=False`` leaves the
   reward out, for studies where annotators must not see it.

Files: ``<store>.media/q<id>-<candidate>.gif`` or ``.png`` (``-noreward.png`` for the plot
without reward), written under a temporary name and renamed, so a reader never sees half a
file. Delete the folder to redraw.
"""

from __future__ import annotations

import io
import math
import os
import threading
from pathlib import Path

import numpy as np

from unialign.label.queries import SegmentQuery

__all__ = ["MediaCache", "NotRenderable", "media_dir"]

_RENDER_LOCK = threading.Lock()  # gymnasium/pygame/matplotlib rendering is not thread-safe
FRAME_SIZE = 240
MAX_PLOT_DIMS = 8


class NotRenderable(RuntimeError):
    """This env cannot be put in a stored state (or cannot render here)."""


def media_dir(store_path: str | Path) -> Path:
    p = Path(store_path)
    return p.with_name(p.name + ".media")


def _env_id(source: dict) -> str | None:
    env = source.get("env", source.get("env_id"))
    return env if isinstance(env, str) and env else None


class MediaCache:
    """Draws and caches one picture per (query, candidate)."""

    def __init__(self, store_path: str | Path, *, show_reward: bool = True) -> None:
        self.dir = media_dir(store_path)
        self.show_reward = show_reward
        self._no_frames: set[str] = set()  # env ids that failed to render once: plot them

    def cached(self, query_id: int, candidate: int) -> Path | None:
        for name in self._names(query_id, candidate):
            path = self.dir / name
            if path.exists():
                return path
        return None

    def _names(self, query_id: int, candidate: int) -> list[str]:
        stem = f"q{query_id}-{candidate}"
        return [f"{stem}.gif", f"{stem}.png" if self.show_reward else f"{stem}-noreward.png"]

    def picture(self, query: SegmentQuery, candidate: int) -> Path:
        """The cached picture of ``candidate`` (1 or 2), drawn first if needed."""
        if candidate not in (1, 2):
            raise ValueError(f"candidate must be 1 or 2, got {candidate!r}")
        found = self.cached(query.head.id, candidate)
        if found is not None:
            return found
        with _RENDER_LOCK:
            found = self.cached(query.head.id, candidate)  # drawn meanwhile by another thread
            if found is not None:
                return found
            self.dir.mkdir(parents=True, exist_ok=True)
            gif, png = self._names(query.head.id, candidate)
            env_id = _env_id(query.head.source)
            if env_id is not None and env_id not in self._no_frames:
                try:
                    data = _gif(env_id, query, candidate)
                    return _write(self.dir / gif, data)
                except Exception:  # any failure to render falls back to the plot
                    self._no_frames.add(env_id)
            return _write(self.dir / png, _plot(query, candidate, self.show_reward))


def _write(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


# -- frames ------------------------------------------------------------------------------------


def _set_pendulum(env, obs: np.ndarray, action: np.ndarray) -> None:
    if obs.shape[-1] != 3:
        raise NotRenderable(f"Pendulum observations have 3 values, got {obs.shape[-1]}")
    u = env.unwrapped
    if getattr(u, "screen", None) is None:  # draw at the GIF's size: 4× fewer pixels than 500²
        u.screen_dim = FRAME_SIZE
    u.state = np.array([math.atan2(float(obs[1]), float(obs[0])), float(obs[2])])
    u.last_u = float(np.clip(action[0], -u.max_torque, u.max_torque)) if action.size else None


def _set_mujoco(env, obs: np.ndarray, action: np.ndarray) -> None:
    u = env.unwrapped
    model = getattr(u, "model", None)
    if model is None or not hasattr(u, "set_state"):
        raise NotRenderable("not a MuJoCo env")
    nq, nv = int(model.nq), int(model.nv)
    if obs.shape[-1] != nq + nv:
        raise NotRenderable(
            f"the observation ({obs.shape[-1]} values) is not qpos ‖ qvel ({nq} + {nv})"
        )
    u.set_state(obs[:nq].astype(np.float64), obs[nq:].astype(np.float64))


_SETTERS = {"Pendulum-v1": _set_pendulum}


def _gif(env_id: str, query: SegmentQuery, candidate: int) -> bytes:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame offscreen, no display needed
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    # MuJoCo offscreen without a display or GPU: OSMesa (Debian's libosmesa6, installed by the
    # set-up); read when mujoco is first imported, so an explicit MUJOCO_GL wins
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    import gymnasium as gym
    from PIL import Image

    env = gym.make(env_id, render_mode="rgb_array")
    try:
        env.reset(seed=0)
        setter = _SETTERS.get(env_id, _set_mujoco)
        obs, actions = query.obs[candidate - 1], query.actions[candidate - 1]
        absorbed = query.absorbed[candidate - 1]
        frames = []
        for t in range(obs.shape[0]):
            setter(env, obs[t], actions[t] if not absorbed[t] else np.zeros(0))
            frame = env.render()
            if not isinstance(frame, np.ndarray) or frame.ndim != 3:
                raise NotRenderable(f"{env_id} rendered no rgb_array frame")
            img = Image.fromarray(np.ascontiguousarray(frame[..., :3]).astype(np.uint8))
            img.thumbnail((FRAME_SIZE, FRAME_SIZE))
            if absorbed[t]:  # after a termination: dim the frame
                img = Image.blend(img, Image.new("RGB", img.size, (128, 128, 128)), 0.5)
            frames.append(img.convert("P", palette=Image.Palette.ADAPTIVE))
        fps = float(env.metadata.get("render_fps") or 20)
    finally:
        env.close()
    buf = io.BytesIO()
    frames[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=max(20, int(1000 / fps)),
        loop=0,
    )
    return buf.getvalue()


# -- plot --------------------------------------------------------------------------------------


def _limits(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def _plot(query: SegmentQuery, candidate: int, show_reward: bool) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    i = candidate - 1
    horizon = query.obs.shape[1]
    t = np.arange(horizon)
    rows = [("observation", query.obs[..., :MAX_PLOT_DIMS]), ("action", query.actions)]
    if show_reward:
        rows.append(("true reward", query.rewards[..., None]))
    fig = Figure(figsize=(4.2, 1.35 * len(rows) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    absorbed = np.flatnonzero(query.absorbed[i])
    for ax, (name, values) in zip(axes, rows):
        for d in range(values.shape[-1]):
            ax.plot(t, values[i, :, d], lw=1.4, label=f"{d}")
        ax.set_ylim(*_limits(values))  # shared by both candidates: comparable pictures
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if absorbed.size:
            ax.axvspan(absorbed[0] - 0.5, horizon - 0.5, color="0.8", alpha=0.6, lw=0)
        if values.shape[-1] > 1:
            ax.legend(fontsize=6, ncol=min(values.shape[-1], 8), loc="upper right", frameon=False)
    if show_reward:
        axes[-1].set_title(
            f"return {float(query.rewards[i].astype(np.float64).sum()):.3g}", fontsize=8
        )
    if query.obs.shape[-1] > MAX_PLOT_DIMS:
        axes[0].set_title(f"first {MAX_PLOT_DIMS} of {query.obs.shape[-1]} dims", fontsize=8)
    axes[-1].set_xlabel("step", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
