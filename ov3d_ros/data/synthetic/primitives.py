"""Ray-castable primitives of the synthetic rooms: oriented boxes, vertical cylinders / cone frustums, spheres
and quads.

Each one answers four questions: where does a bundle of rays from one origin hit it (t, normal), what world box
bounds it (for culling), which points sample its surface, and (for solids) which points lie inside it. Ray directions
have camera-z component 1, so t is the depth along the optical axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_EPS_T = 1e-6  # rays start at the camera centre; ignore hits closer than this


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])



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
        self.R = rot_z(self.yaw)

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

