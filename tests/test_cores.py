"""The process's cores: parts of compiled loops on threads, and the settings of a fusing process."""
from __future__ import annotations

import os

import numba
import numpy as np
import torch
from threadpoolctl import threadpool_info

from ov3d_ros import cores


@numba.njit(nogil=True)
def _sum_part(values, part, parts):
    n = len(values)
    total = 0.0
    for i in range(part * n // parts, (part + 1) * n // parts):
        total += values[i]
    return total


def test_in_parts_runs_every_part_once_and_returns_them_in_order():
    values = np.arange(1000, dtype=np.float64)
    for parts in (1, 2, 3, 5):
        sums = cores.in_parts(_sum_part, parts, values)
        assert len(sums) == parts
        bounds = [p * 1000 // parts for p in range(parts + 1)]
        assert sums == [float(values[bounds[p]:bounds[p + 1]].sum()) for p in range(parts)]
    assert cores.in_parts(_sum_part, 0, values) == [float(values.sum())]  # default_threads() is 1 here


def test_cores_for_fusion_gives_the_loops_the_cores_and_is_undone_on_the_way_out():
    torch_threads = torch.get_num_threads()
    blas = lambda: [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]  # noqa: E731
    blas_threads = blas()
    assert cores.default_threads() == 1
    with cores.cores_for_fusion():
        assert cores.default_threads() == min(4, len(os.sched_getaffinity(0)))
        assert torch.get_num_threads() == 1 and set(blas()) <= {1}
    assert cores.default_threads() == 1
    assert torch.get_num_threads() == torch_threads and blas() == blas_threads
