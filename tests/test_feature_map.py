"""FeatureMap: incremental per-voxel features of a growing map, against one full pass, and queries that never wait."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from ov3d_ros.data.synthetic import SyntheticRoom, render_sequence
from ov3d_ros.feature_map import FeatureMap, FeatureMapConfig, voxel_keys
from ov3d_ros.mapping import Mapper, MapperConfig
from ov3d_ros.segmenter import Segmenter

from test_segmenter import WORDS, BasisEncoder, _one_thread, busy_model  # noqa: F401  (_one_thread: autouse)

MAP_VOXEL = 0.04


@pytest.fixture(scope="module")
def map_versions():
    """A room mapped frame by frame: the map cloud (voxel means) after every second frame, and its stamp."""
    room = SyntheticRoom.generate(3)
    frames = [s.frame for s in render_sequence(room, n_frames=12, width=80, height=60, noise=True, seed=3)]
    mapper = Mapper(MapperConfig(voxel_size=MAP_VOXEL, max_depth=8.0))
    versions = []
    for i, frame in enumerate(frames):
        mapper.add_frame(frame)
        if i % 2 == 1:
            versions.append((mapper.cloud()[0], frame.stamp))
    return versions


def _segmenter(cls=Segmenter):
    return cls(busy_model(), BasisEncoder(WORDS), chunk_margin=0.6)


def test_incremental_updates_equal_one_full_pass(map_versions):
    """Tolerance: labels identical on >= 99.5% of the points, scores within 0.02 on >= 99% (measured: all equal
    here; tiles left alone can keep features from an older neighbourhood)."""
    seg = _segmenter()
    incremental = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0))
    costs = []
    for cloud, stamp in map_versions:
        snap = incremental.update(cloud.xyz, cloud.rgb, stamp)
        costs.append(incremental.last_update["tiles_run"])
        assert len(snap) == len(cloud) and snap.stamp == stamp
    final, stamp = map_versions[-1]
    once = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0)).update(final.xyz, final.rgb, stamp)
    a, b = snap.label(seg, WORDS, -1.0), once.label(seg, WORDS, -1.0)
    np.testing.assert_array_equal(snap.keys, once.keys)
    np.testing.assert_array_equal(snap.xyz, final.xyz)  # the points in the order the map came in
    assert (a.label == b.label).mean() >= 0.995
    assert (np.abs(a.score - b.score) <= 0.02).mean() >= 0.99
    # The Segmenter on the whole map (its own chunks) agrees as closely.
    label, score = seg.label_points(once.xyz, once.rgb, WORDS, min_score=-1.0)
    assert (a.label == label).mean() >= 0.995
    # Later updates re-ran fewer tiles than the map holds: the cost follows what changed.
    assert max(costs[1:]) < len(snap.tiles)


def test_an_unchanged_map_runs_nothing_and_a_local_change_runs_its_tiles(map_versions):
    seg = _segmenter()
    fm = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0))
    cloud, _ = map_versions[-1]
    first = fm.update(cloud.xyz, cloud.rgb, 1.0)
    again = fm.update(cloud.xyz, cloud.rgb, 2.0)
    assert fm.last_update["tiles_run"] == 0 and fm.last_update["changed"] == 0
    assert again.stamp == 2.0 and again.version == first.version + 1
    # The same map seen again (means moved and colours changed within the tolerances, points in another order)
    # keeps the points, units and features: only the stamp moves.
    shuffle = np.random.default_rng(0).permutation(len(cloud))
    jitter = np.float32(0.12 * MAP_VOXEL) * np.sign(np.random.default_rng(1).standard_normal(cloud.xyz.shape))
    nudged = np.clip(cloud.rgb.astype(int) + 5, 0, 255).astype(np.uint8)
    inside = np.all(np.floor((cloud.xyz + jitter) / MAP_VOXEL) == np.floor(cloud.xyz / MAP_VOXEL), axis=1)
    jitter[~inside] = 0  # a voxel's mean stays in its voxel
    seen = fm.update((cloud.xyz + jitter)[shuffle], nudged[shuffle], 2.5)
    assert fm.last_update["changed"] == 0 and seen.stamp == 2.5 and seen.version == again.version + 1
    assert seen.units == first.units and seen.drift == 0 and seen.xyz is first.xyz and seen.tiles is first.tiles
    # One point moved: its tile is patched (rerun_fraction), the units stay and the drift counts the point; labels
    # of the units carry over.
    fm.config = FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0, rerun_fraction=0.1)
    moved = cloud.xyz.copy()
    tile = np.floor(moved[:, :2] / 1.0).astype(int)
    cells, which, sizes = np.unique(tile, axis=0, return_inverse=True, return_counts=True)
    i = int(np.flatnonzero(which.reshape(-1) == np.argmax(sizes))[0])  # a point of the largest tile
    moved[i] += np.float32(0.4 * MAP_VOXEL) * np.sign(0.5 - (moved[i] / MAP_VOXEL) % 1)  # within its voxel
    patched = fm.update(moved, cloud.rgb, 2.6)
    assert fm.last_update["changed"] == 1 and fm.last_update["tiles_run"] == 0
    assert patched.units == first.units and patched.drift == 1
    np.testing.assert_array_equal(patched.label_units(seg, WORDS).label, first.label_units(seg, WORDS).label)
    fm.config = FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0)
    rerun = fm.update(moved, cloud.rgb, 2.7)  # still moved from its reference: its tile runs now
    assert fm.last_update["tiles_run"] == 1 and rerun.units == rerun.version != first.units and rerun.drift == 0
    fm.update(cloud.xyz, cloud.rgb, 2.8)  # the point back where it was
    # Recolour the points of one tile and drop those of another: only those two tiles run again.
    tiles = np.floor(first.xyz[:, :2] / 1.0).astype(int)
    a, b = [tuple(t) for t in np.unique(tiles, axis=0)[[0, -1]]]
    in_a, in_b = np.all(tiles == a, axis=1), np.all(tiles == b, axis=1)
    rgb = first.rgb.copy()
    rgb[in_a] = 255 - rgb[in_a]
    keep = ~in_b
    snap = fm.update(first.xyz[keep], rgb[keep], 3.0)
    assert fm.last_update["tiles_run"] == 1 and fm.last_update["removed"] == int(in_b.sum())
    assert len(snap) == int(keep.sum()) and len(snap.tiles) == len(first.tiles) - 1
    ref = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0)).update(first.xyz[keep], rgb[keep], 3.0)
    assert (snap.label(seg, WORDS, -1.0).label == ref.label(seg, WORDS, -1.0).label).mean() >= 0.99


class _HeldSegmenter(Segmenter):
    """A Segmenter whose network pass waits until the test lets it go."""

    entered: threading.Event
    release: threading.Event

    def iter_voxel_features(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(timeout=60), "the test never released the network pass"
        yield from super().iter_voxel_features(*args, **kwargs)


def test_a_query_during_an_update_answers_at_once_from_the_previous_map(map_versions):
    seg = _segmenter(_HeldSegmenter)
    seg.entered, seg.release = threading.Event(), threading.Event()
    fm = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0))
    (old_cloud, old_stamp), (new_cloud, new_stamp) = map_versions[0], map_versions[-1]
    seg.release.set()
    fm.update(old_cloud.xyz, old_cloud.rgb, old_stamp)
    seg.entered.clear()
    seg.release.clear()
    worker = threading.Thread(target=fm.update, args=(new_cloud.xyz, new_cloud.rgb, new_stamp))
    worker.start()
    try:
        assert seg.entered.wait(timeout=60)  # the update is inside its network pass now
        snap = fm.snapshot
        answer = snap.label(seg, WORDS, -1.0)  # no lock, no network: the previous map's answer
        assert snap.stamp == old_stamp and len(answer.label) == len(old_cloud)
    finally:
        seg.release.set()
        worker.join(timeout=120)
    assert fm.snapshot.stamp == new_stamp and len(fm.snapshot) == len(new_cloud)


def test_voxel_keys_are_unique_for_means_on_cell_faces():
    voxel = 0.02
    # A mean rounded onto the next cell's face shares the cell with that cell's own mean.
    xyz = np.array([[0.04, 0.01, 0.01], [0.045, 0.01, 0.01], [0.01, 0.01, 0.01]], np.float32)
    keys = voxel_keys(xyz, voxel)
    assert len(set(keys.tolist())) == 3
    np.testing.assert_array_equal(voxel_keys(xyz, voxel), keys)  # the same points, the same keys
    assert voxel_keys(xyz[2:], voxel)[0] == keys[2]


def test_bad_maps_are_refused():
    fm = FeatureMap(_segmenter(), FeatureMapConfig(map_voxel=MAP_VOXEL))
    with pytest.raises(ValueError, match="must be \\(N, 3\\)"):
        fm.update(np.zeros((4, 2), np.float32), np.zeros((4, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        fm.update(np.full((2, 3), np.nan, np.float32), np.zeros((2, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="tile must be > 0"):
        FeatureMapConfig(tile=0.0)


def test_small_changes_patch_a_tile_until_they_add_up(map_versions):
    """With rerun_fraction 0.2 a tile whose changes stay under a fifth of its points keeps its features: new
    points take their nearest point's unit, removed ones go. Once the changes since the last run add up past the
    bar, the tile runs again."""
    seg = _segmenter()
    config = FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0, rerun_fraction=0.2)
    fm = FeatureMap(seg, config)
    cloud, _ = map_versions[-1]
    first = fm.update(cloud.xyz, cloud.rgb, 1.0)
    tiles = np.floor(first.xyz[:, :2] / 1.0).astype(int)
    names, counts = np.unique(tiles, axis=0, return_counts=True)
    busiest = np.all(tiles == names[np.argmax(counts)], axis=1)
    # Move a 25th of the busiest tile's points by 10 cm along z: new voxels, their old ones gone (8% changes).
    chosen = np.flatnonzero(busiest)[:: 25]
    xyz = first.xyz.copy()
    xyz[chosen, 2] += 0.1
    snap = fm.update(xyz, first.rgb, 2.0)
    assert fm.last_update["tiles_run"] == 0 and fm.last_update["tiles_patched"] == 1
    full = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0)).update(xyz, first.rgb, 2.0)
    a, b = snap.label(seg, WORDS, -1.0), full.label(seg, WORDS, -1.0)
    assert len(a.label) == len(xyz) and (a.label >= 0).all()  # every point, the moved ones too, has a label
    assert (a.label == b.label).mean() >= 0.95
    # Another tenth (20% changes): together the changes since the tile last ran pass the bar, and it runs.
    xyz2 = xyz.copy()
    xyz2[np.flatnonzero(busiest)[5::10], 2] += 0.1
    fm.update(xyz2, first.rgb, 3.0)
    assert fm.last_update["tiles_run"] == 1 and fm.last_update["tiles_patched"] == 0


def test_superpoint_features_follow_the_map_too(map_versions):
    """With superpoints (computed over each update's run tiles) the incremental map stays close to one full pass;
    measured: 99.6% of the labels agree, and one full pass agrees with the Segmenter on the whole map."""
    from ov3d_ros.superpoints import SuperpointConfig

    seg = Segmenter(busy_model(), BasisEncoder(WORDS), chunk_margin=0.6,
                    superpoints=SuperpointConfig(voxel_size=MAP_VOXEL, min_size=5))
    incremental = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0), superpoints=True)
    for cloud, stamp in map_versions:
        snap = incremental.update(cloud.xyz, cloud.rgb, stamp)
    final, stamp = map_versions[-1]
    once = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0), superpoints=True).update(
        final.xyz, final.rgb, stamp)
    a, b = snap.label(seg, WORDS, -1.0), once.label(seg, WORDS, -1.0)
    assert snap.feature_rows() < len(snap) / 3  # one unit per superpoint, far fewer than points
    assert (a.label == b.label).mean() >= 0.97
    label, _ = seg.label_points(final.xyz, final.rgb, WORDS, min_score=-1.0)  # whole-map superpoints
    assert (b.label == label).mean() >= 0.97


def test_superpoints_can_come_after_the_features(map_versions):
    """With refine_points a tile that runs first answers on its network voxels, also after later updates; refine()
    brings in the superpoints a batch of tiles at a time, without touching the map's stamp. Superpoints made tile by
    tile end at the tiles' borders: measured, 98.5% of the labels agree with those of superpoints made over all the
    tiles at once."""
    from ov3d_ros.superpoints import SuperpointConfig

    seg = Segmenter(busy_model(), BasisEncoder(WORDS), chunk_margin=0.6,
                    superpoints=SuperpointConfig(voxel_size=MAP_VOXEL, min_size=5))
    final, stamp = map_versions[-1]
    at_once = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0), superpoints=True).update(
        final.xyz, final.rgb, stamp)
    later = FeatureMap(seg, FeatureMapConfig(map_voxel=MAP_VOXEL, tile=1.0, refine_points=1), superpoints=True)
    first = later.update(final.xyz, final.rgb, stamp)
    assert later.last_update["tiles_run"] == len(first.tiles) and later.last_update["tiles_refined"] == 0
    assert later.unrefined_points() == len(final) and first.feature_rows() > at_once.feature_rows()
    assert len(first.label(seg, WORDS, -1.0).label) == len(final)  # every point answers already
    again = later.update(final.xyz, final.rgb, stamp)  # the same map: no tile runs, none is refined
    assert later.last_update["tiles_run"] == 0 and later.last_update["tiles_refined"] == 0
    assert later.unrefined_points() == len(final)
    steps = 0
    while later.unrefined_points():
        assert later.refine(1) == 1
        steps += 1
    assert steps == len(first.tiles) and later.refine() == 0
    snap = later.snapshot
    assert snap.stamp == stamp and snap.version == again.version + steps
    agree = (snap.label(seg, WORDS, -1.0).label == at_once.label(seg, WORDS, -1.0).label).mean()
    assert agree >= 0.97, agree
