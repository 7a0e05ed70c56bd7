"""The optimisation loop shared by stage 1 and stage 2: AdamW, cosine schedule with warm-up, mixed precision on GPU,
checkpoints every N steps with exact resume, a tqdm bar and TensorBoard scalars.

Exact resume: every step draws its randomness from ``np.random.default_rng((seed, stage_tag, step))`` (with several
workers, ``(seed, stage_tag, step, worker)``), so a step redone after a resume sees the same frames and augmentation
as it would have in an uninterrupted run. The training state file holds the model, optimiser, scheduler and
GradScaler states, the step, and the torch / numpy / python RNG states (for anything outside the per-step
generator). Files are written to a temporary name and renamed
(atomic on POSIX), so a kill in the middle of a save leaves the previous checkpoint intact.

Several workers (``distributed.py``): each runs this loop on its own draws. The network module is wrapped in
torch's DistributedDataParallel, which averages the gradients during the backward pass; batch-norm statistics are
averaged after every step, so all workers hold the same state. Worker 0 alone writes the files, the TensorBoard
scalars and the progress bar, and a stop request on any worker stops all of them.

``OV3D_STOP_AFTER_STEP=N`` in the environment stops a run right after step N, before that step's checkpoint, as a
kill would: tests and operators use it to try a resume.
"""
from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import distributed

log = logging.getLogger("ov3d.train")

STATE_FILE = "state.pt"


class TrainingInterrupted(RuntimeError):
    """Raised when a run stops before its last step (stop hook, SIGTERM or Ctrl-C) after saving its state."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"training stopped at step {step} ({reason}); rerun the same command to resume")
        self.step = step
        self.reason = reason


def cosine_with_warmup(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up from 1/warmup to 1, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def step_rng(seed: int, tag: int, step: int, worker: int = 0, workers: int = 1) -> np.random.Generator:
    """The generator of one step (of one worker, when there are several)."""
    if workers > 1:
        return np.random.default_rng((int(seed), int(tag), int(step), int(worker)))
    return np.random.default_rng((int(seed), int(tag), int(step)))


@dataclass
class LoopConfig:
    steps: int
    lr: float
    weight_decay: float
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float
    amp: bool
    checkpoint_every: int
    log_every: int
    ema_decay: float = 0.0

    @classmethod
    def from_section(cls, section: dict) -> "LoopConfig":
        # Keys a section leaves out keep their defaults here (stage 2 has no ema_decay: see training/README.md).
        out = cls(**{k: section[k] for k in cls.__dataclass_fields__ if k in section})
        if out.steps < 1:
            raise ValueError(f"steps must be >= 1, got {out.steps}")
        if out.lr <= 0:
            raise ValueError(f"lr must be > 0, got {out.lr}")
        if out.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {out.checkpoint_every}")
        if not 0.0 <= out.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {out.ema_decay}")
        return out


class WeightAverage:
    """Exponential moving average of a module's parameters and floating-point buffers (batch-norm statistics).

    ``update()`` after each optimiser step: avg <- decay * avg + (1 - decay) * current, with the decay warmed up as
    min(decay, (1 + n) / (10 + n)) over the first updates so that early weights do not linger. ``swapped_in()``
    puts the average into the module for the duration of a with-block (to export it), ``copy_to()`` for good.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = module
        self.decay = float(decay)
        self.updates = 0
        self.average = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        current = self.module.state_dict()
        for key, avg in self.average.items():
            avg.mul_(d).add_(current[key].detach(), alpha=1.0 - d)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for key, value in state["average"].items():
            self.average[key].copy_(value)

    @torch.no_grad()
    def copy_to(self) -> None:
        self.module.load_state_dict(self.average, strict=False)

    @contextmanager
    def swapped_in(self):
        saved = {k: v.detach().clone() for k, v in self.module.state_dict().items() if k in self.average}
        self.copy_to()
        try:
            yield
        finally:
            self.module.load_state_dict(saved, strict=False)


def average_state_dicts(states: list[dict]) -> dict:
    """The element-wise mean of several state dicts of one architecture: floating-point tensors (weights,
    batch-norm statistics) are averaged, the rest (batch counters) taken from the first."""
    if not states:
        raise ValueError("average_state_dicts: nothing to average")
    out = {}
    for key, value in states[0].items():
        if torch.is_floating_point(value):
            out[key] = torch.stack([s[key].float() for s in states]).mean(dim=0).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


