"""ScanNet "exported frames" scenes: read, and write (e.g. to export synthetic scenes in the same layout).

Layout (what ScanNet's SensReader export writes, plus the ground-truth mesh next to it)::

    SCENE/color/<id>.jpg                   RGB (any size; resized/warped to the depth size when they differ)
    SCENE/depth/<id>.png                   uint16 depth in millimetres (0 = invalid)
    SCENE/pose/<id>.txt                    4x4 camera-to-world (optical frame); ScanNet marks lost tracking by -inf
    SCENE/intrinsic/intrinsic_depth.txt    4x4 [K 0; 0 1] of the depth image
    SCENE/intrinsic/intrinsic_color.txt    4x4 of the colour image (used when the sizes differ)
    SCENE/<scene>_vh_clean_2.labels.ply    optional ground truth (vertex label = NYU40 id in ScanNet)
    SCENE/<scene>_vh_clean_2.0.010000.segs.json + SCENE/<scene>.aggregation.json
                                           optional instance ground truth: each vertex's segment, and the segments
                                           of each object (``objectId``)

Written by ``write_scannet_scene`` only (ScanNet has its own files for these)::

    SCENE/classes.json                     {"version": 1, "class_names": [...], "label": "class_index"}
    SCENE/label-filt/<id>.png              uint16 per-pixel class index + 1 (0 = none), for synthetic scenes
    SCENE/instance-filt/<id>.png           uint16 per-pixel instance id + 1 (0 = none), for synthetic scenes

Frame ids are the file stems (``"0"``, ``"20"``, ...), sorted numerically; ``ScanNetScene.frame(i)`` takes a position
in ``frame_ids`` and returns an RGBDFrame whose ``index`` is the integer id, so ``str(frame.index)`` names the
frame's files (and its pseudo labels).
"""
from __future__ import annotations

import json
from dataclasses import replace
import logging
import math
import os
from pathlib import Path

import numpy as np

from ov3d_ros.cloud import PointCloud
from ov3d_ros.data.errors import FrameError
from ov3d_ros.fusion import RGBDFrame
from ov3d_ros.geometry import CameraModel, check_rigid, depth_to_metres

from .ply import read_ply, write_ply

__all__ = ["ScanNetScene", "write_scannet_scene", "NYU40_CLASS_NAMES", "CLASSES_FILE"]

_log = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"

# NYU40 class names in id order 1..40 (ScanNet's ``*_vh_clean_2.labels.ply`` stores these ids; 0 = unannotated).
NYU40_CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)


def _numeric_key(stem: str):
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _read_matrix(path: Path, name: str) -> np.ndarray:
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"ScanNetScene: cannot parse {name} {path}: {exc}") from None
    if m.shape != (4, 4):
        raise ValueError(f"ScanNetScene: {name} {path} must hold a 4x4 matrix, got shape {m.shape}")
    return m


def _read_image(path: Path, mode: str | None = None):
    """The decoded image at ``path`` (converted to ``mode``); FrameError naming the file when it is truncated,
    empty or not an image."""
    try:
        with _load_image(path) as img:
            img.load()
            return img.convert(mode) if mode else img.copy()
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated, empty and unknown files
        raise FrameError(f"{path}: {exc}") from None


def _load_image(path: Path):
    try:
        from PIL import Image
    except ImportError as exc:  # pillow is a core dependency; say so if it is missing anyway
        raise ImportError("reading ScanNet images needs Pillow: pip install pillow") from exc
    return Image.open(path)


