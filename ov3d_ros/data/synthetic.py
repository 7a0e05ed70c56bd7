"""Procedural indoor rooms and a vectorised ray-cast RGB-D renderer with ground truth.

A room is an axis-aligned box [0, Lx] x [0, Ly] (world z up, floor at z = 0, no ceiling) with four walls, a floor
and 8-20 pieces of furniture built from primitives (oriented boxes, vertical cylinders / cone frustums, spheres).
Every class has one consistent, distinctive shape (a chair is always seat + 4 legs + backrest) whose sizes vary
moderately per instance. Colours follow ``appearance``: "materials" (default) draws each instance's albedo from
materials typical of its class (wood, fabric, painted plaster, dark plastic ...), which overlap between classes as
they do in real rooms; "random" draws any colour, so only geometry tells classes apart.

The renderer intersects every pixel ray with every primitive analytically (numpy), for a camera moving on a smooth
loop around the room centre. Each frame gives colour (Lambertian shading x instance colour x a texture fixed to the
surface), depth in metres (optionally with a Kinect-like noise model), the pose, the intrinsics and per-pixel class
and instance maps. ``ViewVariation`` adds what changes from view to view on a real sensor: auto-exposure, white
balance and error in the recorded pose. ``SyntheticRoom.ground_truth_cloud`` samples the exposed surfaces of every
primitive.

Everything is deterministic given the seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ov3d_ros.cloud import PointCloud
from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import CameraModel, check_rigid

__all__ = [
    "APPEARANCES",
    "CLASS_NAMES",
    "MATERIALS",
    "Box",
    "Cylinder",
    "Sphere",
    "Quad",
    "SceneObject",
    "SyntheticRoom",
    "SyntheticFrame",
    "ViewVariation",
    "default_camera",
    "labelled_reconstruction",
    "render_frame",
    "render_sequence",
]

CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "table", "chair", "cabinet", "sofa", "bed", "lamp", "monitor", "bin", "book", "picture",
)
_CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}

_EPS_T = 1e-6  # rays start at the camera centre; ignore hits closer than this


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------------------------------------------------
# Primitives. Each one answers four questions: where does a bundle of rays from one origin hit it (t, normal), what
# world box bounds it (for culling), which points sample its surface, and (for solids) which points lie inside it.
# Ray directions have camera-z component 1, so t is the depth along the optical axis.
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Box:
    """An oriented box: centre (3,), half extents (3,), rotation ``yaw`` about world z."""

    center: np.ndarray
    half: np.ndarray
    yaw: float = 0.0
    solid = True

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64)
        self.half = np.asarray(self.half, dtype=np.float64)
        if np.any(self.half <= 0):
            raise ValueError(f"Box: half extents must be > 0, got {self.half}")
        self.R = _rot_z(self.yaw)

    def corners(self) -> np.ndarray:
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        return (signs * self.half) @ self.R.T + self.center

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.corners()
        return c.min(0), c.max(0)

    def intersect(self, origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        # Slab test in the box frame, one axis at a time on 1-D component arrays (no (N, 3) temporaries).
        o = self.R.T @ (origin - self.center)
        c, s = self.R[0, 0], self.R[1, 0]
        t_near = np.full(len(dx), -np.inf)
        t_far = np.full(len(dx), np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            for d, o_k, h in ((c * dx + s * dy, o[0], self.half[0]), (c * dy - s * dx, o[1], self.half[1]),
                              (dz, o[2], self.half[2])):
                inv = 1.0 / d
                ta = (-h - o_k) * inv
                tb = (h - o_k) * inv
                np.maximum(t_near, np.minimum(ta, tb), out=t_near)
                np.minimum(t_far, np.maximum(ta, tb), out=t_far)
        hit = (t_near <= t_far) & (t_near > _EPS_T)
        return np.where(hit, t_near, np.inf)

    def normal_at(self, points: np.ndarray) -> np.ndarray:
        """Outward normals at surface points: the face whose slab the point is closest to the edge of."""
        local = (points - self.center) @ self.R
        axis = np.argmax(np.abs(local) / self.half, axis=1)
        n = np.zeros_like(local)
        rows = np.arange(len(local))
        n[rows, axis] = np.sign(local[rows, axis])
        return n @ self.R.T

    def sample_surface(self, spacing: float) -> tuple[np.ndarray, np.ndarray]:
        pts, nrm = [], []
        for axis in range(3):
            a, b = [i for i in range(3) if i != axis]
            ua = _grid_1d(2 * self.half[a], spacing)
            ub = _grid_1d(2 * self.half[b], spacing)
            A, B = np.meshgrid(ua, ub, indexing="ij")
            for sign in (-1.0, 1.0):
                p = np.zeros((A.size, 3))
                p[:, a] = A.ravel()
                p[:, b] = B.ravel()
                p[:, axis] = sign * self.half[axis]
                n = np.zeros_like(p)
                n[:, axis] = sign
                pts.append(p)
                nrm.append(n)
        p = np.concatenate(pts) @ self.R.T + self.center
        n = np.concatenate(nrm) @ self.R.T
        return p, n

    def contains(self, points: np.ndarray, eps: float) -> np.ndarray:
        local = (points - self.center) @ self.R
        return np.all(np.abs(local) <= self.half + eps, axis=1)


@dataclass
class Cylinder:
    """A vertical cylinder or cone frustum: axis at (x, y), from z0 (radius r0) to z1 (radius r1).

    ``cap_bottom`` / ``cap_top`` close the ends (an open tube is a zero-thickness shell, e.g. a lamp shade).
    ``solid`` says whether the volume hides surfaces inside it (ground-truth sampling only).
    """

    x: float
    y: float
    z0: float
    z1: float
    r0: float
    r1: float
    cap_bottom: bool = True
    cap_top: bool = True
    solid: bool = True

    def __post_init__(self):
        if not (self.z1 > self.z0 and self.r0 > 0 and self.r1 > 0):
            raise ValueError(f"Cylinder: need z1 > z0 and radii > 0, got {self}")
        self.k = (self.r1 - self.r0) / (self.z1 - self.z0)  # dr/dz

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.r0, self.r1)
        return np.array([self.x - r, self.y - r, self.z0]), np.array([self.x + r, self.y + r, self.z1])

    def intersect(self, origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        ox, oy, oz = origin[0] - self.x, origin[1] - self.y, origin[2]
        # Side: (ox + t dx)^2 + (oy + t dy)^2 = (a0 + a1 t)^2 with r(z) = r0 + k (z - z0).
        a0 = self.r0 + self.k * (oz - self.z0)
        a1 = self.k * dz
        A = dx * dx + dy * dy - a1 * a1
        B = 2.0 * (ox * dx + oy * dy - a0 * a1)
        C = ox * ox + oy * oy - a0 * a0
        t = np.full(len(dx), np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            disc = B * B - 4.0 * A * C
            sq = np.sqrt(np.maximum(disc, 0.0))
            safe_A = np.where(np.abs(A) > 1e-12, A, np.nan)
            roots = [(-B - sq) / (2.0 * safe_A), (-B + sq) / (2.0 * safe_A)]
            roots.append(np.where(np.isnan(safe_A), -C / B, np.nan))  # ray parallel to a generator
            for root in roots:
                z = oz + root * dz
                ok = (disc >= 0) & (root > _EPS_T) & (z >= self.z0) & (z <= self.z1) & (root < t)
                ok &= (a0 + a1 * root) > 0  # reject the mirrored nappe of the cone
                t = np.where(ok, root, t)
            for zc, r, cap in ((self.z0, self.r0, self.cap_bottom), (self.z1, self.r1, self.cap_top)):
                if not cap:
                    continue
                tc = (zc - oz) / dz
                qx, qy = ox + tc * dx, oy + tc * dy
                ok = (tc > _EPS_T) & (qx * qx + qy * qy <= r * r) & (tc < t)
                t = np.where(ok, tc, t)
        return t

    def normal_at(self, points: np.ndarray) -> np.ndarray:
        """Outward normals: a cap where the point is nearer to a (closed) cap plane than to the side."""
        px, py, z = points[:, 0] - self.x, points[:, 1] - self.y, points[:, 2]
        rho = np.maximum(np.hypot(px, py), 1e-12)
        n = np.stack([px / rho, py / rho, np.full_like(z, -self.k)], axis=1)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        side_dist = np.abs(rho - (self.r0 + self.k * (z - self.z0))) / math.hypot(1.0, self.k)
        for zc, cap, nz in ((self.z0, self.cap_bottom, -1.0), (self.z1, self.cap_top, 1.0)):
            if cap:
                on_cap = np.abs(z - zc) < side_dist
                n[on_cap] = (0.0, 0.0, nz)
        return n

    def sample_surface(self, spacing: float) -> tuple[np.ndarray, np.ndarray]:
        height = self.z1 - self.z0
        slant = math.hypot(height, self.r1 - self.r0)
        n_theta = max(8, math.ceil(2 * math.pi * max(self.r0, self.r1) / spacing))
        theta = (np.arange(n_theta) + 0.5) * (2 * math.pi / n_theta)
        zs = self.z0 + _grid_1d(slant, spacing) * (height / slant) + height / 2
        T, Z = np.meshgrid(theta, zs, indexing="ij")
        R = self.r0 + self.k * (Z - self.z0)
        p = np.stack([self.x + R * np.cos(T), self.y + R * np.sin(T), Z], -1).reshape(-1, 3)
        n = np.stack([np.cos(T), np.sin(T), np.full_like(T, -self.k)], -1).reshape(-1, 3)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        pts, nrm = [p], [n]
        for zc, r, cap, nz in ((self.z0, self.r0, self.cap_bottom, -1.0), (self.z1, self.r1, self.cap_top, 1.0)):
            if cap:
                g = _grid_1d(2 * r, spacing)
                X, Y = np.meshgrid(g, g, indexing="ij")
                inside = X * X + Y * Y <= r * r
                if not inside.any():
                    X, Y, inside = np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1), bool)
                q = np.stack([X[inside] + self.x, Y[inside] + self.y, np.full(inside.sum(), zc)], -1)
                pts.append(q)
                nrm.append(np.tile([0.0, 0.0, nz], (len(q), 1)))
        return np.concatenate(pts), np.concatenate(nrm)

    def contains(self, points: np.ndarray, eps: float) -> np.ndarray:
        z = points[:, 2]
        rho = np.hypot(points[:, 0] - self.x, points[:, 1] - self.y)
        r = self.r0 + self.k * (np.clip(z, self.z0, self.z1) - self.z0)
        return (z >= self.z0 - eps) & (z <= self.z1 + eps) & (rho <= r + eps)


@dataclass
class Sphere:
    center: np.ndarray
    radius: float
    solid = True

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64)
        if self.radius <= 0:
            raise ValueError(f"Sphere: radius must be > 0, got {self.radius}")

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        return self.center - self.radius, self.center + self.radius

    def intersect(self, origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        oc = origin - self.center
        A = dx * dx + dy * dy + dz * dz
        B = 2.0 * (dx * oc[0] + dy * oc[1] + dz * oc[2])
        C = oc @ oc - self.radius ** 2
        disc = B * B - 4 * A * C
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0 = (-B - sq) / (2 * A)
        t1 = (-B + sq) / (2 * A)
        t = np.where(t0 > _EPS_T, t0, t1)
        return np.where((disc >= 0) & (t > _EPS_T), t, np.inf)

    def normal_at(self, points: np.ndarray) -> np.ndarray:
        n = points - self.center
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)

    def sample_surface(self, spacing: float) -> tuple[np.ndarray, np.ndarray]:
        # Fibonacci lattice: near-uniform points, deterministic.
        n = max(12, math.ceil(4 * math.pi * self.radius ** 2 / spacing ** 2))
        i = np.arange(n) + 0.5
        z = 1 - 2 * i / n
        phi = i * math.pi * (3 - math.sqrt(5))
        r = np.sqrt(1 - z * z)
        normal = np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)
        return self.center + self.radius * normal, normal

    def contains(self, points: np.ndarray, eps: float) -> np.ndarray:
        return np.linalg.norm(points - self.center, axis=1) <= self.radius + eps


@dataclass
class Quad:
    """A rectangle: ``origin`` + s * ``edge_u`` + w * ``edge_v`` for s, w in [0, 1] (edges perpendicular)."""

    origin: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    solid = False

    def __post_init__(self):
        self.origin = np.asarray(self.origin, dtype=np.float64)
        self.edge_u = np.asarray(self.edge_u, dtype=np.float64)
        self.edge_v = np.asarray(self.edge_v, dtype=np.float64)
        n = np.cross(self.edge_u, self.edge_v)
        self.normal = n / np.linalg.norm(n)
        # Walls and floor are axis-aligned: their intersection needs one division per ray.
        axis = int(np.argmax(np.abs(self.normal)))
        self._axis = axis if abs(self.normal[axis]) > 1 - 1e-12 else None
        lo, hi = self.aabb()
        self._lo, self._hi = lo, hi

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.origin + np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float64) @ np.stack(
            [self.edge_u, self.edge_v])
        return c.min(0), c.max(0)

    def intersect(self, origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        comps = (dx, dy, dz)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self._axis is not None:
                k = self._axis
                t = (self.origin[k] - origin[k]) / comps[k]
                ok = (t > _EPS_T) & np.isfinite(t)
                for j in range(3):
                    if j != k:
                        q = origin[j] + t * comps[j]
                        ok &= (q >= self._lo[j] - 1e-9) & (q <= self._hi[j] + 1e-9)
                return np.where(ok, t, np.inf)
            denom = dx * self.normal[0] + dy * self.normal[1] + dz * self.normal[2]
            t = ((self.origin - origin) @ self.normal) / denom
        tt = np.where(np.isfinite(t), t, 0.0)
        rel = [origin[j] - self.origin[j] + tt * comps[j] for j in range(3)]
        s = sum(r * e for r, e in zip(rel, self.edge_u)) / (self.edge_u @ self.edge_u)
        w = sum(r * e for r, e in zip(rel, self.edge_v)) / (self.edge_v @ self.edge_v)
        ok = np.isfinite(t) & (t > _EPS_T) & (s >= 0) & (s <= 1) & (w >= 0) & (w <= 1)
        return np.where(ok, t, np.inf)

    def normal_at(self, points: np.ndarray) -> np.ndarray:
        return np.tile(self.normal, (len(points), 1))

    def sample_surface(self, spacing: float) -> tuple[np.ndarray, np.ndarray]:
        lu, lv = np.linalg.norm(self.edge_u), np.linalg.norm(self.edge_v)
        S, W = np.meshgrid(_grid_1d(lu, spacing) / lu + 0.5, _grid_1d(lv, spacing) / lv + 0.5, indexing="ij")
        p = self.origin + S.reshape(-1, 1) * self.edge_u + W.reshape(-1, 1) * self.edge_v
        return p, np.tile(self.normal, (len(p), 1))

    def contains(self, points: np.ndarray, eps: float) -> np.ndarray:
        return np.zeros(len(points), dtype=bool)


def _grid_1d(length: float, spacing: float) -> np.ndarray:
    """Cell centres of a regular 1-D grid over [-length/2, length/2] with cells no larger than ``spacing``."""
    n = max(1, math.ceil(length / spacing - 1e-9))
    return (np.arange(n) + 0.5) * (length / n) - length / 2


# ----------------------------------------------------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class SceneObject:
    """One labelled thing in a room: its class, its instance id, its primitives (world frame), its colour."""

    class_name: str
    instance_id: int
    primitives: list
    color: np.ndarray  # (3,) float in [0, 1], the albedo of the whole instance
    part_shades: list = field(default_factory=list)  # per primitive brightness factor (so parts show edges)

    @property
    def class_index(self) -> int:
        return _CLASS_INDEX[self.class_name]

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = zip(*(p.aabb() for p in self.primitives))
        return np.min(lo, axis=0), np.max(hi, axis=0)


def _pose_prims(local: list, x: float, y: float, yaw: float, z: float = 0.0) -> list:
    """Move primitives built in an object frame (origin on the floor/support, front = +y) into the world."""
    R = _rot_z(yaw)
    t = np.array([x, y, z])
    out = []
    for p in local:
        if isinstance(p, Box):
            out.append(Box(R @ p.center + t, p.half, p.yaw + yaw))
        elif isinstance(p, Cylinder):
            c = R @ np.array([p.x, p.y, 0.0]) + t
            out.append(Cylinder(c[0], c[1], p.z0 + z, p.z1 + z, p.r0, p.r1, p.cap_bottom, p.cap_top, p.solid))
        elif isinstance(p, Sphere):
            out.append(Sphere(R @ p.center + t, p.radius))
        else:
            raise TypeError(f"cannot pose {type(p).__name__}")
    return out


def _box(x0, x1, y0, y1, z0, z1) -> Box:
    return Box([(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2], [(x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2])


def _vary(rng, lo, hi):
    return float(rng.uniform(lo, hi))


# Builders return (local primitives, footprint half extents (hx, hy), height). Object frame: origin at the centre of
# the footprint on its support, +y = front, -y = back (the side put against a wall).
def _build_table(rng):
    w, d, h = _vary(rng, 0.8, 1.6), _vary(rng, 0.6, 0.9), _vary(rng, 0.70, 0.78)
    top_t, leg = _vary(rng, 0.03, 0.05), _vary(rng, 0.04, 0.06)
    inset = _vary(rng, 0.03, 0.08)
    prims = [_box(-w / 2, w / 2, -d / 2, d / 2, h - top_t, h)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - inset - leg / 2), sy * (d / 2 - inset - leg / 2)
            prims.append(_box(cx - leg / 2, cx + leg / 2, cy - leg / 2, cy + leg / 2, 0.0, h - top_t))
    return prims, (w / 2, d / 2), h


def _build_chair(rng):
    w, d = _vary(rng, 0.40, 0.50), _vary(rng, 0.40, 0.50)
    seat_h, seat_t, leg = _vary(rng, 0.42, 0.48), _vary(rng, 0.03, 0.05), _vary(rng, 0.03, 0.045)
    back_h, back_t = _vary(rng, 0.38, 0.50), _vary(rng, 0.03, 0.05)
    prims = [_box(-w / 2, w / 2, -d / 2, d / 2, seat_h - seat_t, seat_h)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - leg / 2), sy * (d / 2 - leg / 2)
            prims.append(_box(cx - leg / 2, cx + leg / 2, cy - leg / 2, cy + leg / 2, 0.0, seat_h - seat_t))
    prims.append(_box(-w / 2, w / 2, -d / 2, -d / 2 + back_t, seat_h, seat_h + back_h))
    return prims, (w / 2, d / 2), seat_h + back_h


def _build_cabinet(rng):
    w, d, h = _vary(rng, 0.5, 1.0), _vary(rng, 0.40, 0.55), _vary(rng, 1.1, 1.9)
    return [_box(-w / 2, w / 2, -d / 2, d / 2, 0.0, h)], (w / 2, d / 2), h


def _build_sofa(rng):
    w, d = _vary(rng, 1.6, 2.2), _vary(rng, 0.80, 0.95)
    base_h, back_h, arm_h = _vary(rng, 0.38, 0.45), _vary(rng, 0.80, 0.90), _vary(rng, 0.58, 0.66)
    back_t, arm_w = _vary(rng, 0.16, 0.22), _vary(rng, 0.14, 0.20)
    prims = [
        _box(-w / 2 + arm_w, w / 2 - arm_w, -d / 2 + back_t, d / 2, 0.0, base_h),  # seat block
        _box(-w / 2, w / 2, -d / 2, -d / 2 + back_t, 0.0, back_h),  # back
        _box(-w / 2, -w / 2 + arm_w, -d / 2 + back_t, d / 2, 0.0, arm_h),  # arms
        _box(w / 2 - arm_w, w / 2, -d / 2 + back_t, d / 2, 0.0, arm_h),
    ]
    return prims, (w / 2, d / 2), back_h


def _build_bed(rng):
    w, length = _vary(rng, 0.95, 1.6), _vary(rng, 1.9, 2.1)
    h, head_h, head_t = _vary(rng, 0.45, 0.60), _vary(rng, 0.95, 1.15), _vary(rng, 0.05, 0.08)
    prims = [
        _box(-w / 2, w / 2, -length / 2 + head_t, length / 2, 0.0, h),  # mattress on its base
        _box(-w / 2, w / 2, -length / 2, -length / 2 + head_t, 0.0, head_h),  # headboard (at the back = wall)
    ]
    return prims, (w / 2, length / 2), head_h


def _build_lamp(rng, on_table: bool):
    s = _vary(rng, 0.30, 0.40) if on_table else 1.0
    height = s * _vary(rng, 1.45, 1.70)
    base_r, base_h = s * _vary(rng, 0.12, 0.16), max(0.01, s * 0.03)
    pole_r = max(0.006, s * _vary(rng, 0.012, 0.018))
    shade_h, shade_lo, shade_hi = s * _vary(rng, 0.22, 0.30), s * _vary(rng, 0.17, 0.22), s * _vary(rng, 0.10, 0.13)
    shade_z0 = height - shade_h
    prims = [
        Cylinder(0.0, 0.0, 0.0, base_h, base_r, base_r),
        Cylinder(0.0, 0.0, base_h, shade_z0 + 0.4 * shade_h, pole_r, pole_r),
        Cylinder(0.0, 0.0, shade_z0, height, shade_lo, shade_hi, cap_bottom=False, cap_top=False, solid=False),
        Sphere([0.0, 0.0, shade_z0 + 0.4 * shade_h], s * 0.045),  # the bulb, seen through the open shade
    ]
    r = max(base_r, shade_lo)
    return prims, (r, r), height


def _build_monitor(rng):
    w, h, t = _vary(rng, 0.48, 0.66), _vary(rng, 0.30, 0.42), _vary(rng, 0.02, 0.035)
    neck_h = _vary(rng, 0.10, 0.16)
    bw, bd = _vary(rng, 0.18, 0.24), _vary(rng, 0.14, 0.20)
    prims = [
        _box(-bw / 2, bw / 2, -bd / 2, bd / 2, 0.0, 0.015),  # foot
        _box(-0.02, 0.02, -0.035, -0.015, 0.015, neck_h + 0.05),  # neck, behind the panel's centre
        _box(-w / 2, w / 2, -0.015, -0.015 + t, neck_h, neck_h + h),  # panel (front face = +y)
    ]
    return prims, (max(w, bw) / 2, max(bd, t + 0.05) / 2), neck_h + h


def _build_bin(rng):
    r, h = _vary(rng, 0.12, 0.18), _vary(rng, 0.30, 0.45)
    prims = [
        Cylinder(0.0, 0.0, 0.0, 0.012, r, r),  # bottom plate
        Cylinder(0.0, 0.0, 0.0, h, r, r * _vary(rng, 1.0, 1.12), cap_bottom=False, cap_top=False),  # open wall
    ]
    return prims, (r * 1.12, r * 1.12), h


def _build_book(rng):
    w, d, t = _vary(rng, 0.14, 0.22), _vary(rng, 0.20, 0.30), _vary(rng, 0.02, 0.05)
    return [_box(-w / 2, w / 2, -d / 2, d / 2, 0.0, t)], (w / 2, d / 2), t


def _build_picture(rng):
    w, h, t = _vary(rng, 0.4, 1.0), _vary(rng, 0.3, 0.8), _vary(rng, 0.015, 0.03)
    # Local frame: back on the wall plane y = 0 (flush), front at +y, centred on z = 0.
    return [_box(-w / 2, w / 2, 0.0, t, -h / 2, h / 2)], (w / 2, t), h


# ----------------------------------------------------------------------------------------------------------------------
# 2-D footprint checks (oriented rectangles, separating axis test)
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class _Footprint:
    x: float
    y: float
    hx: float
    hy: float
    yaw: float
    z0: float = 0.0
    z1: float = 10.0

    def corners(self) -> np.ndarray:
        R = _rot_z(self.yaw)[:2, :2]
        local = np.array([[-self.hx, -self.hy], [self.hx, -self.hy], [self.hx, self.hy], [-self.hx, self.hy]])
        return local @ R.T + [self.x, self.y]

    def overlaps(self, other: "_Footprint", margin: float) -> bool:
        if self.z1 <= other.z0 + 1e-6 or other.z1 <= self.z0 + 1e-6:
            return False
        a, b = self.corners(), other.corners()
        for poly in (a, b):
            for i in range(4):
                edge = poly[(i + 1) % 4] - poly[i]
                axis = np.array([-edge[1], edge[0]]) / np.linalg.norm(edge)
                pa, pb = a @ axis, b @ axis
                if pa.max() + margin <= pb.min() or pb.max() + margin <= pa.min():
                    return False
        return True


# ----------------------------------------------------------------------------------------------------------------------
# The room
# ----------------------------------------------------------------------------------------------------------------------
def default_camera(width: int = 320, height: int = 240) -> CameraModel:
    """The synthetic camera: ~64 deg horizontal field of view, principal point at the image centre."""
    f = 0.8 * width
    return CameraModel(width=width, height=height, fx=f, fy=f, cx=(width - 1) / 2, cy=(height - 1) / 2)


class SyntheticRoom:
    """A procedurally generated room: ``objects`` (walls and floor first), its size and the camera loop."""

    def __init__(self, size, wall_height, objects, trajectory, seed):
        """Usually made by ``generate``. ``size`` (Lx, Ly) m; ``objects``: SceneObjects whose instance ids are
        unique; ``trajectory``: dict(center=(x, y), radii=(ax, ay), height, phase, pitch) for ``camera_poses``."""
        ids = [o.instance_id for o in objects]
        if len(set(ids)) != len(ids):
            raise ValueError("SyntheticRoom: instance ids must be unique")
        self.size = np.asarray(size, dtype=np.float64)  # (Lx, Ly) metres
        self.wall_height = float(wall_height)
        self.objects: list[SceneObject] = objects
        self.trajectory = dict(trajectory)  # centre, radii, height, phase, pitch (see camera_poses)
        self.seed = seed
        self.class_names = CLASS_NAMES
        prims, owners = [], []
        for i, obj in enumerate(objects):
            prims += obj.primitives
            owners += [i] * len(obj.primitives)
        self._prims = prims
        self._prim_class = np.array([objects[o].class_index for o in owners], dtype=np.int32)
        self._prim_instance = np.array([objects[o].instance_id for o in owners], dtype=np.int32)
        # Objects first, structure (walls, floor) last: a tie (a bin's bottom on the floor) goes to the object.
        self._render_order = [i for i, p in enumerate(prims) if not isinstance(p, Quad)]
        self._render_order += [i for i, p in enumerate(prims) if isinstance(p, Quad)]
        self._cull_corners = np.stack([_cull_corners(p) for p in prims]) if prims else np.zeros((0, 8, 3))
        self._prim_albedo = np.array(
            [objects[o].color * (objects[o].part_shades[j] if objects[o].part_shades else 1.0)
             for o, j in zip(owners, _local_indices(owners))], dtype=np.float64).reshape(-1, 3)
        # Per-pixel lookups index these with the primitive id; the extra last entry serves id -1 (no hit).
        self._albedo_lut = np.concatenate([self._prim_albedo, [[0.92, 0.92, 0.92]]]).astype(np.float32)
        self._class_lut = np.append(self._prim_class, -1).astype(np.int32)
        self._instance_lut = np.append(self._prim_instance, -1).astype(np.int32)

    def __repr__(self) -> str:
        return (f"SyntheticRoom(seed={self.seed}, size={self.size[0]:.2f}x{self.size[1]:.2f} m, "
                f"objects={len(self.furniture)}, classes={self.class_counts()})")

    @property
    def furniture(self) -> list[SceneObject]:
        """The objects other than walls and floor."""
        return [o for o in self.objects if o.class_name not in ("wall", "floor")]

    # ------------------------------------------------------------------------------------------------ generation
    @classmethod
    def generate(cls, seed: int = 0, *, min_objects: int = 8, max_objects: int = 20,
                 appearance: str = "materials") -> "SyntheticRoom":
        """A random room; the same seed gives the same room.

        ``appearance``: "materials" or "random" colours (see the module docstring). The geometry of a seed is the
        same in both modes: colours come from their own random stream.
        """
        if not (1 <= min_objects <= max_objects):
            raise ValueError(f"SyntheticRoom.generate: need 1 <= min_objects <= max_objects, "
                             f"got {min_objects}, {max_objects}")
        if appearance not in APPEARANCES:
            raise ValueError(f"SyntheticRoom.generate: appearance must be one of {APPEARANCES}, got {appearance!r}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5eed]))
        Lx, Ly = _vary(rng, 4.0, 7.0), _vary(rng, 4.0, 7.0)
        wall_h = _vary(rng, 2.5, 3.0)
        trajectory = {
            "center": (Lx / 2 + _vary(rng, -0.2, 0.2), Ly / 2 + _vary(rng, -0.2, 0.2)),
            "radii": (0.16 * Lx, 0.16 * Ly),
            "height": _vary(rng, 1.3, 1.5),
            "phase": _vary(rng, 0, 2 * math.pi),
            "pitch": math.radians(_vary(rng, 12.0, 18.0)),
        }
        color_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xc0104]))
        builder = _RoomBuilder(rng, Lx, Ly, wall_h, trajectory, color_rng if appearance == "materials" else None)
        objects = builder.build(min_objects, max_objects)
        return cls((Lx, Ly), wall_h, objects, trajectory, seed)

    # ------------------------------------------------------------------------------------------------ camera
    def camera_poses(self, n_frames: int, loop_fraction: float = 1.0) -> list[np.ndarray]:
        """Poses (T_world_cam, optical frame) on a smooth loop around the room centre, looking across the room.

        The camera sits on an ellipse at ~0.16 of the room size from the centre, at 1.3-1.5 m (+-5 cm bob), faces
        the room centre (+-8 deg sway) with a 12-18 deg (+-3 deg) downward pitch. Consecutive frames of a 60-frame loop
        differ by 6 deg of travel, so they overlap strongly.
        """
        if n_frames < 1:
            raise ValueError(f"camera_poses: n_frames must be >= 1, got {n_frames}")
        tr = self.trajectory
        cx, cy = tr["center"]
        ax, ay = tr["radii"]
        poses = []
        for i in range(n_frames):
            a = tr["phase"] + 2 * math.pi * loop_fraction * i / n_frames
            pos = np.array([cx + ax * math.cos(a), cy + ay * math.sin(a), tr["height"] + 0.05 * math.sin(2 * a)])
            yaw = math.atan2(cy - pos[1], cx - pos[0]) + math.radians(8.0) * math.sin(3 * a)
            pitch = tr["pitch"] + math.radians(3.0) * math.sin(2 * a + 1.0)
            forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
            right = np.cross(forward, [0.0, 0.0, 1.0])
            right /= np.linalg.norm(right)
            down = np.cross(forward, right)
            T = np.eye(4)
            T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, forward, pos
            poses.append(T)
        return poses

    # ------------------------------------------------------------------------------------------------ rendering
    def render(self, T_world_cam: np.ndarray, camera: CameraModel) -> dict:
        """Noise-free ray casting of one view.

        Returns a dict of (H, W) arrays: ``depth`` float64 metres along the optical axis (inf = no hit), ``prim``
        int64 primitive index (-1 = none), ``normal`` (H, W, 3) outward world normals, ``points``
        (H, W, 3) world hit points, ``dirs`` (H, W, 3) world ray directions (camera-z component 1),
        ``cos_incidence`` float32 |cos| of the angle between ray and surface normal.
        """
        H, W = camera.height, camera.width
        T_world_cam = np.asarray(T_world_cam, dtype=np.float64)
        R, origin = T_world_cam[:3, :3], T_world_cam[:3, 3].copy()
        u = (np.arange(W) - camera.cx) / camera.fx
        v = (np.arange(H) - camera.cy) / camera.fy
        # Ray directions with camera-frame z = 1, so every ray parameter t is directly the depth.
        DX = R[0, 0] * u[None, :] + R[0, 1] * v[:, None] + R[0, 2]
        DY = R[1, 0] * u[None, :] + R[1, 1] * v[:, None] + R[1, 2]
        DZ = R[2, 0] * u[None, :] + R[2, 1] * v[:, None] + R[2, 2]
        DX, DY, DZ = (np.ascontiguousarray(np.broadcast_to(a, (H, W))) for a in (DX, DY, DZ))
        best_t = np.full((H, W), np.inf)
        best_p = np.full((H, W), -1, dtype=np.int64)
        rects = _screen_rects(self._cull_corners, R, origin, camera)
        for i in self._render_order:
            rect = rects[i]
            if rect is None:
                continue
            v0, v1, u0, u1 = rect
            t = self._prims[i].intersect(origin, DX[v0:v1, u0:u1].ravel(), DY[v0:v1, u0:u1].ravel(),
                                         DZ[v0:v1, u0:u1].ravel()).reshape(v1 - v0, u1 - u0)
            view_t = best_t[v0:v1, u0:u1]
            closer = t < view_t
            np.copyto(view_t, t, where=closer)
            np.copyto(best_p[v0:v1, u0:u1], i, where=closer)
        dirs = np.stack([DX, DY, DZ], axis=-1)
        hit_t = np.where(np.isfinite(best_t), best_t, 0.0)
        points = origin + hit_t[..., None] * dirs
        # Normals only for the winning primitive of each pixel, grouped by primitive.
        normal = np.zeros((H * W, 3))
        flat_p = best_p.ravel()
        flat_pts = points.reshape(-1, 3)
        order = np.argsort(flat_p, kind="stable")
        sorted_p = flat_p[order]
        bounds = np.searchsorted(sorted_p, np.arange(len(self._prims) + 1))
        for i in range(len(self._prims)):
            a, b = bounds[i], bounds[i + 1]
            if b > a:
                idx = order[a:b]
                normal[idx] = self._prims[i].normal_at(flat_pts[idx])
        normal = normal.reshape(H, W, 3)
        # |cos| of the incidence angle: Lambertian headlight term and grazing-angle depth dropouts.
        cos_incidence = np.abs(np.einsum("hwc,hwc->hw", normal, dirs)) / np.sqrt(DX * DX + DY * DY + DZ * DZ)
        return {"depth": best_t, "normal": normal, "prim": best_p, "points": points, "dirs": dirs,
                "cos_incidence": cos_incidence.astype(np.float32)}

    def _shade(self, view: dict) -> np.ndarray:
        """Lambertian shading x albedo x a texture fixed to the surface -> (H, W, 3) float in [0, 1]."""
        prim = view["prim"]
        # The lookup table's last row (index -1) is the "sky": no ceiling, escaping rays see a bright, flat colour.
        albedo = self._albedo_lut[prim]
        light = np.array([0.35, 0.55, 0.76])
        light /= np.linalg.norm(light)
        key = np.abs(view["normal"] @ light).astype(np.float32)
        shading = 0.30 + 0.50 * key + 0.20 * view["cos_incidence"]
        shading *= 1.0 + _surface_texture(view["points"])
        shading[prim < 0] = 1.0
        return np.clip(albedo * shading[..., None], 0.0, 1.0)

    # ------------------------------------------------------------------------------------------------ ground truth
    def ground_truth_cloud(self, spacing: float = 0.02) -> PointCloud:
        """Points on the exposed surfaces of every primitive, at most ``spacing`` apart.

        Surfaces hidden inside another solid primitive (a leg's top under the seat, the floor under a cabinet, the
        wall behind a picture) and faces lying on the floor or on a wall are left out. label = index into
        CLASS_NAMES, instance = the object's instance id, rgb = the surface colour without shading.
        """
        spacing = float(spacing)
        if not (spacing > 0.0 and math.isfinite(spacing)):
            raise ValueError(f"ground_truth_cloud: spacing must be > 0, got {spacing}")
        pts, owner_prim = [], []
        for i, prim in enumerate(self._prims):
            p, _ = prim.sample_surface(spacing)
            pts.append(p)
            owner_prim.append(np.full(len(p), i))
        p = np.concatenate(pts)
        pid = np.concatenate(owner_prim)
        keep = np.ones(len(p), dtype=bool)
        eps = 1e-5
        structural = np.array([isinstance(self._prims[i], Quad) for i in range(len(self._prims))])
        # Object faces resting on the floor or pressed against a wall cannot be seen.
        Lx, Ly = self.size
        on_boundary = (p[:, 2] <= eps) | (p[:, 0] <= eps) | (p[:, 1] <= eps) | (p[:, 0] >= Lx - eps) | (
            p[:, 1] >= Ly - eps)
        keep &= ~(on_boundary & ~structural[pid])
        # Hidden inside (or on) another solid primitive. x-sorted points make each primitive's candidates a slice.
        order = np.argsort(p[:, 0], kind="stable")
        xs = p[order, 0]
        for i, prim in enumerate(self._prims):
            if not prim.solid:
                continue
            lo, hi = prim.aabb()
            a, b = np.searchsorted(xs, lo[0] - eps), np.searchsorted(xs, hi[0] + eps, side="right")
            cand = order[a:b]
            q = p[cand]
            box = np.all((q >= lo - eps) & (q <= hi + eps), axis=1) & (pid[cand] != i)
            cand = cand[box]
            if len(cand):
                inside = prim.contains(p[cand], eps)
                keep[cand[inside]] = False
        p, pid = p[keep], pid[keep]
        albedo = self._prim_albedo[pid] * (1.0 + _surface_texture(p))[:, None]
        rgb = np.clip(np.rint(albedo * 255.0), 0, 255).astype(np.uint8)
        return PointCloud(xyz=p.astype(np.float32), rgb=rgb, label=self._prim_class[pid],
                          instance=self._prim_instance[pid])

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.objects:
            counts[o.class_name] = counts.get(o.class_name, 0) + 1
        return counts


def _local_indices(owners: list[int]) -> list[int]:
    out, seen = [], {}
    for o in owners:
        out.append(seen.get(o, 0))
        seen[o] = seen.get(o, 0) + 1
    return out


def _cull_corners(prim) -> np.ndarray:
    """8 points whose convex hull contains the primitive (a box's own corners: tighter than its world AABB)."""
    if isinstance(prim, Box):
        return prim.corners()
    lo, hi = prim.aabb()
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def _screen_rects(corners: np.ndarray, R: np.ndarray, origin: np.ndarray, camera: CameraModel) -> list:
    """Per primitive, the pixel rectangle (v0, v1, u0, u1), end-exclusive, holding its image; None if unseen.

    The image of a convex hull lies inside the bounding rectangle of its projected corners when all corners are in
    front of the camera; a hull straddling the camera plane gets the whole image.
    """
    pc = (corners - origin) @ R  # camera frame, (P, 8, 3)
    z = pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = camera.fx * pc[..., 0] / z + camera.cx
        v = camera.fy * pc[..., 1] / z + camera.cy
    rects = []
    for i in range(len(corners)):
        if np.all(z[i] <= 1e-6):
            rects.append(None)  # entirely behind the camera: no ray (t > 0 along +z) reaches it
            continue
        if np.any(z[i] <= 1e-3):
            rects.append((0, camera.height, 0, camera.width))
            continue
        u0, u1 = max(0, math.floor(u[i].min())), min(camera.width, math.ceil(u[i].max()) + 1)
        v0, v1 = max(0, math.floor(v[i].min())), min(camera.height, math.ceil(v[i].max()) + 1)
        rects.append((v0, v1, u0, u1) if (u0 < u1 and v0 < v1) else None)
    return rects


def _hash01(ix, iy, iz) -> np.ndarray:
    """A uniform [0, 1) value per integer cell (integer hashing; wraps on purpose)."""
    h = (ix.astype(np.uint64) * np.uint64(0x9E3779B185EBCA87)) ^ (iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= iz.astype(np.uint64) * np.uint64(0x165667B19E3779F9)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _surface_texture(points: np.ndarray) -> np.ndarray:
    """Relative brightness variation fixed to world positions (so every view of a surface agrees): two scales."""
    with np.errstate(invalid="ignore", over="ignore"):
        fine = np.floor(points / 0.01).astype(np.int64)
        coarse = np.floor(points / 0.07).astype(np.int64)
        f = _hash01(fine[..., 0], fine[..., 1], fine[..., 2])
        c = _hash01(coarse[..., 0], coarse[..., 1], coarse[..., 2] + 7919)
    return (0.06 * (f - 0.5) + 0.10 * (c - 0.5)).astype(np.float32)


class _RoomBuilder:
    """Places furniture without collisions, clear of the camera loop, with small things on their supports."""

    WALL_GAP = 0.0  # against-wall objects are flush with the wall (their backs are never seen)

    def __init__(self, rng, Lx, Ly, wall_h, trajectory, color_rng=None):
        self.rng, self.Lx, self.Ly, self.wall_h = rng, Lx, Ly, wall_h
        self.color_rng = color_rng  # None: random colours; else class materials drawn from this stream
        self.objects: list[SceneObject] = []
        self.floor_prints: list[_Footprint] = []
        self.wall_prints: list[_Footprint] = []
        self.supports: list[dict] = []  # table/cabinet tops: footprint, height, occupied footprints
        cx, cy = trajectory["center"]
        ax, ay = trajectory["radii"]
        a = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        self.path = np.stack([cx + ax * np.cos(a), cy + ay * np.sin(a)], 1)

    def _new_object(self, class_name, prims) -> SceneObject:
        rng = self.rng
        # Random hue/saturation/value per instance (drawn in both modes so the geometry stream stays the same).
        color = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.15, 0.75), rng.uniform(0.35, 0.95))
        if self.color_rng is not None and class_name not in ("wall", "floor"):
            color = _material_color(self.color_rng, class_name)
        shades = [float(rng.uniform(0.8, 1.1)) for _ in prims]
        obj = SceneObject(class_name, len(self.objects), prims, color, shades)
        self.objects.append(obj)
        return obj

    def _structure_color(self, class_name, random_color):
        return random_color if self.color_rng is None else _material_color(self.color_rng, class_name)

    def _structure(self):
        Lx, Ly, h = self.Lx, self.Ly, self.wall_h
        rng = self.rng
        floor = Quad([0, 0, 0], [Lx, 0, 0], [0, Ly, 0])
        obj = self._new_object("floor", [floor])
        obj.color = self._structure_color(
            "floor", _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.4, 0.8)))
        walls = [
            Quad([0, 0, 0], [Lx, 0, 0], [0, 0, h]),
            Quad([Lx, 0, 0], [0, Ly, 0], [0, 0, h]),
            Quad([Lx, Ly, 0], [-Lx, 0, 0], [0, 0, h]),
            Quad([0, Ly, 0], [0, -Ly, 0], [0, 0, h]),
        ]
        for wall in walls:
            obj = self._new_object("wall", [wall])
            obj.color = self._structure_color(
                "wall", _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.35), rng.uniform(0.6, 0.95)))

    def _clear_of_path(self, fp: _Footprint, clearance: float) -> bool:
        R = _rot_z(fp.yaw)[:2, :2]
        local = (self.path - [fp.x, fp.y]) @ R
        dx = np.maximum(np.abs(local[:, 0]) - fp.hx, 0.0)
        dy = np.maximum(np.abs(local[:, 1]) - fp.hy, 0.0)
        return bool(np.all(np.hypot(dx, dy) > clearance))

    def _inside_room(self, fp: _Footprint) -> bool:
        c = fp.corners()
        tol = 1e-9  # objects flush with a wall have corners exactly on it
        return bool(np.all(c >= -tol) and np.all(c[:, 0] <= self.Lx + tol) and np.all(c[:, 1] <= self.Ly + tol))

    def _fits_floor(self, fp: _Footprint, clearance: float = 0.4, margin: float = 0.08) -> bool:
        return (self._inside_room(fp) and self._clear_of_path(fp, clearance)
                and not any(fp.overlaps(o, margin) for o in self.floor_prints + self.wall_prints))

    def _wall_pose(self, wall: int, along: float, half_depth: float):
        """(x, y, yaw) of an object whose back (-y) touches ``wall`` (0: y=0, 1: x=Lx, 2: y=Ly, 3: x=0)."""
        d = half_depth + self.WALL_GAP
        if wall == 0:
            return along, d, 0.0
        if wall == 1:
            return self.Lx - d, along, math.pi / 2
        if wall == 2:
            return along, self.Ly - d, math.pi
        return d, along, -math.pi / 2

    def _wall_length(self, wall: int) -> float:
        return self.Lx if wall in (0, 2) else self.Ly

    def place_floor(self, class_name, build, *, against_wall: bool, tries: int = 200, clearance: float = 0.4):
        prims, (hx, hy), height = build(self.rng)
        for _ in range(tries):
            if against_wall:
                wall = int(self.rng.integers(4))
                length = self._wall_length(wall)
                if length < 2 * hx + 0.1:
                    continue
                along = float(self.rng.uniform(hx + 0.05, length - hx - 0.05))
                x, y, yaw = self._wall_pose(wall, along, hy)
            else:
                x = float(self.rng.uniform(hx + 0.1, self.Lx - hx - 0.1))
                y = float(self.rng.uniform(hy + 0.1, self.Ly - hy - 0.1))
                yaw = float(self.rng.uniform(-math.pi, math.pi))
            fp = _Footprint(x, y, hx, hy, yaw, 0.0, height)
            if self._fits_floor(fp, clearance):
                return self._commit_floor(class_name, prims, fp)
        return None

    def _commit_floor(self, class_name, prims, fp):
        self.floor_prints.append(fp)
        return self._new_object(class_name, _pose_prims(prims, fp.x, fp.y, fp.yaw))

    def place_chairs_at(self, table_fp, n):
        placed = 0
        sides = list(self.rng.permutation(4))
        for side in sides[:n]:
            prims, (hx, hy), height = _build_chair(self.rng)
            # Chair front (+y) faces the table; it stands a little out from the table edge.
            normal_local = [(0, 1), (1, 0), (0, -1), (-1, 0)][side]
            reach = (table_fp.hy if side in (0, 2) else table_fp.hx) + hy + float(self.rng.uniform(0.05, 0.15))
            R = _rot_z(table_fp.yaw)[:2, :2]
            offset = R @ (np.array(normal_local, dtype=float) * reach)
            x, y = table_fp.x + offset[0], table_fp.y + offset[1]
            yaw = math.atan2(-offset[1], -offset[0]) - math.pi / 2 + float(self.rng.uniform(-0.25, 0.25))
            fp = _Footprint(x, y, hx, hy, yaw, 0.0, height)
            if self._fits_floor(fp, margin=0.03):
                self._commit_floor("chair", prims, fp)
                placed += 1
        return placed

    def place_on_support(self, class_name, build, tries: int = 60):
        # Monitors and table lamps stand on tables; books lie on tables or (low) cabinets.
        kinds = ("table", "cabinet") if class_name == "book" else ("table",)
        supports = [s for s in self.supports if s["kind"] in kinds]
        if not supports:
            return None
        prims, (hx, hy), height = build(self.rng)
        for _ in range(tries):
            sup = supports[int(self.rng.integers(len(supports)))]
            s = sup["fp"]
            if s.hx < hx + 0.03 or s.hy < hy + 0.03:
                continue
            lx = float(self.rng.uniform(-s.hx + hx + 0.02, s.hx - hx - 0.02))
            ly = float(self.rng.uniform(-s.hy + hy + 0.02, s.hy - hy - 0.02))
            local_yaw = float(self.rng.normal(0, 0.3)) if class_name == "monitor" else float(self.rng.uniform(-3, 3))
            if class_name == "monitor":
                local_yaw += math.pi if self.rng.uniform() < 0.5 else 0.0
            R = _rot_z(s.yaw)[:2, :2]
            x, y = np.array([s.x, s.y]) + R @ [lx, ly]
            # A tilted thing may poke over the edge: check its rotated corners stay on the top.
            fp = _Footprint(float(x), float(y), hx, hy, s.yaw + local_yaw, sup["z"], sup["z"] + height)
            local_corners = (fp.corners() - [s.x, s.y]) @ R
            if np.any(np.abs(local_corners[:, 0]) > s.hx - 0.01) or np.any(np.abs(local_corners[:, 1]) > s.hy - 0.01):
                continue
            if any(fp.overlaps(o, 0.03) for o in sup["items"]):
                continue
            sup["items"].append(fp)
            return self._new_object(class_name, _pose_prims(prims, fp.x, fp.y, fp.yaw, sup["z"]))
        return None

    def place_picture(self, tries: int = 80):
        prims, (hx, hy), h = _build_picture(self.rng)
        for _ in range(tries):
            wall = int(self.rng.integers(4))
            length = self._wall_length(wall)
            if length < 2 * hx + 0.2:
                continue
            along = float(self.rng.uniform(hx + 0.1, length - hx - 0.1))
            zc = float(self.rng.uniform(max(1.05, h / 2 + 0.85), max(1.1, min(self.wall_h - h / 2 - 0.15, 1.75))))
            x, y, yaw = self._wall_pose(wall, along, 0.0)
            # The footprint covers the wall strip in front of the picture, so nothing tall stands in front of it.
            R = _rot_z(yaw)[:2, :2]
            cx, cy = np.array([x, y]) + R @ [0.0, 0.25]
            fp = _Footprint(float(cx), float(cy), hx, 0.25, yaw, zc - h / 2 - 0.3, zc + h / 2)
            if any(fp.overlaps(o, 0.05) for o in self.floor_prints + self.wall_prints):
                continue
            self.wall_prints.append(fp)
            return self._new_object("picture", _pose_prims(prims, x, y, yaw, zc))
        return None

    def build(self, min_objects: int, max_objects: int) -> list[SceneObject]:
        rng = self.rng
        self._structure()
        n_structure = len(self.objects)
        target = int(rng.integers(min_objects, max_objects + 1))

        def count():
            return len(self.objects) - n_structure

        # Big pieces first (they need wall space), then free-standing ones, then things on top and on walls.
        plan = []
        if rng.uniform() < 0.7:
            plan.append(("bed", _build_bed, True))
        if rng.uniform() < 0.7:
            plan.append(("sofa", _build_sofa, True))
        plan += [("cabinet", _build_cabinet, True)] * int(rng.integers(1, 3))
        for name, build, wall in plan:
            if count() < target:
                obj = self.place_floor(name, build, against_wall=wall)
                if obj is not None and name == "cabinet" and obj.aabb()[1][2] < 1.3:
                    self._add_support(obj, self.floor_prints[-1])
        for _ in range(int(rng.integers(1, 3))):
            if count() >= target:
                break
            table = self.place_floor("table", _build_table, against_wall=rng.uniform() < 0.3)
            if table is not None:
                fp = self.floor_prints[-1]
                self._add_support(table, fp)
                self.place_chairs_at(fp, min(int(rng.integers(1, 4)), target - count()))
        # One of each small class first (in random order) so every class gets a place before the object budget
        # runs out, then the extra copies.
        first = [("monitor", "support"), ("lamp", "floor" if rng.uniform() < 0.6 else "support"), ("bin", "floor"),
                 ("book", "support"), ("picture", "wall")]
        more = [("monitor", "support")] * int(rng.integers(0, 2))
        more += [("bin", "floor")] * int(rng.integers(0, 2))
        more += [("book", "support")] * int(rng.integers(0, 4))
        more += [("picture", "wall")] * int(rng.integers(0, 3))
        more += [("chair", "floor")] * int(rng.integers(0, 2))
        if rng.uniform() < 0.4:
            more.append(("lamp", "floor" if rng.uniform() < 0.5 else "support"))
        rng.shuffle(first)
        rng.shuffle(more)
        small = first + more
        extras = [("book", "support"), ("bin", "floor"), ("chair", "floor"), ("picture", "wall")]
        attempts = 0
        while small and attempts < 80:
            attempts += 1
            name, where = small.pop(0)
            if count() >= target:
                break
            self._place_small(name, where)
            if not small and count() < max(min_objects, 1):
                small.append(extras[attempts % len(extras)])
        return self.objects

    def _place_small(self, name, where):
        if where == "wall":
            return self.place_picture()
        if name == "lamp":
            if where == "support":
                obj = self.place_on_support("lamp", lambda r: _build_lamp(r, on_table=True))
                if obj is not None:
                    return obj
            return self.place_floor("lamp", lambda r: _build_lamp(r, on_table=False), against_wall=False,
                                    clearance=0.5)
        if name == "bin":
            return self.place_floor("bin", _build_bin, against_wall=self.rng.uniform() < 0.5)
        if name == "chair":
            return self.place_floor("chair", _build_chair, against_wall=False)
        builder = {"monitor": _build_monitor, "book": _build_book}[name]
        return self.place_on_support(name, builder)

    def _add_support(self, obj, fp):
        top = obj.aabb()[1][2]
        self.supports.append({"kind": obj.class_name, "fp": fp, "z": float(top), "items": []})


