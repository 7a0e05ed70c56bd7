"""Rendered synthetic sequences cached on disk, so a synthetic camera starts at once after its first run.

Only what a camera publishes is cached (colour, depth, pose, K). A file is named by every input of the render and
by ``RENDER_VERSION``: a renderer change that alters the frames bumps the version, and the old files are no longer
read.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ov3d_ros.data.synthetic import RENDER_VERSION, SyntheticRoom, render_sequence
from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import CameraModel


def cache_name(seed: int, n_frames: int, width: int, height: int, noise: bool, removed=()) -> str:
    """File name of a rendered sequence: every input of the render, and the renderer's version."""
    without = "".join(f"_no-{name}" for name in sorted(removed))
    return f"v{RENDER_VERSION}_seed{seed}{without}_{n_frames}f_{width}x{height}_{'noise' if noise else 'clean'}.npz"


def load_or_render(seed: int, n_frames: int, width: int, height: int, noise: bool, cache_dir: str = "",
                   removed=()):
    """(list of RGBDFrame, loaded_from_cache) of the room of ``seed`` without the objects of the ``removed``
    classes. Only what the camera publishes is cached: colour, depth, pose, K."""
    removed = tuple(sorted(set(removed)))
    path = Path(os.path.expanduser(cache_dir)) / cache_name(seed, n_frames, width, height, noise, removed) \
        if cache_dir else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as data:  # each data[name] reads and inflates the whole array: once each
                color, depth, T, K = (data[name] for name in ("color", "depth", "T", "K"))
            camera = CameraModel.from_K(K, int(width), int(height))
            return [RGBDFrame(color=color[i], depth=depth[i], camera=camera, T_world_cam=T[i], index=i,
                              stamp=i / 30.0) for i in range(len(T))], True
        except (OSError, KeyError, ValueError):
            pass  # a corrupt or partial cache file: render again and overwrite it
    room = SyntheticRoom.generate(seed)
    if removed:
        room = room.without(removed)
    frames = [s.frame for s in render_sequence(room, n_frames=n_frames, width=width, height=height, noise=noise,
                                               seed=seed)]
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, color=np.stack([f.color for f in frames]),
                                depth=np.stack([np.asarray(f.depth, np.float32) for f in frames]),
                                T=np.stack([np.asarray(f.T_world_cam, np.float64) for f in frames]),
                                K=np.asarray(frames[0].camera.K))
            os.replace(tmp, path)
        except OSError:
            pass  # caching is an optimisation only
    return frames, False
