"""Tolerances for comparing two float32 computations that differ only in reduction order.

Used where the same quantity is computed with different batch shapes, micro-batch splits,
packings or process counts (``test_accumulation.py``, ``test_ddp.py``); the argument is in
``test_accumulation.py``'s docstring. Runs whose arithmetic is identical are compared exactly
instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_pre_hook

#: float32 unit roundoff: one rounding changes a value by at most this relative amount.
U = 2.0**-24


@contextlib.contextmanager
def gradients_before_each_step() -> Iterator[list[list[Tensor]]]:
    """Record, before every optimizer step in this process, a copy of the gradients it is
    about to apply (in the optimizer's parameter order): ``steps[s][k]`` is parameter k's
    gradient at step s + 1."""
    steps: list[list[Tensor]] = []

    def hook(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        steps.append([p.grad.detach().clone() for p in params])

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield steps
    finally:
        handle.remove()


def sum_tolerance(want: Tensor, n_terms: float) -> float:
    """``n·u·max|want|``: how far reordering the n-term fp32 sums of a tensor may move its
    entries, taking the tensor's largest entry as the size of the terms' magnitudes."""
    return n_terms * U * float(want.abs().max())


def assert_gradients_close(got: list[Tensor], want: list[Tensor], n_terms: float, what: str):
    """Per tensor: ``|got − want| ≤ sum_tolerance(want, n_terms)``; returns the tolerances."""
    assert len(got) == len(want), what
    tols = []
    for k, (g, w) in enumerate(zip(got, want)):
        tol = sum_tolerance(w, n_terms)
        err = float((g - w).abs().max())
        assert err <= tol, (
            f"{what}: parameter #{k} {tuple(w.shape)} differs by {err:.3g} > {tol:.3g}"
        )
        tols.append(tol)
    return tols


def sgd_parameter_tolerance(grad_tols: list[float], lrs: list[float], param: Tensor) -> float:
    """How far a parameter tensor of two plain-SGD runs from the same start may end apart when
    their step-s gradients agree to ``grad_tols[s]``: ``Σ_s lr_s·tol_s`` (the update is linear
    in the gradient) plus one rounding of ``θ − lr·g`` per step in each run
    (``2·steps·u·max|θ|``)."""
    drift = sum(lr * tol for lr, tol in zip(lrs, grad_tols, strict=True))
    return drift + 2 * len(lrs) * U * float(param.abs().max())
