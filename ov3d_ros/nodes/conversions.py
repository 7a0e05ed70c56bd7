"""ROS message <-> numpy conversions for the nodes, written with numpy only.

cv_bridge and sensor_msgs_py are absent on pip-only ROS installs, and the conversions we need are small, so they
live here: Image (rgb8, bgr8, rgba8, bgra8, mono8, 16UC1, 32FC1), CameraInfo <-> CameraModel, PointCloud2 <->
PointCloud (x y z rgb [label score], PCL-compatible packed rgb), and Pose/Transform <-> 4x4 matrices.
Every decoder validates sizes and raises ValueError naming the problem, so a node can log and drop one bad message.
"""
from __future__ import annotations

import sys

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ov3d_ros.cloud import PointCloud

#: encoding -> (numpy dtype, channels). Multi-byte types honour ``is_bigendian``.
IMAGE_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "8UC3": (np.uint8, 3),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC3")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
#: label value of unlabelled points in PointCloud2 (uint32 cannot hold -1).
UNLABELLED = np.uint32(0xFFFFFFFF)


class UnsupportedEncodingError(ValueError):
    """An Image encoding this package does not decode (the node logs it, rate-limited, and drops the frame)."""


# --------------------------------------------------------------------------- time
def stamp_to_sec(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(seconds: float) -> Time:
    ns = int(round(float(seconds) * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def make_header(frame_id: str, stamp: Time | float) -> Header:
    if not isinstance(stamp, Time):
        stamp = sec_to_stamp(stamp)
    return Header(frame_id=frame_id, stamp=stamp)


# --------------------------------------------------------------------------- images
def image_to_numpy(msg: Image) -> np.ndarray:
    """Decode an Image to (H, W) or (H, W, C) in its own encoding's layout (no colour reordering)."""
    encoding = msg.encoding
    if encoding not in IMAGE_ENCODINGS:
        raise UnsupportedEncodingError(
            f"unsupported image encoding '{encoding}' (supported: {', '.join(IMAGE_ENCODINGS)})")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"image has non-positive size {width}x{height}")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ValueError(f"image step {step} is smaller than width*channels*bytes = {row_bytes} ({encoding})")
    data = msg.data
    buffer = np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray, memoryview, np.ndarray))
                           else data, dtype=np.uint8)
    if buffer.size != step * height:
        raise ValueError(f"image data has {buffer.size} bytes, expected step*height = {step}*{height} = "
                         f"{step * height} ({encoding} {width}x{height})")
    rows = buffer.reshape(height, step)[:, :row_bytes]
    big_endian = bool(msg.is_bigendian)
    wire = np.dtype(dtype).newbyteorder(">" if big_endian else "<") if itemsize > 1 else np.dtype(dtype)
    array = np.ascontiguousarray(rows).view(wire).astype(dtype, copy=False)
    return array.reshape(height, width, channels) if channels > 1 else array.reshape(height, width)


def color_from_image(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any colour or mono encoding."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise UnsupportedEncodingError(
            f"colour image encoding '{msg.encoding}' is not supported (use one of {', '.join(COLOR_ENCODINGS)})")
    array = image_to_numpy(msg)
    if msg.encoding == "mono8":
        return np.repeat(array[:, :, None], 3, axis=2)
    if msg.encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(array[:, :, 2::-1])
    return np.ascontiguousarray(array[:, :, :3])


def depth_from_image(msg: Image, depth_scale: float = 1000.0) -> np.ndarray:
    """Depth in the architecture's convention: uint16 (``depth_scale`` units per metre) or float32 metres."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise UnsupportedEncodingError(
            f"depth image encoding '{msg.encoding}' is not supported (use 16UC1 millimetres or 32FC1 metres)")
    return image_to_numpy(msg)


def numpy_to_image(array: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    if encoding not in IMAGE_ENCODINGS:
        raise UnsupportedEncodingError(f"cannot encode image as '{encoding}'")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    array = np.asarray(array)
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise ValueError(f"array of shape {array.shape} does not fit encoding {encoding} ({channels} channels)")
    array = np.ascontiguousarray(array, dtype=dtype)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = int(array.shape[1] * channels * array.dtype.itemsize)
    msg.data = array.tobytes()
    return msg


# --------------------------------------------------------------------------- camera info
def camera_from_info(msg: CameraInfo):
    """CameraModel from a CameraInfo's K (rectified images are assumed: distortion is not applied)."""
    from ov3d_ros.geometry import CameraModel

    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise ValueError(f"camera_info has non-positive size {msg.width}x{msg.height}")
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"camera_info K is not a valid intrinsic matrix: {K.ravel().tolist()}")
    return CameraModel.from_K(K, int(msg.width), int(msg.height))


