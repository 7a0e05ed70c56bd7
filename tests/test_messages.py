"""Message decoding from plain objects with the message's fields (what rosbags deserialises): the same decoder
the nodes use on rclpy messages (tests/nodes/test_conversions.py)."""
import io
from types import SimpleNamespace as Msg

import numpy as np
import pytest
from PIL import Image

from ov3d_ros import messages as ms


def _png(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_raw_image_with_lowercase_encoding_and_byte_list():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = Msg(height=2, width=3, encoding="BGR8", is_bigendian=0, step=9, data=list(rgb[:, :, ::-1].tobytes()))
    np.testing.assert_array_equal(ms.decode_color(msg), rgb)


def test_compressed_colour_and_a_truncated_one():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    msg = Msg(format="png", data=np.frombuffer(_png(rgb), np.uint8))
    np.testing.assert_array_equal(ms.decode_color(msg), rgb)
    with pytest.raises(ValueError, match="cannot decode"):
        ms.decode_color(Msg(format="jpeg", data=_png(rgb)[:30]))
    with pytest.raises(ValueError, match="cannot decode"):
        ms.decode_color(Msg(format="jpeg", data=b""))


def test_compressed_depth_png_16bit():
    depth = np.array([[0, 1000], [65535, 1234]], np.uint16)
    header = np.array([0], "<i4").tobytes() + np.array([0.0, 0.0], "<f4").tobytes()
    msg = Msg(format="16UC1; compressedDepth png", data=header + _png(depth))
    out = ms.decode_depth(msg)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, depth)
    with pytest.raises(ms.UnsupportedEncodingError, match="not compressedDepth"):
        ms.decode_depth(Msg(format="png", data=header + _png(depth)))


def test_stamp_and_pose_from_plain_objects():
    assert ms.stamp_seconds(Msg(sec=3, nanosec=500_000_000)) == 3.5
    pose = Msg(position=Msg(x=1.0, y=2.0, z=3.0), orientation=Msg(x=0.0, y=0.0, z=np.sin(0.25), w=np.cos(0.25)))
    T = ms.pose_matrix(pose)
    np.testing.assert_allclose(T[:3, 3], [1, 2, 3])
    assert np.arctan2(T[1, 0], T[0, 0]) == pytest.approx(0.5)
    bad = Msg(position=Msg(x=np.nan, y=0.0, z=0.0), orientation=Msg(x=0.0, y=0.0, z=0.0, w=1.0))
    with pytest.raises(ValueError, match="not finite"):
        ms.pose_matrix(bad)
