"""The cores of this process: compiled loops run in parts on threads at once (``in_parts``), and a fusing process
gives its cores to them (``cores_for_fusion``).

The loops (``voxel_kernels``, ``pixel_kernels``) are numba functions that release the GIL: ``in_parts`` runs part 0 on
the calling thread and the others on a small pool of this module (one per process id, so a forked child makes its
own). How many parts run when the caller does not say is ``default_threads()``.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from threadpoolctl import threadpool_limits

__all__ = ["default_threads", "cores_for_fusion", "in_parts"]

_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, workers, pool): a forked child makes its own
_cores_for_fusion = False  # inside cores_for_fusion()


def _workers(n: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < n:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)  # its threads end once their parts are done
            _pool = (os.getpid(), n, ThreadPoolExecutor(n, thread_name_prefix="ov3d_cores"))
        return _pool[2]


def default_threads() -> int:
    """How many parts run at once when none is set: one, except within ``cores_for_fusion``, where it is the cores
    the process may run on, at most 4 (the loops are bound by memory: more gain little). Elsewhere (training
    workers, tests) processes share the cores: parts waiting on each other there would wait on descheduled
    threads."""
    if not _cores_for_fusion:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


@contextlib.contextmanager
def cores_for_fusion():
    """Within it, this process is a fusing one (fusion_node, ov3d-run, ov3d-fuse): the compiled loops run on the cores
    (``default_threads``), and torch's and BLAS's own operations on one thread, since their idle threads spin for a
    while after each operation, on the very cores the loops' parts need. The settings before it come back after."""
    global _cores_for_fusion
    torch_threads, before = torch.get_num_threads(), _cores_for_fusion
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            _cores_for_fusion = True
            yield
    finally:
        _cores_for_fusion = before
        torch.set_num_threads(torch_threads)


def in_parts(kernel, parts: int, *args) -> list:
    """``kernel(*args, part, parts)`` for part = 0 .. parts-1 (0 parts: ``default_threads()``), at once (the kernels
    release the GIL): part 0 on this thread, the others on the pool. Their results, in part order."""
    parts = parts or default_threads()
    if parts <= 1:
        return [kernel(*args, 0, 1)]
    pool = _workers(parts - 1)
    futures = [pool.submit(kernel, *args, part, parts) for part in range(1, parts)]
    first = kernel(*args, 0, parts)
    return [first] + [future.result() for future in futures]
