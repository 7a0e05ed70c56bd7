"""PLY point clouds: write binary little-endian, read binary (either endianness) and ASCII. Pure numpy.

What we write (one ``vertex`` element, no faces)::

    x y z                float32
    red green blue       uchar
    label                int32    (if cloud.label is set; -1 = unlabelled)
    score                float32  (if cloud.score is set)
    instance             int32    (if cloud.instance is set)
    feature_0..D-1       float32  (if cloud.feature is set)
    <extra names>        the extra array's dtype; an (N, k) extra becomes <name>_0..<name>_{k-1}

Multi-column arrays (feature, (N, k) extras) are announced in a header comment ``comment ov3d_columns NAME K`` so
that ``read_ply`` regroups them; other readers (MeshLab, CloudCompare, open3d) just see scalar properties.

``read_ply`` also reads ScanNet's ``*_vh_clean_2.labels.ply`` (x y z float, red green blue alpha uchar, label
ushort, followed by a face element that is skipped): the label comes back as int32 *as stored* (NYU40 ids, 0 =
unannotated; ``ScanNetScene.ground_truth`` maps them to class indices), alpha lands in the extras.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from ov3d_ros.cloud import PointCloud

__all__ = ["write_ply", "read_ply", "read_ply_header"]
_log = logging.getLogger(__name__)

# PLY type names (both the classic and the sized spellings) -> numpy scalar type codes (endianness added later).
_PLY_TO_NUMPY = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_NUMPY_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                 "f4": "float", "f8": "double"}
_RESERVED = {"x", "y", "z", "red", "green", "blue", "label", "score", "instance"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------------------------------- writing

def _ply_column_type(array: np.ndarray, name: str) -> np.dtype:
    """The little-endian dtype an extra array is stored with (PLY has no 64-bit integers or bools)."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        return np.dtype("u1")
    if kind == "f":
        return np.dtype("<f8") if size == 8 else np.dtype("<f4")
    if kind in "iu":
        if size <= 4:
            return np.dtype(f"<{kind}{size}")
        # int64 (the numpy default) is common in caller code; keep it when the values fit in 32 bits.
        target = np.dtype("<i4") if kind == "i" else np.dtype("<u4")
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"write_ply: extra '{name}' has {array.dtype} values outside the {target} range "
                             "(PLY has no 64-bit integer type)")
        return target
    raise TypeError(f"write_ply: extra '{name}' has unsupported dtype {array.dtype} (use numeric arrays)")


