"""voxelize: grid indices, per-voxel means, inverse map, batches, alignment, input validation."""
import numpy as np
import pytest
import torch

from ov3d_ros.model import IN_CHANNELS, voxelize


def test_voxel_means_and_inverse_match_a_hand_computed_grid():
    vs = 0.1
    xyz = np.array([[0.01, 0.02, 0.03],    # voxel (0,0,0)
                    [0.09, 0.08, 0.07],    # voxel (0,0,0)
                    [0.25, 0.05, 0.05],    # voxel (2,0,0)
                    [-0.05, 0.15, 0.95]],  # voxel (-1,1,9)
                   np.float32)
    rgb = np.array([[255, 0, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]], np.uint8)
    vox = voxelize(xyz, rgb, vs)
    assert vox.coords.dtype == torch.int32 and vox.feats.dtype == torch.float32
    assert vox.inverse.dtype == torch.int64
    assert vox.feats.shape == (3, IN_CHANNELS)
    assert vox.batch_size == 1
    origin = vox.origin.tolist()
    assert origin == [-1, 0, 0]
    grid = vox.coords[:, 1:].long() + vox.origin
    # The first two points share a voxel; all voxels are distinct grid cells.
    assert vox.inverse[0] == vox.inverse[1]
    assert grid[vox.inverse].tolist() == [[0, 0, 0], [0, 0, 0], [2, 0, 0], [-1, 1, 9]]
    v0 = int(vox.inverse[0])
    # mean colour of red and blue, mapped to [-1, 1]
    np.testing.assert_allclose(vox.feats[v0, :3].numpy(), [0.0, -1.0, 0.0], atol=1e-6)
    # mean point (0.05, 0.05, 0.05) sits at the voxel centre: offset 0
    np.testing.assert_allclose(vox.feats[v0, 3:].numpy(), [0.0, 0.0, 0.0], atol=1e-5)
    v2 = int(vox.inverse[2])
    # (0.25, 0.05, 0.05) in voxel 2 (centre 0.25, 0.05, 0.05): offset 0; colour white -> +1
    np.testing.assert_allclose(vox.feats[v2].numpy(), [1, 1, 1, 0, 0, 0], atol=1e-5)
    v3 = int(vox.inverse[3])
    # (-0.05, 0.15, 0.95): voxel (-1, 1, 9), centre (-0.05, 0.15, 0.95)
    np.testing.assert_allclose(vox.feats[v3].numpy(), [-1, -1, -1, 0, 0, 0], atol=1e-4)


def test_offsets_span_minus_one_to_one_inside_a_voxel():
    xyz = np.array([[0.001, 0.5, 0.999]], np.float32)
    vox = voxelize(xyz, np.zeros((1, 3), np.uint8), 1.0)
    np.testing.assert_allclose(vox.feats[0, 3:].numpy(), [-0.998, 0.0, 0.998], atol=1e-5)


def test_same_voxels_whatever_crop_when_aligned():
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-2, 2, (3000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (3000, 3)).astype(np.uint8)
    full = voxelize(xyz, rgb, 0.1, align=4)
    crop = xyz[:, 0] > 0.3
    part = voxelize(xyz[crop], rgb[crop], 0.1, align=4)
    assert (full.origin % 4 == 0).all() and (part.origin % 4 == 0).all()
    assert all(s % 4 == 0 for s in part.spatial_shape)
    # Grid cell of every cropped point is the same in both voxelisations.
    g_full = (full.coords[full.inverse][:, 1:].long() + full.origin)[torch.from_numpy(crop)]
    g_part = part.coords[part.inverse][:, 1:].long() + part.origin
    assert torch.equal(g_full, g_part)


def test_batches_never_share_voxels():
    xyz = np.zeros((4, 3), np.float32)
    rgb = np.array([[0, 0, 0], [0, 0, 0], [255, 255, 255], [255, 255, 255]], np.uint8)
    vox = voxelize(xyz, rgb, 0.05, batch=np.array([0, 0, 1, 1]))
    assert len(vox) == 2 and vox.batch_size == 2
    assert vox.coords[:, 0].tolist() == [0, 1]
    np.testing.assert_allclose(vox.feats[:, 0].numpy(), [-1.0, 1.0])


