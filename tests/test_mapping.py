"""Mapper: the frame -> partial cloud -> map step shared by the fusion node, ov3d-fuse and the trainer."""
from __future__ import annotations

import numpy as np
import pytest

from ov3d_ros.data.synthetic import SyntheticRoom, render_sequence
from ov3d_ros.fusion import VoxelMap, make_partial_cloud
from ov3d_ros.geometry import rigid_from_quaternion
from ov3d_ros.mapping import Mapper, MapperConfig


@pytest.fixture(scope="module")
def frames():
    room = SyntheticRoom.generate(5)
    return [s.frame for s in render_sequence(room, n_frames=6, width=64, height=48, noise=True, seed=5)]


def test_mapper_equals_integrating_every_partial_cloud(frames):
    mapper = Mapper(MapperConfig(voxel_size=0.05, max_depth=8.0, stride=2))
    reference = VoxelMap(voxel_size=0.05)
    for frame in frames:
        update = mapper.add_frame(frame)
        assert update.keyframe and update.version == mapper.version
        reference.integrate(make_partial_cloud(frame, max_depth=8.0, stride=2))
    ours, version = mapper.cloud()
    theirs = reference.to_cloud()
    assert version == len(frames) == mapper.keyframes
    np.testing.assert_array_equal(ours.xyz, theirs.xyz)
    np.testing.assert_array_equal(ours.rgb, theirs.rgb)


def test_keyframe_gate_by_translation_and_rotation(frames):
    mapper = Mapper(MapperConfig(voxel_size=0.05, keyframe_min_translation=0.1, keyframe_min_rotation_deg=10.0))
    frame = frames[0]

    def moved(dx, yaw_deg):
        T = frame.T_world_cam @ rigid_from_quaternion([dx, 0, 0], [0, np.sin(np.radians(yaw_deg) / 2), 0,
                                                                    np.cos(np.radians(yaw_deg) / 2)])
        return type(frame)(color=frame.color, depth=frame.depth, camera=frame.camera, T_world_cam=T,
                           stamp=frame.stamp)

    assert mapper.add_frame(moved(0.0, 0.0)).keyframe            # the first frame always
    assert not mapper.add_frame(moved(0.05, 5.0)).keyframe       # too little of both
    assert mapper.add_frame(moved(0.12, 0.0)).keyframe           # far enough
    assert mapper.add_frame(moved(0.12, 12.0)).keyframe          # turned enough
    assert mapper.version == 3
    assert mapper.reset() > 0 and len(mapper) == 0 and mapper.version == 4
    assert mapper.add_frame(moved(0.12, 12.0)).keyframe          # after a reset, the next frame again


def test_a_frame_without_valid_depth_leaves_the_map_alone(frames):
    mapper = Mapper(MapperConfig(voxel_size=0.05))
    blank = frames[0]
    blank = type(blank)(color=blank.color, depth=np.zeros_like(blank.depth), camera=blank.camera,
                        T_world_cam=blank.T_world_cam)
    update = mapper.add_frame(blank)
    assert len(update.partial) == 0 and not update.keyframe and mapper.version == 0


def test_save_npz_and_ply_and_refuse_other_suffixes(frames, tmp_path):
    mapper = Mapper(MapperConfig(voxel_size=0.05))
    mapper.add_frame(frames[0])
    path, n = mapper.save(tmp_path / "map.npz")
    assert n == len(mapper) and len(VoxelMap.load(path)) == n
    assert mapper.save(tmp_path / "map.ply")[0].is_file()
    with pytest.raises(ValueError, match=".npz or .ply"):
        mapper.save(tmp_path / "map.txt")


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="must exceed min_depth"):
        MapperConfig(min_depth=2.0, max_depth=1.0)
    with pytest.raises(ValueError, match="stride"):
        MapperConfig(stride=0)
