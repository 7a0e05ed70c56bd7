"""Stamped poses and transform trees: the one pose lookup of the bag reader and the live fusion node.

- ``PoseTrack``: the time-stamped transforms of one thing (a camera, an odometry body, one /tf edge). ``at(t)``
  interpolates between the samples around ``t`` (lerp of the translation, slerp of the rotation) when they are at
  most ``max_gap`` apart, else takes the nearest sample within ``tolerance``. ``lookup`` adds what a live stream
  needs: it waits while a better pose may still arrive.
- ``TransformTree``: frames joined by /tf (time-varying) and /tf_static (constant) edges; ``lookup(target, source,
  t)`` composes the chain edge by edge, each dynamic edge looked up at ``t``.

Both are ROS-free: they take stamps in seconds and 4x4 matrices (or translation + quaternion in ROS order).
"""
from __future__ import annotations

import bisect
import logging
import threading

import numpy as np

from ov3d_ros.geometry import invert_rigid, matrix_to_quaternion, rigid_from_quaternion, slerp

__all__ = ["PoseTrack", "TransformTree", "strip_frame"]

_log = logging.getLogger(__name__)


class PoseTrack:
    """Time-stamped rigid transforms of one thing, kept sorted by stamp; thread-safe.

    ``maxlen``: keep at most this many samples, the oldest dropped (a live stream); None keeps all (a recording).
    """

    def __init__(self, name: str = "", maxlen: int | None = None) -> None:
        self.name = name
        self.maxlen = maxlen
        self._stamps: list[float] = []
        self._t: list[np.ndarray] = []
        self._q: list[np.ndarray] = []
        self._lock = threading.Lock()

    def add(self, stamp: float, T=None, *, translation=None, quaternion=None) -> None:
        """Add the transform at ``stamp`` [s], as a 4x4 ``T`` or as ``translation`` + ``quaternion`` (x, y, z, w).
        Samples may come out of order; a sample at an existing stamp replaces it."""
        if T is not None:
            T = np.asarray(T, dtype=np.float64)
            translation, quaternion = T[:3, 3], matrix_to_quaternion(T[:3, :3])
        t = np.asarray(translation, dtype=np.float64).reshape(3)
        q = np.asarray(quaternion, dtype=np.float64).reshape(4)
        stamp = float(stamp)
        with self._lock:
            k = bisect.bisect_left(self._stamps, stamp)
            if k < len(self._stamps) and self._stamps[k] == stamp:
                self._t[k], self._q[k] = t, q
                return
            self._stamps.insert(k, stamp)
            self._t.insert(k, t)
            self._q.insert(k, q)
            if self.maxlen is not None and len(self._stamps) > self.maxlen:
                del self._stamps[0], self._t[0], self._q[0]

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest(self) -> float | None:
        """Stamp of the newest sample, None when empty."""
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def _matrix(self, k: int) -> np.ndarray:
        return rigid_from_quaternion(self._t[k], self._q[k])

    def at(self, stamp: float, *, max_gap: float, tolerance: float) -> np.ndarray | None:
        """The 4x4 transform at ``stamp``: interpolated between the samples around it when they are at most
        ``max_gap`` [s] apart, else the nearest sample if within ``tolerance`` [s]; None otherwise."""
        with self._lock:
            stamps = self._stamps
            if not stamps:
                return None
            k = bisect.bisect_left(stamps, stamp)
            if k < len(stamps) and stamps[k] == stamp:
                return self._matrix(k)
            if 0 < k < len(stamps) and stamps[k] - stamps[k - 1] <= max_gap:
                a = (stamp - stamps[k - 1]) / (stamps[k] - stamps[k - 1])
                t = (1 - a) * self._t[k - 1] + a * self._t[k]
                return rigid_from_quaternion(t, slerp(self._q[k - 1], self._q[k], a))
            j = min((j for j in (k - 1, k) if 0 <= j < len(stamps)), key=lambda j: abs(stamps[j] - stamp))
            return self._matrix(j) if abs(stamps[j] - stamp) <= tolerance else None

    def lookup(self, stamp: float, *, max_gap: float, tolerance: float,
               final: bool = False) -> tuple[np.ndarray | None, bool]:
        """(pose or None, may_still_arrive) for a live stream.

        A frame's pose is only taken once a sample at or after its stamp has arrived (or when ``final``): before
        that a closer or bracketing sample may still be on its way, and the previous sample alone would fuse the
        frame with a pose up to ``tolerance`` old. ``may_still_arrive`` says whether waiting can still help.
        """
        newest = self.newest
        if newest is None:
            return None, True
        if newest < stamp and not final:
            return None, True
        T = self.at(stamp, max_gap=max_gap, tolerance=tolerance)
        if T is not None:
            return T, False
        return None, newest < stamp + tolerance


