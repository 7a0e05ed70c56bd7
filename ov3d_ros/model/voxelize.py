"""Points -> sparse voxels (coords, features) and the inverse map voxels -> points.

The voxel grid is anchored at the world origin (voxel index = floor(xyz / voxel_size)), so the same physical
point always falls in the same voxel whatever part of the cloud is voxelised with it. That is what lets the
segmenter cut a large map into overlapping chunks and get the same features as a single pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Per-voxel input channels: mean colour in [-1, 1] (3), then, with ``offsets=True``, the mean point's offset from
# the voxel centre scaled to [-1, 1] (3). Both are invariant to translating the cloud by whole voxels, unlike xyz
# relative to a cloud centre, which would change with every chunk or crop. The offset depends on how many points a
# voxel holds: one point of a single frame anywhere in the voxel, or the centroid of a dense fused map's surface
# patch. A model trained on frames (stage 1) and run on maps meets a shifted input: the offsets are off by default.
# ``height=True`` adds one more: the mean point's z in metres minus HEIGHT_OFFSET. In a z-up world frame whose
# floor is near z = 0 (a ground robot's REP 105 map/odom, an axis-aligned ScanNet scan) that is height above the
# floor, the strongest single cue indoors (table tops, seats, pictures, lamps); it is the same for every chunk or
# crop of a map, as the chunked segmenter needs.
COLOUR_CHANNELS = 3
OFFSET_CHANNELS = 3
IN_CHANNELS = COLOUR_CHANNELS + OFFSET_CHANNELS  # colour + offsets, no height (the original layout)
HEIGHT_OFFSET = 1.0  # metres; centres the feature on the rooms' usable heights (0 to ~2.5 m)


def in_channels(height: bool, offsets: bool = True) -> int:
    """Input channels of voxelize's features with or without the height channel and the point offsets."""
    return COLOUR_CHANNELS + OFFSET_CHANNELS * int(bool(offsets)) + int(bool(height))


