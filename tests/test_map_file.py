"""Map files: a VoxelMap and its feature map in one .npz, read back losslessly, and refused when another model,
voxel or tile made them, or when the file is damaged."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from ov3d_ros.data.synthetic import SyntheticRoom, render_sequence
from ov3d_ros.feature_map import FeatureMap, FeatureMapConfig
from ov3d_ros.instances import InstanceTracker, cluster_grid, extract_instances
from ov3d_ros.map_file import read_features, write_features
from ov3d_ros.mapping import Mapper, MapperConfig
from ov3d_ros.model.checkpoint import model_fingerprint

from test_segmenter import WORDS, BasisEncoder, _one_thread, busy_model  # noqa: F401  (_one_thread: autouse)

VOXEL = 0.04
TILE = 1.0


@pytest.fixture(scope="module")
def mapped():
    """A mapper after eight frames of a room, and a feature map (with superpoints) brought up to it in two steps,
    the second patching tiles rather than re-running them."""
    from ov3d_ros.segmenter import Segmenter

    frames = [s.frame for s in render_sequence(SyntheticRoom.generate(3), n_frames=8, width=80, height=60,
                                                noise=True, seed=3)]
    mapper = Mapper(MapperConfig(voxel_size=VOXEL, max_depth=8.0))
    segmenter = Segmenter(busy_model(), BasisEncoder(WORDS), chunk_margin=0.6, superpoints=True)
    features = FeatureMap(segmenter, FeatureMapConfig(map_voxel=VOXEL, tile=TILE, rerun_fraction=0.5))
    for i, frame in enumerate(frames):
        mapper.add_frame(frame)
        if i in (5, 7):
            cloud = mapper.cloud()[0]
            features.update(cloud.xyz, cloud.rgb, frame.stamp)
    assert features.last_update["tiles_patched"] > 0
    return mapper, features


def _save(path, features, fingerprint, tracks=None):
    return write_features(path, features.snapshot, fingerprint=fingerprint, map_voxel=VOXEL, tile=TILE,
                          frame_id="odom", tracks=tracks)


def test_a_map_file_round_trip_gives_the_same_map_features_answers_and_object_ids(mapped, tmp_path):
    mapper, features = mapped
    segmenter, snapshot = features.segmenter, features.snapshot
    fingerprint = model_fingerprint(segmenter.model)
    grid = cluster_grid(snapshot.xyz, 0.05, snapshot.unit_of_point)
    units = snapshot.label_units(segmenter, WORDS)
    found = extract_instances(grid, units.label, units.score, len(WORDS), min_points=5)
    tracker = InstanceTracker()
    for q, word in enumerate(WORDS):
        tracker.assign(word, [i for i in found.instances if i.query == q], snapshot.stamp)
    assert found.instances

    path, n = mapper.save(tmp_path / "room.npz")
    voxel_bytes = path.read_bytes()
    _save(path, features, fingerprint, tracker.state())
    with zipfile.ZipFile(path) as archive:  # the features follow the voxels, which are not rewritten
        added = min(i.header_offset for i in archive.infolist() if i.filename.startswith(("features.", "tracks.")))
    assert added > 8 * len(mapper) and path.read_bytes()[:added] == voxel_bytes[:added]

    # The voxel part: the same map, the newest keyframe's stamp, and the next frame is a keyframe.
    restarted = Mapper(MapperConfig(voxel_size=VOXEL, max_depth=8.0))
    assert restarted.load(path) == n == len(mapper)
    before, after = mapper.map.to_cloud(), restarted.map.to_cloud()
    np.testing.assert_array_equal(before.xyz, after.xyz)
    np.testing.assert_array_equal(before.rgb, after.rgb)
    assert restarted.last_keyframe_stamp == mapper.last_keyframe_stamp
    assert restarted.is_keyframe(np.eye(4))

    # The feature part: every array as saved, the same labels, and the same ids for the same objects.
    saved = read_features(path, fingerprint=fingerprint, map_voxel=VOXEL, tile=TILE)
    assert saved.frame_id == "odom" and saved.snapshot.stamp == snapshot.stamp
    for name, value in snapshot.to_arrays().items():
        np.testing.assert_array_equal(saved.snapshot.to_arrays()[name], value, err_msg=name)
    again = saved.snapshot.label_units(segmenter, WORDS)
    np.testing.assert_array_equal(again.label, units.label)
    np.testing.assert_array_equal(again.score, units.score)
    restored = InstanceTracker()
    restored.restore(saved.tracks)
    found_again = extract_instances(cluster_grid(saved.snapshot.xyz, 0.05, saved.snapshot.unit_of_point),
                                    again.label, again.score, len(WORDS), min_points=5)
    for q, word in enumerate(WORDS):
        restored.assign(word, [i for i in found_again.instances if i.query == q], snapshot.stamp + 1.0)
    assert [(i.query, i.id, i.points) for i in found_again.instances] == \
        [(i.query, i.id, i.points) for i in found.instances]

    # A feature map restored from the file follows the restarted mapper's cloud as the one in memory would: the
    # same tiles run (patched tiles carry their pending changes), the same labels come out.
    followers = []
    for start in (saved.snapshot, snapshot):
        follower = FeatureMap(segmenter, FeatureMapConfig(map_voxel=VOXEL, tile=TILE, rerun_fraction=0.5))
        follower.restore(start)
        follower.update(after.xyz, after.rgb, snapshot.stamp + 2.0)
        followers.append(follower)
    a, b = followers
    work = ("points", "changed", "removed", "tiles_run", "tiles_patched", "tiles_refined", "tiles")
    assert [a.last_update[k] for k in work] == [b.last_update[k] for k in work]
    np.testing.assert_array_equal(a.snapshot.label(segmenter, WORDS).label, b.snapshot.label(segmenter, WORDS).label)


def test_map_files_of_another_model_voxel_or_tile_are_refused_by_name(mapped, tmp_path):
    _, features = mapped
    fingerprint = model_fingerprint(features.segmenter.model)
    path = _save(tmp_path / "features_only.npz", features, fingerprint)
    other = model_fingerprint(busy_model(seed=1))
    assert other != fingerprint
    with pytest.raises(ValueError, match="another model"):
        read_features(path, fingerprint=other, map_voxel=VOXEL, tile=TILE)
    with pytest.raises(ValueError, match="map_voxel 0.04 m, this node 0.02 m"):
        read_features(path, fingerprint=fingerprint, map_voxel=0.02, tile=TILE)
    with pytest.raises(ValueError, match="tile 1.0 m, this node 2.0 m"):
        read_features(path, fingerprint=fingerprint, map_voxel=VOXEL, tile=2.0)
    # The map itself refuses another voxel size and more voxels than its capacity, and stays as it was.
    mapper, _ = mapped
    voxels, _ = mapper.save(tmp_path / "voxels.npz")
    other_voxel = Mapper(MapperConfig(voxel_size=0.02))
    with pytest.raises(ValueError, match="0.04 m voxels, this map 0.02 m"):
        other_voxel.load(voxels)
    small = Mapper(MapperConfig(voxel_size=VOXEL, capacity=10))
    with pytest.raises(ValueError, match="more than this map's capacity 10"):
        small.load(voxels)
    assert len(small) == 0 and small.version == 0
    # A voxel map alone holds no features; a features-only file holds no voxel map.
    with pytest.raises(ValueError, match="holds no features"):
        read_features(voxels, fingerprint=fingerprint, map_voxel=VOXEL, tile=TILE)
    with pytest.raises(ValueError, match="not a saved VoxelMap"):
        Mapper(MapperConfig(voxel_size=VOXEL)).load(path)


def test_damaged_map_files_fail_with_their_name_and_leave_nothing_half_loaded(mapped, tmp_path):
    mapper, features = mapped
    fingerprint = model_fingerprint(features.segmenter.model)
    path, _ = mapper.save(tmp_path / "room.npz")
    _save(path, features, fingerprint)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        read_features(truncated, fingerprint=fingerprint, map_voxel=VOXEL, tile=TILE)
    loaded = Mapper(MapperConfig(voxel_size=VOXEL))
    with pytest.raises(ValueError, match="truncated.npz"):
        loaded.load(truncated)
    assert len(loaded) == 0
    with pytest.raises(ValueError, match="map file not found"):
        read_features(tmp_path / "missing.npz", fingerprint=fingerprint, map_voxel=VOXEL, tile=TILE)
    # Arrays that do not fit together (an edited file) are refused, not served.
    arrays = dict(np.load(path))
    arrays["features.tile_unit"] = arrays["features.tile_unit"] + 10_000
    edited = tmp_path / "edited.npz"
    np.savez(edited, **arrays)
    with pytest.raises(ValueError, match="do not fit together"):
        read_features(edited, fingerprint=fingerprint, map_voxel=VOXEL, tile=TILE)
    # Writing features again replaces the earlier ones and keeps the voxel map; nothing is left beside the file.
    _save(path, features, fingerprint)
    assert Mapper(MapperConfig(voxel_size=VOXEL)).load(path) == len(mapper)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.npz", "room.npz", "truncated.npz"]