# Materials per class: (weight, hue range, saturation range, value range) in HSV, hue in [0, 1). They overlap on
# purpose (white tables and walls, black chairs and monitors, wooden tables, cabinets and floors), as in real rooms.
_ANY = (0.0, 1.0)
_WOOD = ((0.05, 0.11), (0.35, 0.65), (0.30, 0.65))
_WHITE = (_ANY, (0.0, 0.08), (0.78, 0.95))
_BLACK = (_ANY, (0.0, 0.15), (0.08, 0.25))
_GREY = (_ANY, (0.0, 0.10), (0.30, 0.65))
_FABRIC = (_ANY, (0.20, 0.60), (0.30, 0.70))
MATERIALS: dict[str, list[tuple]] = {
    "wall": [(3, _ANY, (0.03, 0.18), (0.75, 0.95)), (1, (0.05, 0.15), (0.10, 0.30), (0.65, 0.85))],
    "floor": [(2, *_WOOD), (1, *_GREY), (1, _ANY, (0.05, 0.25), (0.40, 0.75))],
    "table": [(3, *_WOOD), (1, *_WHITE), (1, *_BLACK)],
    "chair": [(2, *_BLACK), (1, *_WOOD), (2, *_FABRIC)],
    "cabinet": [(2, *_WOOD), (2, *_WHITE), (1, *_GREY)],
    "sofa": [(3, *_FABRIC), (1, *_GREY)],
    "bed": [(2, *_WHITE), (1, _ANY, (0.10, 0.35), (0.65, 0.90))],
    "lamp": [(2, *_WHITE), (1, *_GREY), (1, (0.08, 0.16), (0.20, 0.50), (0.70, 0.95))],
    "monitor": [(3, *_BLACK), (1, *_GREY)],
    "bin": [(1, *_GREY), (1, *_BLACK), (2, _ANY, (0.40, 0.80), (0.35, 0.75))],
    "book": [(1, _ANY, (0.45, 0.90), (0.35, 0.85))],
    "picture": [(1, _ANY, (0.30, 0.85), (0.25, 0.90))],
}
APPEARANCES = ("materials", "random")


