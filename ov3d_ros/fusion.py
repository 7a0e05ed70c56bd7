"""RGB-D frames -> per-frame partial clouds -> a bounded global voxel map that free space carves.

ROS-free (numpy + torch). The voxel map keeps integer running sums, so CPU and GPU agree on them exactly and
save/load is lossless; see ``VoxelMap`` for the layout and the eviction policy, ``SurfaceConfig`` for free-space
carving and surface points. Keys of the voxel grid: ``voxel_grid``; matched points of two partial clouds:
``matching``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import voxel_kernels
from .cloud import PointCloud
from .data.npz import read_npz, write_npz
from .data.ply import write_ply
from .geometry import CameraModel, DTypeError, backproject, check_color, check_depth, check_finite_positive, \
    check_rigid, depth_to_metres
from .voxel_grid import LOCAL_BITS, VOXELS_PER_BLOCK, block_coords, blocks_in_view, merge_block_index, pack_blocks, \
    unpack_keys, view_bounds, voxel_coords

__all__ = ["RGBDFrame", "PartialCloud", "make_partial_cloud", "SurfaceConfig", "VoxelMap"]


# ----------------------------------------------------------------------------------------------------------------------
# Frames and partial clouds
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class RGBDFrame:
    """One registered RGB-D frame. color: (H, W, 3) uint8 RGB. depth: (H, W) float32 metres or uint16
    (``depth_scale`` units per metre). camera: intrinsics of this image size. T_world_cam: 4x4 camera-to-world pose
    (REP 103 optical camera frame). index: frame number in its sequence; stamp: seconds."""

    color: np.ndarray
    depth: np.ndarray
    camera: CameraModel
    T_world_cam: np.ndarray
    index: int = 0
    stamp: float = 0.0
    depth_scale: float = 1000.0

    def validate(self) -> "RGBDFrame":
        """Raise ValueError (DTypeError, also a TypeError, for dtypes) naming the first problem; return self (the
        pose then stored as a float64 array)."""
        if not isinstance(self.camera, CameraModel):
            raise TypeError(f"RGBDFrame {self.index}: camera must be a CameraModel, got {type(self.camera).__name__}")
        depth = check_depth(self.depth, self.depth_scale, f"RGBDFrame {self.index}: depth")
        check_color(self.color, depth.shape, f"RGBDFrame {self.index}: color")
        if depth.shape != (self.camera.height, self.camera.width):
            raise ValueError(f"RGBDFrame {self.index}: images are {depth.shape[1]}x{depth.shape[0]} (WxH) but the "
                             f"camera is {self.camera.width}x{self.camera.height}")
        self.T_world_cam = check_rigid(self.T_world_cam, f"RGBDFrame {self.index}: T_world_cam")
        scale = float(self.depth_scale)
        if not math.isfinite(scale) or scale <= 0.0:
            raise ValueError(f"RGBDFrame {self.index}: depth_scale must be finite and > 0, got {self.depth_scale}")
        return self

    def depth_metres(self) -> np.ndarray:
        """Depth as (H, W) float32 metres."""
        return depth_to_metres(self.depth, self.depth_scale, f"RGBDFrame {self.index}: depth")


@dataclass
class PartialCloud:
    """The cloud of one frame, in the world frame, with what is needed to reproject it.

    xyz (N, 3) float32 world; rgb (N, 3) uint8; pixels (N, 2) int32 (u, v) in the full-resolution image;
    index: the frame index; T_world_cam and camera: the frame's pose and intrinsics; stride: the pixel stride the
    cloud was sampled with (pixels lie on multiples of it), used by reprojection matching.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    pixels: np.ndarray
    index: int
    T_world_cam: np.ndarray
    camera: CameraModel
    stride: int = 1

    def __post_init__(self) -> None:
        self.xyz = np.ascontiguousarray(self.xyz, dtype=np.float32)
        if self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise ValueError(f"PartialCloud {self.index}: xyz must be (N, 3), got {self.xyz.shape}")
        n = len(self.xyz)
        rgb = np.asarray(self.rgb)
        if rgb.dtype != np.uint8:
            raise DTypeError(f"PartialCloud {self.index}: rgb dtype must be uint8, got {rgb.dtype}")
        if rgb.shape != (n, 3):
            raise ValueError(f"PartialCloud {self.index}: rgb must be ({n}, 3), got {rgb.shape}")
        self.rgb = np.ascontiguousarray(rgb)
        pixels = np.asarray(self.pixels)
        if not np.issubdtype(pixels.dtype, np.integer):
            raise DTypeError(f"PartialCloud {self.index}: pixels must be integers, got {pixels.dtype}")
        if pixels.shape != (n, 2):
            raise ValueError(f"PartialCloud {self.index}: pixels must be ({n}, 2), got {pixels.shape}")
        self.pixels = np.ascontiguousarray(pixels, dtype=np.int32)
        if not isinstance(self.camera, CameraModel):
            raise TypeError(f"PartialCloud {self.index}: camera must be a CameraModel, "
                            f"got {type(self.camera).__name__}")
        self.T_world_cam = check_rigid(self.T_world_cam, f"PartialCloud {self.index}: T_world_cam")
        if isinstance(self.stride, bool) or not isinstance(self.stride, (int, np.integer)) or self.stride < 1:
            raise ValueError(f"PartialCloud {self.index}: stride must be an integer >= 1, got {self.stride!r}")
        self.stride = int(self.stride)

    def __len__(self) -> int:
        return len(self.xyz)

    @property
    def camera_center(self) -> np.ndarray:
        """The camera's optical centre in the world frame (3,) float64."""
        return self.T_world_cam[:3, 3].copy()

    def to_cloud(self, frame_id: str = "map") -> PointCloud:
        """The points as a PointCloud (``extras["frame_index"]`` = this frame's index)."""
        return PointCloud(xyz=self.xyz, rgb=self.rgb, frame_id=frame_id, extras={"frame_index": int(self.index)})


