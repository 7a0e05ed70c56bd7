"""Decoding of ROS 2 camera and pose messages into arrays, from any object with the message's fields.

The live nodes pass rclpy messages, the bag reader passes the messages ``rosbags`` deserialises: both have the same
field names, so one decoder serves both and a recording fuses to the same map offline and live. Nothing here
imports ROS.

- ``decode_color(msg)``: sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, 8UC1, 8UC3) or
  sensor_msgs/CompressedImage (jpeg, png) -> (H, W, 3) uint8 RGB.
- ``decode_depth(msg)``: sensor_msgs/Image (16UC1 / mono16 in depth_scale units, 32FC1 metres) or a
  compressed_depth_image_transport CompressedImage (png or rvl) -> (H, W) uint16 or float32.
- ``camera_from_info(msg)``: sensor_msgs/CameraInfo -> CameraModel (K; rectified images assumed).
- ``stamp_seconds``, ``pose_matrix`` (geometry_msgs/Pose), ``transform_matrix`` (geometry_msgs/Transform).
- ``CAMERA_TOPICS``: the camera topics every node, reader and recipe uses by default.

Every decoder raises ValueError naming the problem, so a node can log and drop one bad message and a reader can
skip one bad frame.
"""
from __future__ import annotations

import io

import numpy as np

from ov3d_ros.geometry import CameraModel, rigid_from_quaternion

__all__ = ["CAMERA_TOPICS", "IMAGE_ENCODINGS", "COLOR_ENCODINGS", "DEPTH_ENCODINGS", "UnsupportedEncodingError", "stamp_seconds",
           "image_array", "decode_color", "decode_depth", "decode_rvl", "camera_from_info", "pose_matrix",
           "transform_matrix", "is_compressed"]

#: Default camera topics: realsense2_camera 4.x with its default namespace and name ("camera"/"camera") and
#: ``align_depth.enable`` (depth registered to the colour image, so the colour camera's info serves both).
CAMERA_TOPICS = {
    "color": "/camera/camera/color/image_raw",
    "depth": "/camera/camera/aligned_depth_to_color/image_raw",
    "info": "/camera/camera/color/camera_info",
}

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
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
_CANONICAL = {name.lower(): name for name in IMAGE_ENCODINGS}


class UnsupportedEncodingError(ValueError):
    """An image encoding or compression this package does not decode."""


