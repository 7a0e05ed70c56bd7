"""Message <-> numpy conversions with real rclpy messages, against hand-built messages and independent references
(decoding is ``ov3d_ros.messages``, the builders are ``ov3d_ros.nodes.conversions``)."""
import numpy as np
import pytest

from ov3d_ros.cloud import PointCloud
from ov3d_ros import messages as ms
from ov3d_ros.geometry import CameraModel, matrix_to_quaternion, quaternion_to_matrix
from ov3d_ros.nodes import conversions as cv
from sensor_msgs.msg import Image, PointField


def _image(array: np.ndarray, encoding: str, step_pad: int = 0, big_endian: bool = False) -> Image:
    """Build an Image by hand (not with the code under test), optionally with row padding and big-endian data."""
    array = np.ascontiguousarray(array)
    if big_endian:
        array = array.astype(array.dtype.newbyteorder(">"))
    h, w = array.shape[:2]
    row = array.reshape(h, -1).view(np.uint8)
    padded = np.zeros((h, row.shape[1] + step_pad), np.uint8)
    padded[:, : row.shape[1]] = row
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian), step=padded.shape[1],
                 data=padded.tobytes())


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


def test_colour_encodings_decode_to_rgb(rgb):
    assert np.array_equal(ms.decode_color(_image(rgb, "rgb8")), rgb)
    assert np.array_equal(ms.decode_color(_image(rgb[:, :, ::-1], "bgr8")), rgb)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(ms.decode_color(_image(rgba, "rgba8")), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((5, 7, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(ms.decode_color(_image(bgra, "bgra8")), rgb)
    mono = rgb[:, :, 0]
    assert np.array_equal(ms.decode_color(_image(mono, "mono8")), np.stack([mono] * 3, axis=2))
    # Row padding (step > width * 3) is skipped.
    assert np.array_equal(ms.decode_color(_image(rgb, "rgb8", step_pad=5)), rgb)


def test_depth_encodings_keep_units_and_endianness():
    mm = np.array([[0, 1000, 65535], [1, 2, 1234]], np.uint16)
    out = ms.decode_depth(_image(mm, "16UC1"))
    assert out.dtype == np.uint16 and np.array_equal(out, mm)
    assert np.array_equal(ms.decode_depth(_image(mm, "16UC1", big_endian=True)), mm)
    metres = np.array([[0.5, np.nan], [np.inf, 3.25]], np.float32)
    out = ms.decode_depth(_image(metres, "32FC1", step_pad=8))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, metres)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "16UC1", "32FC1"])
def test_numpy_to_image_round_trip(encoding):
    rng = np.random.default_rng(1)
    dtype, channels = ms.IMAGE_ENCODINGS[encoding]
    shape = (4, 6, channels) if channels > 1 else (4, 6)
    array = (rng.random(shape) * 200).astype(dtype)
    msg = cv.numpy_to_image(array, encoding)
    assert msg.step == 6 * channels * np.dtype(dtype).itemsize
    assert np.array_equal(ms.image_array(msg), array)


def test_bad_images_are_rejected_with_the_reason():
    with pytest.raises(ms.UnsupportedEncodingError, match="yuv422"):
        ms.decode_color(Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)))
    with pytest.raises(ms.UnsupportedEncodingError, match="depth image encoding 'rgb8'"):
        ms.decode_depth(_image(np.zeros((2, 2, 3), np.uint8), "rgb8"))
    with pytest.raises(ValueError, match="expected step\\*height"):
        ms.decode_color(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(11)))
    with pytest.raises(ValueError, match="step 3 is smaller"):
        ms.decode_color(Image(height=2, width=2, encoding="rgb8", step=3, data=bytes(6)))
    with pytest.raises(ValueError, match="non-positive size"):
        ms.decode_color(Image(height=0, width=2, encoding="rgb8", step=6, data=b""))


def test_camera_info_round_trip_and_validation():
    camera = CameraModel(width=320, height=240, fx=300.0, fy=310.0, cx=160.5, cy=119.5)
    info = cv.info_from_camera(camera)
    assert list(info.k) == [300.0, 0.0, 160.5, 0.0, 310.0, 119.5, 0.0, 0.0, 1.0]
    assert ms.camera_from_info(info) == camera
    info.k = [0.0] * 9
    with pytest.raises(ValueError, match="not a valid intrinsic"):
        ms.camera_from_info(info)


