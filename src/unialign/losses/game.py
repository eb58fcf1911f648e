"""Placeholder module being written; see docs."""

from unialign.losses._core import LossSpec

SPECS: list[LossSpec] = []
