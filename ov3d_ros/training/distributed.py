"""Data-parallel training over several processes: CPU cores (gloo) or GPUs (NCCL), torchrun-compatible.

Every process ("worker") runs the same program on its own data. torch's DistributedDataParallel averages the
gradients during each backward pass (``wrap``), and the batch-norm statistics are averaged after each step
(``sync_step``), so every worker holds the same model and optimiser state at every step; worker 0 (the main one)
writes the logs, the progress bar and the files.

Why on a CPU too: a training step of the small preset is a chain of small sparse convolutions that a second thread
barely speeds up, so two single-thread workers use two cores better than one worker with two threads
(training/README.md, "Several workers").

How a run becomes distributed:
  * ``torchrun --nnodes M --nproc_per_node N -m ov3d_ros.training.cli ...``: the environment torchrun sets (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is used as is, on one machine or many;
  * ``ov3d-train ... --set workers=N`` (or ``workers: N`` in a recipe) on one machine: the command starts N
    workers with torch.multiprocessing (``run_workers``), talking over the loopback interface only, and waits.
"""
from __future__ import annotations

import datetime
import gc
import inspect
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

import torch

log = logging.getLogger("ov3d.train")

# The CLI's exit code after a polite stop (SIGTERM, Ctrl-C): every worker stopped at the same step, worker 0 saves.
INTERRUPTED_EXIT = 130


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> range:
        """The items 0..n-1 this worker handles when work is dealt out round-robin."""
        return range(self.rank, n, self.size)


def world() -> World:
    """This process's place among the workers (a single worker when torch.distributed is not initialised)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return World()
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank())))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_workers() -> int:
    """Workers on this machine (torchrun's LOCAL_WORLD_SIZE; run_workers sets it too), 1 when not distributed."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or 1) if env_world_size() > 1 else 1


def init_from_env(device: str = "auto", timeout_s: float = 900.0) -> World:
    """Join the process group described by the environment (WORLD_SIZE > 1), once; a no-op otherwise.

    Backend: NCCL when the run is on CUDA, else gloo. ``timeout_s`` bounds every collective, so a worker that
    died makes the others fail instead of hang (stage 2's pseudo-labelling is the longest wait between them).
    """
    if env_world_size() <= 1 or torch.distributed.is_initialized():
        return world()
    cuda = torch.cuda.is_available() and device != "cpu" and not str(device).startswith("cpu")
    if cuda:
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:
            raise RuntimeError(f"worker with LOCAL_RANK {local_rank} has no GPU of its own: this machine shows "
                               f"{gpus}; start at most {gpus} worker(s) per machine on CUDA")
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                         timeout=datetime.timedelta(seconds=timeout_s))
    w = world()
    log.info("worker %d of %d joined (%s)", w.rank, w.size, "nccl" if cuda else "gloo")
    return w


def workers_for_device(requested: int, device_type: str, gpus: int) -> int:
    """How many local workers ``workers=requested`` becomes: on CUDA one per GPU at most (NCCL cannot share a GPU
    between ranks), so a recipe written for CPU cores (the demo's workers: 2) also runs on a one-GPU machine."""
    requested = max(1, int(requested))
    if device_type != "cuda" or requested <= gpus:
        return requested
    log.warning("workers=%d asks for more training processes than this machine has GPUs (%d): training with %d",
                requested, gpus, max(1, gpus))
    return max(1, gpus)


