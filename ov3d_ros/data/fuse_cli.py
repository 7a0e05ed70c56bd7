"""ov3d-fuse: fuse the RGB-D frames of a scene into one global voxel cloud (PLY).

    ov3d-fuse SCENE_DIR --out cloud.ply [--voxel-size 0.02] [--stride N] [--max-frames N]

SCENE_DIR is a scene in ScanNet's exported-frames layout (color/ depth/ pose/ intrinsic/), or a rosbag2 folder
(with metadata.yaml; choose topics with --color-topic etc.).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ov3d_ros.data.rosbag import CameraStream, add_stream_arguments, stream_options
from ov3d_ros.data.scenes import is_rosbag, open_scene, read_frames
from ov3d_ros.fusion import SurfaceConfig
from ov3d_ros.mapping import Mapper, MapperConfig
from ov3d_ros.cores import cores_for_fusion

_log = logging.getLogger("ov3d-fuse")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ov3d-fuse",
        description="Fuse the RGB-D frames of a scene (ScanNet exported-frames layout or a rosbag2 folder) into "
                    "one global cloud with a voxel map, and write it as a binary PLY (x y z red green blue + per-voxel "
                    "observation counts).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("scene_dir", metavar="SCENE_DIR", type=Path,
                   help="scene folder (color/, depth/, pose/, intrinsic/) or rosbag2 folder (metadata.yaml)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output PLY path")
    p.add_argument("--voxel-size", type=float, default=0.02, help="voxel edge length in metres")
    p.add_argument("--stride", type=int, default=1, help="use every N-th frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many (strided) frames")
    p.add_argument("--pixel-stride", type=int, default=1, help="back-project every N-th pixel in u and v")
    p.add_argument("--min-depth", type=float, default=0.1, help="ignore depth below this (m)")
    p.add_argument("--max-depth", type=float, default=6.0, help="ignore depth beyond this (m)")
    p.add_argument("--capacity", type=int, default=2_000_000, help="maximum number of voxels kept")
    surface = SurfaceConfig()
    p.add_argument("--carve-evidence", type=int, default=surface.carve_evidence,
                   help="free-space votes (frames that see through a voxel) that remove it; 0 = never "
                        "(default %(default)s)")
    p.add_argument("--carve-margin", type=float, default=surface.carve_margin,
                   help="depth noise margin in metres at 1 m: voxel_size + margin * depth^2 (default %(default)s)")
    p.add_argument("--carve-max-range", type=float, default=surface.max_range,
                   help="frames vote and measure surfaces up to this depth in metres (default %(default)s)")
    p.add_argument("--surface", action="store_true",
                   help="points on the measured surfaces, the noise shell left out (TSDF-like accuracy with "
                        "--observe-every 1, at 1.2-1.4 times the fusion time); default: running means of the points")
    p.add_argument("--observe-every", type=int, default=surface.every,
                   help="the free-space (and surface) step runs on every N-th frame (default %(default)s)")
    add_stream_arguments(p.add_argument_group("rosbag2 input (--strict: ScanNet scenes too)"))
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def _check_strides(stride: int, pixel_stride: int, max_frames: int | None) -> None:
    if stride < 1 or pixel_stride < 1:
        raise ValueError(f"fuse: --stride and --pixel-stride must be >= 1, got {stride}, {pixel_stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"fuse: --max-frames must be >= 1, got {max_frames}")


def fuse_frames(frames, voxel_size: float = 0.02, *, pixel_stride: int = 1, min_depth: float = 0.1,
                max_depth: float = 6.0, capacity: int = 2_000_000, progress: bool = True, total: int | None = None,
                surface: SurfaceConfig | None = SurfaceConfig()):
    """Integrate RGBDFrames with a Mapper (every frame a keyframe); returns (map, frames fused, seconds)."""
    mapper = Mapper(MapperConfig(voxel_size=voxel_size, capacity=capacity, min_depth=min_depth,
                                 max_depth=max_depth, stride=pixel_stride, surface=surface))
    start = time.perf_counter()
    n = 0
    for frame in tqdm(frames, total=total, desc="fusing", unit="frame", disable=not progress):
        mapper.add_frame(frame)
        n += 1
    return mapper.map, n, time.perf_counter() - start


def fuse_scene(scene, voxel_size: float = 0.02, *, stride: int = 1, max_frames: int | None = None,
               pixel_stride: int = 1, min_depth: float = 0.1, max_depth: float = 6.0, capacity: int = 2_000_000,
               progress: bool = True, strict: bool = False, surface: SurfaceConfig | None = SurfaceConfig()):
    """fuse_frames over a scene with ``len`` and ``frame(i)`` (ScanNet layout, RosbagScene). Unreadable frames are
    skipped with a warning (``strict``: FrameError instead)."""
    _check_strides(stride, pixel_stride, max_frames)
    indices = list(range(0, len(scene), stride))[:max_frames]
    if not indices:
        raise ValueError(f"fuse: {scene} has no frames to fuse")
    skipped: list[int] = []
    frames = (frame for _, frame in read_frames(scene, indices, strict=strict, skipped=skipped))
    result = fuse_frames(frames, voxel_size, pixel_stride=pixel_stride, min_depth=min_depth, max_depth=max_depth,
                         capacity=capacity, progress=progress, total=len(indices), surface=surface)
    if skipped:
        _log.warning("%d of %d frames could not be read and were skipped", len(skipped), len(indices))
    if result[1] == 0:
        raise ValueError(f"fuse: none of the {len(indices)} frames of {scene} could be read")
    return result


def fuse_bag(path, voxel_size: float = 0.02, *, stride: int = 1, max_frames: int | None = None,
             pixel_stride: int = 1, min_depth: float = 0.1, max_depth: float = 6.0, capacity: int = 2_000_000,
             progress: bool = True, surface: SurfaceConfig | None = SurfaceConfig(), **options):
    """fuse_frames over a rosbag2 recording in one streamed pass (``CameraStream`` with ``options``): the frames
    ov3d-run --bag replays, fused the same way, and a bag whose end is damaged is fused up to the damage."""
    _check_strides(stride, pixel_stride, max_frames)
    with CameraStream(path, **options) as stream:
        frames = itertools.islice(stream.rgbd_frames(), 0, None, stride)
        total = -(-stream.color_messages // stride)
        if max_frames is not None:
            frames, total = itertools.islice(frames, max_frames), min(total, max_frames)
        result = fuse_frames(frames, voxel_size, pixel_stride=pixel_stride, min_depth=min_depth,
                             max_depth=max_depth, capacity=capacity, progress=progress, total=total, surface=surface)
    if result[1] == 0:
        raise ValueError(f"fuse: no frame of {stream.path} could be fused (skipped: {stream.skipped})")
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.scene_dir.exists():
        _log.error("no such scene: %s", args.scene_dir)
        return 2
    if not (args.voxel_size > 0 and np.isfinite(args.voxel_size)):
        _log.error("--voxel-size must be > 0, got %s", args.voxel_size)
        return 2
    try:
        surface = None if not args.surface and args.carve_evidence == 0 else SurfaceConfig(
            carve_margin=args.carve_margin, carve_evidence=args.carve_evidence, max_range=args.carve_max_range,
            surface=args.surface, every=args.observe_every)
        common = dict(stride=args.stride, max_frames=args.max_frames, pixel_stride=args.pixel_stride,
                      min_depth=args.min_depth, max_depth=args.max_depth, capacity=args.capacity,
                      progress=not args.quiet, surface=surface)
        with cores_for_fusion():  # the map's compiled loops use the cores; torch and BLAS one thread
            if is_rosbag(args.scene_dir):
                vmap, n, seconds = fuse_bag(args.scene_dir, args.voxel_size, **stream_options(args), **common)
            else:
                scene = open_scene(args.scene_dir).scene
                _log.info("%s: %d frames", scene, len(scene))
                vmap, n, seconds = fuse_scene(scene, args.voxel_size, strict=args.strict, **common)
    except (ValueError, OSError, TypeError, ImportError) as exc:
        _log.error("%s", exc)
        return 1
    vmap.write_ply(args.out)
    fps = n / seconds if seconds > 0 else float("inf")
    print(f"fused {n} frames in {seconds:.2f} s ({fps:.1f} frames/s): {len(vmap)} voxels at "
          f"{args.voxel_size:g} m ({vmap.carved} removed as free space) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
