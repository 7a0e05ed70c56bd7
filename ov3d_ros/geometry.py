"""Camera model, back-projection and rigid transforms: the one geometric source of truth.

Conventions (docs/architecture.md):
- Camera frames are REP 103 optical frames: x right, y down, z forward.
- Poses are 4x4 float64 camera-to-world matrices ``T_world_cam``: p_w = T_world_cam @ [p_c; 1].
- Pixels are (u, v) = (column, row); pixel (u, v) looks along K^-1 (u, v, 1)^T, i.e. integer coordinates are
  pixel centres (the OpenCV / ROS CameraInfo convention).
- Depth is (H, W) float32 metres, or uint16 in ``depth_scale`` units per metre (ScanNet: 1000).

Everything here is numpy-only so that every other module (fusion, data readers, nodes) can import it cheaply; the
loop of ``backproject`` is compiled (``pixel_kernels``, numba) and imported on its first call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "CameraModel",
    "Backprojection",
    "DTypeError",
    "backproject",
    "check_rigid",
    "invert_rigid",
    "transform_points",
    "project",
    "check_depth",
    "depth_to_metres",
    "check_color",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "rigid_from_quaternion",
    "slerp",
]


class DTypeError(TypeError, ValueError):
    """An array has the wrong dtype.

    It is both a TypeError (the natural type for a wrong dtype) and a ValueError (what the architecture contract
    promises for bad frames), so callers catching either one see it.
    """


def check_finite_positive(value, name: str, who: str) -> float:
    """``value`` as a float, or a TypeError/ValueError saying which setting of ``who`` is wrong."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {value!r}") from None
    if not np.isfinite(value) or value <= 0.0:
        raise ValueError(f"{who}: {name} must be finite and > 0, got {value}")
    return value


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of one image size (no distortion: images are expected rectified).

    fx, fy, cx, cy are in pixels; width, height in pixels.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                if isinstance(value, (float, np.floating)) and float(value).is_integer():
                    value = int(value)
                else:
                    raise TypeError(f"CameraModel: {name} must be an integer, got {value!r}")
            if value <= 0:
                raise ValueError(f"CameraModel: {name} must be > 0, got {value}")
            object.__setattr__(self, name, int(value))
        # A zero (or negative) focal length makes K singular: no ray can be recovered from a pixel.
        for name in ("fx", "fy"):
            object.__setattr__(self, name, check_finite_positive(getattr(self, name), name, "CameraModel"))
        for name in ("cx", "cy"):
            try:
                value = float(getattr(self, name))
            except (TypeError, ValueError):
                raise TypeError(f"CameraModel: {name} must be a number, got {getattr(self, name)!r}") from None
            if not np.isfinite(value):
                raise ValueError(f"CameraModel: {name} must be finite, got {value}")
            object.__setattr__(self, name, value)

    @property
    def K(self) -> np.ndarray:
        """The 3x3 float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64)

    @classmethod
    def from_K(cls, K, width: int, height: int) -> "CameraModel":
        """Build from a 3x3 intrinsic matrix (e.g. ROS CameraInfo.k reshaped, or a ScanNet intrinsic file).

        A 4x4 matrix (ScanNet's ``intrinsic_depth.txt``) is accepted when its extra row/column is the identity.
        """
        K = np.asarray(K, dtype=np.float64)
        if K.shape == (4, 4):
            if not (np.allclose(K[:3, 3], 0.0) and np.allclose(K[3], [0.0, 0.0, 0.0, 1.0])):
                raise ValueError(f"CameraModel.from_K: a 4x4 K must be [[K3, 0], [0, 1]], got\n{K}")
            K = K[:3, :3]
        if K.shape != (3, 3):
            raise ValueError(f"CameraModel.from_K: K must be 3x3, got shape {K.shape}")
        if not np.all(np.isfinite(K)):
            raise ValueError(f"CameraModel.from_K: K has non-finite entries:\n{K}")
        if abs(np.linalg.det(K)) < 1e-12:
            raise ValueError(f"CameraModel.from_K: K is singular (det={np.linalg.det(K):.3g}):\n{K}")
        if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9):
            raise ValueError(f"CameraModel.from_K: last row of K must be [0, 0, 1], got {K[2].tolist()}")
        if abs(K[1, 0]) > 1e-9 or abs(K[0, 1]) > 1e-9 * max(1.0, abs(K[0, 0])):
            raise ValueError(f"CameraModel.from_K: K has skew or shear (K[0,1]={K[0, 1]}, K[1,0]={K[1, 0]}), "
                             "which this pinhole model does not represent")
        return cls(width=width, height=height, fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2])

    def scaled(self, factor: float) -> "CameraModel":
        """The same camera for an image resized by ``factor`` (e.g. 0.5 for half resolution).

        Pixel centres sit at integer coordinates, so the principal point maps as (c + 0.5) * f - 0.5 (a plain c * f
        would shift the image by half a pixel). The new size is rounded to whole pixels.
        """
        factor = float(factor)
        if not np.isfinite(factor) or factor <= 0.0:
            raise ValueError(f"CameraModel.scaled: factor must be finite and > 0, got {factor}")
        width = int(round(self.width * factor))
        height = int(round(self.height * factor))
        if width <= 0 or height <= 0:
            raise ValueError(f"CameraModel.scaled: factor {factor} shrinks {self.width}x{self.height} to nothing")
        return CameraModel(
            width=width,
            height=height,
            fx=self.fx * factor,
            fy=self.fy * factor,
            cx=(self.cx + 0.5) * factor - 0.5,
            cy=(self.cy + 0.5) * factor - 0.5,
        )


def check_rigid(T, name: str = "pose", *, atol: float = 1e-4) -> np.ndarray:
    """Return ``T`` as a (4, 4) float64 array, or raise ValueError naming what makes it non-rigid.

    ``atol`` is loose enough for poses stored with ~6 significant digits (ScanNet text files, float32 messages)
    and tight enough to catch scaled, sheared or reflected matrices.
    """
    if isinstance(T, (str, bytes)) or T is None:
        raise TypeError(f"{name}: expected a 4x4 matrix, got {type(T).__name__}")
    try:
        T = np.array(T, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: cannot be read as a numeric 4x4 matrix ({exc})") from None
    if T.shape != (4, 4):
        raise ValueError(f"{name}: must be a 4x4 matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError(f"{name}: has non-finite entries (NaN/inf; e.g. an invalid tracking pose):\n{T}")
    if np.max(np.abs(T[3] - [0.0, 0.0, 0.0, 1.0])) > atol:
        raise ValueError(f"{name}: last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    orth_err = float(np.max(np.abs(R.T @ R - np.eye(3))))
    if orth_err > atol:
        raise ValueError(f"{name}: rotation block is not orthonormal (max |R^T R - I| = {orth_err:.3g} > {atol:g})")
    det = float(np.linalg.det(R))
    if abs(det - 1.0) > atol:
        raise ValueError(f"{name}: rotation block has det {det:.6g}, expected +1 (a reflection is not a pose)")
    return T


def invert_rigid(T) -> np.ndarray:
    """Inverse of a rigid 4x4 transform, exactly [R^T, -R^T t] (no general matrix inverse)."""
    T = check_rigid(T, "invert_rigid: T")
    R = T[:3, :3]
    out = np.eye(4, dtype=np.float64)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


# Quaternions are in ROS order (x, y, z, w) everywhere in the package.
def quaternion_to_matrix(q) -> np.ndarray:
    """3x3 rotation of the quaternion ``q`` = (x, y, z, w), normalised first (messages carry float rounding).

    Raises ValueError for a zero or non-finite quaternion, which is no rotation.
    """
    x, y, z, w = np.asarray(q, dtype=np.float64).reshape(4)
    n = x * x + y * y + z * z + w * w
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion ({x}, {y}, {z}, {w}) is not a rotation (zero or non-finite norm)")
    s = 2.0 / n
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ])


def matrix_to_quaternion(R) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0 of a 3x3 rotation (Shepperd: branch on the largest diagonal term,
    which keeps the division well conditioned)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def rigid_from_quaternion(translation, quaternion) -> np.ndarray:
    """4x4 float64 transform from a translation (x, y, z) and a quaternion (x, y, z, w); ValueError when either
    holds a non-finite value."""
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(quaternion)
    T[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(T)):
        raise ValueError(f"transform with translation {list(T[:3, 3])} is not finite")
    return T


def slerp(q0, q1, a: float) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions (x, y, z, w) at fraction ``a`` in [0, 1], the short
    way round; nearly equal quaternions are interpolated linearly (and renormalised)."""
    q0 = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    q1 = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    dot = float(q0 @ q1)
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)


