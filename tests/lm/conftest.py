"""LM tests run with ``OMP_NUM_THREADS`` torch threads when it is set.

The root conftest pins torch to one thread (reproducible, and fair on a 2-core CI machine).
Here an explicit ``OMP_NUM_THREADS`` wins, for the duration of each LM test, so that
``OMP_NUM_THREADS=2 pytest tests/lm`` checks that no comparison of two different computations
(packed vs padded, 8 × 1 vs 1 × 8, 2 processes vs 1, unialign vs TRL) depends on the thread
count: CPU kernels split their reductions by thread, which changes the rounding.
"""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads_from_env():
    n = os.environ.get("OMP_NUM_THREADS", "")
    if not n.isdigit() or int(n) < 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    yield
    torch.set_num_threads(before)
