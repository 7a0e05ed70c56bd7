"""The one point-cloud type shared by fusion, the segmenter, training and the nodes."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np


@dataclass
class PointCloud:
    """Arrays of one cloud, all with the same length N.

    xyz: (N, 3) float32 metres, in ``frame_id``.
    rgb: (N, 3) uint8.
    label: (N,) int32, -1 = unknown/unlabelled (optional).
    score: (N,) float32 (optional).
    feature: (N, D) float32 (optional).
    instance: (N,) int32, -1 = none (optional; ground truth only).
    """

    xyz: np.ndarray
    rgb: np.ndarray
    label: np.ndarray | None = None
    score: np.ndarray | None = None
    feature: np.ndarray | None = None
    instance: np.ndarray | None = None
    frame_id: str = "map"
    extras: dict = field(default_factory=dict)  # named per-point arrays (e.g. observation counts)

    def __post_init__(self) -> None:
        self.xyz = np.ascontiguousarray(self.xyz, dtype=np.float32).reshape(-1, 3)
        n = len(self.xyz)
        rgb = np.asarray(self.rgb)
        if rgb.dtype != np.uint8:
            if np.issubdtype(rgb.dtype, np.floating) and rgb.size and rgb.max() <= 1.0:
                rgb = rgb * 255.0
            rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        self.rgb = np.ascontiguousarray(rgb).reshape(-1, 3)
        if len(self.rgb) != n:
            raise ValueError(f"PointCloud: rgb has {len(self.rgb)} rows but xyz has {n}")
        for name, dtype in (("label", np.int32), ("score", np.float32), ("instance", np.int32)):
            value = getattr(self, name)
            if value is not None:
                value = np.ascontiguousarray(value, dtype=dtype).reshape(-1)
                if len(value) != n:
                    raise ValueError(f"PointCloud: {name} has {len(value)} rows but xyz has {n}")
                setattr(self, name, value)
        if self.feature is not None:
            feature = np.ascontiguousarray(self.feature, dtype=np.float32)
            if feature.ndim != 2 or len(feature) != n:
                raise ValueError(f"PointCloud: feature must be (N={n}, D), got {feature.shape}")
            self.feature = feature

    def __len__(self) -> int:
        return len(self.xyz)

    def select(self, index: np.ndarray) -> "PointCloud":
        """Subset by boolean mask or integer index (per-point arrays are sliced, the rest kept)."""
        n = len(self)
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kwargs[f.name] = value[index] if isinstance(value, np.ndarray) else value
        # per-point extras (e.g. a map's observation counts) follow the points; anything else is kept as is
        kwargs["extras"] = {
            key: value[index] if isinstance(value, np.ndarray) and len(value) == n else value
            for key, value in self.extras.items()
        }
        return PointCloud(**kwargs)

    def with_labels(self, label: np.ndarray, score: np.ndarray | None = None) -> "PointCloud":
        return replace(self, label=label, score=score)

    @staticmethod
    def concatenate(clouds: list["PointCloud"]) -> "PointCloud":
        if not clouds:
            raise ValueError("PointCloud.concatenate: no clouds given")
        kwargs = {"frame_id": clouds[0].frame_id}
        for name in ("xyz", "rgb", "label", "score", "feature", "instance"):
            parts = [getattr(c, name) for c in clouds]
            if all(p is not None for p in parts):
                kwargs[name] = np.concatenate(parts)
            elif any(p is not None for p in parts):
                raise ValueError(f"PointCloud.concatenate: '{name}' present in some clouds only")
        return PointCloud(**kwargs)