def test_float_rgb_in_unit_range_equals_uint8():
    rgb = np.array([[255, 0, 51]], np.uint8)
    a = voxelize(np.zeros((1, 3), np.float32), rgb, 0.1)
    b = voxelize(np.zeros((1, 3), np.float32), rgb / 255.0, 0.1)
    torch.testing.assert_close(a.feats, b.feats)


@pytest.mark.parametrize("xyz, rgb, vs, match", [
    (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), 0.1, "empty"),
    (np.zeros((3, 2), np.float32), np.zeros((3, 3), np.uint8), 0.1, r"xyz must have shape \(N, 3\)"),
    (np.zeros((3, 3), np.float32), np.zeros((2, 3), np.uint8), 0.1, "rgb has 2 rows but xyz has 3"),
    (np.array([[0, 0, np.nan]], np.float32), np.zeros((1, 3), np.uint8), 0.1, "NaN or inf"),
    (np.zeros((1, 3), np.float32), np.full((1, 3), 200.0), 0.1, r"must be in \[0, 1\]"),
    (np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8), 0.0, "voxel_size must be a positive"),
    (np.array([[0, 0, 0], [1e6, 0, 0]], np.float32), np.zeros((2, 3), np.uint8), 1e-6, "too large a grid"),
])
def test_bad_input_raises_value_error(xyz, rgb, vs, match):
    with pytest.raises(ValueError, match=match):
        voxelize(xyz, rgb, vs)


def test_wrong_dtypes_raise_type_error():
    with pytest.raises(TypeError, match="xyz must be floating point"):
        voxelize(np.zeros((1, 3), np.int32), np.zeros((1, 3), np.uint8), 0.1)
    with pytest.raises(TypeError, match="rgb must be uint8"):
        voxelize(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.int16), 0.1)


def test_height_channel_is_the_mean_z_above_the_offset():
    from ov3d_ros.model import HEIGHT_OFFSET, in_channels

    xyz = np.array([[0.01, 0.01, 0.72], [0.02, 0.03, 0.78], [3.0, 2.0, 2.05]], np.float32)
    rgb = np.zeros((3, 3), np.uint8)
    vox = voxelize(xyz, rgb, 0.1, height=True)
    assert vox.feats.shape == (2, in_channels(True)) == (2, IN_CHANNELS + 1)
    h = vox.feats[vox.inverse, -1].numpy()
    np.testing.assert_allclose(h, [0.75 - HEIGHT_OFFSET, 0.75 - HEIGHT_OFFSET, 2.05 - HEIGHT_OFFSET], atol=1e-5)
    # The other channels are those of the plain voxelisation.
    plain = voxelize(xyz, rgb, 0.1)
    torch.testing.assert_close(vox.feats[:, :IN_CHANNELS], plain.feats)


def test_without_offsets_a_voxel_reads_the_same_at_any_point_density():
    from ov3d_ros.model import in_channels

    # One point of a wall voxel (a single frame) and the same voxel densely sampled (a fused map), same colour.
    one = np.array([[0.02, 0.07, 0.31]], np.float32)
    g = np.linspace(0.005, 0.095, 7, dtype=np.float32)
    dense = np.stack(np.meshgrid([0.02], g, g + 0.3, indexing="ij"), -1).reshape(-1, 3)
    rgb = lambda n: np.full((n, 3), 180, np.uint8)  # noqa: E731
    a = voxelize(one, rgb(1), 0.1, height=True, offsets=False)
    b = voxelize(dense, rgb(len(dense)), 0.1, height=True, offsets=False)
    assert a.feats.shape == (1, in_channels(True, False)) == (1, 4)
    torch.testing.assert_close(a.feats[:, :3], b.feats[:, :3])  # colour
    assert abs(float(a.feats[0, 3] - b.feats[0, 3])) < 0.1  # height differs by the points' spread in z only
    # With offsets the two differ by most of the channels' range: the shift the default avoids.
    a6 = voxelize(one, rgb(1), 0.1)
    b6 = voxelize(dense, rgb(len(dense)), 0.1)
    assert float((a6.feats[0, 3:] - b6.feats[0, 3:]).abs().max()) > 0.3
