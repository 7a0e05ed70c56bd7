"""FeatureMap: per-voxel features that follow a growing map, so a query is answered at once from what was seen.

The map arrives as a cloud of voxel means (the fusion node's global cloud, ``VoxelMap.to_cloud``), again and again
as it grows. Running the network on the whole map for each version costs seconds on a CPU; instead the map is cut
into square tiles in x and y (``tile`` metres, every height), and an update re-runs only the tiles that changed:
those holding a voxel that is new, gone, or whose mean moved more than ``position_tolerance`` voxels or whose
colour changed more than ``color_tolerance`` since its features were computed. A tile is run with every map point
within ``margin`` metres of it as context (the Segmenter's chunk margin by default) and keeps the features of its
own points, so the cost of an update grows with what changed, not with the size of the map.

All the tiles of an update run in one network pass over them and their context. With ``rerun_fraction`` > 0 a tile
whose changes since it last ran stay under that fraction of its points is patched instead: its new points take the
unit of their nearest point in the tile, its removed points go, and its changes add up until it runs.

Features are kept per unit (a network voxel, or a superpoint), not per map point, and each point keeps the row of
its unit; a query classifies the units and gives every point its unit's label. With superpoints, a tile that runs
first gets network-voxel units; its superpoints (over the points of the tiles refined with it) and their mean
features come in the same update while the tiles waiting for them hold at most ``refine_points`` points, else in
``refine`` calls when there is time, that many points at a time. So a room that comes in at once gets features
after one network pass, and its superpoints follow a batch of tiles at a time.

Each update builds a new ``FeatureSnapshot`` and swaps it in at the end: a query reads the current snapshot and
never waits for the network. An update that changes no point beyond the tolerances (a robot standing still, a room
seen again) keeps the snapshot's points, features and units and only moves its stamp. Snapshots say what they share
with earlier ones: ``units`` (the version whose units they label alike) and ``drift`` (points new, gone, moved or
recoloured since then), so what was derived from an earlier snapshot (a cluster grid, objects) can be kept while it
still holds. ``snapshot.stamp`` is the stamp of the map version the features were computed on (the
newest frame whose voxels have features), so an answer says how fresh it is.

Differences from a full pass of the Segmenter on the same map come from three places, bounded by the tests: a
tile's context is cut at ``margin`` (as the Segmenter's chunks are), a tile left alone keeps the features it got
when its neighbourhood was what it was then (a change next to a tile, outside it, does not re-run it), patched
points borrow a neighbour's features, and superpoints end at tile borders.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace

import numba
import numpy as np
import torch

from .segmenter import PointLabels, Segmenter, superpoint_average
from .superpoints import superpoints

__all__ = ["FeatureMapConfig", "FeatureSnapshot", "FeatureMap", "voxel_keys"]

_BITS = 20  # bits per axis of a voxel key; the 3 bits above count points that share a voxel
_OFFSET = 1 << (_BITS - 1)  # voxel indices in [-2^19, 2^19) per axis: +-10 km at 2 cm


def voxel_keys(xyz: np.ndarray, voxel: float) -> np.ndarray:
    """(N,) int64 keys, one per point of a map of voxel means: the ``voxel``-sized cell holding the point.

    A voxel's mean lies inside its voxel, but a mean rounded to micrometres or to float32 can land on the next
    cell's face, so two points may fall in one cell. The second and later ones of a cell (in x, y, z order) then get
    the cell's key with a collision count in the top bits: unique, and the same for the same points.
    """
    xyz = np.asarray(xyz)
    ijk = np.floor(xyz.astype(np.float64) / voxel).astype(np.int64) + _OFFSET
    if len(ijk) and (ijk.min() < 0 or ijk.max() >= (1 << _BITS)):
        raise ValueError(f"points lie beyond +-{_OFFSET * voxel:.0f} m of the origin: not a map")
    keys = (ijk[:, 0] << (2 * _BITS)) | (ijk[:, 1] << _BITS) | ijk[:, 2]
    if len(keys) < 2:
        return keys
    sorted_keys = np.sort(keys)
    shared = np.unique(sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]])
    if not len(shared):
        return keys
    # Only the points of shared cells are ordered (cell, then x, y, z) to number them within their cell.
    crowd = np.flatnonzero(np.isin(keys, shared))
    crowd = crowd[np.lexsort((xyz[crowd, 2], xyz[crowd, 1], xyz[crowd, 0], keys[crowd]))]
    first = np.concatenate([[True], keys[crowd[1:]] != keys[crowd[:-1]]])
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(crowd)), 0))
    same = np.arange(len(crowd)) - run_start  # 0 for the first point of a cell, 1, 2, ... after
    if same.max() >= (1 << (63 - 3 * _BITS)):
        raise ValueError("map points crowd into single voxels: is map_voxel the map's voxel size?")
    keys[crowd] |= same << (3 * _BITS)
    return keys


@dataclass(frozen=True)
class FeatureMapConfig:
    """``map_voxel``: the voxel of the incoming map (its points' keys); ``tile``: tile edge in x and y, metres;
    ``margin``: context around a tile, metres (None: the Segmenter's chunk margin); a voxel counts as changed when
    its mean moved more than ``position_tolerance`` x map_voxel or a colour channel more than ``color_tolerance``
    since the tile's features were computed. A tile runs again when its changes (changed, new and removed points
    since then) exceed ``rerun_points`` and ``rerun_fraction`` of its points; below that its new points take the
    unit of their nearest point of the tile, and its removed points go (0 and 0: every change runs the tile).
    With superpoints, an update gives superpoints to the tiles still on network-voxel units when they hold at most
    ``refine_points`` points in all (0: always); past that it leaves them, and ``FeatureMap.refine`` refines that
    many points at a time when there is time."""

    map_voxel: float = 0.02
    tile: float = 2.0
    margin: float | None = None
    position_tolerance: float = 0.25
    color_tolerance: float = 8.0
    rerun_fraction: float = 0.0
    rerun_points: int = 0
    refine_points: int = 0

    def __post_init__(self) -> None:
        for name in ("map_voxel", "tile"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"FeatureMap: {name} must be > 0, got {value}")
        if self.margin is not None and not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"FeatureMap: margin must be >= 0 metres, got {self.margin}")
        if self.position_tolerance < 0 or self.color_tolerance < 0:
            raise ValueError("FeatureMap: tolerances must be >= 0")
        if not 0 <= self.rerun_fraction <= 1 or self.rerun_points < 0:
            raise ValueError("FeatureMap: rerun_fraction must be in [0, 1] and rerun_points >= 0")
        if self.refine_points < 0:
            raise ValueError("FeatureMap: refine_points must be >= 0")


@dataclass
class _Tile:
    keys: np.ndarray  # (n,) map-voxel keys of the tile's points
    features: torch.Tensor  # (U, D) unit features, normalised
    unit: torch.Tensor  # (n,) unit row of each point
    ref_xyz: np.ndarray  # (n, 3) each point's position when its unit was given (changes are measured from it)
    ref_rgb: np.ndarray  # (n, 3) and its colour
    patched: int = 0  # points added to or removed from the tile since its features were computed
    refined: bool = True  # False: its units are network voxels still waiting for their superpoints


@dataclass(frozen=True)
class FeatureSnapshot:
    """One map version with features for every point: ``xyz`` (N, 3) float32, ``rgb`` (N, 3) uint8 and ``keys``
    (N,) in the order the map came in, the tiles' features, ``stamp`` (seconds) and ``version`` (updates so far).
    ``order`` sorts the keys (``sorted_keys``), for look-ups by key. ``unit_of_point`` (N,) numbers every point's
    unit across the tiles (tile by tile, in ``tiles`` order: the rows of ``label_units``). ``tile_of``, ``ref_xyz``
    and ``ref_rgb`` give each point its tile and the position and colour its features were computed on (the next
    update's reference). ``units`` is the version since which the units are numbered and featured alike (labels of
units carry over between snapshots with equal ``units``), and ``drift`` adds up, over the updates since that
version, the points each one found new, gone, or moved or recoloured from their features' reference (a point
that stays moved counts in every update, so drift over-counts rather than under-counts)."""

    xyz: np.ndarray
    rgb: np.ndarray
    keys: np.ndarray
    order: np.ndarray
    sorted_keys: np.ndarray
    tiles: dict
    unit_of_point: np.ndarray
    tile_of: np.ndarray
    ref_xyz: np.ndarray
    ref_rgb: np.ndarray
    stamp: float
    version: int
    units: int
    drift: int = 0

    @classmethod
    def build(cls, xyz, rgb, keys, order, tile_of, tiles: dict, stamp: float, version: int,
              units: int | None = None, drift: int = 0) -> "FeatureSnapshot":
        sorted_keys = keys[order]
        ref_xyz, ref_rgb = np.empty_like(xyz), np.empty_like(rgb)
        unit_of_point = np.empty(len(keys), dtype=np.int64)
        offset = 0
        for t, tile in tiles.items():
            mine = order[np.searchsorted(sorted_keys, tile.keys)]
            ref_xyz[mine] = tile.ref_xyz
            ref_rgb[mine] = tile.ref_rgb
            unit_of_point[mine] = tile.unit.cpu().numpy() + offset
            offset += len(tile.features)
        return cls(xyz, rgb, keys, order, sorted_keys, tiles, unit_of_point, tile_of, ref_xyz, ref_rgb,
                   float(stamp), version, version if units is None else units, drift)

    def __len__(self) -> int:
        return len(self.keys)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The snapshot as plain arrays, lossless (``from_arrays`` rebuilds it): its points, and tile by tile the
        tile's id, points (keys, unit rows, reference positions and colours), unit features and bookkeeping."""
        tiles = list(self.tiles.items())
        if not tiles:
            raise ValueError("FeatureSnapshot.to_arrays: the snapshot is empty (no map has features yet)")
        return {"xyz": self.xyz, "rgb": self.rgb, "keys": self.keys, "tile_of": self.tile_of,
                "tile_id": np.array([t for t, _ in tiles], dtype=np.int64),
                "tile_points": np.array([len(tile.keys) for _, tile in tiles], dtype=np.int64),
                "tile_units": np.array([len(tile.features) for _, tile in tiles], dtype=np.int64),
                "tile_patched": np.array([tile.patched for _, tile in tiles], dtype=np.int64),
                "tile_refined": np.array([tile.refined for _, tile in tiles], dtype=bool),
                "tile_keys": np.concatenate([tile.keys for _, tile in tiles]),
                "tile_unit": torch.cat([tile.unit for _, tile in tiles]).cpu().numpy(),
                "tile_ref_xyz": np.concatenate([tile.ref_xyz for _, tile in tiles]),
                "tile_ref_rgb": np.concatenate([tile.ref_rgb for _, tile in tiles]),
                "features": torch.cat([tile.features for _, tile in tiles]).cpu().numpy(),
                "stamp": np.array(self.stamp, dtype=np.float64),
                "counters": np.array([self.version, self.units, self.drift], dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict, device: str | torch.device = "cpu") -> "FeatureSnapshot":
        """The snapshot ``to_arrays`` gave, its features on ``device``; ValueError when the arrays do not fit
        together (a damaged or edited file)."""
        try:
            xyz, rgb, keys, tile_of = (np.asarray(arrays[k]) for k in ("xyz", "rgb", "keys", "tile_of"))
            points, units = arrays["tile_points"].astype(np.int64), arrays["tile_units"].astype(np.int64)
            ids, unit, features = arrays["tile_id"], arrays["tile_unit"], arrays["features"]
            tile_keys, ref_xyz, ref_rgb = arrays["tile_keys"], arrays["tile_ref_xyz"], arrays["tile_ref_rgb"]
            stamp, (version, since, drift) = float(arrays["stamp"]), arrays["counters"].tolist()
            patched, refined = arrays["tile_patched"], arrays["tile_refined"]
        except KeyError as exc:
            raise ValueError(f"feature map: no '{exc.args[0]}' array") from None
        n = len(keys)
        fits = xyz.shape == (n, 3) and rgb.shape == (n, 3) and tile_of.shape == (n,) and \
            len(ids) == len(points) == len(units) == len(patched) == len(refined) and \
            int(points.sum()) == n == len(tile_keys) == len(unit) == len(ref_xyz) == len(ref_rgb) and \
            features.ndim == 2 and int(units.sum()) == len(features) and (points > 0).all() and \
            np.array_equal(np.sort(tile_keys), np.sort(keys))
        point_end, unit_end = np.cumsum(points), np.cumsum(units)
        fits = fits and all(0 <= unit[p - k:p].min() and unit[p - k:p].max() < u
                            for p, k, u in zip(point_end, points, units))
        if not fits:
            raise ValueError("feature map: its arrays do not fit together (a damaged or edited file)")
        tiles = {}
        for t, p, k, u, nu, pa, re in zip(ids.tolist(), point_end, points, unit_end, units, patched, refined):
            tiles[t] = _Tile(keys=tile_keys[p - k:p], unit=torch.from_numpy(unit[p - k:p].astype(np.int64)).to(device),
                             features=torch.from_numpy(np.ascontiguousarray(features[u - nu:u])).to(device),
                             ref_xyz=ref_xyz[p - k:p], ref_rgb=ref_rgb[p - k:p], patched=int(pa), refined=bool(re))
        return cls.build(xyz.astype(np.float32), rgb.astype(np.uint8), keys.astype(np.int64),
                         np.argsort(keys, kind="stable"), tile_of.astype(np.int64), tiles, stamp, int(version),
                         int(since), int(drift))

    def index_of(self, keys: np.ndarray) -> np.ndarray:
        """Positions of ``keys`` (all present) in the snapshot's point arrays."""
        return self.order[np.searchsorted(self.sorted_keys, keys)]

    def label_units(self, segmenter: Segmenter, queries, min_score: float = 0.0, *, score: str = "cosine"
                    ) -> PointLabels:
        """Labels of the units (``unit_of_point`` rows) for ``queries``: no network pass."""
        return segmenter.label_units((tile.features for tile in self.tiles.values()), queries, min_score,
                                     score=score)

    def label(self, segmenter: Segmenter, queries, min_score: float = 0.0, *, score: str = "cosine"
              ) -> PointLabels:
        """Labels of every point for ``queries``: its unit's."""
        units = self.label_units(segmenter, queries, min_score, score=score)
        return PointLabels(units.label[self.unit_of_point], units.score[self.unit_of_point], units.best)

    def feature_rows(self) -> int:
        return sum(len(t.features) for t in self.tiles.values())

    def memory_bytes(self) -> int:
        """Bytes of the kept features, unit rows and point arrays."""
        total = sum(a.nbytes for a in (self.xyz, self.rgb, self.keys, self.order, self.sorted_keys,
                                        self.unit_of_point, self.tile_of, self.ref_xyz, self.ref_rgb))
        for t in self.tiles.values():
            total += t.keys.nbytes + t.features.numel() * t.features.element_size() + t.unit.numel() * 8
        return total


EMPTY = FeatureSnapshot.build(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.int64),
                              np.zeros(0, np.int64), np.zeros(0, np.int64), {}, float("nan"), 0)