class _SignalStop:
    """Turns SIGTERM into a flag the loop checks between steps, so a polite kill saves the state first."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling, checkpoints still bound the loss
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


STOP_AFTER_STEP_ENV = "OV3D_STOP_AFTER_STEP"


def train_loop(*, model: torch.nn.Module, loss_fn: Callable[[int, np.random.Generator, torch.nn.Module], dict],
               loop: LoopConfig, out_dir: str | os.PathLike, seed: int, tag: int, device: torch.device,
               export_model: Callable[[Path, int], None], network: torch.nn.Module | None = None,
               desc: str = "train", stop_after_step: int | None = None, resume: bool = True,
               show_progress: bool = True) -> dict:
    """Run ``loop.steps`` optimiser steps of ``loss_fn`` and return the last logged scalars.

    ``model``: the module whose parameters are trained and saved. ``network``: the module a step calls (it shares
    the model's parameters; default the model itself); with several workers it is wrapped in
    DistributedDataParallel. ``loss_fn(step, rng, net)`` calls ``net`` once and returns a dict with a
    differentiable ``"loss"`` tensor and any other scalars to log. ``export_model(path, step)`` writes the
    shared-format model checkpoint (Segmenter reads it); it is called at every checkpoint and at the end, as
    ``out_dir/model.pt``. ``stop_after_step`` (default: ``OV3D_STOP_AFTER_STEP``) stops the run right after that
    step, before its checkpoint is written, raising TrainingInterrupted: the situation of a kill.
    """
    if stop_after_step is None and os.environ.get(STOP_AFTER_STEP_ENV):
        stop_after_step = int(os.environ[STOP_AFTER_STEP_ENV])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE
    world = distributed.world()
    show_progress = show_progress and world.main
    model.to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # Norm scales/shifts and biases are not weight-decayed (standard AdamW practice).
            (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": loop.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=loop.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, warmup_steps=loop.warmup_steps, total_steps=loop.steps,
                                                min_lr_ratio=loop.min_lr_ratio))
    use_amp = bool(loop.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start = 0
    saved_average = None
    if resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state.get("total_steps") != loop.steps:
            log.warning("%s: resuming a run planned for %s steps with steps=%s; the schedule follows the new "
                        "value", desc, state.get("total_steps"), loop.steps)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        saved_average = state.get("ema")
        if loop.ema_decay > 0 and saved_average is None:
            raise ValueError(f"{desc}: {state_path} was saved without ema_decay; resume with ema_decay=0 or start "
                             "over (--restart)")
        start = int(state["step"])
        log.info("%s: resumed from %s at step %d/%d", desc, state_path, start, loop.steps)
    elif state_path.exists():
        log.info("%s: resume disabled, starting over (overwriting %s)", desc, state_path)
    # DDP gives every worker worker 0's parameters and buffers when it wraps the network: the same start
    # everywhere, whatever each one built or read.
    net = distributed.wrap(network if network is not None else model, device)
    ema = WeightAverage(model, loop.ema_decay) if loop.ema_decay > 0 else None
    if ema is not None and saved_average is not None:
        ema.load_state_dict(saved_average)

    def save_state(step: int) -> None:
        if not world.main:
            return
        atomic_torch_save({
            "step": step, "total_steps": loop.steps, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "numpy": np.random.get_state(), "python": random.getstate()},
            "ema": ema.state_dict() if ema is not None else None,
        }, state_path)
        if ema is None:
            export_model(out_dir / "model.pt", step)
        else:
            with ema.swapped_in():
                export_model(out_dir / "model.pt", step)

    writer = None
    try:
        from torch.utils.tensorboard import SummaryWriter
        if world.main:
            writer = SummaryWriter(str(out_dir / "tb"), purge_step=start)
    except ImportError:  # tensorboard is optional at run time; scalars still go to the log
        log.warning("tensorboard is not installed (pip install tensorboard): no TensorBoard scalars")

    last: dict = {}
    running: dict[str, float] = {}
    running_n = 0
    t0 = time.monotonic()
    cpu0 = time.process_time()
    model.train()
    bar = tqdm(total=loop.steps, initial=start, desc=desc, disable=not show_progress, dynamic_ncols=True)
    try:
        with _SignalStop() as stop:
            for step in range(start, loop.steps):
                rng = step_rng(seed, tag, step, world.rank, world.size)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    terms = loss_fn(step, rng, net)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss is {float(loss)} at step {step}; lower the learning "
                                             "rate or check the labels")
                scaler.scale(loss).backward()
                if loop.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                stop_now = distributed.sync_step(model, stop.requested, device)
                if ema is not None:
                    ema.update()
                done = step + 1
                for key, value in terms.items():
                    value = value.detach() if isinstance(value, torch.Tensor) else value
                    running[key] = running.get(key, 0.0) + float(value)
                running_n += 1
                bar.update(1)
                if done % loop.log_every == 0 or done == loop.steps:
                    last = _mean_over_workers({k: v / running_n for k, v in running.items()})
                    last["lr"] = scheduler.get_last_lr()[0]
                    if writer is not None:
                        for key, value in last.items():
                            writer.add_scalar(f"{desc}/{key}", value, done)
                    if show_progress:
                        bar.set_postfix({k: f"{v:.3f}" for k, v in last.items() if k != "lr"})
                    else:
                        log.info("%s step %d/%d: %s", desc, done, loop.steps,
                                 " ".join(f"{k}={v:.4g}" for k, v in last.items()))
                    running, running_n = {}, 0
                if done % loop.checkpoint_every == 0 or done == loop.steps:
                    save_state(done)
                if stop_after_step is not None and done == stop_after_step and done < loop.steps:
                    raise TrainingInterrupted(done, "stop hook")
                if stop_now:
                    save_state(done)
                    distributed.barrier()  # no worker exits (ending the run) before worker 0 has saved
                    raise TrainingInterrupted(done, "SIGTERM")
    except KeyboardInterrupt:
        # Ctrl-C between or inside a step: the optimiser may be mid-update, so keep the last checkpoint as is.
        raise TrainingInterrupted(-1, "Ctrl-C; progress since the last checkpoint is lost") from None
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    # Worker 0 writes the final model.pt; the others must not go on (stage 2 reads it) before it is there.
    distributed.barrier()
    if ema is not None:
        ema.copy_to()  # the model ends as model.pt holds it
    last["seconds"] = time.monotonic() - t0
    # CPU time of this process: on a shared machine it estimates the wall time the run would take alone.
    last["cpu_seconds"] = time.process_time() - cpu0
    return last


def _mean_over_workers(scalars: dict[str, float]) -> dict[str, float]:
    """Each logged scalar averaged over the workers that have it (one worker: unchanged)."""
    gathered = distributed.all_gather_objects(scalars)
    if len(gathered) == 1:
        return scalars
    keys = {k for g in gathered for k in g}
    return {k: float(np.mean([g[k] for g in gathered if k in g])) for k in sorted(keys)}