def _as_points(xyz, name: str) -> np.ndarray:
    xyz = np.asarray(xyz)
    if not (np.issubdtype(xyz.dtype, np.floating) or np.issubdtype(xyz.dtype, np.integer)):
        raise DTypeError(f"{name}: points must be numeric, got dtype {xyz.dtype}")
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"{name}: points must have shape (N, 3), got {xyz.shape}")
    return xyz


def transform_points(T, xyz) -> np.ndarray:
    """Apply a rigid 4x4 transform to (N, 3) points.

    Computed in float64; returned in the input's floating dtype (float64 for integer input), so float32 clouds
    stay float32.
    """
    T = check_rigid(T, "transform_points: T")
    xyz = _as_points(xyz, "transform_points")
    out_dtype = xyz.dtype if np.issubdtype(xyz.dtype, np.floating) else np.float64
    out = xyz.astype(np.float64, copy=False) @ T[:3, :3].T + T[:3, 3]
    return out.astype(out_dtype, copy=False)


def project(xyz_world, camera: CameraModel, T_world_cam) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into a camera.

    Returns ``uv`` (N, 2) float64 continuous pixel coordinates (integer values = pixel centres) and ``z`` (N,)
    float64 depth along the optical axis. Points with z <= 0 (behind the camera) get uv = NaN, so a caller that
    rounds and bounds-checks uv never keeps them by accident. Points outside the image are not removed: check
    0 <= round(u) < width yourself.
    """
    if not isinstance(camera, CameraModel):
        raise TypeError(f"project: camera must be a CameraModel, got {type(camera).__name__}")
    T_cam_world = invert_rigid(check_rigid(T_world_cam, "project: T_world_cam"))
    p = transform_points(T_cam_world, np.asarray(_as_points(xyz_world, "project"), dtype=np.float64))
    z = p[:, 2]
    uv = np.full((len(p), 2), np.nan, dtype=np.float64)
    front = z > 0.0
    uv[front, 0] = camera.fx * p[front, 0] / z[front] + camera.cx
    uv[front, 1] = camera.fy * p[front, 1] / z[front] + camera.cy
    return uv, z


class Backprojection(NamedTuple):
    """Points of the valid pixels of one depth image, row-major over the (strided) pixel grid."""

    xyz: np.ndarray  # (N, 3) float32, in the world frame (camera frame when no pose was given)
    rgb: np.ndarray  # (N, 3) uint8, zeros when no colour image was given
    pixels: np.ndarray  # (N, 2) int32 (u, v) in the full-resolution image


def check_depth(depth, depth_scale: float = 1000.0, name: str = "depth") -> np.ndarray:
    """``depth`` as an (H, W) float32 (metres) or uint16 (``depth_scale`` units per metre) array, checked, not
    converted."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"{name}: must be a 2-D (H, W) image, got shape {depth.shape}")
    if depth.dtype == np.uint16:
        depth_scale = float(depth_scale)
        if not np.isfinite(depth_scale) or depth_scale <= 0.0:
            raise ValueError(f"{name}: depth_scale must be finite and > 0 for uint16 depth, got {depth_scale}")
    elif depth.dtype != np.float32:
        raise DTypeError(f"{name}: dtype must be float32 (metres) or uint16 (depth_scale units per metre), "
                         f"got {depth.dtype}")
    return depth


