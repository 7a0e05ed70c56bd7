"""Ground truth of fused synthetic sequences: what held-out synthetic scenes are scored on."""
from __future__ import annotations

import math

import numpy as np

from ov3d_ros.cloud import PointCloud
from ov3d_ros.data.synthetic.sensor import SyntheticFrame
from ov3d_ros.fusion import make_partial_cloud


def labelled_reconstruction(frames: list[SyntheticFrame], voxel_size: float = 0.02, *, stride: int = 1,
                            max_depth: float = 10.0) -> PointCloud:
    """The sequence fused into a labelled cloud, as a benchmark annotates a scan (ScanNet labels the vertices of
    the reconstructed mesh): every valid pixel is back-projected with its ground-truth class and instance, and each
    ``voxel_size`` voxel keeps the mean position and colour of its points and their majority class and instance.

    Unlike ``SyntheticRoom.ground_truth_cloud`` (every exposed surface, ideally sampled, unshaded colours), this is
    what the nodes and the curriculum actually see: observed surfaces only, sensor noise, shaded colours. Voxels
    whose points carry no class (rays that escaped the room) are left out.
    """

    if not frames:
        raise ValueError("labelled_reconstruction: no frames")
    if not (float(voxel_size) > 0 and math.isfinite(float(voxel_size))):
        raise ValueError(f"labelled_reconstruction: voxel_size must be > 0, got {voxel_size}")
    xyz, rgb, cls, inst = [], [], [], []
    for f in frames:
        p = make_partial_cloud(f.frame, stride=stride, max_depth=max_depth)
        u, v = p.pixels[:, 0], p.pixels[:, 1]
        xyz.append(p.xyz)
        rgb.append(p.rgb)
        cls.append(f.class_map[v, u])
        inst.append(f.instance_map[v, u])
    xyz, rgb = np.concatenate(xyz).astype(np.float64), np.concatenate(rgb).astype(np.float64)
    cls, inst = np.concatenate(cls).astype(np.int64), np.concatenate(inst).astype(np.int64)
    keep = cls >= 0
    xyz, rgb, cls, inst = xyz[keep], rgb[keep], cls[keep], inst[keep]
    grid = np.floor(xyz / float(voxel_size)).astype(np.int64)
    grid -= grid.min(axis=0)
    extent = grid.max(axis=0) + 1
    _, voxel = np.unique((grid[:, 0] * extent[1] + grid[:, 1]) * extent[2] + grid[:, 2], return_inverse=True)
    voxel = voxel.reshape(-1)
    m = int(voxel.max()) + 1
    count = np.bincount(voxel, minlength=m).astype(np.float64)
    mean_xyz = np.stack([np.bincount(voxel, xyz[:, k], m) for k in range(3)], 1) / count[:, None]
    mean_rgb = np.stack([np.bincount(voxel, rgb[:, k], m) for k in range(3)], 1) / count[:, None]

    def majority(values: np.ndarray) -> np.ndarray:
        # Count (voxel, value) pairs, then keep each voxel's most frequent value.
        lo = int(values.min())
        span = int(values.max()) - lo + 1
        keys, n = np.unique(voxel * span + (values - lo), return_counts=True)
        vox, val = keys // span, keys % span + lo
        order = np.lexsort((-n, vox))
        first = np.ones(len(order), dtype=bool)
        first[1:] = vox[order[1:]] != vox[order[:-1]]
        out = np.empty(m, dtype=np.int64)
        out[vox[order[first]]] = val[order[first]]
        return out

    return PointCloud(xyz=mean_xyz.astype(np.float32), rgb=np.clip(np.rint(mean_rgb), 0, 255).astype(np.uint8),
                      label=majority(cls).astype(np.int32), instance=majority(inst).astype(np.int32))
