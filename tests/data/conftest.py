"""Shared synthetic scenes for the data tests: rendered once per session, small (160x120) to stay fast."""
from __future__ import annotations

import numpy as np
import pytest

from ov3d_ros.data.synthetic import CLASS_NAMES, SyntheticRoom, render_sequence

ROOM_SEED = 7


@pytest.fixture(scope="session")
def room() -> SyntheticRoom:
    return SyntheticRoom.generate(ROOM_SEED)


@pytest.fixture(scope="session")
def clean_frames(room):
    return render_sequence(room, n_frames=12, width=160, height=120, noise=False)


@pytest.fixture(scope="session")
def noisy_frames(room):
    return render_sequence(room, n_frames=12, width=160, height=120, noise=True, seed=3)


@pytest.fixture(scope="session")
def gt_cloud(room):
    return room.ground_truth_cloud(spacing=0.02)


@pytest.fixture(scope="session")
def exported_scene(tmp_path_factory, room, clean_frames):
    """A synthetic scene written in the ScanNet layout (noise-free depth, ground truth and class names)."""
    from ov3d_ros.data.scannet import write_scannet_scene

    path = tmp_path_factory.mktemp("scenes") / "scene0007_00"
    write_scannet_scene(path, clean_frames, ground_truth=room.ground_truth_cloud(spacing=0.03),
                        class_names=CLASS_NAMES)
    return path


def near_fraction(points: np.ndarray, reference: np.ndarray, radius: float) -> float:
    """Fraction of ``points`` with a ``reference`` point within ``radius`` (exact, via a radius-sized grid)."""
    ref_cells = np.floor(reference / radius).astype(np.int64)
    order = np.lexsort(ref_cells.T[::-1])
    ref_cells, reference = ref_cells[order], reference[order]
    keys_unique, starts = np.unique(ref_cells, axis=0, return_index=True)
    ends = np.append(starts[1:], len(ref_cells))
    lookup = {tuple(k): (s, e) for k, s, e in zip(keys_unique.tolist(), starts, ends)}
    cells = np.floor(points / radius).astype(np.int64)
    hits = 0
    offsets = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]
    for p, c in zip(points, cells.tolist()):
        found = False
        for dx, dy, dz in offsets:
            span = lookup.get((c[0] + dx, c[1] + dy, c[2] + dz))
            if span is not None and np.min(np.sum((reference[span[0]:span[1]] - p) ** 2, axis=1)) <= radius ** 2:
                found = True
                break
        hits += found
    return hits / max(len(points), 1)


@pytest.fixture(scope="session")
def near():
    return near_fraction
