"""Mapper: posed RGB-D frames -> partial clouds -> a global VoxelMap, with keyframe gating and a map version.

The one frame-to-map step of the package: the fusion node, ``ov3d-fuse`` and the trainer's global clouds all go
through it, so a recording gives the same map offline, replayed and live. A frame is back-projected into a
``PartialCloud`` (every valid frame, for the live partial-cloud stream), and integrated into the map when it is a
keyframe: the camera moved at least ``keyframe_min_translation`` or turned ``keyframe_min_rotation_deg`` since
the last keyframe (both 0: every frame). ``version`` counts map changes, so a consumer can tell whether the map
it last read is still current. A lock guards the map for readers on other threads (services, publishers).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ov3d_ros.data.npz import read_npz
from ov3d_ros.fusion import PartialCloud, RGBDFrame, SurfaceConfig, VoxelMap, make_partial_cloud

__all__ = ["MapperConfig", "MapUpdate", "Mapper"]


@dataclass(frozen=True)
class MapperConfig:
    """What the Mapper does with a frame. Depth outside [min_depth, max_depth] metres is dropped; ``stride`` takes
    every stride-th pixel in u and v; ``clear_radius`` (None = off) keeps only voxels that close to the camera."""

    voxel_size: float = 0.02
    capacity: int = 2_000_000
    clear_radius: float | None = None
    min_depth: float = 0.1
    max_depth: float = 6.0
    stride: int = 1
    keyframe_min_translation: float = 0.0
    keyframe_min_rotation_deg: float = 0.0
    surface: SurfaceConfig | None = SurfaceConfig()  # free-space carving and surface offsets (None = running means)
    threads: int = 0  # the map's compiled loops at once on a CPU (0: cores.default_threads())

    def __post_init__(self) -> None:
        if not self.max_depth > self.min_depth >= 0:
            raise ValueError(f"Mapper: max_depth ({self.max_depth}) must exceed min_depth ({self.min_depth}) >= 0")
        if not (isinstance(self.stride, int) and self.stride >= 1):
            raise ValueError(f"Mapper: stride must be an int >= 1, got {self.stride!r}")
        if self.keyframe_min_translation < 0 or self.keyframe_min_rotation_deg < 0:
            raise ValueError("Mapper: keyframe thresholds must be >= 0")


@dataclass
class MapUpdate:
    """What one frame did: its partial cloud (empty when no depth was valid), whether it was integrated, and the
    map's version afterwards."""

    partial: PartialCloud
    keyframe: bool
    version: int


class Mapper:
    """Frames in, a bounded VoxelMap out. ``add_frame`` raises ValueError/TypeError for a malformed frame (the
    caller logs and counts it); the map is untouched then."""

    def __init__(self, config: MapperConfig | None = None, *, device: str = "cpu") -> None:
        self.config = config or MapperConfig()
        c = self.config
        self.map = VoxelMap(voxel_size=c.voxel_size, capacity=c.capacity, clear_radius=c.clear_radius,
                            device=device, surface=c.surface)
        self.map.threads = c.threads
        self.lock = threading.RLock()
        self.version = 0
        self.keyframes = 0
        self.last_keyframe_stamp: float | None = None
        self._last_keyframe_T: np.ndarray | None = None
        self._frame_index = 0

    def is_keyframe(self, T_world_cam: np.ndarray) -> bool:
        last = self._last_keyframe_T
        if last is None:
            return True
        c = self.config
        moved = float(np.linalg.norm(T_world_cam[:3, 3] - last[:3, 3]))
        R = last[:3, :3].T @ T_world_cam[:3, :3]
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(R) - 1.0) / 2.0))))
        return moved >= c.keyframe_min_translation or angle >= c.keyframe_min_rotation_deg

    def partial_cloud(self, frame: RGBDFrame) -> PartialCloud:
        """The frame back-projected with the Mapper's depth range and pixel stride (the map is not touched)."""
        c = self.config
        return make_partial_cloud(frame, min_depth=c.min_depth, max_depth=c.max_depth, stride=c.stride)

    def add_frame(self, frame: RGBDFrame) -> MapUpdate:
        """Back-project ``frame`` and integrate it when it is a keyframe."""
        partial = self.partial_cloud(frame)
        if len(partial) == 0:
            return MapUpdate(partial, False, self.version)
        return self.integrate(partial, stamp=frame.stamp)

    def integrate(self, partial: PartialCloud, *, stamp: float | None = None) -> MapUpdate:
        """Integrate an already back-projected cloud when its pose makes it a keyframe."""
        T = np.asarray(partial.T_world_cam, dtype=np.float64)
        with self.lock:
            if not self.is_keyframe(T):
                return MapUpdate(partial, False, self.version)
            self.map.integrate(partial)
            self.version += 1
            self.keyframes += 1
            self._last_keyframe_T = T
            self.last_keyframe_stamp = stamp
            return MapUpdate(partial, True, self.version)

    def reset(self) -> int:
        """Empty the map (the next frame is a keyframe); returns the number of voxels removed."""
        with self.lock:
            n = len(self.map)
            self.map.reset()
            self.version += 1
            self._last_keyframe_T = None
            return n

    def cloud(self, frame_id: str = "map"):
        """(PointCloud of the map, its version), read consistently under the lock."""
        with self.lock:
            return self.map.to_cloud(frame_id), self.version

    def save(self, path, frame_id: str = "map") -> tuple[Path, int]:
        """Write the map as ``.npz`` (lossless, with the newest keyframe's stamp: ``load`` reads it back) or
        ``.ply`` (a plain cloud); returns (path, voxels)."""
        path = Path(path)
        with self.lock:
            n = len(self.map)
            if path.suffix.lower() == ".npz":
                stamp = math.nan if self.last_keyframe_stamp is None else self.last_keyframe_stamp
                path = self.map.save(path, keyframe_stamp=np.array(stamp, dtype=np.float64))
            elif path.suffix.lower() == ".ply":
                self.map.write_ply(path, frame_id=frame_id)
            else:
                raise ValueError(f"map path must end in .npz or .ply, got '{path}'")
        return path, n

    def load(self, path) -> int:
        """Replace the map with the one ``save`` wrote to ``path`` (the next frame is a keyframe); returns its
        voxels. ValueError, with the map untouched, for an unreadable file or one of another voxel size or more
        voxels than ``capacity``: its voxels would not be this map's."""
        c = self.config
        arrays = read_npz(path)
        loaded = VoxelMap.load(path, device=self.map.device, surface=c.surface, arrays=arrays)
        if not math.isclose(loaded.voxel_size, c.voxel_size, rel_tol=1e-9):
            raise ValueError(f"map file {path} has {loaded.voxel_size} m voxels, this map {c.voxel_size} m: set "
                             f"voxel_size to {loaded.voxel_size} to load it")
        if len(loaded) > c.capacity:
            raise ValueError(f"map file {path} holds {len(loaded)} voxels, more than this map's capacity "
                             f"{c.capacity}")
        loaded.capacity, loaded.clear_radius, loaded.threads = c.capacity, c.clear_radius, c.threads
        stamp = float(arrays["keyframe_stamp"]) if "keyframe_stamp" in arrays else math.nan
        with self.lock:
            self.map = loaded
            self.version += 1
            self._last_keyframe_T = None
            self.last_keyframe_stamp = None if math.isnan(stamp) else stamp
            return len(loaded)

    def __len__(self) -> int:
        return len(self.map)
