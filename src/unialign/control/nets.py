"""Small networks for the control engine: a plain MLP and a *fused ensemble* MLP.

`EnsembleMLP` keeps the weights of ``n`` independent MLPs stacked in one tensor per layer
(``[n, in, out]``) and evaluates all members with one batched matmul (``torch.baddbmm``) per
layer. SAC's twin critics are an ensemble of 2; a reward-model ensemble can be one too. One
kernel per layer instead of ``n``, and ``n`` times fewer parameter tensors for Adam and the
Polyak update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """``Linear → ReLU → … → Linear`` with PyTorch's default (``nn.Linear``) initialization."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class EnsembleMLP(nn.Module):
    """``n`` independent ReLU MLPs ``in_dim → hidden… → out_dim`` evaluated in one pass.

    Each member is initialized exactly like an ``nn.Linear`` stack (weights and biases
    ``U(−1/√fan_in, 1/√fan_in)``), independently per member.

    ``forward(x)`` accepts ``x`` of shape ``[B, in_dim]`` (the same input for every member) or
    ``[n, B, in_dim]`` (one input per member) and returns ``[n, B, out_dim]``.
    ``detach_params=True`` evaluates the members with detached weights: gradients flow to the
    input but no weight gradients are computed (SAC's actor loss differentiates through the
    critic only with respect to the action).
    """

    def __init__(self, n: int, in_dim: int, out_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.n = n
        dims = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            self.weights.append(nn.Parameter(torch.empty(n, d_in, d_out)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, d_out)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(w.shape[1])  # nn.Linear's default for both W and b
            w.uniform_(-bound, bound)
            b.uniform_(-bound, bound)

    def forward(self, x: Tensor, *, detach_params: bool = False) -> Tensor:
        last = len(self.weights) - 1
        if x.dim() == 2:  # shared input: broadcast over members (the first layer is small)
            x = x.unsqueeze(0).expand(self.n, *x.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if detach_params:
                w, b = w.detach(), b.detach()
            if i < last:
                # baddbmm's backward does not need its output, so ReLU may overwrite it
                x = F.relu(torch.baddbmm(b, x, w), inplace=True)
            elif w.shape[-1] == 1:
                # one output: a batched matmul with a single column (and its outer-product
                # backward) is ~3x slower on CPU than a broadcast multiply and a sum
                x = (x * w.transpose(1, 2)).sum(-1, keepdim=True) + b
            else:
                x = torch.baddbmm(b, x, w)
        return x
