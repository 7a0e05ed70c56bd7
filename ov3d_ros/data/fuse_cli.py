"""ov3d-fuse: fuse the RGB-D frames of a scene into one global voxel cloud (PLY).

    ov3d-fuse SCENE_DIR --out cloud.ply [--voxel-size 0.02] [--stride N] [--max-frames N]

SCENE_DIR is a scene in ScanNet's exported-frames layout (color/ depth/ pose/ intrinsic/), or a rosbag2 folder
(with metadata.yaml; choose topics with --color-topic etc.).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ov3d_ros.data.scenes import open_scene
from ov3d_ros.mapping import Mapper, MapperConfig

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
    bag = p.add_argument_group("rosbag2 input")
    bag.add_argument("--color-topic", help="colour image topic (default: found in the bag, realsense2_camera names "
                                           "first)")
    bag.add_argument("--depth-topic", help="depth image topic (default: found in the bag)")
    bag.add_argument("--info-topic", help="camera info topic (default: the one beside the depth topic)")
    bag.add_argument("--pose-topic", help="Odometry/PoseStamped topic (default: /tf + /tf_static)")
    bag.add_argument("--fixed-frame", help="map frame of the tf tree (default: map if present, else the root)")
    bag.add_argument("--camera-frame", help="camera optical frame (default: the depth header's)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def fuse_scene(scene, voxel_size: float = 0.02, *, stride: int = 1, max_frames: int | None = None,
               pixel_stride: int = 1, min_depth: float = 0.1, max_depth: float = 6.0, capacity: int = 2_000_000,
               progress: bool = True):
    """Integrate the scene's frames with a Mapper (every frame a keyframe); returns (map, frames used, seconds)."""
    if stride < 1 or pixel_stride < 1:
        raise ValueError(f"fuse: --stride and --pixel-stride must be >= 1, got {stride}, {pixel_stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"fuse: --max-frames must be >= 1, got {max_frames}")
    indices = list(range(0, len(scene), stride))
    if max_frames is not None:
        indices = indices[:max_frames]
    if not indices:
        raise ValueError(f"fuse: {scene} has no frames to fuse")
    mapper = Mapper(MapperConfig(voxel_size=voxel_size, capacity=capacity, min_depth=min_depth,
                                 max_depth=max_depth, stride=pixel_stride))
    start = time.perf_counter()
    for i in tqdm(indices, desc="fusing", unit="frame", disable=not progress):
        mapper.add_frame(scene.frame(i))
    return mapper.map, len(indices), time.perf_counter() - start


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
        scene = open_scene(args.scene_dir, rosbag=dict(
            color_topic=args.color_topic, depth_topic=args.depth_topic, info_topic=args.info_topic,
            pose_topic=args.pose_topic, fixed_frame=args.fixed_frame, camera_frame=args.camera_frame)).scene
        _log.info("%s: %d frames", scene, len(scene))
        vmap, n, seconds = fuse_scene(scene, args.voxel_size, stride=args.stride, max_frames=args.max_frames,
                                      pixel_stride=args.pixel_stride, min_depth=args.min_depth,
                                      max_depth=args.max_depth, capacity=args.capacity, progress=not args.quiet)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        _log.error("%s", exc)
        return 1
    vmap.write_ply(args.out)
    fps = n / seconds if seconds > 0 else float("inf")
    print(f"fused {n} frames in {seconds:.2f} s ({fps:.1f} frames/s): {len(vmap)} voxels at "
          f"{args.voxel_size:g} m -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
