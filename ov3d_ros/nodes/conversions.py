"""Arrays -> ROS messages for the nodes, and PointCloud2 in both directions, written with numpy only.

Decoding camera and pose messages is ROS-free and lives in ``ov3d_ros.messages`` (the bag reader uses it too);
this module builds the messages the nodes publish: Image, CameraInfo, Header/Time, Pose/Transform from 4x4
matrices, and PointCloud2 <-> PointCloud (x y z rgb [label score], PCL-compatible packed rgb). The package writes
these itself rather than using cv_bridge or sensor_msgs_py, which pip-only ROS installs do not have.
"""
from __future__ import annotations

import math
import sys

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ov3d_interfaces.msg import ObjectInstance
from ov3d_ros.cloud import PointCloud
from ov3d_ros.geometry import matrix_to_quaternion
from ov3d_ros.messages import IMAGE_ENCODINGS, UnsupportedEncodingError
from ov3d_ros.viz import label_palette

#: label value of unlabelled points in PointCloud2 (uint32 cannot hold -1).
UNLABELLED = np.uint32(0xFFFFFFFF)


# --------------------------------------------------------------------------- time
def sec_to_stamp(seconds: float) -> Time:
    ns = int(round(float(seconds) * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def make_header(frame_id: str, stamp: Time | float) -> Header:
    if not isinstance(stamp, Time):
        stamp = sec_to_stamp(stamp)
    return Header(frame_id=frame_id, stamp=stamp)


# --------------------------------------------------------------------------- images
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


def instance_message(instance, queries: list[str]) -> ObjectInstance:
    """An ``instances.Instance`` as an ov3d_interfaces/ObjectInstance."""
    c, b = instance.centroid, instance.box
    return ObjectInstance(
        id=int(instance.id), query_index=int(instance.query), query=queries[instance.query],
        score_mean=float(instance.score_mean), score_max=float(instance.score_max), point_count=int(instance.points),
        centroid=Point(x=float(c[0]), y=float(c[1]), z=float(c[2])),
        box_center=Point(x=float(b.center[0]), y=float(b.center[1]), z=float(b.center[2])),
        box_size=Vector3(x=float(b.size[0]), y=float(b.size[1]), z=float(b.size[2])), box_yaw=float(b.yaw),
        last_observed=sec_to_stamp(instance.last_seen))


def instance_markers(instances: list, queries: list[str], header, frame_id: str, text_size: float) -> MarkerArray:
    """RViz markers of object instances in ``frame_id``: a DELETEALL, then each instance's box (translucent, in its
    query's colour) and its query text, mean score and id ``text_size`` metres above it."""
    markers = MarkerArray()
    clear = Marker(action=Marker.DELETEALL)
    clear.header.frame_id = frame_id
    markers.markers.append(clear)
    palette = label_palette(max(1, len(queries)))
    for k, inst in enumerate(instances):
        r, g, b = (float(v) for v in palette[inst.query])
        box, text = Marker(), Marker()
        for marker in (box, text):
            marker.header.frame_id = frame_id
            marker.header.stamp = header.stamp
            marker.action = Marker.ADD
        centre, size = inst.box.center, np.maximum(inst.box.size, 0.01)
        box.ns, box.id, box.type = "ov3d_instances", k, Marker.CUBE
        box.pose.position = Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2]))
        box.pose.orientation = Quaternion(z=math.sin(inst.box.yaw / 2), w=math.cos(inst.box.yaw / 2))
        box.scale = Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2]))
        box.color = ColorRGBA(r=r, g=g, b=b, a=0.35)
        text.ns, text.id, text.type = "ov3d_labels", k, Marker.TEXT_VIEW_FACING
        top = centre[2] + inst.box.size[2] / 2 + text_size
        text.pose.position = Point(x=float(centre[0]), y=float(centre[1]), z=float(top))
        text.pose.orientation.w = 1.0
        text.scale.z = float(text_size)
        text.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        text.text = f"{queries[inst.query]} {inst.score_mean:.2f} #{inst.id}"
        markers.markers.extend([box, text])
    return markers