def write_ply(path, cloud: PointCloud, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``cloud`` (plus per-vertex ``extra`` arrays, and ``cloud.extras`` arrays) as binary little-endian PLY.

    ``extra`` overrides same-named entries of ``cloud.extras``. Returns the path written.
    """
    if not isinstance(cloud, PointCloud):
        raise TypeError(f"write_ply: cloud must be a PointCloud, got {type(cloud).__name__}")
    n = len(cloud)
    columns: list[tuple[str, np.ndarray, np.dtype]] = []  # (property name, (N,) values, stored dtype)
    groups: list[tuple[str, int]] = []
    for i, axis in enumerate("xyz"):
        columns.append((axis, cloud.xyz[:, i], np.dtype("<f4")))
    for i, channel in enumerate(("red", "green", "blue")):
        columns.append((channel, cloud.rgb[:, i], np.dtype("u1")))
    if cloud.label is not None:
        columns.append(("label", cloud.label, np.dtype("<i4")))
    if cloud.score is not None:
        columns.append(("score", cloud.score, np.dtype("<f4")))
    if cloud.instance is not None:
        columns.append(("instance", cloud.instance, np.dtype("<i4")))
    if cloud.feature is not None:
        groups.append(("feature", cloud.feature.shape[1]))
        for k in range(cloud.feature.shape[1]):
            columns.append((f"feature_{k}", cloud.feature[:, k], np.dtype("<f4")))

    extras = {}
    for name, values in (cloud.extras or {}).items():
        # cloud.extras may hold non-array metadata, or arrays that a select() did not slice: only per-point
        # arrays of the right length are vertex properties.
        if isinstance(values, np.ndarray) and values.ndim in (1, 2) and len(values) == n:
            extras[name] = values
        elif isinstance(values, np.ndarray):
            _log.warning("write_ply: skipping cloud.extras['%s'] of shape %s (cloud has %d points)",
                         name, values.shape, n)
    extras.update(extra or {})
    for name, values in extras.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"write_ply: extra name {name!r} is not a valid PLY property name")
        if name in _RESERVED or name == "feature" or name.startswith("feature_"):
            raise ValueError(f"write_ply: extra name '{name}' clashes with a standard field")
        values = np.asarray(values)
        if values.ndim == 0 or len(values) != n:
            raise ValueError(f"write_ply: extra '{name}' has shape {values.shape}, expected ({n},) or ({n}, k)")
        if values.ndim > 2:
            raise ValueError(f"write_ply: extra '{name}' must be (N,) or (N, k), got shape {values.shape}")
        dtype = _ply_column_type(values, name)
        if values.ndim == 1:
            columns.append((name, values, dtype))
        else:
            groups.append((name, values.shape[1]))
            for k in range(values.shape[1]):
                columns.append((f"{name}_{k}", values[:, k], dtype))
    names = [c[0] for c in columns]
    if len(set(names)) != len(names):
        duplicated = sorted({x for x in names if names.count(x) > 1})
        raise ValueError(f"write_ply: property names collide: {duplicated}")

    record = np.dtype([(name, dtype) for name, _, dtype in columns])
    data = np.empty(n, dtype=record)
    for name, values, dtype in columns:
        data[name] = values.astype(dtype, copy=False)

    header = ["ply", "format binary_little_endian 1.0", "comment written by ov3d_ros"]
    if cloud.frame_id:
        header.append(f"comment frame_id {cloud.frame_id}")
    header += [f"comment ov3d_columns {name} {k}" for name, k in groups]
    header.append(f"element vertex {n}")
    header += [f"property {_NUMPY_TO_PLY[dtype.str[1:]]} {name}" for name, _, dtype in columns]
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    os.replace(tmp, path)  # a reader never sees a half-written file
    return path


# ----------------------------------------------------------------------------------------------------- reading

class _Element:
    def __init__(self, name: str, count: int):
        self.name = name
        self.count = count
        self.properties: list[tuple[str, str, str | None]] = []  # (name, value type, list count type or None)

    @property
    def has_lists(self) -> bool:
        return any(p[2] is not None for p in self.properties)


def read_ply_header(path) -> dict:
    """Parse a PLY header: {"format", "elements": [_Element...], "comments": [...], "data_offset": int}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_ply: no such file: {path}")
    with open(path, "rb") as f:
        first = f.readline()
        if first.strip() != b"ply":
            raise ValueError(f"read_ply: {path} is not a PLY file (first line {first[:20]!r})")
        fmt = None
        elements: list[_Element] = []
        comments: list[str] = []
        while True:
            raw = f.readline()
            if not raw:
                raise ValueError(f"read_ply: {path}: header has no end_header line")
            line = raw.decode("ascii", errors="replace").strip()
            if not line:
                continue
            words = line.split()
            key = words[0]
            if key == "end_header":
                break
            if key == "format":
                if len(words) < 2 or words[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                    raise ValueError(f"read_ply: {path}: unknown format line '{line}'")
                fmt = words[1]
            elif key in ("comment", "obj_info"):
                comments.append(line[len(key):].strip())
            elif key == "element":
                if len(words) != 3 or not words[2].isdigit():
                    raise ValueError(f"read_ply: {path}: bad element line '{line}'")
                elements.append(_Element(words[1], int(words[2])))
            elif key == "property":
                if not elements:
                    raise ValueError(f"read_ply: {path}: property before any element: '{line}'")
                if len(words) == 5 and words[1] == "list":
                    for t in words[2:4]:
                        if t not in _PLY_TO_NUMPY:
                            raise ValueError(f"read_ply: {path}: unknown property type '{t}' in '{line}'")
                    elements[-1].properties.append((words[4], words[3], words[2]))
                elif len(words) == 3:
                    if words[1] not in _PLY_TO_NUMPY:
                        raise ValueError(f"read_ply: {path}: unknown property type '{words[1]}' in '{line}'")
                    elements[-1].properties.append((words[2], words[1], None))
                else:
                    raise ValueError(f"read_ply: {path}: bad property line '{line}'")
            else:
                raise ValueError(f"read_ply: {path}: unexpected header line '{line}'")
        offset = f.tell()
    if fmt is None:
        raise ValueError(f"read_ply: {path}: header has no format line")
    return {"format": fmt, "elements": elements, "comments": comments, "data_offset": offset}


def _skip_binary_list_element(buf: memoryview, pos: int, element: _Element, endian: str, path) -> int:
    """Byte position after a binary element that has list properties (e.g. faces), without decoding it."""
    if len(element.properties) == 1:
        # The common case (faces: one list property): when every list has the same length (triangles), the
        # element is a fixed-size record and the whole block can be checked at once.
        _, value_type, count_type = element.properties[0]
        count_dtype = np.dtype(endian + _PLY_TO_NUMPY[count_type])
        value_size = np.dtype(_PLY_TO_NUMPY[value_type]).itemsize
        if element.count == 0:
            return pos
        first = int(np.frombuffer(buf, count_dtype, 1, pos)[0])
        record = np.dtype([("n", count_dtype), ("v", f"V{first * value_size}")]) if first else \
            np.dtype([("n", count_dtype)])
        end = pos + record.itemsize * element.count
        if end <= len(buf):
            block = np.frombuffer(buf, record, element.count, pos)
            if np.all(block["n"] == first):
                return end
    # General case: walk the records one by one.
    for _ in range(element.count):
        for _, value_type, count_type in element.properties:
            if count_type is None:
                pos += np.dtype(_PLY_TO_NUMPY[value_type]).itemsize
            else:
                count_dtype = np.dtype(endian + _PLY_TO_NUMPY[count_type])
                if pos + count_dtype.itemsize > len(buf):
                    raise ValueError(f"read_ply: {path}: file ends inside element '{element.name}'")
                n = int(np.frombuffer(buf, count_dtype, 1, pos)[0])
                pos += count_dtype.itemsize + n * np.dtype(_PLY_TO_NUMPY[value_type]).itemsize
    return pos


def _read_vertices(path, header) -> np.ndarray:
    """The vertex element as a structured array (native field names and types)."""
    elements = header["elements"]
    fmt = header["format"]
    vertex_at = [i for i, e in enumerate(elements) if e.name == "vertex"]
    if not vertex_at:
        raise ValueError(f"read_ply: {path} has no 'vertex' element")
    vertex = elements[vertex_at[0]]
    if vertex.has_lists:
        raise ValueError(f"read_ply: {path}: list properties in the vertex element are not supported")
    if fmt == "ascii":
        with open(path, "rb") as f:
            f.seek(header["data_offset"])
            lines = f.read().decode("ascii", errors="replace").splitlines()
        lines = [ln for ln in lines if ln.strip()]
        line_at = sum(e.count for e in elements[: vertex_at[0]])  # every element record is one line
        rows = lines[line_at: line_at + vertex.count]
        if len(rows) != vertex.count:
            raise ValueError(f"read_ply: {path}: expected {vertex.count} vertex lines, found {len(rows)}")
        dtype = np.dtype([(name, _PLY_TO_NUMPY[t]) for name, t, _ in vertex.properties])
        out = np.empty(vertex.count, dtype=dtype)
        if vertex.count:
            try:
                table = np.array([ln.split() for ln in rows], dtype=np.float64)
            except ValueError as exc:
                raise ValueError(f"read_ply: {path}: bad ASCII vertex data ({exc})") from None
            if table.ndim != 2 or table.shape[1] != len(vertex.properties):
                raise ValueError(f"read_ply: {path}: ASCII vertex lines must have {len(vertex.properties)} values")
            for i, (name, _, _) in enumerate(vertex.properties):
                out[name] = table[:, i]
        return out

    endian = "<" if fmt == "binary_little_endian" else ">"
    with open(path, "rb") as f:
        f.seek(header["data_offset"])
        buf = memoryview(f.read())
    pos = 0
    for element in elements[: vertex_at[0]]:
        if element.has_lists:
            pos = _skip_binary_list_element(buf, pos, element, endian, path)
        else:
            size = sum(np.dtype(_PLY_TO_NUMPY[t]).itemsize for _, t, _ in element.properties)
            pos += size * element.count
    dtype = np.dtype([(name, endian + _PLY_TO_NUMPY[t]) for name, t, _ in vertex.properties])
    if pos + dtype.itemsize * vertex.count > len(buf):
        raise ValueError(f"read_ply: {path}: file is truncated ({len(buf) - pos} bytes of vertex data, "
                         f"{dtype.itemsize * vertex.count} expected)")
    return np.frombuffer(buf, dtype, vertex.count, pos).copy()


def read_ply(path) -> tuple[PointCloud, dict[str, np.ndarray]]:
    """Read the vertices of a PLY file into a PointCloud; other per-vertex properties come back as extras.

    Needs x, y, z. Colour comes from red/green/blue (or r/g/b, diffuse_*); zeros when absent. ``label``,
    ``score``, ``instance`` and ``feature_*`` fill the cloud's fields. Faces and other elements are skipped.
    The extras are also set as ``cloud.extras``.
    """
    header = read_ply_header(path)
    v = _read_vertices(path, header)
    names = list(v.dtype.names or ())
    for axis in "xyz":
        if axis not in names:
            raise ValueError(f"read_ply: {path}: vertex element has no '{axis}' property (has {names})")
    used = {"x", "y", "z"}
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    rgb = np.zeros((len(v), 3), dtype=np.uint8)
    for spelling in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if all(s in names for s in spelling):
            cols = [v[s] for s in spelling]
            if np.issubdtype(cols[0].dtype, np.floating):  # some writers store colour as 0..1 floats
                rgb = np.clip(np.rint(np.stack(cols, 1) * 255.0), 0, 255).astype(np.uint8)
            else:
                rgb = np.clip(np.stack(cols, 1), 0, 255).astype(np.uint8)
            used.update(spelling)
            break
    fields = {}
    for name in ("label", "score", "instance"):
        if name in names:
            fields[name] = v[name]
            used.add(name)

    groups = {}
    for comment in header["comments"]:
        words = comment.split()
        if len(words) == 3 and words[0] == "ov3d_columns" and words[2].isdigit():
            groups[words[1]] = int(words[2])
    frame_id = "map"
    for comment in header["comments"]:
        if comment.startswith("frame_id "):
            frame_id = comment.split(None, 1)[1].strip()
    grouped = {}
    for name, k in groups.items():
        cols = [f"{name}_{i}" for i in range(k)]
        if all(c in names for c in cols):
            grouped[name] = np.stack([v[c] for c in cols], axis=1)
            used.update(cols)
    feature = grouped.pop("feature", None)

    extras = {name: np.ascontiguousarray(v[name]) for name in names if name not in used}
    extras.update(grouped)
    cloud = PointCloud(xyz=xyz, rgb=rgb, feature=feature, frame_id=frame_id, extras=dict(extras), **fields)
    return cloud, extras
