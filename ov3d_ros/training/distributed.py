"""Data-parallel training over several processes: CPU cores (gloo) or GPUs (NCCL), torchrun-compatible.

Every process ("worker") runs the same program on its own data. After each backward pass the gradients are
averaged over the workers, and after each step the batch-norm statistics too, so every worker holds the same model
and optimiser state at every step; worker 0 (the main one) writes the logs, the progress bar and the files.

Why on a CPU: a training step of the small preset is a chain of small sparse convolutions that one thread runs as
fast as two (measured on the 2-core CI machine), so one process leaves a core idle. Two processes with one thread
each train on twice the frames per step at ~1.2x the step time.

How a run becomes distributed:
  * ``ov3d-train ... --set workers=N`` (or ``workers: N`` in a recipe): the command starts N-1 copies of itself on
    this machine (``launch_workers``), talking over the loopback interface only, and is worker 0 itself;
  * or ``torchrun --nproc_per_node N -m ov3d_ros.training.cli ...``: the environment torchrun sets (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is used as is.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

import torch

log = logging.getLogger("ov3d.train")

# Set by launch_workers in the copies it starts (and read back by the CLI), so a copy never launches copies itself.
WORKER_ENV = "OV3D_TRAIN_WORKER"
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
    """Workers on this machine (torchrun's LOCAL_WORLD_SIZE; launch_workers sets it too), 1 when not distributed."""
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
        if finished and world().size > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_workers(n: int, argv: list[str]) -> list[subprocess.Popen]:
    """Start workers 1..n-1 as copies of ``python -m ov3d_ros.training.cli argv`` and make this process worker 0.

    Everything stays on this machine: the rendezvous address is 127.0.0.1 and gloo is bound to the loopback
    interface. The copies log warnings only and show no progress bars.
    """
    if n <= 1:
        return []
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_loopback_port()), WORLD_SIZE=str(n),
               LOCAL_WORLD_SIZE=str(n))
    env.setdefault("GLOO_SOCKET_IFNAME", _loopback_interface())
    procs = []
    for rank in range(1, n):
        child = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), **{WORKER_ENV: "1"})
        procs.append(subprocess.Popen([sys.executable, "-m", "ov3d_ros.training.cli", *argv], env=child))
    os.environ.update({k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                           "GLOO_SOCKET_IFNAME")})
    os.environ.update(RANK="0", LOCAL_RANK="0")
    log.info("started %d more training workers on this machine (pids %s)", n - 1, [p.pid for p in procs])
    return procs


class WorkerWatch(threading.Thread):
    """Ends this process (worker 0) as soon as a worker copy exits with an error.

    Without it, a copy that dies before joining (a bad GPU index, an import error) leaves worker 0 waiting in the
    rendezvous until the process-group timeout (15 minutes). The copies still running are stopped too. A polite
    stop (exit code INTERRUPTED_EXIT) is left alone. Call ``stop()`` before terminating the copies on purpose.
    """

    def __init__(self, procs: list[subprocess.Popen], poll_s: float = 0.5):
        super().__init__(name="ov3d-worker-watch", daemon=True)
        self.procs = list(procs)
        self.poll_s = float(poll_s)
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.poll_s):
            codes = [p.poll() for p in self.procs]
            # A copy that stopped politely exits before worker 0 has saved the state: let worker 0 finish.
            failed = [(p, rc) for p, rc in zip(self.procs, codes) if rc not in (None, 0, INTERRUPTED_EXIT)]
            if failed and not self._stopped.is_set():
                p, rc = failed[0]
                log.error("training worker (pid %d) exited with code %d: stopping the run (run the same command "
                          "again to resume from the last checkpoint)", p.pid, rc)
                for other in self.procs:
                    if other.poll() is None:
                        other.terminate()
                sys.stderr.flush()
                os._exit(rc if rc > 0 else 1)
            if all(rc is not None for rc in codes):
                return


def _loopback_interface() -> str:
    """The name of the loopback interface ('lo' on Linux), so gloo never binds to a public address."""
    try:
        for _, name in socket.if_nameindex():
            if name.startswith("lo"):
                return name
    except OSError:
        pass
    return "lo"


def wait_workers(procs: list[subprocess.Popen], timeout_s: float = 120.0) -> int:
    """Wait for the copies launch_workers started; returns the first non-zero exit code (0 if all succeeded)."""
    code = 0
    for p in procs:
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        code = code or rc
    return code


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


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace every parameter's gradient by its mean over the workers (a missing gradient counts as zero).

    One all-reduce after the backward pass (~25 ms for the small preset's 1.5M parameters between two CPU
    workers). Overlapping it with the backward pass in buckets, as DDP does, measured no faster on the 2-core
    CI machine: there the all-reduce competes for the same cores as the backward pass.
    """
    size = world().size
    if size == 1 or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


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


def broadcast_module(module: torch.nn.Module) -> None:
    """Give every worker worker 0's parameters and buffers (the start of a run)."""
    if world().size == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)