def _material_color(rng, class_name: str) -> np.ndarray:
    """An albedo for one instance: a material typical of the class, then a colour within its ranges."""
    materials = MATERIALS[class_name]
    w = np.array([m[0] for m in materials], dtype=np.float64)
    _, hue, sat, val = materials[int(rng.choice(len(materials), p=w / w.sum()))]
    return _hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val))


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------------
# Sequences
# ----------------------------------------------------------------------------------------------------------------------
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


def labelled_reconstruction(frames: list[SyntheticFrame], voxel_size: float = 0.02, *, stride: int = 1,
                            max_depth: float = 10.0) -> PointCloud:
    """The sequence fused into a labelled cloud, as a benchmark annotates a scan (ScanNet labels the vertices of
    the reconstructed mesh): every valid pixel is back-projected with its ground-truth class and instance, and each
    ``voxel_size`` voxel keeps the mean position and colour of its points and their majority class and instance.

    Unlike ``SyntheticRoom.ground_truth_cloud`` (every exposed surface, ideally sampled, unshaded colours), this is
    what the nodes and the curriculum actually see: observed surfaces only, sensor noise, shaded colours. Voxels
    whose points carry no class (rays that escaped the room) are left out.
    """
    from ov3d_ros.fusion import make_partial_cloud

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