def depth_to_metres(depth, depth_scale: float = 1000.0, name: str = "depth") -> np.ndarray:
    """(H, W) float32 metres from float32 metres or uint16 ``depth_scale`` units per metre.

    Invalid values (0, NaN, inf) are kept as they are; callers mask them.
    """
    depth = check_depth(depth, depth_scale, name)
    return depth.astype(np.float32) / np.float32(depth_scale) if depth.dtype == np.uint16 else depth


def check_color(color, shape: tuple[int, int], name: str = "color") -> np.ndarray:
    """Check an (H, W, 3) uint8 RGB image against the depth image's (H, W)."""
    color = np.asarray(color)
    if color.dtype != np.uint8:
        raise DTypeError(f"{name}: dtype must be uint8 RGB, got {color.dtype}")
    if color.ndim != 3 or color.shape[2] != 3:
        raise ValueError(f"{name}: must have shape (H, W, 3) RGB, got {color.shape}")
    if color.shape[:2] != tuple(shape):
        raise ValueError(f"{name}: size {color.shape[1]}x{color.shape[0]} (WxH) differs from the depth image's "
                         f"{shape[1]}x{shape[0]}")
    return color


def backproject(
    depth,
    camera: CameraModel,
    T_world_cam=None,
    color=None,
    *,
    depth_scale: float = 1000.0,
    min_depth: float = 0.1,
    max_depth: float = 10.0,
    stride: int = 1,
) -> Backprojection:
    """p = T_world_cam · [d · K⁻¹ (u, v, 1)ᵀ] for every valid pixel.

    A pixel is valid when its depth d (metres) is finite and min_depth <= d <= max_depth (so 0, NaN and inf are
    always dropped). ``stride`` keeps pixels with u % stride == 0 and v % stride == 0. ``depth_scale`` applies to
    uint16 depth only; float32 depth is already metres.
    """
    if not isinstance(camera, CameraModel):
        raise TypeError(f"backproject: camera must be a CameraModel, got {type(camera).__name__}")
    depth = check_depth(depth, depth_scale, "backproject: depth")
    if depth.shape != (camera.height, camera.width):
        raise ValueError(f"backproject: depth is {depth.shape[1]}x{depth.shape[0]} (WxH) but the camera is "
                         f"{camera.width}x{camera.height}")
    if color is not None:
        color = check_color(color, depth.shape, "backproject: color")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"backproject: stride must be an integer >= 1, got {stride!r}")
    min_depth, max_depth = float(min_depth), float(max_depth)
    if not (min_depth >= 0.0 and max_depth > min_depth):  # also rejects NaN limits
        raise ValueError(f"backproject: need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
    T = None if T_world_cam is None else check_rigid(T_world_cam, "backproject: T_world_cam")
    from .pixel_kernels import backproject_pixels  # compiled (numba): imported when first needed

    sub_h, sub_w = -(-depth.shape[0] // stride), -(-depth.shape[1] // stride)
    ray_x = ((np.arange(sub_w) * stride - camera.cx) / camera.fx).astype(np.float32)
    ray_y = ((np.arange(sub_h) * stride - camera.cy) / camera.fy).astype(np.float32)
    to_world = np.zeros((4, 3), dtype=np.float32)  # [x y z 1] @ to_world = R [x y z]^T + t
    if T is None:
        to_world[:3] = np.eye(3)
    else:
        to_world[:3] = T[:3, :3].T
        to_world[3] = T[:3, 3]
    xyz, rgb, pixels = backproject_pixels(depth, float(depth_scale) if depth.dtype == np.uint16 else 0.0, int(stride),
                                          min_depth, max_depth, ray_x, ray_y, to_world, color)
    return Backprojection(xyz=xyz, rgb=rgb, pixels=pixels)
