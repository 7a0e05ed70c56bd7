"""The ament prefix scripts/setup.sh makes of its venv: what `ros2 launch ov3d_ros ...`, `ros2 run ov3d_ros ...`
and `ros2 pkg prefix ov3d_ros` look up (the index marker, share/ov3d_ros, lib/ov3d_ros and AMENT_PREFIX_PATH). The
ros2 tools themselves are not installable here; ament_index_python, which they use for the lookup, is."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

PREFIX = Path(sys.prefix)
MARKER = PREFIX / "share" / "ament_index" / "resource_index" / "packages" / "ov3d_ros"
pytestmark = pytest.mark.skipif(not MARKER.is_file(), reason=f"{PREFIX} was not set up by scripts/setup.sh or colcon "
                                                             "(no ament index entry for ov3d_ros)")


def test_share_files_and_every_executable_are_where_ros2_looks():
    share = PREFIX / "share" / "ov3d_ros"
    for name in ("package.xml", "launch/segment.launch.py", "config/ov3d.yaml", "config/sim_camera.yaml",
                 "rviz/ov3d.rviz"):
        assert (share / name).is_file(), name
    # `ros2 launch PACKAGE FILE` finds the file with os.walk over share/PACKAGE, which does not enter linked folders.
    walked = {name for _, _, files in os.walk(share) for name in files}
    assert {"segment.launch.py", "ov3d.yaml", "ov3d.rviz"} <= walked
    scripts = sorted(ep.name for ep in distribution("ov3d_ros").entry_points if ep.group == "console_scripts")
    assert {"fusion_node", "segmenter_node", "synthetic_camera_node", "ov3d-run"} <= set(scripts)
    for name in scripts:
        exe = PREFIX / "lib" / "ov3d_ros" / name
        assert os.access(exe, os.X_OK), exe
        result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "usage" in result.stdout.lower(), (name, result.stderr[-2000:])


def test_ament_index_finds_the_package_from_the_activated_venv():
    activate = PREFIX / "bin" / "activate"
    code = ("from ament_index_python.packages import get_package_prefix, get_package_share_directory; "
            "print(get_package_prefix('ov3d_ros')); print(get_package_share_directory('ov3d_ros'))")
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "VIRTUAL_ENV")}
    result = subprocess.run(["bash", "-c", f'source "{activate}" && python -c "{code}"'], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    prefix, share = result.stdout.split()
    assert Path(prefix).resolve() == PREFIX.resolve() and Path(share).resolve() == (PREFIX / "share/ov3d_ros").resolve()


def test_ov3d_run_children_get_the_prefix_on_ament_prefix_path():
    from ov3d_ros.resources import ament_environment

    env = ament_environment({"AMENT_PREFIX_PATH": "/opt/ros/kilted"})
    assert env["AMENT_PREFIX_PATH"] == os.pathsep.join([sys.prefix, "/opt/ros/kilted"])
    assert ament_environment(env)["AMENT_PREFIX_PATH"] == env["AMENT_PREFIX_PATH"]  # once only
