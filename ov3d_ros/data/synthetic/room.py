"""The synthetic room: generated from a seed, rendered from any pose by ray casting, sampled for ground truth."""
from __future__ import annotations

import math

import numpy as np

from ov3d_ros.cloud import PointCloud
from ov3d_ros.data.synthetic.furniture import CLASS_NAMES, SceneObject, vary
from ov3d_ros.data.synthetic.layout import RoomBuilder
from ov3d_ros.data.synthetic.materials import APPEARANCES, surface_texture
from ov3d_ros.data.synthetic.primitives import Box, Quad
from ov3d_ros.geometry import CameraModel


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

    def without(self, class_names) -> "SyntheticRoom":
        """The same room with every object of the given classes taken away (a robot's room after someone moved the
        table out): same walls, camera loop and seed. Refuses names that match no object, walls and floor."""
        names = {str(n).strip() for n in class_names if str(n).strip()}
        present = {o.class_name for o in self.furniture}
        unknown = sorted(names - present)
        if unknown:
            raise ValueError(f"SyntheticRoom.without: no {', '.join(unknown)} in this room; its objects are "
                             f"{', '.join(sorted(present))}")
        return SyntheticRoom(self.size, self.wall_height, [o for o in self.objects if o.class_name not in names],
                             self.trajectory, self.seed)

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
        Lx, Ly = vary(rng, 4.0, 7.0), vary(rng, 4.0, 7.0)
        wall_h = vary(rng, 2.5, 3.0)
        trajectory = {
            "center": (Lx / 2 + vary(rng, -0.2, 0.2), Ly / 2 + vary(rng, -0.2, 0.2)),
            "radii": (0.16 * Lx, 0.16 * Ly),
            "height": vary(rng, 1.3, 1.5),
            "phase": vary(rng, 0, 2 * math.pi),
            "pitch": math.radians(vary(rng, 12.0, 18.0)),
        }
        color_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xc0104]))
        builder = RoomBuilder(rng, Lx, Ly, wall_h, trajectory, color_rng if appearance == "materials" else None)
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
        shading *= 1.0 + surface_texture(view["points"])
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
        albedo = self._prim_albedo[pid] * (1.0 + surface_texture(p))[:, None]
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