def shutdown(finished: bool = False) -> None:
    """Leave the process group. ``finished``: this worker's run succeeded, so meet the others first.

    Without that barrier a worker that finished early tears its gloo connections down while another is still
    working, and gloo's threads can then abort a worker at exit ("terminate called without an active
    exception", seen once in a few dozen two-worker curricula): a finished run reported as failed. After a
    failure there is no barrier, since the other workers may never arrive.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # DistributedDataParallel wrappers that are no longer used, but not yet collected (they hold reference
        # cycles), must go while the group is alive: finalised after it, gloo aborts the process.
        gc.collect()
        if finished and world().size > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_workers(n: int, target, args: tuple = ()) -> int:
    """Run ``target(rank, *args)`` in ``n`` worker processes on this machine (torch.multiprocessing, spawn) as one
    loopback process group, and wait for them; returns 0, or the exit code of the first worker that failed.

    A worker that fails ends the run at once: torch stops the others. SIGTERM to this process is passed on to the
    workers, which stop at the same step and save (exit INTERRUPTED_EXIT); Ctrl-C reaches them directly.
    """
    import torch.multiprocessing as mp

    port = _free_loopback_port()
    context = mp.start_processes(_worker, args=(n, port, target, args), nprocs=n, join=False,
                                 start_method="spawn")
    log.info("started %d training workers on this machine (pids %s)", n, [p.pid for p in context.processes])

    def forward_sigterm(signum, frame):
        for process in context.processes:
            if process.is_alive():
                process.terminate()

    previous = signal.signal(signal.SIGTERM, forward_sigterm)
    try:
        while True:
            try:
                # After a failure the others get a few seconds to stop on their own (a polite stop: every worker
                # exits INTERRUPTED_EXIT once worker 0 has saved), then torch terminates them.
                if context.join(grace_period=5.0):
                    return 0
            except KeyboardInterrupt:
                continue  # the workers got the Ctrl-C too and stop on their own
            except mp.ProcessExitedException as exc:
                log.error("training worker %d exited with code %d: the run stopped (run the same command again to "
                          "resume from the last checkpoint)", exc.error_index, exc.exit_code)
                return exc.exit_code if exc.exit_code > 0 else 1
            except mp.ProcessRaisedException as exc:
                log.error("training worker %d failed: the run stopped\n%s", exc.error_index, exc)
                return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _worker(rank: int, n: int, port: int, target, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback_interface())
    code = target(rank, *args)
    if code:
        sys.exit(code)


def _loopback_interface() -> str:
    """The name of the loopback interface ('lo' on Linux), so gloo never binds to a public address."""
    try:
        for _, name in socket.if_nameindex():
            if name.startswith("lo"):
                return name
    except OSError:
        pass
    return "lo"


# -- collectives (no-ops for a single worker) -------------------------------------------------------------------
def barrier() -> None:
    if world().size > 1:
        torch.distributed.barrier()


def all_gather_objects(obj) -> list:
    """[obj of worker 0, obj of worker 1, ...] on every worker (any picklable object)."""
    w = world()
    if w.size == 1:
        return [obj]
    out = [None] * w.size
    torch.distributed.all_gather_object(out, obj)
    return out


def wrap(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` in DistributedDataParallel when there are several workers, else as it is.

    DDP broadcasts worker 0's parameters and buffers here, and averages the gradients during every backward pass
    (bucketed all-reduces that overlap the backward). Batch-norm statistics are not broadcast on each call
    (``broadcast_buffers=False``): ``sync_step`` averages them once per step. ``find_unused_parameters``: a stage
    may leave a parameter out of a step (the logit scale when no contrastive term is on).
    """
    if world().size == 1:
        return network
    device = torch.device(device)
    ddp = torch.nn.parallel.DistributedDataParallel
    # torch >= 2.14 names "sync buffers at init, not on every call" forward_sync_buffers=False; before, that
    # was broadcast_buffers=False (which now warns that it is deprecated).
    buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(network, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else None, find_unused_parameters=True, **buffers)


def sync_step(module: torch.nn.Module, stop: bool, device: torch.device) -> bool:
    """End of a step: average the floating-point buffers (batch-norm running statistics) over the workers and
    tell whether any worker asked to stop, in one collective. A single worker only returns ``stop``."""
    size = world().size
    if size == 1:
        return bool(stop)
    buffers = [b for b in module.buffers() if torch.is_floating_point(b)]
    flat = torch.cat([b.reshape(-1).float() for b in buffers] + [torch.tensor([float(stop)], device=device)])
    torch.distributed.all_reduce(flat)
    offset = 0
    for b in buffers:
        n = b.numel()
        b.copy_((flat[offset:offset + n] / size).view_as(b))
        offset += n
    return bool(flat[-1].item() > 0)