def info_from_camera(camera, header: Header | None = None) -> CameraInfo:
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = int(camera.width), int(camera.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    K = np.asarray(camera.K, dtype=np.float64)
    msg.k = K.ravel().tolist()
    msg.r = np.eye(3).ravel().tolist()
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = P.ravel().tolist()
    return msg


# --------------------------------------------------------------------------- poses
def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    q = np.array([w, x, y, z], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"quaternion ({x}, {y}, {z}, {w}) has zero or non-finite norm")
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix (ROS order), w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        w, x, y, z = 0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        w, x, y, z = (R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        w, x, y, z = (R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        w, x, y, z = (R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return tuple(float(v) for v in q)


def _rigid_matrix(q, t, what: str) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(q.x, q.y, q.z, q.w)
    T[:3, 3] = (t.x, t.y, t.z)
    if not np.all(np.isfinite(T)):
        raise ValueError(f"{what} contains non-finite values")
    return T


def pose_to_matrix(pose: Pose) -> np.ndarray:
    return _rigid_matrix(pose.orientation, pose.position, "pose")


def transform_to_matrix(transform: Transform) -> np.ndarray:
    return _rigid_matrix(transform.rotation, transform.translation, "transform")


def matrix_to_pose(T: np.ndarray) -> Pose:
    T = np.asarray(T, dtype=np.float64)
    x, y, z, w = matrix_to_quaternion(T[:3, :3])
    return Pose(position=Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                orientation=Quaternion(x=x, y=y, z=z, w=w))


def matrix_to_transform(T: np.ndarray) -> Transform:
    T = np.asarray(T, dtype=np.float64)
    x, y, z, w = matrix_to_quaternion(T[:3, :3])
    return Transform(translation=Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                     rotation=Quaternion(x=x, y=y, z=z, w=w))


# --------------------------------------------------------------------------- point clouds
_FIELD_DTYPES = {
    PointField.INT8: np.int8, PointField.UINT8: np.uint8, PointField.INT16: np.int16,
    PointField.UINT16: np.uint16, PointField.INT32: np.int32, PointField.UINT32: np.uint32,
    PointField.FLOAT32: np.float32, PointField.FLOAT64: np.float64,
}


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N,3) uint8 -> (N,) float32 holding 0x00RRGGBB bits (PCL's packed 'rgb' field)."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return packed.astype(np.uint32).view(np.float32)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(packed).view(np.uint32)
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=1).astype(np.uint8)


def cloud_to_pointcloud2(cloud: PointCloud, header: Header, *, with_labels: bool = False) -> PointCloud2:
    """PointCloud -> PointCloud2 with fields x y z rgb, plus label (uint32, -1 -> 0xFFFFFFFF) and score
    (float32) when ``with_labels``. Dense, little-endian, one row."""
    n = len(cloud)
    names = ["x", "y", "z", "rgb"] + (["label", "score"] if with_labels else [])
    formats = [np.float32, np.float32, np.float32, np.float32] + ([np.uint32, np.float32] if with_labels else [])
    dtype = np.dtype({"names": names, "formats": formats})
    points = np.zeros(n, dtype=dtype)
    points["x"], points["y"], points["z"] = cloud.xyz[:, 0], cloud.xyz[:, 1], cloud.xyz[:, 2]
    points["rgb"] = pack_rgb(cloud.rgb)
    if with_labels:
        label = cloud.label if cloud.label is not None else np.full(n, -1, np.int32)
        points["label"] = np.where(label < 0, UNLABELLED, label.astype(np.int64)).astype(np.uint32)
        points["score"] = cloud.score if cloud.score is not None else np.zeros(n, np.float32)
    kinds = {np.dtype(np.float32): PointField.FLOAT32, np.dtype(np.uint32): PointField.UINT32}
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=name, offset=dtype.fields[name][1], datatype=kinds[dtype.fields[name][0]],
                             count=1) for name in names]
    msg.is_bigendian = sys.byteorder == "big"
    msg.point_step = dtype.itemsize
    msg.row_step = dtype.itemsize * n
    msg.is_dense = bool(np.all(np.isfinite(cloud.xyz)))
    msg.data = points.tobytes()
    return msg


def pointcloud2_fields(msg: PointCloud2) -> dict[str, np.ndarray]:
    """Every scalar field of a PointCloud2 as an (N,) array, by name (any layout and padding)."""
    n = int(msg.width) * int(msg.height)
    if int(msg.point_step) <= 0 and n:
        raise ValueError("PointCloud2 point_step must be > 0")
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in _FIELD_DTYPES:
            raise ValueError(f"PointCloud2 field '{field.name}' has unknown datatype {field.datatype}")
        if field.count != 1:
            continue  # array-valued fields are not part of our clouds
        base = np.dtype(_FIELD_DTYPES[field.datatype])
        names.append(field.name)
        formats.append(base.newbyteorder(">" if msg.is_bigendian else "<"))
        offsets.append(field.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    raw = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview))
                        else msg.data, dtype=np.uint8)
    row_bytes = int(msg.point_step) * int(msg.width)
    if raw.size < int(msg.row_step) * (int(msg.height) - 1) + row_bytes:
        raise ValueError(f"PointCloud2 data has {raw.size} bytes, too few for {n} points of {msg.point_step} bytes")
    if int(msg.height) > 1 and int(msg.row_step) != row_bytes:
        raw = raw.reshape(int(msg.height), int(msg.row_step))[:, :row_bytes].reshape(-1)
    points = np.frombuffer(np.ascontiguousarray(raw[: n * int(msg.point_step)]).tobytes(), dtype=dtype, count=n)
    return {name: points[name].astype(points[name].dtype.newbyteorder("="), copy=True) for name in names}


def pointcloud2_to_cloud(msg: PointCloud2) -> PointCloud:
    """PointCloud2 (x y z [rgb] [label] [score]) -> PointCloud in ``msg.header.frame_id``."""
    fields = pointcloud2_fields(msg)
    missing = [f for f in ("x", "y", "z") if f not in fields]
    if missing:
        raise ValueError(f"PointCloud2 lacks field(s) {missing}; has {list(fields)}")
    xyz = np.stack([fields["x"], fields["y"], fields["z"]], axis=1).astype(np.float32)
    n = len(xyz)
    rgb = unpack_rgb(fields["rgb"].astype(np.float32)) if "rgb" in fields else np.zeros((n, 3), np.uint8)
    label = score = None
    if "label" in fields:
        raw = fields["label"].astype(np.uint32)
        label = np.where(raw == UNLABELLED, -1, raw).astype(np.int32)
    if "score" in fields:
        score = fields["score"].astype(np.float32)
    return PointCloud(xyz=xyz, rgb=rgb, label=label, score=score, frame_id=msg.header.frame_id or "map")