_TILE_OFFSET = 1 << 30  # tile indices in x and y are shifted by this to pack them into one int64 id


class FeatureMap:
    """Keeps the features of a map's points up to date; ``update`` re-runs the changed tiles, ``snapshot`` is what
    queries read. One update at a time (a lock); reading the snapshot takes no lock."""

    def __init__(self, segmenter: Segmenter, config: FeatureMapConfig | None = None, *,
                 superpoints: bool | None = None) -> None:
        self.segmenter = segmenter
        self.config = config or FeatureMapConfig()
        self.margin = self.config.margin if self.config.margin is not None else segmenter.chunk_margin
        self.superpoint_config = segmenter.superpoint_config(superpoints)
        self.snapshot: FeatureSnapshot = EMPTY
        self._update_lock = threading.Lock()
        self.last_update: dict = {}

    def _tile_ids(self, xyz: np.ndarray) -> np.ndarray:
        t = np.floor(xyz[:, :2].astype(np.float64) / self.config.tile).astype(np.int64) + _TILE_OFFSET
        return (t[:, 0] << 32) | t[:, 1]

    def _context_box(self, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """x, y bounds of a tile grown by the context margin."""
        tx, ty = (tile >> 32) - _TILE_OFFSET, (tile & 0xFFFFFFFF) - _TILE_OFFSET
        size, margin = self.config.tile, self.margin
        return (np.array([tx * size - margin, ty * size - margin]),
                np.array([(tx + 1) * size + margin, (ty + 1) * size + margin]))

    def update(self, xyz, rgb, stamp: float) -> FeatureSnapshot:
        """Bring the features up to the map ``xyz`` (N, 3), ``rgb`` (N, 3) uint8 of time ``stamp`` and swap the
        new snapshot in; returns it. ``last_update`` tells what it cost (changed points, tiles run, seconds)."""
        started = time.perf_counter()
        xyz = np.ascontiguousarray(xyz, dtype=np.float32)
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if xyz.ndim != 2 or xyz.shape[1] != 3 or rgb.shape != xyz.shape:
            raise ValueError(f"FeatureMap.update: xyz and rgb must be (N, 3), got {xyz.shape} and {rgb.shape}")
        if not np.all(np.isfinite(xyz)):
            raise ValueError("FeatureMap.update: the map holds non-finite points")
        with self._update_lock:
            old = self.snapshot
            keys = voxel_keys(xyz, self.config.map_voxel)
            tile_of = self._tile_ids(xyz)
            changed, present = self._changes(old, keys, xyz, rgb, tile_of)
            if len(old) == len(keys) and not changed.any() and present.all() and \
                    all(tile.refined for tile in old.tiles.values()):
                snapshot = replace(old, stamp=float(stamp), version=old.version + 1)
                self.snapshot = snapshot
                self.last_update = {"points": len(keys), "changed": 0, "removed": 0, "tiles_run": 0,
                                    "tiles_patched": 0, "tiles_refined": 0, "tiles": len(old.tiles),
                                    "seconds": time.perf_counter() - started}
                return snapshot
            order = np.argsort(keys, kind="stable")
            # Per tile: its points now, and its changes since its features were computed.
            tiles_now, count = np.unique(tile_of, return_counts=True)
            points_in = dict(zip(tiles_now.tolist(), count.tolist()))
            pending = dict.fromkeys(points_in, 0)
            for t, n in zip(*np.unique(np.concatenate([tile_of[changed], old.tile_of[~present]]), return_counts=True)):
                if int(t) in pending:
                    pending[int(t)] += int(n)
            run, patch = [], []
            for t, n in points_in.items():
                tile = old.tiles.get(t)
                if tile is None or pending[t] + tile.patched > max(self.config.rerun_points,
                                                                   self.config.rerun_fraction * n):
                    run.append(t)
                elif pending[t]:
                    patch.append(t)
            tiles = {t: old.tiles[t] for t in points_in if t in old.tiles and t not in run and t not in patch}
            for t in patch:
                tile = self._patch(old.tiles[t], t, xyz, rgb, keys, tile_of, changed, pending[t])
                if tile is None:  # nothing of the tile is left to borrow a unit from: it runs
                    run.append(t)
                else:
                    tiles[t] = tile
            tiles.update(self._run_tiles(xyz, rgb, keys, tile_of, sorted(run)))
            # Past the budget the network voxels are served first, and refine() brings the superpoints when there is
            # time; within it, the tiles that wait for them get them now.
            waiting = sum(len(tile.keys) for tile in tiles.values() if not tile.refined)
            budget = self.config.refine_points
            refined = self._refine(tiles, 0) if waiting and (not budget or waiting <= budget) else 0
            tiles = dict(sorted(tiles.items()))  # tile order numbers the units: the same tiles, the same numbers
            same_units = not run and not refined and tiles.keys() == old.tiles.keys()
            drift = old.drift + int(changed.sum()) + int((~present).sum()) if same_units else 0
            snapshot = FeatureSnapshot.build(xyz, rgb, keys, order, tile_of, tiles, stamp, old.version + 1,
                                             old.units if same_units else None, drift)
            self.snapshot = snapshot
            self.last_update = {"points": len(keys), "changed": int(changed.sum()),
                                "removed": int((~present).sum()), "tiles_run": len(run),
                                "tiles_patched": len(set(patch) - set(run)), "tiles_refined": refined,
                                "tiles": len(tiles), "seconds": time.perf_counter() - started}
            return snapshot

    def restore(self, snapshot: FeatureSnapshot) -> None:
        """Serve ``snapshot`` (from a map file) as the current features; ValueError when its points were keyed or
        tiled with another ``map_voxel`` or ``tile`` than this map's."""
        if not np.array_equal(voxel_keys(snapshot.xyz, self.config.map_voxel), snapshot.keys) or \
                not np.array_equal(self._tile_ids(snapshot.xyz), snapshot.tile_of):
            raise ValueError(f"the feature map's points were not keyed with map_voxel {self.config.map_voxel} m "
                             f"and tile {self.config.tile} m")
        with self._update_lock:
            self.snapshot = snapshot
            self.last_update = {}

    def unrefined_points(self) -> int:
        """Points of the current snapshot whose tiles still wait for their superpoints."""
        return sum(len(t.keys) for t in self.snapshot.tiles.values() if not t.refined)

    def refine(self, max_points: int = 0) -> int:
        """Refine tiles of up to ``max_points`` points (at least one; 0 = all) that still wait for their
        superpoints, and swap in the snapshot with them (same map, same stamp); returns the tiles refined."""
        with self._update_lock:
            old = self.snapshot
            tiles = dict(old.tiles)
            refined = self._refine(tiles, max_points)
            tiles = dict(sorted(tiles.items()))
            if refined:
                self.snapshot = FeatureSnapshot.build(old.xyz, old.rgb, old.keys, old.order, old.tile_of, tiles,
                                                      old.stamp, old.version + 1)
            return refined

    def _refine(self, tiles: dict, max_points: int) -> int:
        """Give superpoints to the tiles still on network-voxel units, in tile order, up to ``max_points`` points
        (at least one tile; 0 = all); returns how many tiles. The superpoints are computed over the points of these
        tiles together, each one's feature the mean of its points' voxel features (as ``iter_voxel_features``
        averages them), and each tile keeps the superpoints its points use."""
        batch, points = [], 0
        for t in sorted(t for t, tile in tiles.items() if not tile.refined):
            if batch and max_points and points + len(tiles[t].keys) > max_points:
                break
            batch.append(t)
            points += len(tiles[t].keys)
        if not batch:
            return 0
        members = [tiles[t] for t in batch]
        segment = torch.from_numpy(superpoints(np.concatenate([m.ref_xyz for m in members]),
                                               np.concatenate([m.ref_rgb for m in members]), self.superpoint_config))
        starts = np.cumsum([0] + [len(m.keys) for m in members])
        features = superpoint_average(segment, int(segment.max()) + 1,
                                      [(torch.arange(starts[i], starts[i + 1]), m.features, m.unit)
                                       for i, m in enumerate(members)])
        for i, (t, m) in enumerate(zip(batch, members)):
            used, unit = torch.unique(segment[starts[i]:starts[i + 1]], return_inverse=True)
            tiles[t] = _Tile(keys=m.keys, features=features.index_select(0, used.to(features.device)),
                             unit=unit.to(features.device), ref_xyz=m.ref_xyz, ref_rgb=m.ref_rgb, patched=m.patched)
        return len(batch)

    def _changes(self, old: FeatureSnapshot, keys, xyz, rgb, tile_of):
        """(changed: points new to their tile or moved / recoloured beyond the tolerances since their tile's
        features were computed; present: which points of the old snapshot are still there)."""
        if len(old) == 0:
            return np.ones(len(keys), bool), np.zeros(0, bool)
        rank = np.clip(np.searchsorted(old.sorted_keys, keys), 0, len(old) - 1)
        pos = old.order[rank]
        known = (old.sorted_keys[rank] == keys) & (old.tile_of[pos] == tile_of)
        moved = np.linalg.norm(xyz - old.ref_xyz[pos], axis=1) > \
            self.config.position_tolerance * self.config.map_voxel
        recoloured = np.abs(rgb.astype(np.int16) - old.ref_rgb[pos].astype(np.int16)).max(axis=1) \
            > self.config.color_tolerance
        present = np.zeros(len(old), bool)
        present[pos[known]] = True
        return ~known | moved | recoloured, present

    @staticmethod
    def _patch(tile: _Tile, name: int, xyz, rgb, keys, tile_of, changed, changes: int) -> _Tile | None:
        """The tile without its removed points and with its new ones, each new point on the unit of the nearest
        point the tile keeps; its features stay (too few changes to run it again). Points that moved or changed
        colour keep their unit and their reference, so their change still counts at the next update."""
        mine = np.flatnonzero(tile_of == name)
        keep = np.isin(tile.keys, keys[mine])
        kept_keys = tile.keys[keep]
        kept_unit = tile.unit[torch.from_numpy(np.flatnonzero(keep))]
        new = mine[changed[mine] & ~np.isin(keys[mine], kept_keys)]
        units = [kept_unit]
        if not len(kept_keys):
            return None
        if len(new):
            old_xyz = torch.from_numpy(tile.ref_xyz[keep])
            nearest = torch.cat([torch.cdist(torch.from_numpy(xyz[new[i:i + 512]]), old_xyz).argmin(dim=1)
                                 for i in range(0, len(new), 512)])
            units.append(kept_unit[nearest])
        return _Tile(keys=np.concatenate([kept_keys, keys[new]]), features=tile.features, unit=torch.cat(units),
                     ref_xyz=np.concatenate([tile.ref_xyz[keep], xyz[new]]),
                     ref_rgb=np.concatenate([tile.ref_rgb[keep], rgb[new]]),
                     patched=tile.patched + changes, refined=tile.refined)

    def _run_tiles(self, xyz, rgb, keys, tile_of, run: list[int]) -> dict[int, _Tile]:
        """One network pass over the tiles to run and every point within ``margin`` of them; the features of the
        run tiles' own points' units, per tile."""
        if not run:
            return {}
        boxes = [self._context_box(tile) for tile in run]
        context = np.flatnonzero(_in_boxes(xyz, np.stack([lo for lo, _ in boxes]), np.stack([hi for _, hi in boxes])))
        tile_of_context = tile_of[context]
        wanted = np.isin(tile_of_context, np.asarray(run, dtype=np.int64))
        parts: dict[int, list] = {t: [] for t in run}
        with torch.inference_mode():
            # One item for the context unless it exceeds the Segmenter's chunk_points (then its own chunks); units
            # are network voxels (superpoints come after, tile by tile: _refine).
            for core, feats, rows in self.segmenter.iter_voxel_features(xyz[context], rgb[context], superpoints=False):
                core = core.cpu().numpy()
                mine = wanted[core]
                for tile in np.unique(tile_of_context[core[mine]]).tolist():
                    sel = np.flatnonzero(mine & (tile_of_context[core] == tile))
                    parts[tile].append((core[sel], feats, rows[torch.from_numpy(sel).to(rows.device)]))
        return {tile: self._tile(xyz, rgb, keys, context, pieces, refined=self.superpoint_config is None)
                for tile, pieces in parts.items() if pieces}

    @staticmethod
    def _tile(xyz, rgb, keys, context, pieces, refined: bool) -> _Tile:
        """A tile from its points' (context positions, chunk features, unit rows) pieces: only the units its points
        use are kept."""
        positions, features, units, offset = [], [], [], 0
        for position, feats, rows in pieces:
            used, unit = torch.unique(rows, return_inverse=True)
            positions.append(position)
            features.append(feats.index_select(0, used))
            units.append(unit + offset)
            offset += len(used)
        points = context[np.concatenate(positions)]
        return _Tile(keys=keys[points], features=torch.cat(features).contiguous(), unit=torch.cat(units),
                     ref_xyz=xyz[points], ref_rgb=rgb[points], refined=refined)


@numba.njit(cache=True)
def _in_boxes(xyz, lo, hi):
    """Which points (x, y of ``xyz`` (N, 3)) lie in any of the boxes [lo, hi) (B, 2), in float64: one pass over
    the map where a numpy test per box made one per run tile."""
    inside = np.zeros(xyz.shape[0], np.bool_)
    for i in range(xyz.shape[0]):
        x, y = np.float64(xyz[i, 0]), np.float64(xyz[i, 1])
        for b in range(lo.shape[0]):
            if x >= lo[b, 0] and x < hi[b, 0] and y >= lo[b, 1] and y < hi[b, 1]:
                inside[i] = True
                break
    return inside
