"""Frames of a synthetic RGB-D sensor: rendered views with Kinect-like depth noise, per-frame exposure, white
balance and recorded-pose error (``ViewVariation``), and the camera loop as a sequence."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ov3d_ros.data.synthetic.room import SyntheticRoom, default_camera
from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import CameraModel, check_rigid


@dataclass
class SyntheticFrame:
    """A rendered frame with its ground truth: class index (into CLASS_NAMES) and instance id per pixel, -1 = none."""

    frame: RGBDFrame
    class_map: np.ndarray
    instance_map: np.ndarray


def _depth_noise(depth: np.ndarray, cos_incidence: np.ndarray, rng) -> np.ndarray:
    """Kinect-like depth noise on a clean depth image (0 = invalid).

    - axial noise sigma(z) = 1.2 mm + 1.9 mm * (z - 0.4 m)^2 (grows with z^2, ~1.4 cm at 3 m);
    - dropouts at depth discontinuities (the projector shadow / mixed pixels) and at grazing incidence;
    - 0.5 % random invalid pixels.
    """
    depth = depth.astype(np.float32)
    valid = depth > 0
    sigma = 0.0012 + 0.0019 * (depth - 0.4) ** 2
    z = np.where(valid, depth + sigma * rng.standard_normal(depth.shape, dtype=np.float32), 0.0)
    # Discontinuities: a 4-neighbour whose depth differs by > 4 % (or is missing).
    padded = np.pad(depth, 1, mode="edge")
    H, W = depth.shape
    jump = np.zeros((H, W), dtype=bool)
    tol = 0.04 * depth
    for dv, du in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nb = padded[dv:dv + H, du:du + W]
        jump |= (nb <= 0) | (np.abs(nb - depth) > tol)
    u = rng.random((3, H, W), dtype=np.float32)
    drop = valid & jump & (u[0] < 0.6)
    drop |= valid & (cos_incidence < 0.12) & (u[1] < 0.7)
    drop |= u[2] < 0.005
    z[drop] = 0.0
    z[z < 0] = 0.0
    return z.astype(np.float32)


@dataclass(frozen=True)
class ViewVariation:
    """What differs between two views of one surface on a real RGB-D sensor, beyond per-pixel noise.

    Each frame draws its own values (standard deviations below; all 0 = off, the default):

    - ``exposure``: log of a brightness gain (auto-exposure; 0.15 is about +-15 % between frames);
    - ``white_balance``: log of a per-channel gain (auto white balance; 0.05 tints by about +-5 %);
    - ``pose_rot_deg`` / ``pose_trans_m``: error of the recorded pose. The frame is rendered from the true pose
      but carries a perturbed one, as a SLAM or odometry estimate would, so fused views of one surface no longer
      land exactly on each other (0.5 deg moves a point 3 m away by 2.6 cm).
    """

    exposure: float = 0.0
    white_balance: float = 0.0
    pose_rot_deg: float = 0.0
    pose_trans_m: float = 0.0

    def __post_init__(self):
        for name in ("exposure", "white_balance", "pose_rot_deg", "pose_trans_m"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"ViewVariation.{name} must be a finite number >= 0, got {value!r}")

    @property
    def active(self) -> bool:
        return any((self.exposure, self.white_balance, self.pose_rot_deg, self.pose_trans_m))

    def color_gain(self, rng) -> np.ndarray:
        """(3,) float32 gains for one frame: a shared exposure gain times a per-channel white-balance gain."""
        log_gain = self.exposure * rng.standard_normal() + self.white_balance * rng.standard_normal(3)
        return np.exp(log_gain).astype(np.float32)

    def recorded_pose(self, T_world_cam: np.ndarray, rng) -> np.ndarray:
        """``T_world_cam`` with a random rotation (about a uniformly random axis, through the camera centre) and
        translation error applied."""
        axis = rng.standard_normal(3)
        axis /= max(np.linalg.norm(axis), 1e-12)
        angle = math.radians(self.pose_rot_deg) * rng.standard_normal()
        Kx = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        dR = np.eye(3) + math.sin(angle) * Kx + (1.0 - math.cos(angle)) * (Kx @ Kx)  # Rodrigues
        T = np.array(T_world_cam, dtype=np.float64)
        T[:3, :3] = dR @ T[:3, :3]
        T[:3, 3] += self.pose_trans_m * rng.standard_normal(3)
        return T


def render_frame(room: SyntheticRoom, T_world_cam, camera: CameraModel, *, noise: bool = True, seed: int = 0,
                 index: int = 0, stamp: float | None = None,
                 variation: ViewVariation | None = None) -> SyntheticFrame:
    """Render one view from any pose (e.g. a live synthetic camera). The noise of frame ``index`` is drawn from
    (seed, room seed, index), so it is the same as frame ``index`` of ``render_sequence`` with that seed.
    ``variation`` draws from its own stream, so turning it on leaves the per-pixel noise as it was."""
    if not isinstance(room, SyntheticRoom):
        raise TypeError(f"render_frame: room must be a SyntheticRoom, got {type(room).__name__}")
    if not isinstance(camera, CameraModel):
        raise TypeError(f"render_frame: camera must be a CameraModel, got {type(camera).__name__}")
    if variation is not None and not isinstance(variation, ViewVariation):
        raise TypeError(f"render_frame: variation must be a ViewVariation, got {type(variation).__name__}")
    T = check_rigid(T_world_cam, "render_frame: T_world_cam")
    view = room.render(T, camera)
    rgb = room._shade(view) * np.float32(255.0)
    depth = np.where(np.isfinite(view["depth"]), view["depth"], 0.0)
    T_recorded = T
    if variation is not None and variation.active:
        vrng = np.random.default_rng(np.random.SeedSequence([int(seed), int(room.seed or 0), int(index), 1]))
        rgb *= variation.color_gain(vrng)
        T_recorded = variation.recorded_pose(T, vrng)
    if noise:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(room.seed or 0), int(index)]))
        depth = _depth_noise(depth, view["cos_incidence"], rng)
        rgb += 2.0 * rng.standard_normal(rgb.shape, dtype=np.float32)
    color = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    prim = view["prim"]
    frame = RGBDFrame(color=color, depth=depth.astype(np.float32), camera=camera, T_world_cam=T_recorded,
                      index=int(index), stamp=index / 30.0 if stamp is None else float(stamp), depth_scale=1000.0)
    return SyntheticFrame(frame=frame, class_map=room._class_lut[prim], instance_map=room._instance_lut[prim])


def render_sequence(room: SyntheticRoom, n_frames: int = 60, width: int = 320, height: int = 240,
                    noise: bool = True, seed: int = 0, *, loop_fraction: float = 1.0,
                    camera: CameraModel | None = None,
                    variation: ViewVariation | None = None) -> list[SyntheticFrame]:
    """Render ``n_frames`` views along the room's camera loop (``room.camera_poses``).

    noise=True adds depth noise (see ``_depth_noise``) and mild colour sensor noise; noise=False gives the exact
    ray-cast depth (float32 metres, 0 where the ray escapes). ``variation`` adds per-frame exposure, white balance
    and pose error (see ``ViewVariation``). Frame i has index i and stamp i / 30 s. A given ``camera`` overrides
    width and height.
    """
    if not isinstance(room, SyntheticRoom):
        raise TypeError(f"render_sequence: room must be a SyntheticRoom, got {type(room).__name__}")
    if int(n_frames) < 1:
        raise ValueError(f"render_sequence: n_frames must be >= 1, got {n_frames}")
    if camera is None:
        camera = default_camera(width, height)
    elif not isinstance(camera, CameraModel):
        raise TypeError(f"render_sequence: camera must be a CameraModel, got {type(camera).__name__}")
    return [render_frame(room, T, camera, noise=noise, seed=seed, index=i, variation=variation)
            for i, T in enumerate(room.camera_poses(int(n_frames), loop_fraction))]