def test_quaternions_match_transforms3d():
    import transforms3d  # the independent reference

    rng = np.random.default_rng(2)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)  # w, x, y, z (transforms3d order)
        R_ref = transforms3d.quaternions.quat2mat(q)
        R = quaternion_to_matrix([q[1], q[2], q[3], q[0]])
        np.testing.assert_allclose(R, R_ref, atol=1e-12)
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R_ref, atol=1e-12)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R_ref, rng.normal(size=3)
        np.testing.assert_allclose(ms.pose_matrix(cv.matrix_to_pose(T)), T, atol=1e-12)
        np.testing.assert_allclose(ms.transform_matrix(cv.matrix_to_transform(T)), T, atol=1e-12)
    with pytest.raises(ValueError, match="zero or non-finite norm"):
        quaternion_to_matrix([0, 0, 0, 0])


def test_pointcloud2_has_pcl_layout_and_round_trips():
    xyz = np.array([[1, 2, 3], [-1, 0.5, 2], [0, 0, 0]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 128, 255], [1, 2, 3]], np.uint8)
    cloud = PointCloud(xyz=xyz, rgb=rgb, label=np.array([2, -1, 0]), score=np.array([0.5, 0.1, 0.9]))
    msg = cv.cloud_to_pointcloud2(cloud, cv.make_header("map", 1.5), with_labels=True)
    layout = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    assert layout == [("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1),
                      ("z", 8, PointField.FLOAT32, 1), ("rgb", 12, PointField.FLOAT32, 1),
                      ("label", 16, PointField.UINT32, 1), ("score", 20, PointField.FLOAT32, 1)]
    assert (msg.point_step, msg.row_step, msg.height, msg.width) == (24, 72, 1, 3)
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(3, 24)
    # PCL packs rgb as 0x00RRGGBB in the 4 bytes of a float; label -1 becomes 0xFFFFFFFF.
    assert raw[0, 12:16].view("<u4")[0] == 0xFF0000
    assert raw[1, 12:16].view("<u4")[0] == 0x0080FF
    assert raw[1, 16:20].view("<u4")[0] == 0xFFFFFFFF
    back = cv.pointcloud2_to_cloud(msg)
    np.testing.assert_array_equal(back.xyz, xyz)
    np.testing.assert_array_equal(back.rgb, rgb)
    np.testing.assert_array_equal(back.label, [2, -1, 0])
    np.testing.assert_allclose(back.score, [0.5, 0.1, 0.9], rtol=1e-7)
    assert back.frame_id == "map"
    # Without labels: x y z rgb only, 16 bytes a point.
    plain = cv.cloud_to_pointcloud2(cloud, cv.make_header("map", 0.0))
    assert [f.name for f in plain.fields] == ["x", "y", "z", "rgb"] and plain.point_step == 16


def test_pointcloud2_reader_handles_foreign_layouts():
    # A padded layout as a driver might send it (x y z _ intensity), built by hand.
    dtype = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 16],
                      "itemsize": 32})
    points = np.zeros(4, dtype)
    points["x"], points["y"], points["z"] = [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]
    msg = cv.PointCloud2(height=2, width=2, point_step=32, row_step=64, data=points.tobytes(),
                         fields=[PointField(name=n, offset=o, datatype=PointField.FLOAT32, count=1)
                                 for n, o in (("x", 0), ("y", 4), ("z", 8), ("intensity", 16))])
    cloud = cv.pointcloud2_to_cloud(msg)
    np.testing.assert_array_equal(cloud.xyz[:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(cloud.xyz[:, 2], [9, 10, 11, 12])
    assert cloud.rgb.shape == (4, 3) and not cloud.rgb.any()
    msg.fields = msg.fields[1:]
    with pytest.raises(ValueError, match="lacks field"):
        cv.pointcloud2_to_cloud(msg)
    msg.fields = [PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1)]
    msg.data = bytes(10)
    with pytest.raises(ValueError, match="too few"):
        cv.pointcloud2_fields(msg)
