"""PLY writing and reading: our own clouds, ScanNet's labelled meshes, ASCII and big-endian files."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from ov3d_ros.cloud import PointCloud
from ov3d_ros.data.ply import read_ply, read_ply_header, write_ply


def _cloud(n=50, seed=0, **fields):
    rng = np.random.default_rng(seed)
    return PointCloud(xyz=rng.normal(size=(n, 3)).astype(np.float32),
                      rgb=rng.integers(0, 256, (n, 3)).astype(np.uint8), **fields)


def test_round_trip_all_fields(tmp_path):
    rng = np.random.default_rng(1)
    n = 64
    cloud = _cloud(n, label=rng.integers(-1, 12, n), score=rng.uniform(0, 1, n).astype(np.float32),
                   instance=rng.integers(-1, 100, n), feature=rng.normal(size=(n, 5)).astype(np.float32),
                   frame_id="odom")
    extra = {
        "count": rng.integers(0, 1000, n),  # int64 that fits: stored as int32
        "weight": rng.normal(size=n),  # float64 stays double
        "normal": rng.normal(size=(n, 3)).astype(np.float32),  # multi-column
        "flag": rng.uniform(size=n) > 0.5,  # bool -> uchar
    }
    path = write_ply(tmp_path / "sub" / "c.ply", cloud, extra)
    assert path.is_file() and not list(tmp_path.glob("sub/*.tmp"))
    back, extras = read_ply(path)
    np.testing.assert_array_equal(back.xyz, cloud.xyz)
    np.testing.assert_array_equal(back.rgb, cloud.rgb)
    np.testing.assert_array_equal(back.label, cloud.label)
    np.testing.assert_array_equal(back.score, cloud.score)
    np.testing.assert_array_equal(back.instance, cloud.instance)
    np.testing.assert_array_equal(back.feature, cloud.feature)
    assert back.frame_id == "odom"
    assert set(extras) == {"count", "weight", "normal", "flag"}
    np.testing.assert_array_equal(extras["count"], extra["count"])
    assert extras["count"].dtype == np.int32
    np.testing.assert_array_equal(extras["weight"], extra["weight"])
    assert extras["weight"].dtype == np.float64
    np.testing.assert_array_equal(extras["normal"], extra["normal"])
    np.testing.assert_array_equal(extras["flag"], extra["flag"].astype(np.uint8))
    assert back.extras.keys() == extras.keys()


def test_header_is_standard_binary_little_endian(tmp_path):
    cloud = _cloud(3, label=[0, 1, 2])
    write_ply(tmp_path / "c.ply", cloud)
    raw = (tmp_path / "c.ply").read_bytes()
    header = raw[: raw.index(b"end_header\n") + len(b"end_header\n")].decode()
    assert "format binary_little_endian 1.0" in header
    assert "element vertex 3" in header
    props = [line.split()[1:] for line in header.splitlines() if line.startswith("property")]
    assert props == [["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"], ["uchar", "green"],
                     ["uchar", "blue"], ["int", "label"]]
    # 3 vertices x (3 floats + 3 bytes + 1 int) = 3 x 19 bytes of data after the header
    assert len(raw) - len(header) == 3 * 19
    x0 = struct.unpack("<f", raw[len(header): len(header) + 4])[0]
    assert x0 == cloud.xyz[0, 0]


def test_optional_fields_absent(tmp_path):
    cloud = _cloud(10)
    back, extras = read_ply(write_ply(tmp_path / "c.ply", cloud))
    assert back.label is None and back.score is None and back.instance is None and back.feature is None
    assert extras == {}


def test_empty_cloud(tmp_path):
    cloud = PointCloud(xyz=np.zeros((0, 3)), rgb=np.zeros((0, 3), np.uint8), label=np.zeros(0))
    back, _ = read_ply(write_ply(tmp_path / "e.ply", cloud))
    assert len(back) == 0 and back.label is not None


def test_cloud_extras_are_written_and_explicit_extra_wins(tmp_path):
    cloud = _cloud(4)
    cloud.extras = {"count": np.array([1, 2, 3, 4]), "note": "not an array"}
    _, extras = read_ply(write_ply(tmp_path / "c.ply", cloud, {"count": np.array([5, 6, 7, 8])}))
    np.testing.assert_array_equal(extras["count"], [5, 6, 7, 8])
    _, extras = read_ply(write_ply(tmp_path / "d.ply", cloud))
    np.testing.assert_array_equal(extras["count"], [1, 2, 3, 4])


@pytest.mark.parametrize("extra, message", [
    ({"count": np.arange(3)}, "shape"),
    ({"label": np.arange(4)}, "clashes"),
    ({"bad name": np.arange(4)}, "not a valid PLY property name"),
    ({"big": np.array([0, 0, 0, 2 ** 40])}, "outside"),
    ({"text": np.array(["a", "b", "c", "d"])}, "unsupported dtype"),
])
def test_bad_extras_raise(tmp_path, extra, message):
    with pytest.raises((ValueError, TypeError), match=message):
        write_ply(tmp_path / "c.ply", _cloud(4), extra)


def _scannet_labels_ply(path, xyz, rgba, labels, faces):
    """What ScanNet's *_vh_clean_2.labels.ply looks like: vertices with alpha and a ushort label, then faces."""
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment VCGLIB generated\n"
        f"element vertex {len(xyz)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        "property ushort label\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = b"".join(struct.pack("<fffBBBBH", *p, *c, lab) for p, c, lab in zip(xyz, rgba, labels))
    body += b"".join(struct.pack("<B", len(f)) + struct.pack(f"<{len(f)}i", *f) for f in faces)
    path.write_bytes(header.encode() + body)


