"""The classes of the synthetic rooms and the builders of their furniture.

Every class has one consistent, distinctive shape (a chair is always seat + 4 legs + backrest) whose sizes vary
moderately per instance. Builders work in an object frame (origin on the floor or support, +y = front) and
``pose_primitives`` moves them into the world.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ov3d_ros.data.synthetic.primitives import Box, Cylinder, Sphere, rot_z

CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "table", "chair", "cabinet", "sofa", "bed", "lamp", "monitor", "bin", "book", "picture",
)
_CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}


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


def pose_primitives(local: list, x: float, y: float, yaw: float, z: float = 0.0) -> list:
    """Move primitives built in an object frame (origin on the floor/support, front = +y) into the world."""
    R = rot_z(yaw)
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


def vary(rng, lo, hi):
    return float(rng.uniform(lo, hi))


# Builders return (local primitives, footprint half extents (hx, hy), height). Object frame: origin at the centre of
# the footprint on its support, +y = front, -y = back (the side put against a wall).
def build_table(rng):
    w, d, h = vary(rng, 0.8, 1.6), vary(rng, 0.6, 0.9), vary(rng, 0.70, 0.78)
    top_t, leg = vary(rng, 0.03, 0.05), vary(rng, 0.04, 0.06)
    inset = vary(rng, 0.03, 0.08)
    prims = [_box(-w / 2, w / 2, -d / 2, d / 2, h - top_t, h)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - inset - leg / 2), sy * (d / 2 - inset - leg / 2)
            prims.append(_box(cx - leg / 2, cx + leg / 2, cy - leg / 2, cy + leg / 2, 0.0, h - top_t))
    return prims, (w / 2, d / 2), h


def build_chair(rng):
    w, d = vary(rng, 0.40, 0.50), vary(rng, 0.40, 0.50)
    seat_h, seat_t, leg = vary(rng, 0.42, 0.48), vary(rng, 0.03, 0.05), vary(rng, 0.03, 0.045)
    back_h, back_t = vary(rng, 0.38, 0.50), vary(rng, 0.03, 0.05)
    prims = [_box(-w / 2, w / 2, -d / 2, d / 2, seat_h - seat_t, seat_h)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - leg / 2), sy * (d / 2 - leg / 2)
            prims.append(_box(cx - leg / 2, cx + leg / 2, cy - leg / 2, cy + leg / 2, 0.0, seat_h - seat_t))
    prims.append(_box(-w / 2, w / 2, -d / 2, -d / 2 + back_t, seat_h, seat_h + back_h))
    return prims, (w / 2, d / 2), seat_h + back_h


def build_cabinet(rng):
    w, d, h = vary(rng, 0.5, 1.0), vary(rng, 0.40, 0.55), vary(rng, 1.1, 1.9)
    return [_box(-w / 2, w / 2, -d / 2, d / 2, 0.0, h)], (w / 2, d / 2), h


def build_sofa(rng):
    w, d = vary(rng, 1.6, 2.2), vary(rng, 0.80, 0.95)
    base_h, back_h, arm_h = vary(rng, 0.38, 0.45), vary(rng, 0.80, 0.90), vary(rng, 0.58, 0.66)
    back_t, arm_w = vary(rng, 0.16, 0.22), vary(rng, 0.14, 0.20)
    prims = [
        _box(-w / 2 + arm_w, w / 2 - arm_w, -d / 2 + back_t, d / 2, 0.0, base_h),  # seat block
        _box(-w / 2, w / 2, -d / 2, -d / 2 + back_t, 0.0, back_h),  # back
        _box(-w / 2, -w / 2 + arm_w, -d / 2 + back_t, d / 2, 0.0, arm_h),  # arms
        _box(w / 2 - arm_w, w / 2, -d / 2 + back_t, d / 2, 0.0, arm_h),
    ]
    return prims, (w / 2, d / 2), back_h


def build_bed(rng):
    w, length = vary(rng, 0.95, 1.6), vary(rng, 1.9, 2.1)
    h, head_h, head_t = vary(rng, 0.45, 0.60), vary(rng, 0.95, 1.15), vary(rng, 0.05, 0.08)
    prims = [
        _box(-w / 2, w / 2, -length / 2 + head_t, length / 2, 0.0, h),  # mattress on its base
        _box(-w / 2, w / 2, -length / 2, -length / 2 + head_t, 0.0, head_h),  # headboard (at the back = wall)
    ]
    return prims, (w / 2, length / 2), head_h


def build_lamp(rng, on_table: bool):
    s = vary(rng, 0.30, 0.40) if on_table else 1.0
    height = s * vary(rng, 1.45, 1.70)
    base_r, base_h = s * vary(rng, 0.12, 0.16), max(0.01, s * 0.03)
    pole_r = max(0.006, s * vary(rng, 0.012, 0.018))
    shade_h, shade_lo, shade_hi = s * vary(rng, 0.22, 0.30), s * vary(rng, 0.17, 0.22), s * vary(rng, 0.10, 0.13)
    shade_z0 = height - shade_h
    prims = [
        Cylinder(0.0, 0.0, 0.0, base_h, base_r, base_r),
        Cylinder(0.0, 0.0, base_h, shade_z0 + 0.4 * shade_h, pole_r, pole_r),
        Cylinder(0.0, 0.0, shade_z0, height, shade_lo, shade_hi, cap_bottom=False, cap_top=False, solid=False),
        Sphere([0.0, 0.0, shade_z0 + 0.4 * shade_h], s * 0.045),  # the bulb, seen through the open shade
    ]
    r = max(base_r, shade_lo)
    return prims, (r, r), height


def build_monitor(rng):
    w, h, t = vary(rng, 0.48, 0.66), vary(rng, 0.30, 0.42), vary(rng, 0.02, 0.035)
    neck_h = vary(rng, 0.10, 0.16)
    bw, bd = vary(rng, 0.18, 0.24), vary(rng, 0.14, 0.20)
    prims = [
        _box(-bw / 2, bw / 2, -bd / 2, bd / 2, 0.0, 0.015),  # foot
        _box(-0.02, 0.02, -0.035, -0.015, 0.015, neck_h + 0.05),  # neck, behind the panel's centre
        _box(-w / 2, w / 2, -0.015, -0.015 + t, neck_h, neck_h + h),  # panel (front face = +y)
    ]
    return prims, (max(w, bw) / 2, max(bd, t + 0.05) / 2), neck_h + h


def build_bin(rng):
    r, h = vary(rng, 0.12, 0.18), vary(rng, 0.30, 0.45)
    prims = [
        Cylinder(0.0, 0.0, 0.0, 0.012, r, r),  # bottom plate
        Cylinder(0.0, 0.0, 0.0, h, r, r * vary(rng, 1.0, 1.12), cap_bottom=False, cap_top=False),  # open wall
    ]
    return prims, (r * 1.12, r * 1.12), h


def build_book(rng):
    w, d, t = vary(rng, 0.14, 0.22), vary(rng, 0.20, 0.30), vary(rng, 0.02, 0.05)
    return [_box(-w / 2, w / 2, -d / 2, d / 2, 0.0, t)], (w / 2, d / 2), t


def build_picture(rng):
    w, h, t = vary(rng, 0.4, 1.0), vary(rng, 0.3, 0.8), vary(rng, 0.015, 0.03)
    # Local frame: back on the wall plane y = 0 (flush), front at +y, centred on z = 0.
    return [_box(-w / 2, w / 2, 0.0, t, -h / 2, h / 2)], (w / 2, t), h


