"""One way to open a scene: a ScanNet-layout folder or a rosbag2 recording, with its frame ids and label folder.

``ov3d-fuse``, ``ov3d-train label`` and the trainer all call ``open_scene``, so a recording's frames are named the
same way and its pseudo labels are written where training reads them:
- a ScanNet-layout folder (color/, depth/, pose/, intrinsic/): frame ids are the file stems; labels in the folder;
- a rosbag2 recording, given as its folder (with metadata.yaml) or as one ``.mcap`` / ``.db3`` file of it: frame
  ids are frame positions "0", "1", ...; labels in the bag folder (next to metadata.yaml), whichever was given.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import FrameError
from .rosbag import RosbagScene
from .scannet import ScanNetScene

BAG_SUFFIXES = (".mcap", ".db3")

__all__ = ["OpenScene", "open_scene", "find_scenes", "is_scannet_scene", "is_rosbag", "BAG_SUFFIXES", "read_frames"]

_log = logging.getLogger(__name__)


@dataclass
class OpenScene:
    """An opened scene: ``scene`` (``len``, ``frame(i)``, ``close()``), ``frame_ids`` (str, one per position) and
    ``label_root`` (the folder whose ``pseudo_labels/`` holds its 2D pseudo labels)."""

    scene: object
    frame_ids: list[str]
    label_root: Path

    def close(self) -> None:
        close = getattr(self.scene, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "OpenScene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_scannet_scene(path: str | Path) -> bool:
    """Whether ``path`` looks like one scene in the ScanNet exported layout: color/, depth/, pose/ and
    intrinsic/intrinsic_depth.txt. Checked by name only, so scanning a dataset root stays fast; ScanNetScene
    validates the contents when the scene is opened."""
    path = Path(path)
    return (all((path / sub).is_dir() for sub in ("color", "depth", "pose"))
            and (path / "intrinsic" / "intrinsic_depth.txt").is_file())


def is_rosbag(path: str | Path) -> bool:
    """A rosbag2 recording: a folder with metadata.yaml, or one .db3 / .mcap file of it."""
    path = Path(path)
    return (path.is_file() and path.suffix in BAG_SUFFIXES) or (path.is_dir() and (path / "metadata.yaml").is_file())


def find_scenes(path: str | Path) -> list[Path]:
    """``path`` itself when it is a scene (ScanNet layout or rosbag2), else every immediate subfolder that is one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene or dataset folder not found: {path}")
    if is_scannet_scene(path) or is_rosbag(path):
        return [path]
    if not path.is_dir():
        raise NotADirectoryError(f"not a folder: {path} (give a ScanNet-layout scene, a rosbag2 recording or a "
                                 "folder of them)")
    scenes = sorted(p for p in path.iterdir() if p.is_dir() and (is_scannet_scene(p) or is_rosbag(p)))
    if not scenes:
        raise ValueError(f"{path} is neither a ScanNet-layout scene (color/, depth/, pose/, intrinsic/) nor a "
                         "rosbag2 recording, nor a folder holding any")
    return scenes


def open_scene(path: str | Path, *, rosbag: dict | None = None) -> OpenScene:
    """Open a ScanNet-layout scene or a rosbag2 recording. ``rosbag``: keyword arguments of ``RosbagScene``
    (topics, fixed_frame, ...; None values are left at their defaults)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene not found: {path}")
    if is_rosbag(path):

        options = {k: v for k, v in (rosbag or {}).items() if v is not None}
        scene = RosbagScene(path, **options)
        return OpenScene(scene, [str(i) for i in range(len(scene))], Path(scene.path))

    scene = ScanNetScene(path)
    return OpenScene(scene, [str(f) for f in scene.frame_ids], path)


def read_frames(scene, positions, *, strict: bool = False, skipped: list | None = None):
    """Yield (position, frame) for the frames of ``scene`` at ``positions`` that can be read.

    An unreadable frame (FrameError: its message names the file or the message time) is logged, appended to
    ``skipped`` and passed over, so a long run keeps the work of every good frame; ``strict`` raises it instead.
    """
    for position in positions:
        try:
            frame = scene.frame(position)
        except FrameError as exc:
            if strict:
                raise
            _log.warning("skipping an unreadable frame: %s", exc)
            if skipped is not None:
                skipped.append(position)
            continue
        yield position, frame