def test_reads_scannet_labels_ply_with_faces(tmp_path):
    xyz = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (0.0, 1.0, 0.25)]
    rgba = [(10, 20, 30, 255), (40, 50, 60, 255), (70, 80, 90, 255), (100, 110, 120, 255)]
    labels = [1, 2, 40, 0]
    _scannet_labels_ply(tmp_path / "scene0000_00_vh_clean_2.labels.ply", xyz, rgba, labels, [(0, 1, 2), (0, 2, 3)])
    cloud, extras = read_ply(tmp_path / "scene0000_00_vh_clean_2.labels.ply")
    np.testing.assert_array_equal(cloud.xyz, np.array(xyz, np.float32))
    np.testing.assert_array_equal(cloud.rgb, np.array(rgba, np.uint8)[:, :3])
    np.testing.assert_array_equal(cloud.label, labels)
    assert cloud.label.dtype == np.int32
    np.testing.assert_array_equal(extras["alpha"], [255] * 4)


def test_skips_list_elements_before_the_vertices(tmp_path):
    # Mixed polygon sizes force the record-by-record skip.
    header = ("ply\nformat binary_little_endian 1.0\nelement face 3\nproperty list uchar int vertex_indices\n"
              "property uchar flags\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
              "end_header\n")
    faces = [(0, 1, 2), (0, 1, 2, 3), (4,)]
    body = b"".join(struct.pack("<B", len(f)) + struct.pack(f"<{len(f)}i", *f) + b"\x07" for f in faces)
    body += struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    (tmp_path / "m.ply").write_bytes(header.encode() + body)
    cloud, _ = read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(cloud.xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(cloud.rgb, np.zeros((2, 3)))


def test_reads_ascii_ply(tmp_path):
    text = ("ply\nformat ascii 1.0\ncomment hand written\nelement vertex 3\nproperty float x\nproperty float y\n"
            "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nproperty int label\n"
            "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
            "0.5 -1 2 255 0 10 3\n1 1 1 0 255 20 -1\n\n-2.25 0 0 1 2 3 7\n3 0 1 2\n")
    (tmp_path / "a.ply").write_text(text)
    cloud, extras = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(cloud.xyz, [[0.5, -1, 2], [1, 1, 1], [-2.25, 0, 0]])
    np.testing.assert_array_equal(cloud.rgb, [[255, 0, 10], [0, 255, 20], [1, 2, 3]])
    np.testing.assert_array_equal(cloud.label, [3, -1, 7])
    assert extras == {}


def test_reads_big_endian_and_float_colours(tmp_path):
    header = ("ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty double x\nproperty double y\n"
              "property double z\nproperty float red\nproperty float green\nproperty float blue\nend_header\n")
    body = struct.pack(">3d3f", 1.5, 2.5, 3.5, 1.0, 0.5, 0.0) + struct.pack(">3d3f", -1, -2, -3, 0, 0, 1)
    (tmp_path / "b.ply").write_bytes(header.encode() + body)
    cloud, _ = read_ply(tmp_path / "b.ply")
    np.testing.assert_array_equal(cloud.xyz, [[1.5, 2.5, 3.5], [-1, -2, -3]])
    np.testing.assert_array_equal(cloud.rgb, [[255, 128, 0], [0, 0, 255]])


def test_header_parser_lists_elements(tmp_path):
    _scannet_labels_ply(tmp_path / "s.ply", [(0, 0, 0)], [(1, 2, 3, 4)], [5], [(0, 0, 0)])
    header = read_ply_header(tmp_path / "s.ply")
    assert header["format"] == "binary_little_endian"
    assert [(e.name, e.count) for e in header["elements"]] == [("vertex", 1), ("face", 1)]


@pytest.mark.parametrize("content, message", [
    (b"not a ply\n", "not a PLY"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n\0\0\0\0",
     "no 'y' property"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
     b"property float z\nend_header\n" + b"\0" * 12, "truncated"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n", "end_header"),
    (b"ply\nformat weird 1.0\nend_header\n", "unknown format"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n", "unknown property type"),
    (b"ply\nformat ascii 1.0\nelement face 1\nproperty list uchar int idx\nend_header\n3 0 1 2\n", "no 'vertex'"),
])
def test_bad_files_raise_value_error(tmp_path, content, message):
    (tmp_path / "bad.ply").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_ply(tmp_path / "bad.ply")


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_ply(tmp_path / "nope.ply")
    with pytest.raises(TypeError, match="PointCloud"):
        write_ply(tmp_path / "x.ply", np.zeros((3, 3)))