def stamp_seconds(stamp) -> float:
    """builtin_interfaces/Time (anything with ``sec`` and ``nanosec``) in seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def is_compressed(msg) -> bool:
    """True for a sensor_msgs/CompressedImage (it has ``format``; an Image has ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return np.asarray(data, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------------------------------- raw images
def image_array(msg) -> np.ndarray:
    """A sensor_msgs/Image as (H, W) or (H, W, C) in its own encoding's layout (no colour reordering)."""
    encoding = _CANONICAL.get(str(msg.encoding).lower())
    if encoding is None:
        raise UnsupportedEncodingError(
            f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(IMAGE_ENCODINGS)})")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"image has non-positive size {width}x{height}")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ValueError(f"image step {step} is smaller than width*channels*bytes = {row_bytes} ({encoding})")
    buffer = np.frombuffer(_bytes(msg.data), dtype=np.uint8)
    if buffer.size != step * height:
        raise ValueError(f"image data has {buffer.size} bytes, expected step*height = {step}*{height} = "
                         f"{step * height} ({encoding} {width}x{height})")
    rows = buffer.reshape(height, step)[:, :row_bytes]
    wire = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<") if itemsize > 1 else np.dtype(dtype)
    array = np.ascontiguousarray(rows).view(wire).astype(dtype, copy=False)
    return array.reshape(height, width, channels) if channels > 1 else array.reshape(height, width)


def _open_compressed(data: bytes, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB") if what == "colour" else img)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"{what} image: cannot decode the compressed data ({len(data)} bytes): {exc}") from None


# --------------------------------------------------------------------------------------------------- colour
def decode_color(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an Image of a colour or mono encoding, or from a jpeg/png CompressedImage."""
    if is_compressed(msg):
        return np.ascontiguousarray(_open_compressed(_bytes(msg.data), "colour"), dtype=np.uint8)
    encoding = _CANONICAL.get(str(msg.encoding).lower())
    if encoding not in COLOR_ENCODINGS:
        raise UnsupportedEncodingError(
            f"colour image encoding '{msg.encoding}' is not supported (use one of {', '.join(COLOR_ENCODINGS)})")
    array = image_array(msg)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(array[:, :, 2::-1])
    return np.ascontiguousarray(array[:, :, :3])


# --------------------------------------------------------------------------------------------------- depth
def decode_depth(msg) -> np.ndarray:
    """Depth in the package's convention: (H, W) uint16 (depth_scale units per metre) or float32 metres.

    Takes an Image (16UC1, mono16, 32FC1) or a compressed_depth_image_transport CompressedImage.
    """
    if is_compressed(msg):
        return decode_compressed_depth(msg)
    encoding = _CANONICAL.get(str(msg.encoding).lower())
    if encoding not in DEPTH_ENCODINGS:
        raise UnsupportedEncodingError(
            f"depth image encoding '{msg.encoding}' is not supported (use 16UC1 millimetres or 32FC1 metres)")
    return image_array(msg)


def decode_compressed_depth(msg) -> np.ndarray:
    """compressed_depth_image_transport messages: format '<encoding>; compressedDepth [png|rvl]' (png if unnamed).

    The data is a 12-byte header (int32 format, float32 quantisation A and B) and the image. 16-bit encodings hold
    the raw depth; 32FC1 holds quantised inverse depth q, decoded as A / (q - B) metres (q = 0: no depth, NaN).
    """
    encoding, _, transport = str(msg.format).partition(";")
    transport = transport.strip().lower()
    if "compresseddepth" not in transport:
        raise UnsupportedEncodingError(f"depth image: CompressedImage format '{msg.format}' is not compressedDepth")
    codec = transport.replace("compresseddepth", "", 1).strip() or "png"
    if codec not in ("png", "rvl"):
        raise UnsupportedEncodingError(f"depth image: compressedDepth codec '{codec}' is not read (png and rvl are)")
    data = _bytes(msg.data)
    if len(data) <= 12:
        raise ValueError(f"depth image: compressedDepth message of {len(data)} bytes holds no image")
    quant_a, quant_b = np.frombuffer(data[4:12], dtype="<f4").astype(np.float64)
    payload = data[12:]
    if codec == "png":
        raw = _open_compressed(payload, "depth").astype(np.uint16)
    else:
        if len(payload) < 8:
            raise ValueError("depth image: RVL compressedDepth payload too short for its size field")
        cols, rows = (int(v) for v in np.frombuffer(payload[:8], dtype="<u4"))
        if cols == 0 or rows == 0 or rows * cols > 2 ** 26:  # a corrupt size field, not a 64-megapixel camera
            raise ValueError(f"depth image: RVL compressedDepth reports an implausible size {cols}x{rows}")
        raw = decode_rvl(payload[8:], rows * cols).reshape(rows, cols)
    if encoding.strip().lower() != "32fc1":
        return np.ascontiguousarray(raw)
    depth = np.full(raw.shape, np.nan, dtype=np.float32)
    valid = raw > 0
    depth[valid] = quant_a / (raw[valid].astype(np.float64) - quant_b)
    return depth


def decode_rvl(data: bytes, n_pixels: int) -> np.ndarray:
    """Decode an RVL stream (Wilson 2017, as compressed_depth_image_transport writes it) into ``n_pixels`` uint16.

    The stream is little-endian 32-bit words read four bits at a time from the top. Every number is a variable-length
    code: 3 payload bits per nibble, least significant group first, the nibble's high bit set while more follow.
    The numbers come as runs: a count of zeros, a count of non-zeros, then each non-zero as the zig-zag coded
    difference from the previous non-zero value.
    """
    words = np.frombuffer(data[: len(data) // 4 * 4], dtype="<u4")
    nibbles = ((words[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF).reshape(-1).astype(np.int64)
    last = (nibbles & 0x8) == 0  # the final nibble of a number
    ends = np.flatnonzero(last)
    if len(ends) == 0:
        raise ValueError("RVL depth: the stream holds no complete number")
    nibbles = nibbles[: ends[-1] + 1]
    number = np.concatenate([[0], np.cumsum(last[: len(nibbles) - 1])])  # which number each nibble belongs to
    starts = np.concatenate([[0], ends[:-1] + 1])
    shift = 3 * (np.arange(len(nibbles)) - starts[number])
    if shift.max(initial=0) > 30:  # 11 nibbles (33 bits) hold any count or delta; more means a corrupt stream
        raise ValueError("RVL depth: a number longer than 11 nibbles (corrupt stream)")
    values = np.bincount(number, weights=(nibbles & 0x7) << shift, minlength=len(ends)).astype(np.int64)

    run_lengths, deltas = [], []
    i = decoded = 0
    while decoded < n_pixels:
        if i + 2 > len(values) or i + 2 + int(values[i + 1]) > len(values):
            raise ValueError(f"RVL depth: the stream ends after {decoded} of {n_pixels} pixels")
        zeros, nonzeros = int(values[i]), int(values[i + 1])
        if decoded + zeros + nonzeros > n_pixels:
            raise ValueError(f"RVL depth: a run overflows the {n_pixels}-pixel image (corrupt stream)")
        run_lengths += [zeros, nonzeros]
        deltas.append(values[i + 2: i + 2 + nonzeros])
        i += 2 + nonzeros
        decoded += zeros + nonzeros
    zigzag = np.concatenate(deltas) if deltas else np.zeros(0, np.int64)
    delta = (zigzag >> 1) ^ -(zigzag & 1)
    out = np.zeros(n_pixels, dtype=np.uint16)
    nonzero = np.repeat(np.tile([False, True], len(run_lengths) // 2), run_lengths)
    out[nonzero] = (np.cumsum(delta) & 0xFFFF).astype(np.uint16)  # uint16 arithmetic, as the encoder wraps
    return out


# --------------------------------------------------------------------------------------------------- camera, poses
def camera_from_info(msg) -> CameraModel:
    """CameraModel from a CameraInfo's K and size (rectified images are assumed: distortion is not applied)."""
    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise ValueError(f"camera_info has non-positive size {msg.width}x{msg.height}")
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"camera_info K is not a valid intrinsic matrix: {K.ravel().tolist()}")
    return CameraModel.from_K(K, int(msg.width), int(msg.height))


def pose_matrix(pose) -> np.ndarray:
    """4x4 of a geometry_msgs/Pose (position + orientation)."""
    p, q = pose.position, pose.orientation
    return rigid_from_quaternion((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def transform_matrix(transform) -> np.ndarray:
    """4x4 of a geometry_msgs/Transform (translation + rotation)."""
    t, q = transform.translation, transform.rotation
    return rigid_from_quaternion((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
