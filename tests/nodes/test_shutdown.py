"""Ctrl-C and SIGTERM (what `ros2 launch` sends) stop a node's process in order: exit code 0, no traceback, nothing
published on a context that is already gone."""
import signal
import subprocess
import sys

import pytest
from rclpy.node import Node

ENTRY_POINTS = {
    "fusion_node": ["-p", "pose_source:=pose", "-p", "stats_period:=0.0"],
    "segmenter_node": ["-p", "device:=cpu", "-p", "num_threads:=1", "-p", "stats_period:=0.0"],
}
TOPICS = {"fusion_node": "/fusion_node/global_cloud", "segmenter_node": "/segmenter_node/markers"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_a_node_process_stops_cleanly(name, sig, ros_context, wait_until):
    process = subprocess.Popen([sys.executable, "-m", f"ov3d_ros.nodes.{name}", "--ros-args", *ENTRY_POINTS[name]],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe = Node(f"shutdown_probe_{name}")
    try:
        wait_until(lambda: probe.count_publishers(TOPICS[name]) > 0 or process.poll() is not None, timeout=120,
                   what=f"{name} to come up")
        assert process.poll() is None, process.communicate()[0]
        process.send_signal(sig)
        output, _ = process.communicate(timeout=60)
    finally:
        probe.destroy_node()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    for noise in ("Traceback", "context is invalid", "never retrieved", "Destroyable"):
        assert noise not in output, output
