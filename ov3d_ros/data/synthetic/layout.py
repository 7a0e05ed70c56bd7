"""Room layout: furniture placed without collisions, clear of the camera loop, small things on their supports."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ov3d_ros.data.synthetic.furniture import (SceneObject, build_bed, build_bin, build_book, build_cabinet,
                                               build_chair, build_lamp, build_monitor, build_picture, build_sofa,
                                               build_table, pose_primitives)
from ov3d_ros.data.synthetic.materials import hsv_to_rgb, material_color
from ov3d_ros.data.synthetic.primitives import Quad, rot_z


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
        R = rot_z(self.yaw)[:2, :2]
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



class RoomBuilder:
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
        color = hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.15, 0.75), rng.uniform(0.35, 0.95))
        if self.color_rng is not None and class_name not in ("wall", "floor"):
            color = material_color(self.color_rng, class_name)
        shades = [float(rng.uniform(0.8, 1.1)) for _ in prims]
        obj = SceneObject(class_name, len(self.objects), prims, color, shades)
        self.objects.append(obj)
        return obj

    def _structure_color(self, class_name, random_color):
        return random_color if self.color_rng is None else material_color(self.color_rng, class_name)

    def _structure(self):
        Lx, Ly, h = self.Lx, self.Ly, self.wall_h
        rng = self.rng
        floor = Quad([0, 0, 0], [Lx, 0, 0], [0, Ly, 0])
        obj = self._new_object("floor", [floor])
        obj.color = self._structure_color(
            "floor", hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.4, 0.8)))
        walls = [
            Quad([0, 0, 0], [Lx, 0, 0], [0, 0, h]),
            Quad([Lx, 0, 0], [0, Ly, 0], [0, 0, h]),
            Quad([Lx, Ly, 0], [-Lx, 0, 0], [0, 0, h]),
            Quad([0, Ly, 0], [0, -Ly, 0], [0, 0, h]),
        ]
        for wall in walls:
            obj = self._new_object("wall", [wall])
            obj.color = self._structure_color(
                "wall", hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.35), rng.uniform(0.6, 0.95)))

    def _clear_of_path(self, fp: _Footprint, clearance: float) -> bool:
        R = rot_z(fp.yaw)[:2, :2]
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
        return self._new_object(class_name, pose_primitives(prims, fp.x, fp.y, fp.yaw))

    def place_chairs_at(self, table_fp, n):
        placed = 0
        sides = list(self.rng.permutation(4))
        for side in sides[:n]:
            prims, (hx, hy), height = build_chair(self.rng)
            # Chair front (+y) faces the table; it stands a little out from the table edge.
            normal_local = [(0, 1), (1, 0), (0, -1), (-1, 0)][side]
            reach = (table_fp.hy if side in (0, 2) else table_fp.hx) + hy + float(self.rng.uniform(0.05, 0.15))
            R = rot_z(table_fp.yaw)[:2, :2]
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
            R = rot_z(s.yaw)[:2, :2]
            x, y = np.array([s.x, s.y]) + R @ [lx, ly]
            # A tilted thing may poke over the edge: check its rotated corners stay on the top.
            fp = _Footprint(float(x), float(y), hx, hy, s.yaw + local_yaw, sup["z"], sup["z"] + height)
            local_corners = (fp.corners() - [s.x, s.y]) @ R
            if np.any(np.abs(local_corners[:, 0]) > s.hx - 0.01) or np.any(np.abs(local_corners[:, 1]) > s.hy - 0.01):
                continue
            if any(fp.overlaps(o, 0.03) for o in sup["items"]):
                continue
            sup["items"].append(fp)
            return self._new_object(class_name, pose_primitives(prims, fp.x, fp.y, fp.yaw, sup["z"]))
        return None

    def place_picture(self, tries: int = 80):
        prims, (hx, hy), h = build_picture(self.rng)
        for _ in range(tries):
            wall = int(self.rng.integers(4))
            length = self._wall_length(wall)
            if length < 2 * hx + 0.2:
                continue
            along = float(self.rng.uniform(hx + 0.1, length - hx - 0.1))
            zc = float(self.rng.uniform(max(1.05, h / 2 + 0.85), max(1.1, min(self.wall_h - h / 2 - 0.15, 1.75))))
            x, y, yaw = self._wall_pose(wall, along, 0.0)
            # The footprint covers the wall strip in front of the picture, so nothing tall stands in front of it.
            R = rot_z(yaw)[:2, :2]
            cx, cy = np.array([x, y]) + R @ [0.0, 0.25]
            fp = _Footprint(float(cx), float(cy), hx, 0.25, yaw, zc - h / 2 - 0.3, zc + h / 2)
            if any(fp.overlaps(o, 0.05) for o in self.floor_prints + self.wall_prints):
                continue
            self.wall_prints.append(fp)
            return self._new_object("picture", pose_primitives(prims, x, y, yaw, zc))
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
            plan.append(("bed", build_bed, True))
        if rng.uniform() < 0.7:
            plan.append(("sofa", build_sofa, True))
        plan += [("cabinet", build_cabinet, True)] * int(rng.integers(1, 3))
        for name, build, wall in plan:
            if count() < target:
                obj = self.place_floor(name, build, against_wall=wall)
                if obj is not None and name == "cabinet" and obj.aabb()[1][2] < 1.3:
                    self._add_support(obj, self.floor_prints[-1])
        for _ in range(int(rng.integers(1, 3))):
            if count() >= target:
                break
            table = self.place_floor("table", build_table, against_wall=rng.uniform() < 0.3)
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
                obj = self.place_on_support("lamp", lambda r: build_lamp(r, on_table=True))
                if obj is not None:
                    return obj
            return self.place_floor("lamp", lambda r: build_lamp(r, on_table=False), against_wall=False,
                                    clearance=0.5)
        if name == "bin":
            return self.place_floor("bin", build_bin, against_wall=self.rng.uniform() < 0.5)
        if name == "chair":
            return self.place_floor("chair", build_chair, against_wall=False)
        builder = {"monitor": build_monitor, "book": build_book}[name]
        return self.place_on_support(name, builder)

    def _add_support(self, obj, fp):
        top = obj.aabb()[1][2]
        self.supports.append({"kind": obj.class_name, "fp": fp, "z": float(top), "items": []})