def make_partial_cloud(frame: RGBDFrame, *, min_depth: float = 0.1, max_depth: float = 10.0,
                       stride: int = 1) -> PartialCloud:
    """Validate ``frame`` and back-project its valid pixels into a world-frame PartialCloud."""
    if not isinstance(frame, RGBDFrame):
        raise TypeError(f"make_partial_cloud: expected an RGBDFrame, got {type(frame).__name__}")
    frame.validate()
    bp = backproject(frame.depth, frame.camera, frame.T_world_cam, frame.color, depth_scale=frame.depth_scale,
                     min_depth=min_depth, max_depth=max_depth, stride=stride)
    return PartialCloud(xyz=bp.xyz, rgb=bp.rgb, pixels=bp.pixels, index=int(frame.index),
                        T_world_cam=frame.T_world_cam, camera=frame.camera, stride=stride)


# Positions are summed as whole micrometres (integers: see _VOXEL_ARRAYS); 1 um is below the clouds' float32 resolution.
_UM_PER_M = 1e6


# ----------------------------------------------------------------------------------------------------------------------
# Global voxel map
# ----------------------------------------------------------------------------------------------------------------------
_MAP_FORMAT = "ov3d_voxel_map"
_MAP_VERSION = 2  # 2: free-space votes and surface offsets per voxel

# Per-voxel arrays (name, dtype, trailing shape). The position sums (micrometres) and colour sums are float64 arrays
# that only ever hold integers: every partial sum below 2^53 is exact, so additions are order-independent and
# index_add_ (atomics on GPU) is deterministic. That holds while a voxel's |sum| < 9e15 um, e.g. 9e8 points fused
# 10 m from the origin. Separate contiguous arrays make index_add_ ~25% faster than columns of one table.
_VOXEL_ARRAYS = (("keys", torch.int64, ()), ("frames", torch.int64, ()), ("last_seen", torch.int64, ()),
                 ("count", torch.int64, ()), ("xyz_sum", torch.float64, (3,)), ("rgb_sum", torch.float64, (3,)),
                 ("free", torch.int64, ()), ("surface_sum", torch.float64, (3,)), ("surface_weight", torch.int64, ()))
# Arrays a map saved before they existed lacks; it loads with them zero (no evidence yet).
_ADDED_ARRAYS = ("free", "surface_sum", "surface_weight")

# When the map overflows it evicts down to capacity - capacity // _EVICT_SLACK_DIVISOR (never less than the
# overflow), so that the O(map) compaction that follows an eviction runs once every several frames, not every frame.
_EVICT_SLACK_DIVISOR = 32


