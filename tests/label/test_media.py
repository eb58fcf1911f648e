"""Segment pictures: Pendulum frames as a looping GIF, the plot fallback, the cache."""

import dataclasses

import pytest
import torch
from PIL import Image

from unialign.feedback.store import FeedbackStore
from unialign.label import media as media_module
from unialign.label.media import MediaCache, media_dir
from unialign.label.queries import StoreAccess

from .helpers import pendulum_segments

H = 5


def segment_query(tmp_path, source, *, absorbed=False):
    path = tmp_path / "seg.sqlite"
    s1, s2 = pendulum_segments(1, H, 1), pendulum_segments(1, H, 2)
    if absorbed:
        mask = torch.tensor([[False, False, False, True, True]])
        s1 = dataclasses.replace(s1, absorbed=mask)
    with FeedbackStore(path) as store:
        (qid,) = store.add_segment_queries(s1, s2, step=0, selection="uniform", source=source)
    access = StoreAccess(path)
    return path, access.segment(access.head(qid))


def test_pendulum_frames_are_a_looping_gif(tmp_path):
    pytest.importorskip("pygame", reason="pygame renders Pendulum frames (the envs extra)")
    path, query = segment_query(tmp_path, {"env": "Pendulum-v1"})
    cache = MediaCache(path)
    out = cache.picture(query, 1)
    assert out == media_dir(path) / "q1-1.gif"
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == H and im.info.get("loop") == 0
        assert max(im.size) == media_module.FRAME_SIZE
    assert cache.picture(query, 2).name == "q1-2.gif"


@pytest.mark.parametrize("source", [None, {"env": "NoSuchEnv-v0"}, {"seed": 3}])
def test_plot_without_a_renderable_env(tmp_path, source):
    path, query = segment_query(tmp_path, source, absorbed=True)
    out = MediaCache(path).picture(query, 1)
    assert out.name == "q1-1.png"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_render_failure_falls_back_to_the_plot_once(tmp_path, monkeypatch):
    path, query = segment_query(tmp_path, {"env": "Pendulum-v1"})
    calls = []

    def broken(env_id, q, c):
        calls.append(env_id)
        raise RuntimeError("no OpenGL here")

    monkeypatch.setattr(media_module, "_gif", broken)
    cache = MediaCache(path)
    assert cache.picture(query, 1).suffix == ".png"
    assert cache.picture(query, 2).suffix == ".png"
    assert calls == ["Pendulum-v1"]  # the env is not tried again in this process


def test_cache_and_hidden_reward(tmp_path, monkeypatch):
    path, query = segment_query(tmp_path, None)
    first = MediaCache(path).picture(query, 1)
    monkeypatch.setattr(media_module, "_plot", lambda *a: pytest.fail("drawn twice"))
    assert MediaCache(path).picture(query, 1) == first  # from the cache, by a new process too
    monkeypatch.undo()
    hidden = MediaCache(path, show_reward=False).picture(query, 1)
    assert hidden.name == "q1-1-noreward.png" and hidden.read_bytes() != first.read_bytes()
    with pytest.raises(ValueError, match="candidate must be 1 or 2"):
        MediaCache(path).picture(query, 3)


MUJOCO_SCRIPT = """
import sys, torch
from pathlib import Path
from unialign.feedback.store import FeedbackStore
from unialign.feedback.types import SegmentBatch
from unialign.label.media import MediaCache
from unialign.label.queries import StoreAccess

path = Path(sys.argv[1])
g = torch.Generator().manual_seed(0)
def seg():  # InvertedPendulum-v5: obs = qpos (2) ‖ qvel (2), one action
    obs = torch.cat([torch.zeros(1, 4, 1), torch.rand(1, 4, 1, generator=g) * 0.4 - 0.2,
                     torch.zeros(1, 4, 2)], -1)
    return SegmentBatch(obs, torch.zeros(1, 4, 1), torch.ones(1, 4), torch.zeros(1, dtype=torch.long))
with FeedbackStore(path) as store:
    (qid,) = store.add_segment_queries(seg(), seg(), step=0, selection="uniform",
                                       source={"env": "InvertedPendulum-v5"})
access = StoreAccess(path)
print(MediaCache(path).picture(access.segment(access.head(qid)), 1))
"""


def test_mujoco_segments_render_offscreen_with_osmesa(tmp_path):
    """MuJoCo frames without a display or GPU (OSMesa, installed by the set-up): a fresh process,
    since the GL backend is chosen when mujoco and OpenGL are first imported — and without the
    GL settings earlier tests of this process may have left (a dm_control env sets
    ``MUJOCO_GL=disable``), as the labelling app's own process has none."""
    import ctypes.util
    import os
    import subprocess
    import sys

    if ctypes.util.find_library("OSMesa") is None:
        pytest.skip("libOSMesa is missing (the set-up installs Debian's libosmesa6 as root)")
    pytest.importorskip("mujoco")
    out = subprocess.run(
        [sys.executable, "-c", MUJOCO_SCRIPT, str(tmp_path / "m.sqlite")],
        capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    picture = out.stdout.strip().splitlines()[-1]
    assert picture.endswith("q1-1.gif"), (picture, out.stderr[-2000:])
    with Image.open(picture) as im:
        assert im.format == "GIF" and im.n_frames == 4