@dataclass
class Voxelized:
    """A voxelised batch of point clouds.

    coords: (M, 4) int32 [batch, i, j, k], i/j/k >= 0 (shifted grid indices, spconv's layout).
    feats: (M, in_channels(height, offsets)) float32 voxel features.
    inverse: (N,) int64, the voxel row of every input point (features_per_point = voxel_features[inverse]).
    origin: (3,) int64 grid index subtracted from floor(xyz / voxel_size) (a multiple of ``align``).
    spatial_shape: [X, Y, Z] grid extent (for spconv.SparseConvTensor).
    batch_size: number of clouds in the batch.
    """

    coords: torch.Tensor
    feats: torch.Tensor
    inverse: torch.Tensor
    origin: torch.Tensor
    spatial_shape: list[int]
    batch_size: int

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def as_points(xyz, rgb, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and convert xyz (N,3) and rgb (N,3) to float32 tensors; rgb becomes [0, 1].

    rgb may be uint8 (0..255) or floating point already in [0, 1]; numpy arrays or torch tensors.
    """
    xyz_t = torch.as_tensor(xyz)
    rgb_t = torch.as_tensor(rgb)
    if device is not None:
        xyz_t = xyz_t.to(device)
        rgb_t = rgb_t.to(device)
    if xyz_t.ndim != 2 or xyz_t.shape[1] != 3:
        raise ValueError(f"xyz must have shape (N, 3), got {tuple(xyz_t.shape)}")
    if rgb_t.ndim != 2 or rgb_t.shape[1] != 3:
        raise ValueError(f"rgb must have shape (N, 3), got {tuple(rgb_t.shape)}")
    if rgb_t.shape[0] != xyz_t.shape[0]:
        raise ValueError(f"rgb has {rgb_t.shape[0]} rows but xyz has {xyz_t.shape[0]}")
    if xyz_t.shape[0] == 0:
        raise ValueError("empty point cloud: xyz has 0 points")
    if not torch.is_floating_point(xyz_t):
        raise TypeError(f"xyz must be floating point, got {xyz_t.dtype}")
    xyz_t = xyz_t.float()
    if not bool(torch.isfinite(xyz_t).all()):
        raise ValueError("xyz contains NaN or inf; drop invalid points before voxelising")
    if rgb_t.dtype == torch.uint8:
        rgb_t = rgb_t.float() / 255.0
    elif torch.is_floating_point(rgb_t):
        rgb_t = rgb_t.float()
        lo, hi = float(rgb_t.min()), float(rgb_t.max())
        if lo < 0.0 or hi > 1.0 + 1e-6:
            raise ValueError(f"floating-point rgb must be in [0, 1] (got range [{lo:.3g}, {hi:.3g}]); "
                             "pass uint8 for 0..255 colours")
    else:
        raise TypeError(f"rgb must be uint8 or floating point in [0, 1], got {rgb_t.dtype}")
    return xyz_t, rgb_t


def voxelize(xyz, rgb, voxel_size: float, *, batch=None, align: int = 1, device=None,
             height: bool = False, offsets: bool = True) -> Voxelized:
    """Average points into voxels of edge ``voxel_size`` metres.

    xyz: (N, 3) float; rgb: (N, 3) uint8 or float in [0, 1]; batch: optional (N,) int cloud index per point
    (clouds of one batch never share a voxel). ``align``: the grid origin is rounded down to a multiple of it, so
    a U-Net's strided downsampling (stride 2 per level) groups the same voxels whichever crop is voxelised; the
    model passes 2 ** levels. ``height``: append the height channel (see HEIGHT_OFFSET); ``offsets``: include the
    mean point's offset from the voxel centre. Runs on the tensors' device (or ``device``).
    """
    if not (isinstance(voxel_size, (int, float)) and np.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"voxel_size must be a positive number of metres, got {voxel_size!r}")
    if int(align) < 1:
        raise ValueError(f"align must be >= 1, got {align!r}")
    xyz_t, rgb_t = as_points(xyz, rgb, device)
    n = xyz_t.shape[0]
    dev = xyz_t.device
    if batch is None:
        batch_t = torch.zeros(n, dtype=torch.int64, device=dev)
        batch_size = 1
    else:
        batch_t = torch.as_tensor(batch, device=dev)
        if batch_t.shape != (n,):
            raise ValueError(f"batch must have shape ({n},), got {tuple(batch_t.shape)}")
        if torch.is_floating_point(batch_t) or batch_t.dtype == torch.bool:
            raise TypeError(f"batch must hold integer cloud indices, got {batch_t.dtype}")
        batch_t = batch_t.long()
        if int(batch_t.min()) < 0:
            raise ValueError("batch indices must be >= 0")
        batch_size = int(batch_t.max()) + 1

    # float64 for the division: float32 loses whole voxels at map scales of a few hundred metres.
    scaled = xyz_t.double() / float(voxel_size)
    grid = torch.floor(scaled).long()
    origin = torch.div(grid.min(dim=0).values, int(align), rounding_mode="floor") * int(align)
    grid = grid - origin
    extent = grid.max(dim=0).values + 1
    sx, sy, sz = (int(v) for v in extent.tolist())
    # spconv indexes the grid with int32; 2**24 voxels is 335 km at 2 cm, so beyond that the units are wrong.
    if max(sx, sy, sz) >= 2 ** 24 or batch_size * sx * sy * sz >= 2 ** 62:
        raise ValueError(f"cloud spans {[sx, sy, sz]} voxels of {voxel_size} m: too large a grid to index; "
                         "check the units (metres) and the voxel size")

    # One int64 key per (batch, i, j, k), row-major over the grid extent; unique() sorts and dedups them.
    key = ((batch_t * sx + grid[:, 0]) * sy + grid[:, 1]) * sz + grid[:, 2]
    unique_key, inverse = torch.unique(key, sorted=True, return_inverse=True)
    m = unique_key.shape[0]
    counts = torch.zeros(m, dtype=torch.float32, device=dev).index_add_(
        0, inverse, torch.ones(n, dtype=torch.float32, device=dev))
    sums = torch.zeros(m, 6, dtype=torch.float64, device=dev).index_add_(
        0, inverse, torch.cat([scaled, rgb_t.double()], dim=1))
    means = sums / counts.double().unsqueeze(1)

    k = unique_key % sz
    rest = unique_key // sz
    j = rest % sy
    rest = rest // sy
    coords = torch.stack([rest // sx, rest % sx, j, k], dim=1)
    parts = [(means[:, 3:] * 2.0 - 1.0).float()]  # colour
    if offsets:
        voxel_centre = (coords[:, 1:] + origin).double() + 0.5
        parts.append(((means[:, :3] - voxel_centre) * 2.0).float())
    if height:
        parts.append((means[:, 2:3] * float(voxel_size) - HEIGHT_OFFSET).float())
    feats = torch.cat(parts, dim=1).contiguous()
    return Voxelized(
        coords=coords.int().contiguous(),
        feats=feats,
        inverse=inverse,
        origin=origin,
        # Padded to a multiple of ``align``: a stride-2 conv drops voxels at the last index of an odd extent.
        spatial_shape=[-(-v // int(align)) * int(align) for v in (sx, sy, sz)],
        batch_size=batch_size,
    )
