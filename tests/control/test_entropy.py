"""k-NN state-entropy reward on points whose k-th neighbour distance is known exactly."""

import math

import numpy as np
import pytest
import torch

from unialign.control.entropy import RunningMeanStd, StateEntropyReward

LINE = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0], [15.0], [21.0]])


def test_kth_neighbour_on_a_line():
    """Buffer {0, 1, 3, 6, 10, 15, 21}, k = 2.
    s = 0 is stored: its own copy is skipped; neighbours at 1, 3 → distance 3, r = log(1 + 3).
    s = 2 is not stored: distances 1 (to 1), 1 (to 3), 2, 4 → 2nd nearest is 1, r = log 2.
    s = 21: distances 6, 11, 15 → 11, r = log 12.
    """
    reward = StateEntropyReward(k=2, normalize=False)
    r = reward(torch.tensor([[0.0], [2.0], [21.0]]), LINE)
    assert r.tolist() == pytest.approx([math.log(4.0), math.log(2.0), math.log(12.0)], abs=1e-6)
    raw = StateEntropyReward(k=2, use_log=False, normalize=False)
    assert raw(torch.tensor([[0.0], [2.0], [21.0]]), LINE).tolist() == [3.0, 1.0, 11.0]


def test_kth_neighbour_in_the_plane():
    """From (0, 0): (3, 4) and (−5, 0) at 5, (6, 8) at 10, (0, 12) at 12; c = 0.5.
    k = 1 → 5, k = 2 → 5, k = 3 → 10, k = 4 → 12."""
    buffer = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [-5.0, 0.0], [0.0, 12.0]])
    origin = torch.zeros(1, 2)
    for k, d in [(1, 5.0), (2, 5.0), (3, 10.0), (4, 12.0)]:
        r = StateEntropyReward(k=k, c=0.5, normalize=False)(origin, buffer)
        assert r.item() == pytest.approx(math.log(0.5 + d), abs=1e-6)


def test_only_one_copy_of_the_state_itself_is_skipped():
    """A state stored twice: the second copy is a genuine neighbour at distance 0 → log(1 + 0)."""
    buffer = torch.tensor([[1.0, 1.0], [1.0, 1.0], [4.0, 5.0]])
    r = StateEntropyReward(k=1, normalize=False)(torch.tensor([[1.0, 1.0]]), buffer)
    assert r.item() == 0.0


def test_chunking_does_not_change_the_result():
    gen = torch.Generator().manual_seed(0)
    buffer = torch.randn(300, 4, generator=gen)
    obs = torch.cat([buffer[:50], torch.randn(30, 4, generator=gen)])
    whole = StateEntropyReward(k=5, normalize=False, chunk_size=1024)(obs, buffer)
    pieces = StateEntropyReward(k=5, normalize=False, chunk_size=7)(obs, buffer)
    assert torch.equal(whole, pieces)
    # against a brute-force reference: sort all distances, drop the query's own copy
    d = ((obs[:, None, :] - buffer[None]) ** 2).sum(-1).sqrt().double()
    sorted_d = d.sort(dim=1).values
    own = torch.arange(80) < 50
    expected = torch.where(own, sorted_d[:, 5], sorted_d[:, 4])
    assert torch.allclose(whole.double(), torch.log1p(expected), atol=1e-5)


def test_large_buffers_are_subsampled_to_max_reference(monkeypatch):
    seen = []
    reward = StateEntropyReward(k=2, normalize=False, max_reference=20, seed=3)
    original = reward.knn_distance
    monkeypatch.setattr(reward, "knn_distance", lambda o, ref: seen.append(ref) or original(o, ref))
    buffer = np.arange(100, dtype=np.float32).reshape(100, 1)  # numpy buffers are accepted
    r = reward(torch.tensor([[1000.0]]), buffer)
    ref = seen[0]
    assert ref.shape == (20, 1) and len(set(ref.flatten().tolist())) == 20
    assert set(ref.flatten().tolist()) <= set(range(100))
    top2 = sorted(ref.flatten().tolist())[-2]
    assert r.item() == pytest.approx(math.log(1.0 + 1000.0 - top2), abs=1e-5)
    reward(torch.tensor([[1000.0]]), buffer)
    assert not torch.equal(seen[0], seen[1])  # a fresh subsample per call


def test_normalization_divides_by_the_running_std():
    """After batches b₁, b₂ the running std is the population std of b₁ ∪ b₂; each call
    divides its raw rewards by the std including its own batch (PEBBLE's order)."""
    gen = torch.Generator().manual_seed(1)
    buffer = torch.randn(200, 3, generator=gen)
    b1, b2 = torch.randn(16, 3, generator=gen), torch.randn(24, 3, generator=gen)
    raw = StateEntropyReward(k=3, normalize=False)
    raw1, raw2 = raw(b1, buffer), raw(b2, buffer)
    norm = StateEntropyReward(k=3, normalize=True)
    out1, out2 = norm(b1, buffer), norm(b2, buffer)
    std1 = np.std(raw1.numpy().astype(np.float64))
    std12 = np.std(np.concatenate([raw1.numpy(), raw2.numpy()]).astype(np.float64))
    assert torch.allclose(out1, raw1 / std1, atol=1e-6)
    assert torch.allclose(out2, raw2 / std12, atol=1e-6)
    assert norm.stats.std == pytest.approx(std12, rel=1e-9)


def test_running_mean_std_matches_numpy():
    rms = RunningMeanStd()
    chunks = [torch.arange(5.0), torch.tensor([10.0]), torch.linspace(-3, 3, 7)]
    for c in chunks:
        rms.update(c)
    everything = torch.cat(chunks).double().numpy()
    assert rms.mean == pytest.approx(everything.mean()) and rms.var == pytest.approx(
        everything.var()
    )
    assert rms.count == 13
    other = RunningMeanStd()
    other.load_state_dict(rms.state_dict())
    assert other.std == rms.std


def test_bad_arguments():
    with pytest.raises(ValueError, match="k \\+ 1"):
        StateEntropyReward(k=3, normalize=False)(torch.zeros(1, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="c must be > 0"):
        StateEntropyReward(c=0.0)
    with pytest.raises(ValueError, match="max_reference"):
        StateEntropyReward(k=5, max_reference=5)