def strip_frame(frame_id: str) -> str:
    """A tf frame name without the leading slash of ROS 1 style names."""
    return frame_id[1:] if frame_id.startswith("/") else frame_id


class TransformTree:
    """Frames joined by static and time-varying edges parent -> child (the /tf_static and /tf trees).

    ``add(parent, child, stamp, T_parent_child, static=...)``; ``lookup(target, source, stamp)`` gives
    T_target_source (maps points in ``source`` to ``target``) at ``stamp`` or None when an edge has no sample near
    enough; ValueError when the two frames are not connected.
    """

    def __init__(self, *, max_gap: float = 0.5, tolerance: float = 0.02, maxlen: int | None = None) -> None:
        self.max_gap, self.tolerance, self.maxlen = float(max_gap), float(tolerance), maxlen
        self.parent: dict[str, str] = {}
        self.static: dict[str, np.ndarray] = {}  # child -> T_parent_child
        self.dynamic: dict[str, PoseTrack] = {}

    def add(self, parent: str, child: str, stamp: float, T_parent_child, *, static: bool) -> None:
        parent, child = strip_frame(parent), strip_frame(child)
        if self.parent.get(child, parent) != parent:
            _log.warning("tf: frame '%s' has two parents ('%s' and '%s'); keeping the first", child,
                         self.parent[child], parent)
            return
        self.parent[child] = parent
        if static:
            self.static[child] = np.asarray(T_parent_child, dtype=np.float64)
        else:
            self.dynamic.setdefault(child, PoseTrack(child, self.maxlen)).add(stamp, T_parent_child)

    def __bool__(self) -> bool:
        return bool(self.parent)

    def frames(self) -> set[str]:
        return set(self.parent) | set(self.parent.values())

    def root(self, frame: str) -> str:
        return self._path_to_root(strip_frame(frame))[-1]

    def roots(self) -> list[str]:
        """Frames without a parent, sorted."""
        return sorted({self.root(f) for f in self.frames()})

    def _path_to_root(self, frame: str) -> list[str]:
        path = [frame]
        while path[-1] in self.parent:
            path.append(self.parent[path[-1]])
            if len(path) > 1000:
                raise ValueError(f"tf: cycle in the transform tree above '{frame}'")
        return path

    def newest_on_chain(self, target: str, source: str) -> float:
        """The stamp up to which every time-varying edge between the two frames has samples (the oldest of their
        newest samples): a lookup at or before it is bracketed. +inf when the chain is all static."""
        target, source = strip_frame(target), strip_frame(source)
        up_t, up_s = self._path_to_root(target), self._path_to_root(source)
        if up_t[-1] != up_s[-1]:
            return -float("inf")
        common = next(f for f in up_s if f in set(up_t))
        edges = up_t[:up_t.index(common)] + up_s[:up_s.index(common)]  # each child frame is one edge
        newest = [self.dynamic[f].newest for f in edges if f in self.dynamic]
        return min(newest) if newest else float("inf")

    def has_chain(self, target: str, source: str) -> bool:
        return self.root(target) == self.root(source)

    def lookup(self, target: str, source: str, stamp: float) -> np.ndarray | None:
        target, source = strip_frame(target), strip_frame(source)
        up_t, up_s = self._path_to_root(target), self._path_to_root(source)
        if up_t[-1] != up_s[-1]:
            raise ValueError(f"tf: no chain between '{target}' and '{source}' (roots '{up_t[-1]}' and "
                             f"'{up_s[-1]}'); frames known: {sorted(self.frames())}")
        common = next(f for f in up_s if f in set(up_t))

        def to_ancestor(path):  # T_common_frame for path[0]
            T = np.eye(4)
            for child in path[: path.index(common)]:
                if child in self.static:
                    edge = self.static[child]
                else:
                    edge = self.dynamic[child].at(stamp, max_gap=self.max_gap, tolerance=self.tolerance)
                    if edge is None:
                        return None
                T = edge @ T
            return T

        T_common_source, T_common_target = to_ancestor(up_s), to_ancestor(up_t)
        if T_common_source is None or T_common_target is None:
            return None
        return invert_rigid(T_common_target) @ T_common_source
