"""Where the package's shipped files are: the demo checkpoint and the parameter YAMLs.

The same paths serve a source checkout (editable install) and a ROS install (share/ov3d_ros), so the nodes, the
``ov3d-run`` command and the tests find the same files either way.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def default_checkpoint() -> Path:
    """The demo checkpoint shipped with the package (``OV3D_CHECKPOINT`` overrides it)."""
    override = os.environ.get("OV3D_CHECKPOINT")
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent / "assets" / "ov3d_demo.pt"


def config_dir() -> Path:
    """config/ of the source tree (editable installs), else share/ov3d_ros/config of a ROS install."""
    source = Path(__file__).resolve().parents[1] / "config"
    if (source / "ov3d.yaml").is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("ov3d_ros")) / "config"
    except (ImportError, LookupError, ValueError):
        return source


def default_config_files(sim_camera: bool) -> list[Path]:
    """config/ov3d.yaml, plus config/sim_camera.yaml for the synthetic camera (the files the launch file reads)."""
    files = [config_dir() / "ov3d.yaml"]
    if sim_camera:
        files.append(config_dir() / "sim_camera.yaml")
    return files


def ament_environment(environ=None) -> dict[str, str]:
    """``environ`` (default os.environ) with this Python prefix first on AMENT_PREFIX_PATH when scripts/setup.sh
    made it an ament prefix of ov3d_ros, so child processes find the package as `ros2 run` would."""
    env = dict(os.environ if environ is None else environ)
    prefix = sys.prefix
    if (Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / "ov3d_ros").is_file():
        paths = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
        if prefix not in paths:
            env["AMENT_PREFIX_PATH"] = os.pathsep.join([prefix] + paths)
    return env
