"""Make a Python prefix (the set-up's .venv) an ament prefix of the ov3d_ros package, as colcon's
--symlink-install would: ros2 launch / ros2 run / ros2 pkg then find the package wherever launch and ros2cli are
installed, and edits to the source tree take effect without reinstalling.

    python scripts/ament_layout.py PREFIX

Writes, under PREFIX:
- share/ament_index/resource_index/packages/ov3d_ros (the index marker);
- share/ov3d_ros/{package.xml, launch/, config/, rviz/, training/}: real folders holding a link per source file
  (`ros2 launch` walks share/ without following linked folders; a new source file needs this run again);
- lib/ov3d_ros/<every console script of the installed ov3d_ros distribution> (links to bin/<script>);
- a block in bin/activate that puts PREFIX on AMENT_PREFIX_PATH.
pip cannot do this itself: an editable install ignores data_files and setup.cfg's script_dir.
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ov3d_ros"
SHARED = ("package.xml", "launch", "config", "rviz", "training")
ACTIVATE_MARK = "# ov3d_ros: this venv is an ament prefix"


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.is_file():
        link.unlink()
    link.symlink_to(target)


def _mirror(folder: Path, source: Path) -> None:
    """``folder`` as a real directory tree with a link to every file of ``source`` (stale links removed)."""
    if folder.is_symlink():
        folder.unlink()
    if folder.is_dir():
        for old in folder.rglob("*"):
            if old.is_symlink() and not old.exists():
                old.unlink()
    for item in source.rglob("*"):
        if item.is_file() and "__pycache__" not in item.parts:
            target = folder / item.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(target, item)


def make_layout(prefix: Path) -> list[str]:
    """Write the layout under ``prefix``; returns the executables linked into lib/ov3d_ros."""
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True, exist_ok=True)
    (index / PACKAGE).write_text("")
    share = prefix / "share" / PACKAGE
    share.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        source = ROOT / name
        _mirror(share / name, source) if source.is_dir() else _link(share / name, source)
    lib = prefix / "lib" / PACKAGE
    lib.mkdir(parents=True, exist_ok=True)
    scripts = sorted(ep.name for ep in distribution(PACKAGE).entry_points if ep.group == "console_scripts")
    for name in scripts:
        target = prefix / "bin" / name
        if not target.is_file():
            raise FileNotFoundError(f"{target} is missing: install ov3d_ros into {prefix} first (pip install -e .)")
        _link(lib / name, target)
    activate = prefix / "bin" / "activate"
    if activate.is_file() and ACTIVATE_MARK not in activate.read_text():
        with activate.open("a") as f:
            f.write(f'\n{ACTIVATE_MARK} (ros2 launch/run/pkg find ov3d_ros here)\n'
                    'case ":${AMENT_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; '
                    '*) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;; esac\n')
    return scripts


if __name__ == "__main__":
    prefix = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix).resolve()
    linked = make_layout(prefix)
    print(f"{prefix} is an ament prefix of {PACKAGE}: share/{PACKAGE}, lib/{PACKAGE}/{{{','.join(linked)}}}",
          file=sys.stderr if os.environ.get("OV3D_QUIET") else sys.stdout)