class ScanNetScene:
    """A scene folder in ScanNet's exported-frames layout.

    ``len(scene)``, ``scene.frame_ids`` (str), ``scene.frame(i)`` (i = position, 0..len-1) -> RGBDFrame with uint16
    depth and ``depth_scale``; iterating yields the frames in order. Frames whose pose holds inf/NaN (lost tracking
    in ScanNet) or is not rigid are skipped; their count is logged and kept in ``skipped_frame_ids``. The depth
    image size is that of most depth images (sampled), so one damaged or odd file cannot set it. ``frame(i)``
    raises FrameError naming the file when an image is truncated, empty, not an image or of another size.
    """

    def __init__(self, path, *, depth_scale: float = 1000.0):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"ScanNetScene: no such scene folder: {self.path}")
        for sub in ("color", "depth", "pose"):
            if not (self.path / sub).is_dir():
                raise FileNotFoundError(f"ScanNetScene: {self.path} has no '{sub}/' folder "
                                        "(expected the ScanNet exported-frames layout)")
        intrinsic = self.path / "intrinsic" / "intrinsic_depth.txt"
        if not intrinsic.is_file():
            raise FileNotFoundError(f"ScanNetScene: missing {intrinsic}")
        self.depth_scale = float(depth_scale)
        if not (self.depth_scale > 0 and np.isfinite(self.depth_scale)):
            raise ValueError(f"ScanNetScene: depth_scale must be finite and > 0, got {depth_scale}")
        self._K_depth = _read_matrix(intrinsic, "intrinsic")
        color_intrinsic = self.path / "intrinsic" / "intrinsic_color.txt"
        self._K_color = _read_matrix(color_intrinsic, "intrinsic") if color_intrinsic.is_file() else None

        stems = {}
        for sub, ext in (("color", ".jpg"), ("depth", ".png"), ("pose", ".txt")):
            stems[sub] = {p.stem for p in (self.path / sub).iterdir() if p.suffix.lower() == ext}
        common = stems["color"] & stems["depth"] & stems["pose"]
        missing = (stems["color"] | stems["depth"] | stems["pose"]) - common
        if missing:
            _log.warning("ScanNetScene %s: %d frame ids lack a colour, depth or pose file and are skipped",
                         self.path.name, len(missing))
        self._poses: dict[str, np.ndarray] = {}
        self.skipped_frame_ids: list[str] = []
        for stem in sorted(common, key=_numeric_key):
            try:
                T = _read_matrix(self.path / "pose" / f"{stem}.txt", "pose")
            except ValueError as exc:  # a damaged file: named, then skipped like a lost pose
                _log.warning("%s", exc)
                self.skipped_frame_ids.append(stem)
                continue
            try:
                self._poses[stem] = check_rigid(T, f"pose {stem}")
            except ValueError:  # ScanNet's -inf for lost tracking, or not a rigid transform
                self.skipped_frame_ids.append(stem)
        if self.skipped_frame_ids:
            _log.warning("ScanNetScene %s: skipped %d of %d frames with unreadable or invalid (inf/NaN, non-rigid) "
                         "poses", self.path.name, len(self.skipped_frame_ids), len(common))
        if common and not self._poses:
            raise ValueError(f"ScanNetScene {self.path}: none of the {len(common)} poses is readable and rigid")
        self.frame_ids: list[str] = list(self._poses)
        self._camera: CameraModel | None = None
        self._warned_resize = False

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __iter__(self):
        for i in range(len(self)):
            yield self.frame(i)

    def __getitem__(self, i: int) -> RGBDFrame:
        return self.frame(i)

    def __repr__(self) -> str:
        return f"ScanNetScene({str(self.path)!r}, frames={len(self)})"

    @property
    def name(self) -> str:
        return self.path.name

    def pose(self, i: int) -> np.ndarray:
        return self._poses[self.frame_ids[i]].copy()

    SIZE_SAMPLES = 15

    def camera(self) -> CameraModel:
        """The depth camera (the geometry of every RGBDFrame of this scene): K from intrinsic_depth.txt, the size
        most of up to SIZE_SAMPLES depth images spread over the scene have."""
        if self._camera is None:
            if not self.frame_ids:
                raise ValueError(f"ScanNetScene {self.path}: no valid frames")
            step = max(1, len(self.frame_ids) // self.SIZE_SAMPLES)
            sizes: dict[tuple[int, int], int] = {}
            for stem in self.frame_ids[::step][:self.SIZE_SAMPLES]:
                try:
                    with _load_image(self.path / "depth" / f"{stem}.png") as img:
                        sizes[img.size] = sizes.get(img.size, 0) + 1
                except (OSError, ValueError):  # unreadable: frame() names it when it is read
                    continue
            if not sizes:
                raise ValueError(f"ScanNetScene {self.path}: none of the sampled depth images can be read")
            width, height = max(sizes, key=sizes.get)
            self._camera = CameraModel.from_K(self._K_depth, width, height)
        return self._camera

    def _check_index(self, i) -> str:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"ScanNetScene.frame: index must be an int position, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"ScanNetScene.frame: index {i} out of range for {len(self)} frames")
        return self.frame_ids[i]

    def frame(self, i: int) -> RGBDFrame:
        """The i-th valid frame: colour (H, W, 3) uint8 RGB at the depth size, depth (H, W) uint16."""
        stem = self._check_index(i)
        camera = self.camera()
        depth_path, color_path = self.path / "depth" / f"{stem}.png", self.path / "color" / f"{stem}.jpg"
        depth = np.asarray(_read_image(depth_path))
        color_image = _read_image(color_path, "RGB")
        if depth.dtype != np.uint16:
            if depth.dtype.kind in "iu" and depth.size and (depth.min() < 0 or depth.max() > 65535):
                raise FrameError(f"{depth_path}: values do not fit uint16 millimetres")
            depth = depth.astype(np.uint16)
        if depth.shape != (camera.height, camera.width):
            raise FrameError(f"{depth_path}: {depth.shape[1]}x{depth.shape[0]}, but the scene's depth images are "
                             f"{camera.width}x{camera.height}")
        color = self._color_at_depth_size(color_image, camera)
        frame = RGBDFrame(color=color, depth=depth, camera=camera, T_world_cam=self._poses[stem].copy(),
                          index=int(stem) if stem.isdigit() else i, stamp=0.0, depth_scale=self.depth_scale)
        return frame

    def _color_at_depth_size(self, img, camera: CameraModel) -> np.ndarray:
        from PIL import Image

        if img.size == (camera.width, camera.height):
            return np.asarray(img, dtype=np.uint8).copy()
        if self._K_color is None:
            if not self._warned_resize:
                _log.warning("ScanNetScene %s: colour %dx%d differs from depth %dx%d and there is no "
                             "intrinsic_color.txt: resizing colour plainly", self.name, *img.size,
                             camera.width, camera.height)
                self._warned_resize = True
            return np.asarray(img.resize((camera.width, camera.height), Image.BILINEAR), dtype=np.uint8).copy()
        # Both images share the optical centre (ScanNet's export registers them): a depth pixel (u, v) sees
        # the colour pixel K_c K_d^-1 (u, v, 1). That map is axis-aligned, so the depth image's extent is one
        # rectangle of the colour image (pixel centres at integers; PIL boxes use pixel edges, hence +-0.5).
        Kc, Kd = self._K_color, self._K_depth
        sx, sy = Kc[0, 0] / Kd[0, 0], Kc[1, 1] / Kd[1, 1]
        x0 = sx * (-0.5 - Kd[0, 2]) + Kc[0, 2] + 0.5
        x1 = sx * (camera.width - 0.5 - Kd[0, 2]) + Kc[0, 2] + 0.5
        y0 = sy * (-0.5 - Kd[1, 2]) + Kc[1, 2] + 0.5
        y1 = sy * (camera.height - 0.5 - Kd[1, 2]) + Kc[1, 2] + 0.5
        # Where the depth view reaches past the colour image's border, repeat the border pixels (PIL boxes must
        # stay inside the image).
        W, H = img.size
        pad_l, pad_t = max(0, math.ceil(-x0)), max(0, math.ceil(-y0))
        pad_r, pad_b = max(0, math.ceil(x1 - W)), max(0, math.ceil(y1 - H))
        if pad_l or pad_t or pad_r or pad_b:
            arr = np.pad(np.asarray(img), ((pad_t, pad_b), (pad_l, pad_r), (0, 0)), mode="edge")
            img = Image.fromarray(arr)
            x0, x1, y0, y1 = x0 + pad_l, x1 + pad_l, y0 + pad_t, y1 + pad_t
        out = img.resize((camera.width, camera.height), Image.BILINEAR, box=(x0, y0, x1, y1))
        return np.asarray(out, dtype=np.uint8).copy()

    # --------------------------------------------------------------------------------------------- ground truth
    @property
    def class_names(self) -> tuple[str, ...]:
        """Names for ground-truth labels: from classes.json when present, else ScanNet's NYU40 names."""
        meta = self.path / CLASSES_FILE
        if meta.is_file():
            return tuple(_read_classes(meta))
        return NYU40_CLASS_NAMES

    def ground_truth_path(self) -> Path | None:
        exact = self.path / f"{self.name}_vh_clean_2.labels.ply"
        if exact.is_file():
            return exact
        found = sorted(self.path.glob("*_vh_clean_2.labels.ply"))
        return found[0] if found else None

    def ground_truth(self, raw: bool = False) -> PointCloud | None:
        """The labelled ground-truth cloud, or None when the scene has none.

        label = index into ``class_names`` (-1 = unannotated). For a real ScanNet scene (no classes.json) the
        stored NYU40 ids 1..40 become 0..39 and 0 (unannotated) becomes -1; ``raw`` keeps the labels as stored (for
        a class table, ``data.class_tables``). ``instance`` comes from the PLY, else from ScanNet's segs.json +
        aggregation.json when both are there (-1 = a vertex of no object).
        """
        path = self.ground_truth_path()
        if path is None:
            return None
        cloud, _ = read_ply(path)
        if cloud.label is not None and not raw and not (self.path / CLASSES_FILE).is_file():
            label = cloud.label.astype(np.int32) - 1
            label[(label < 0) | (label >= len(NYU40_CLASS_NAMES))] = -1
            cloud = cloud.with_labels(label, cloud.score)
        if cloud.instance is None:
            annotations = self.annotations(len(cloud))
            if annotations is not None:
                cloud = replace(cloud, instance=annotations[0])
        return cloud

    def annotations(self, n_vertices: int) -> tuple[np.ndarray, dict[int, str]] | None:
        """ScanNet's object annotations: (each vertex's objectId, -1 = none; each object's raw category name),
        from the over-segmentation (segs.json) and its aggregation (aggregation.json); None when absent."""
        segs = sorted(self.path.glob("*_vh_clean_2.0.010000.segs.json"))
        aggregation = sorted(self.path.glob("*.aggregation.json"))
        if not (segs and aggregation):
            return None
        try:
            seg_of_vertex = np.asarray(json.loads(segs[0].read_text())["segIndices"], dtype=np.int64)
            groups = json.loads(aggregation[0].read_text())["segGroups"]
            object_of_segment = {int(s): int(g["objectId"]) for g in groups for s in g["segments"]}
            category = {int(g["objectId"]): str(g.get("label", "")) for g in groups}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"ScanNetScene {self.path}: unreadable instance files ({segs[0].name}, "
                             f"{aggregation[0].name}): {exc}") from None
        if len(seg_of_vertex) != n_vertices:
            raise ValueError(f"ScanNetScene {self.path}: {segs[0].name} has {len(seg_of_vertex)} vertices, the labels "
                             f"PLY {n_vertices}")
        segments, inverse = np.unique(seg_of_vertex, return_inverse=True)
        objects = np.array([object_of_segment.get(int(s), -1) for s in segments], dtype=np.int32)
        return objects[inverse], category

    def ground_truth_maps(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-pixel (class index, instance id) int32 maps, -1 = none, when the scene has them (synthetic export)."""
        stem = self._check_index(i)
        label_path = self.path / "label-filt" / f"{stem}.png"
        instance_path = self.path / "instance-filt" / f"{stem}.png"
        if not (label_path.is_file() and instance_path.is_file()):
            return None
        with _load_image(label_path) as img:
            label = np.asarray(img).astype(np.int32) - 1
        with _load_image(instance_path) as img:
            instance = np.asarray(img).astype(np.int32) - 1
        return label, instance


def _read_classes(path: Path) -> list[str]:
    try:
        meta = json.loads(path.read_text())
        names = meta["class_names"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"ScanNetScene: {path} is not a valid classes file ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"ScanNetScene: {path}: class_names must be a list of strings")
    return names


def _write_matrix(path: Path, m: np.ndarray) -> None:
    # %.17g round-trips float64 exactly, so written poses read back bit-identical.
    np.savetxt(path, np.asarray(m, dtype=np.float64), fmt="%.17g")


def _save_png16(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    # A little-endian uint16 array becomes a mode 'I;16' image: a 16-bit greyscale PNG.
    Image.fromarray(np.ascontiguousarray(image, dtype="<u2")).save(path)


def write_scannet_scene(path, frames, ground_truth: PointCloud | None = None,
                        class_names=None, *, jpeg_quality: int = 95) -> Path:
    """Write frames (RGBDFrame, or SyntheticFrame whose ground-truth maps are written too) in the ScanNet layout.

    Files are named by ``frame.index`` (must be unique). Depth is stored as uint16 millimetres (float depth is
    rounded; invalid or beyond 65.535 m becomes 0). ``ground_truth`` goes to ``<folder name>_vh_clean_2.labels.ply``
    with labels as given (class indices, -1 = none); ``class_names`` to classes.json. Returns the scene path.
    """
    from PIL import Image

    path = Path(path)
    frames = list(frames)
    if not frames:
        raise ValueError("write_scannet_scene: no frames given")
    rgbd, maps = [], []
    for f in frames:
        if isinstance(f, RGBDFrame):
            rgbd.append(f)
            maps.append(None)
        elif hasattr(f, "frame") and isinstance(f.frame, RGBDFrame):
            rgbd.append(f.frame)
            maps.append((f.class_map, f.instance_map))
        else:
            raise TypeError(f"write_scannet_scene: frames must be RGBDFrame or SyntheticFrame, got {type(f).__name__}")
    ids = [int(f.index) for f in rgbd]
    if len(set(ids)) != len(ids):
        raise ValueError("write_scannet_scene: frame indices must be unique (they name the files)")
    camera = rgbd[0].camera
    for f in rgbd:
        f.validate()
        if f.camera != camera:
            raise ValueError(f"write_scannet_scene: frame {f.index} has a different camera than frame "
                             f"{rgbd[0].index}; a ScanNet scene has one intrinsic matrix")
    for sub in ("color", "depth", "pose", "intrinsic"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    K4 = np.eye(4)
    K4[:3, :3] = camera.K
    _write_matrix(path / "intrinsic" / "intrinsic_depth.txt", K4)
    _write_matrix(path / "intrinsic" / "intrinsic_color.txt", K4)
    # Colour and depth are registered: identity extrinsics, as ScanNet writes for its own exports.
    _write_matrix(path / "intrinsic" / "extrinsic_depth.txt", np.eye(4))
    _write_matrix(path / "intrinsic" / "extrinsic_color.txt", np.eye(4))
    for f, fmap in zip(rgbd, maps):
        stem = str(int(f.index))
        Image.fromarray(np.ascontiguousarray(f.color)).save(path / "color" / f"{stem}.jpg", quality=int(jpeg_quality))
        if f.depth.dtype == np.uint16 and float(f.depth_scale) == 1000.0:
            depth_mm = f.depth
        else:
            metres = depth_to_metres(f.depth, f.depth_scale, f"frame {f.index}: depth").astype(np.float64)
            mm = np.rint(np.where(np.isfinite(metres), metres, 0.0) * 1000.0)
            depth_mm = np.where((mm > 0) & (mm <= 65535), mm, 0).astype(np.uint16)
        _save_png16(path / "depth" / f"{stem}.png", depth_mm)
        _write_matrix(path / "pose" / f"{stem}.txt", f.T_world_cam)
        if fmap is not None:
            (path / "label-filt").mkdir(exist_ok=True)
            (path / "instance-filt").mkdir(exist_ok=True)
            for folder, m in (("label-filt", fmap[0]), ("instance-filt", fmap[1])):
                m = np.asarray(m)
                if m.shape != f.depth.shape:
                    raise ValueError(f"write_scannet_scene: frame {f.index} {folder} map is {m.shape}, "
                                     f"depth is {f.depth.shape}")
                if m.size and (m.min() < -1 or m.max() > 65534):
                    raise ValueError(f"write_scannet_scene: frame {f.index} {folder} values out of range")
                _save_png16(path / folder / f"{stem}.png", (m.astype(np.int64) + 1).astype(np.uint16))
    if ground_truth is not None:
        write_ply(path / f"{path.name}_vh_clean_2.labels.ply", ground_truth)
    if class_names is not None:
        names = list(class_names)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError("write_scannet_scene: class_names must be non-empty strings")
        tmp = path / (CLASSES_FILE + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "class_names": names, "label": "class_index"}, indent=1))
        os.replace(tmp, path / CLASSES_FILE)
    elif ground_truth is not None and ground_truth.label is not None:
        _log.warning("write_scannet_scene: ground truth has labels but no class_names were given; readers will "
                     "take them for ScanNet NYU40 ids")
    return path