@dataclass(frozen=True)
class SurfaceConfig:
    """What a frame's depth image, read along its lines of sight, does to the voxels in its view. After every
    ``every``-th frame (4: the step projects every voxel in view), each voxel whose mean projects into the image up
    to ``max_range`` metres is compared with the four depths around its projection, with a margin ``voxel_size +
    carve_margin * d^2`` at depth d (stereo and structured-light depth noise grows with d^2).

    * Free space (``carve_evidence`` > 0): a voxel in front of all four (valid) depths by more than the margin gains
      a vote, a frame whose points fall in it takes one back, and ``carve_evidence`` votes remove it. A voxel on a
      surface, even one seen at a grazing angle, lies at the depth of its own pixels and gets no vote.
    * Surface (``surface``, off by default: on 2 cores its cost and the map's settling hold up live answers): where
      the four depths lie on one surface (they differ by at most the margin plus what a surface at 76 degrees to
      the line of sight spans between pixels) and the voxel is within the margin of their bilinear mean, the point
      where its line of sight meets that surface is recorded, weighted ~d^-4 (inverse depth-noise variance) over
      about the last ``_SURFACE_VIEWS`` views (a TSDF's weight cap: a moved surface is followed). The exported
      point is their weighted mean, averaging the noise down as a TSDF does. Voxels whose surface point lies in
      another cell (the noise shell around a surface) are kept but not exported, and so are voxels no view measured
      that fewer than ``min_views`` frames hit (speckle: flying pixels at depth edges, which no later view may see
      through if something hides them then). Clouds without a camera (anything but a PartialCloud) skip the step."""

    carve_margin: float = 0.01
    carve_evidence: int = 3
    max_range: float = 5.0
    surface: bool = False
    min_views: int = 2
    every: int = 4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.carve_margin) and self.carve_margin >= 0):
            raise ValueError(f"SurfaceConfig: carve_margin must be >= 0, got {self.carve_margin}")
        if not (math.isfinite(self.max_range) and self.max_range > 0):
            raise ValueError(f"SurfaceConfig: max_range must be > 0 metres, got {self.max_range}")
        for name, least in (("carve_evidence", 0), ("min_views", 1), ("every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"SurfaceConfig: {name} must be an integer >= {least}, got {value!r}")


# Surface offsets are weighted by an integer ~ 1/sigma(d)^2 ~ d^-4 (exact integer sums, like the positions):
# _SURFACE_WEIGHT at 1 m, capped below 0.5 m and never under 1.
_SURFACE_WEIGHT = 4096.0
_SURFACE_VIEWS = 16
_SURFACE_SLOPE = math.tan(math.radians(76.0))
_SURFACE_WEIGHT_MAX = 16 * 4096


class VoxelMap:
    """Bounded global accumulation of partial clouds in a sparse voxel grid.

    Per voxel: the number of points fused (``count``, the weight of the means), the number of integrations that hit
    it (``frames``), the integration tick when it was last hit (``last_seen``), and exact integer sums of positions
    (micrometres) and colours, from which ``to_cloud`` derives the mean position and the running-mean colour.

    Layout (a block hash like Open3D's VoxelBlockGrid or nvblox): voxels are grouped in 4x4x4 blocks; a sorted array
    of block keys gives each block a row of a dense (blocks, 64) table of voxel numbers (-1 = empty). Integrating a
    frame costs O(points): every point finds its voxel in the table, new voxels are appended and the sums accumulate
    (on a CPU in ``threads`` compiled loops at once, ``voxel_kernels``; torch ops on CUDA). No pass over all voxels
    happens per frame, except for clearing and evictions (batched). Maps built either way are identical; every
    export walks the blocks in key order, so it does not depend on the storage layout.

    Memory bound: after every ``integrate`` the map holds at most ``capacity`` voxels (``memory_bytes()``: about
    100 bytes per voxel on indoor scans at 2 cm, block table included, plus up to 2x room reserved for growth). Eviction
    policy when an integration exceeds it: remove the least-recently-observed voxels first (smallest ``last_seen``),
    ties broken by fewest observing frames, then by smallest voxel key (deterministic), until
    ``capacity - capacity // 32`` voxels remain (the slack batches the O(map) compaction). Voxels hit by the frame
    just integrated go only if that frame alone exceeds the capacity.

    Clearing: with ``clear_radius`` set, each ``integrate`` of a cloud that carries a pose (a PartialCloud) then
    clears every voxel whose centre is farther than ``clear_radius`` from that camera's centre: a local map around
    the robot, like nvblox's map clearing radius. ``clear_around`` does the same on demand, or clears the inside of
    the ball with ``keep_inside=False``.
    """

    def __init__(self, voxel_size: float = 0.02, capacity: int = 2_000_000, clear_radius: float | None = None,
                 device: str | torch.device = "cpu", surface: SurfaceConfig | None = SurfaceConfig()) -> None:
        self.voxel_size = check_finite_positive(voxel_size, "voxel_size", "VoxelMap")
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"VoxelMap: capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        if clear_radius is not None:
            clear_radius = float(clear_radius)
            if not math.isfinite(clear_radius) or clear_radius <= 0.0:
                raise ValueError(f"VoxelMap: clear_radius must be None or finite and > 0, got {clear_radius}")
        self.clear_radius = clear_radius
        if surface is not None and not isinstance(surface, SurfaceConfig):
            raise TypeError(f"VoxelMap: surface must be a SurfaceConfig or None, got {type(surface).__name__}")
        self.surface = surface
        self.device = torch.device(device)
        self.compiled = self.device.type == "cpu"  # the compiled loops integrate (a CPU only; False: torch's, CUDA's)
        self.threads = 0  # how many run at once (0: cores.default_threads())
        self.reset()

    # -- state ----------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every voxel (the settings are kept)."""
        self._set_voxels({name: torch.empty((0,) + shape, dtype=dtype, device=self.device)
                          for name, dtype, shape in _VOXEL_ARRAYS})
        self._tick = 0  # number of integrate() calls so far: the clock of last_seen
        self.evicted = 0  # voxels removed by the capacity bound since the last reset (for logging)
        self.carved = 0  # voxels removed as free space since the last reset (for logging)

    def _set_voxels(self, arrays: dict[str, torch.Tensor]) -> None:
        """Rebuild every structure from per-voxel arrays sorted by key (compact, in key order)."""
        dev = self.device
        for name, _, _ in _VOXEL_ARRAYS:
            setattr(self, "_" + name, arrays[name].contiguous())
        keys = self._keys
        self._n_voxels = int(keys.shape[0])
        self._block_keys, block_index = torch.unique_consecutive(keys >> LOCAL_BITS, return_inverse=True)
        self._n_blocks = int(self._block_keys.shape[0])
        self._block_slots = torch.arange(self._n_blocks, dtype=torch.int64, device=dev)  # table row per sorted block
        self._slot_block_key = self._block_keys.clone()  # block key of each table row
        self._table = torch.full((self._n_blocks, VOXELS_PER_BLOCK), -1, dtype=torch.int64, device=dev)
        self._table[block_index, keys & (VOXELS_PER_BLOCK - 1)] = torch.arange(self._n_voxels, device=dev)

    def _order(self) -> torch.Tensor:
        """Voxel numbers sorted by voxel key (blocks in key order, places 0..63 within each)."""
        cells = self._table[self._block_slots].reshape(-1)
        return cells[cells >= 0]

    def _sorted_arrays(self, order: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every per-voxel array, in key order (copies)."""
        order = self._order() if order is None else order
        return {name: getattr(self, "_" + name)[order] for name, _, _ in _VOXEL_ARRAYS}

    def __len__(self) -> int:
        return self._n_voxels

    def __repr__(self) -> str:
        return (f"VoxelMap({len(self)} voxels, voxel_size={self.voxel_size}, capacity={self.capacity}, "
                f"clear_radius={self.clear_radius}, device={self.device})")

    def memory_bytes(self) -> int:
        """Bytes held by the map's tensors (allocated, including room reserved for growth)."""
        tensors = [getattr(self, "_" + name) for name, _, _ in _VOXEL_ARRAYS]
        tensors += [self._table, self._block_keys, self._block_slots, self._slot_block_key]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def keys(self) -> torch.Tensor:
        """(M,) int64 voxel keys, sorted (the export order)."""
        return self._keys[self._order()]

    # -- integration ----------------------------------------------------------------------------------------------
    def integrate(self, partial) -> int:
        """Fuse one cloud (a PartialCloud, or anything with ``xyz`` (N, 3) float and ``rgb`` (N, 3) uint8).

        Returns the number of voxels in the map afterwards. A cloud that raises leaves the map unchanged.
        """
        xyz, rgb = self._points_of(partial)
        try:  # validates (finite, in range) before anything changes
            cell = self._cells_of_points(xyz) if xyz.shape[0] else None
        except ValueError as exc:
            raise ValueError(f"VoxelMap.integrate: {exc}") from None
        self._tick += 1
        if cell is not None:
            self._accumulate(cell, xyz, rgb)
        if self.surface is not None and isinstance(partial, PartialCloud) and len(self) and \
                self._tick % self.surface.every == 0:
            self._observe(partial, xyz)
        if self.clear_radius is not None and getattr(partial, "T_world_cam", None) is not None:
            self.clear_around(np.asarray(partial.T_world_cam, dtype=np.float64)[:3, 3], self.clear_radius)
        if len(self) > self.capacity:  # down to the capacity less a slack
            self._evict(len(self) - self.capacity + self.capacity // _EVICT_SLACK_DIVISOR)
        return len(self)

    def _points_of(self, partial) -> tuple[torch.Tensor, torch.Tensor]:
        if not (hasattr(partial, "xyz") and hasattr(partial, "rgb")):
            raise TypeError(f"VoxelMap.integrate: expected a PartialCloud (xyz, rgb), got {type(partial).__name__}")
        xyz = torch.as_tensor(partial.xyz).to(self.device)
        rgb = torch.as_tensor(partial.rgb).to(self.device)
        if not xyz.is_floating_point():
            raise DTypeError(f"VoxelMap.integrate: xyz must be floating point, got {xyz.dtype}")
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"VoxelMap.integrate: xyz must be (N, 3), got {tuple(xyz.shape)}")
        if rgb.dtype != torch.uint8:
            raise DTypeError(f"VoxelMap.integrate: rgb must be uint8, got {rgb.dtype}")
        if tuple(rgb.shape) != (xyz.shape[0], 3):
            raise ValueError(f"VoxelMap.integrate: rgb must be ({xyz.shape[0]}, 3), got {tuple(rgb.shape)}")
        return xyz, rgb

    def _cells_of_points(self, xyz: torch.Tensor) -> torch.Tensor:
        """Each point's flat cell in the (blocks, 64) table (new blocks get rows), after validating the points."""
        if self.compiled:
            cell = voxel_kernels.frame_cells(xyz.numpy(), self.voxel_size, self._slots_of_sorted_blocks,
                                             self.threads)
            if cell is not None:
                return torch.from_numpy(cell)
        block, place = block_coords(voxel_coords(xyz, self.voxel_size))
        return self._block_slots_of(block) * VOXELS_PER_BLOCK + place

    def _accumulate(self, cell: torch.Tensor, xyz: torch.Tensor, rgb: torch.Tensor) -> None:
        """Add the points to their voxels (new voxels numbered in cell order: deterministic, the same on every
        device). On a CPU the compiled loops of ``voxel_kernels`` do it (``compiled``), else torch: the same map."""
        table, first = self._table.view(-1), self._n_voxels
        new_cells = torch.from_numpy(voxel_kernels.missing_cells(table.numpy(), cell.numpy(), self.threads)) \
            if self.compiled else torch.unique(cell[table[cell] < 0], sorted=True)
        self._reserve_voxels(first + int(new_cells.shape[0]))
        self._n_voxels += int(new_cells.shape[0])
        if self.compiled:
            arrays = [getattr(self, "_" + name).numpy() for name, _, _ in _VOXEL_ARRAYS]
            voxel_kernels.number_new(table.numpy(), new_cells.numpy(), first, arrays, self._slot_block_key.numpy(),
                                     self.threads)
            voxel_kernels.add_points(table.numpy(), cell.numpy(), xyz.numpy(), rgb.numpy(), arrays, self._tick,
                                     self.threads)
            return
        table[new_cells] = torch.arange(first, self._n_voxels, dtype=torch.int64, device=self.device)
        self._keys[first:self._n_voxels] = (self._slot_block_key[new_cells // VOXELS_PER_BLOCK] << LOCAL_BITS) \
            | (new_cells % VOXELS_PER_BLOCK)
        for name, _, _ in _VOXEL_ARRAYS[1:]:
            getattr(self, "_" + name)[first:self._n_voxels] = 0
        voxel = table[cell]
        micrometres = xyz.to(torch.float64, copy=True).mul_(_UM_PER_M).round_()
        self._xyz_sum.index_add_(0, voxel, micrometres)
        self._rgb_sum.index_add_(0, voxel, rgb.to(torch.float64))
        # Points per voxel; also tells which voxels this frame hit (frames and last_seen change once per hit voxel).
        count = torch.bincount(voxel, minlength=self._n_voxels)
        hit = torch.nonzero(count).squeeze(1)
        self._count[hit] += count[hit]
        self._frames[hit] += 1
        self._last_seen[hit] = self._tick
        self._free[hit] = (self._free[hit] - 1).clamp_(min=0)  # seen occupied: one free-space vote less

    def _observe(self, partial: "PartialCloud", xyz: torch.Tensor) -> None:
        """The projective step of ``SurfaceConfig``: free-space votes and surface offsets for the voxels in view of
        the frame whose points ``xyz`` (on the map's device) were just fused, then the carving. Compiled loops and
        torch do the same arithmetic (no fused multiply-adds: products and lerps are spelled out): the same map."""
        cfg, dev, s, cam, stride = self.surface, self.device, self.voxel_size, partial.camera, partial.stride
        T = torch.as_tensor(partial.T_world_cam, dtype=torch.float64, device=dev)
        R, origin = T[:3, :3].contiguous(), T[:3, 3].contiguous()
        gh, gw = -(-cam.height // stride), -(-cam.width // stride)  # the frame's (stride-th) pixel grid
        pitch = _SURFACE_SLOPE * stride / min(cam.fx, cam.fy)  # depth spread between pixels, per metre of depth
        if self.compiled:
            block_keys, R_, origin_ = self._slot_block_key[:self._n_blocks].numpy(), R.numpy(), origin.numpy()
            rows = voxel_kernels.rows_in_view(block_keys, view_bounds(s, cam, cfg.max_range), R_, origin_, self.threads)
            padded = voxel_kernels.depth_grid(xyz.numpy(), partial.pixels, R_, origin_, stride, gh, gw, self.threads)
            gone = torch.from_numpy(voxel_kernels.observe(
                self.threads, rows, block_keys, self._table.view(-1).numpy(),
                [getattr(self, "_" + name).numpy() for name, _, _ in _VOXEL_ARRAYS], padded, R_, origin_,
                np.array([cam.fx, cam.fy, cam.cx, cam.cy]), stride, s, cfg.carve_margin, cfg.max_range,
                cfg.carve_evidence, cfg.surface, pitch, _SURFACE_WEIGHT, _SURFACE_WEIGHT_MAX, _SURFACE_VIEWS,
                self._tick))
        else:
            rows = torch.nonzero(blocks_in_view(self._slot_block_key[:self._n_blocks], s, cam, R, origin,
                                                cfg.max_range)).squeeze(1)
            # Each point's depth along the optical axis at its pixel (0: no point): voxel_kernels.depth_grid.
            pixels = torch.as_tensor(partial.pixels, device=dev).to(torch.int64) // stride
            ray = xyz.to(torch.float64) - origin
            padded = torch.zeros((gh + 2, gw + 2), dtype=torch.float64, device=dev)
            padded[pixels[:, 1] + 1, pixels[:, 0] + 1] = ray[:, 0] * R[0, 2] + ray[:, 1] * R[1, 2] + ray[:, 2] * R[2, 2]
            cells = self._table[rows].reshape(-1)
            gone = self._observe_torch(cells[cells >= 0], padded, R, origin, cam, stride, pitch)
        if gone.numel():
            self._remove(gone)
            self.carved += int(gone.numel())

    def _observe_torch(self, voxel, padded, R, origin, cam, stride: int, pitch: float) -> torch.Tensor:
        """``_observe`` for the voxels ``voxel`` in view, in torch operations (CUDA's path; index_select with index
        lists throughout: several times faster than boolean masks on a CPU). Returns the voxels a vote has just
        brought to ``carve_evidence``."""
        cfg, s, gh, gw = self.surface, self.voxel_size, padded.shape[0] - 2, padded.shape[1] - 2
        count = self._count.index_select(0, voxel).to(torch.float64)[:, None]
        ray = (self._xyz_sum.index_select(0, voxel) / (count * _UM_PER_M)).sub_(origin)  # centre -> voxel mean
        q = ray[:, :1] * R[0] + ray[:, 1:2] * R[1] + ray[:, 2:] * R[2]  # camera coordinates
        z = q[:, 2]
        u = (cam.fx * q[:, 0] / z + cam.cx) / stride
        v = (cam.fy * q[:, 1] / z + cam.cy) / stride
        seen = torch.nonzero((z > 1e-6) & (z <= cfg.max_range) & (u > -0.5) & (u < gw - 0.5) & (v > -0.5)
                             & (v < gh - 0.5)).squeeze(1)
        gone = voxel[:0]
        if seen.numel() == 0:
            return gone
        voxel, ray, z, u, v = (t.index_select(0, seen) for t in (voxel, ray, z, u, v))
        # The four pixels around the projection: all valid, their depths' spread and bilinear mean.
        u0, v0 = u.floor().clamp_(-1, gw - 1), v.floor().clamp_(-1, gh - 1)
        fu, fv = u - u0, v - v0
        at = (v0.to(torch.int64) + 1) * (gw + 2) + u0.to(torch.int64) + 1  # into the padded image
        c00, c01, c10, c11 = (padded.take(at + step) for step in (0, 1, gw + 2, gw + 3))
        lo = torch.minimum(torch.minimum(c00, c01), torch.minimum(c10, c11))
        hi = torch.maximum(torch.maximum(c00, c01), torch.maximum(c10, c11))
        if cfg.carve_evidence:
            # Free: in front of the nearest of the four depths by the margin.
            voted = voxel[(lo > 0) & (z < lo - (s + cfg.carve_margin * lo * lo))
                          & (self._last_seen.index_select(0, voxel) != self._tick)]
            self._free[voted] += 1
            gone = voted[self._free[voted] >= cfg.carve_evidence]
        if not cfg.surface:
            return gone
        # Surface: the bilinear depth, where the four lie on one surface -- they differ by no more than the margin
        # plus what a surface at up to _SURFACE_SLOPE to the line of sight spans between two pixels (more is a depth
        # edge) -- and the voxel lies within the margin of it. (torch.lerp's two forms, without its fused multiply-add)
        lerp = lambda a, b, w: torch.where(w.abs() < 0.5, a + w * (b - a), b - (b - a) * (1.0 - w))  # noqa: E731
        d = lerp(lerp(c00, c01, fu), lerp(c10, c11, fu), fv)
        margin = s + cfg.carve_margin * d * d
        near = torch.nonzero((lo > 0) & (hi - lo <= margin + pitch * d) & ((d - z).abs() <= margin)).squeeze(1)
        if near.numel() == 0:
            return gone
        d, z, ray, target = (t.index_select(0, near) for t in (d, z, ray, voxel))
        # Where the line of sight through the voxel's mean meets the measured surface, relative to the voxel's centre
        # (small numbers: the integer sums stay exact far from the origin).
        centre = (unpack_keys(self._keys.index_select(0, target)).to(torch.float64) + 0.5) * s
        crossing = (ray * (d / z)[:, None]).add_(origin).sub_(centre).mul_(_UM_PER_M).round_()
        weight = (_SURFACE_WEIGHT / ((d * d) * (d * d))).round_().clamp_(1, _SURFACE_WEIGHT_MAX)
        self._surface_sum.index_add_(0, target, crossing.mul_(weight[:, None]))
        self._surface_weight.index_add_(0, target, weight.to(torch.int64))
        # A moving average over the last ~_SURFACE_VIEWS views (a TSDF's weight cap): a surface that moved is
        # followed, not outvoted by its past.
        total = self._surface_weight.index_select(0, target)
        cap = weight.to(torch.int64) * _SURFACE_VIEWS
        over = torch.nonzero(total > cap).squeeze(1)
        if over.numel():
            capped, scale = target[over], cap[over].to(torch.float64) / total[over].to(torch.float64)
            self._surface_sum[capped] = (self._surface_sum[capped] * scale[:, None]).round_()
            self._surface_weight[capped] = cap[over]
        return gone

    def _cells_of(self, keys: torch.Tensor) -> torch.Tensor:
        """Flat (blocks, 64) table indices of voxel keys whose blocks are in the map."""
        rows = self._block_slots[torch.searchsorted(self._block_keys, keys >> LOCAL_BITS)]
        return rows * VOXELS_PER_BLOCK + (keys & (VOXELS_PER_BLOCK - 1))

    def _remove(self, gone: torch.Tensor) -> None:
        """Remove the voxels numbered ``gone`` (unique) in O(len(gone)): the last voxels move into their places;
        their blocks stay indexed (empty rows, 512 bytes each) until the next rebuild."""
        n, k = self._n_voxels, int(gone.numel())
        table = self._table.view(-1)
        table[self._cells_of(self._keys[gone])] = -1
        alive = torch.ones(n, dtype=torch.bool, device=self.device)
        alive[gone] = False
        holes = gone[gone < n - k]
        movers = torch.nonzero(alive[n - k:]).squeeze(1) + (n - k)  # as many as there are holes
        holes = holes.sort().values
        for name, _, _ in _VOXEL_ARRAYS:
            array = getattr(self, "_" + name)
            array[holes] = array[movers]
        table[self._cells_of(self._keys[holes])] = holes
        self._n_voxels = n - k

    def _block_slots_of(self, blocks: torch.Tensor) -> torch.Tensor:
        """Table rows of the (N, 3) block indices, allocating rows for blocks not in the map yet (the torch path;
        on a CPU ``voxel_kernels.frame_cells`` marks the blocks in a dense box instead of sorting them)."""
        unique_blocks, inverse = torch.unique(pack_blocks(blocks), sorted=True, return_inverse=True)
        return self._slots_of_sorted_blocks(unique_blocks)[inverse]

    def _slots_of_sorted_blocks(self, block_keys: torch.Tensor) -> torch.Tensor:
        """Table rows of sorted unique block keys; unknown blocks get new empty rows and index entries."""
        n_known = self._n_blocks
        if self.compiled:
            merged = voxel_kernels.merge_blocks(self._block_keys.numpy(), self._block_slots.numpy(), block_keys.numpy())
            slots, keys, block_slots = (torch.from_numpy(a) for a in merged)
        else:
            slots, keys, block_slots = merge_block_index(self._block_keys, self._block_slots, block_keys)
        self._add_rows(block_keys[slots >= n_known])
        self._block_keys, self._block_slots = keys, block_slots
        return slots

    def _add_rows(self, new_blocks: torch.Tensor) -> None:
        """Empty table rows for the blocks ``new_blocks`` (sorted), after the last (their index entries aside)."""
        n_known, n_new = self._n_blocks, int(new_blocks.shape[0])
        self._reserve_blocks(n_known + n_new)
        self._slot_block_key[n_known:n_known + n_new] = new_blocks
        self._table[n_known:n_known + n_new] = -1
        self._n_blocks += n_new

    @staticmethod
    def _grown(tensor: torch.Tensor, used: int, needed: int, limit: int) -> torch.Tensor:
        """``tensor`` with room for ``needed`` rows: geometric growth (amortised O(1) appends), capped at ``limit``."""
        if needed <= tensor.shape[0]:
            return tensor
        size = max(needed, min(2 * tensor.shape[0], limit), 1024)
        grown = torch.empty((size,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        grown[:used] = tensor[:used]
        return grown

    def _reserve_voxels(self, needed: int) -> None:
        # Past the capacity the map is about to evict: grow only to what is needed then.
        limit = self.capacity + self.capacity // 8
        for name, _, _ in _VOXEL_ARRAYS:
            setattr(self, "_" + name, self._grown(getattr(self, "_" + name), self._n_voxels, needed, limit))

    def _reserve_blocks(self, needed: int) -> None:
        limit = max(needed, 2 * self._n_blocks)
        self._table = self._grown(self._table, self._n_blocks, needed, limit)
        self._slot_block_key = self._grown(self._slot_block_key, self._n_blocks, needed, limit)

    def _evict(self, n_evict: int) -> None:
        """Remove ``n_evict`` voxels: oldest ``last_seen`` first, then fewest frames, then smallest key."""
        arrays = self._sorted_arrays()
        last_seen, frames = arrays["last_seen"], arrays["frames"]
        # One int64 score orders (last_seen, frames): ticks stay far below 2^31, frames are clamped below 2^32.
        score = (last_seen << 32) | frames.clamp(max=(1 << 32) - 1)
        threshold = int(torch.kthvalue(score, n_evict).values)
        below = score < threshold
        tied = score == threshold
        # In key order, the first voxels tied at the threshold have the smallest keys.
        needed = n_evict - int(below.sum())
        keep = ~(below | (tied & (torch.cumsum(tied.to(torch.int64), 0) <= needed)))
        self._set_voxels({name: value[keep] for name, value in arrays.items()})
        self.evicted += n_evict

    # -- clearing -------------------------------------------------------------------------------------------------
    def voxel_centers(self) -> torch.Tensor:
        """(M, 3) float64 voxel centres on the map's device, in key order."""
        return (unpack_keys(self.keys).to(torch.float64) + 0.5) * self.voxel_size

    def clear_around(self, center_xyz, radius: float, *, keep_inside: bool = True) -> int:
        """Clear the map outside the ball of ``radius`` around ``center_xyz`` (world frame; default) or inside it
        (``keep_inside=False``), by voxel centres; return how many were removed."""
        center = np.asarray(center_xyz, dtype=np.float64).reshape(-1)
        if center.shape != (3,) or not np.all(np.isfinite(center)):
            raise ValueError(f"VoxelMap.clear_around: center_xyz must be 3 finite numbers, got {center_xyz!r}")
        radius = float(radius)
        if not math.isfinite(radius) or radius < 0.0:
            raise ValueError(f"VoxelMap.clear_around: radius must be finite and >= 0, got {radius}")
        if len(self) == 0:
            return 0
        centres = (unpack_keys(self._keys[:self._n_voxels]).to(torch.float64) + 0.5) * self.voxel_size
        offset = centres - torch.as_tensor(center, device=self.device)
        inside = (offset * offset).sum(dim=1) <= radius * radius
        keep = inside if keep_inside else ~inside
        removed = len(self) - int(keep.sum())
        if removed:
            order = self._order()
            keep = keep[order]
            self._set_voxels({name: value[keep] for name, value in self._sorted_arrays(order).items()})
        return removed

    # -- export ---------------------------------------------------------------------------------------------------
    def to_cloud(self, frame_id: str = "map") -> PointCloud:
        """One point per voxel, in key order, and the running-mean colour (rounded half up). The point is the mean
        of the fused points, or with ``SurfaceConfig.surface`` the weighted mean of where the frames' lines of
        sight through the voxel met their measured surfaces; the noise shell and speckle are left out then (see
        ``SurfaceConfig``).

        ``extras`` (per voxel, int64): ``count`` (points fused), ``frames`` (integrations that hit it),
        ``last_seen`` (integration tick). Note ``PointCloud.select`` does not slice ``extras``.
        """
        arrays = self._sorted_arrays()
        count = arrays["count"][:, None]
        xyz = arrays["xyz_sum"] / (count.to(torch.float64) * _UM_PER_M)
        weight = arrays["surface_weight"][:, None]
        if bool((weight > 0).any()):
            cell = unpack_keys(arrays["keys"])
            surface = (cell.to(torch.float64) + 0.5) * self.voxel_size + \
                arrays["surface_sum"] / (weight.clamp(min=1).to(torch.float64) * _UM_PER_M)
            xyz = torch.where(weight > 0, surface, xyz)
            measured = weight[:, 0] > 0
            on_surface = torch.where(measured, (torch.floor(xyz / self.voxel_size).to(torch.int64) == cell).all(dim=1),
                                     arrays["frames"] >= self.surface.min_views)
            arrays = {name: value[on_surface] for name, value in arrays.items()}
            xyz, count = xyz[on_surface], count[on_surface]
        xyz = xyz.to(torch.float32)
        rgb = ((arrays["rgb_sum"].to(torch.int64) + count // 2) // count.clamp(min=1)).clamp(0, 255)
        return PointCloud(xyz=xyz.cpu().numpy(), rgb=rgb.to(torch.uint8).cpu().numpy(), frame_id=frame_id,
                          extras={name: arrays[name].cpu().numpy() for name in ("count", "frames", "last_seen")})

    def write_ply(self, path, frame_id: str = "map") -> Path:
        """Write the voxel cloud as binary PLY (x y z red green blue count) via ``ov3d_ros.data.ply``."""
        cloud = self.to_cloud(frame_id)
        path = Path(path)
        count = np.minimum(cloud.extras["count"], np.iinfo(np.int32).max).astype(np.int32)
        write_ply(path, cloud, {"count": count})
        return path

    def save(self, path, **extra) -> Path:
        """Save the whole state losslessly to a .npz file (keys, sums, counts, ticks, settings and ``extra`` arrays),
        replacing the file at once (``data.npz.write_npz``). Returns the path written (``.npz`` appended when
        missing)."""
        arrays = {name: value.cpu().numpy() for name, value in self._sorted_arrays().items()}
        return write_npz(path, dict(
            format=np.array(_MAP_FORMAT), version=np.array(_MAP_VERSION), **arrays,
            voxel_size=np.array(self.voxel_size, dtype=np.float64), capacity=np.array(self.capacity, dtype=np.int64),
            clear_radius=np.array(np.nan if self.clear_radius is None else self.clear_radius, dtype=np.float64),
            tick=np.array(self._tick, dtype=np.int64), evicted=np.array(self.evicted, dtype=np.int64), **extra))

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu", surface: SurfaceConfig | None = SurfaceConfig(),
             arrays: dict | None = None) -> "VoxelMap":
        """Load a map written by ``save`` onto ``device``; ``surface`` is how later frames update it. ``arrays``:
        the file's arrays when the caller has read them already (``read_npz``)."""
        path = Path(path)
        archive = read_npz(path) if arrays is None else arrays
        if "format" not in archive or str(archive["format"]) != _MAP_FORMAT:
            raise ValueError(f"VoxelMap.load: {path} is not a saved VoxelMap (no format '{_MAP_FORMAT}')")
        version = int(archive["version"])
        if version not in (1, _MAP_VERSION):
            raise ValueError(f"VoxelMap.load: {path} has format version {version}, this code reads 1 to "
                             f"{_MAP_VERSION}")
        added = _ADDED_ARRAYS if version == 1 else ()
        missing = [name for name, _, _ in _VOXEL_ARRAYS if name not in archive and name not in added]
        if missing:
            raise ValueError(f"VoxelMap.load: {path} lacks {missing} (corrupt file)")
        n = len(archive["keys"])
        arrays = {name: archive[name] if name not in added else
                  np.zeros((n,) + shape, dtype=str(dtype).replace("torch.", ""))
                  for name, dtype, shape in _VOXEL_ARRAYS}
        for name, dtype, shape in _VOXEL_ARRAYS:
            expected = np.dtype(str(dtype).replace("torch.", ""))
            if arrays[name].dtype != expected or arrays[name].shape != (n,) + shape:
                raise ValueError(f"VoxelMap.load: {path}: '{name}' is {arrays[name].dtype} "
                                 f"{arrays[name].shape}, expected {expected} {(n,) + shape}")
        keys = arrays["keys"]
        if n > 1 and not np.all(keys[1:] > keys[:-1]):
            raise ValueError(f"VoxelMap.load: {path}: voxel keys are not strictly increasing (corrupt file)")
        clear_radius = float(archive["clear_radius"])
        vmap = cls(voxel_size=float(archive["voxel_size"]), capacity=int(archive["capacity"]),
                   clear_radius=None if math.isnan(clear_radius) else clear_radius, device=device,
                   surface=surface)
        vmap._set_voxels({name: torch.from_numpy(np.ascontiguousarray(value)).to(vmap.device)
                          for name, value in arrays.items()})
        vmap._tick = int(archive["tick"])
        vmap.evicted = int(archive["evicted"])
        return vmap
