"""ROS-graph test set-up: an isolated DDS domain per test run, one rclpy context per session, and a helper that
spins nodes in a background executor and tears everything down in order (executor, thread, nodes)."""
import os
import random

# Before rclpy is imported anywhere: keep discovery on this machine and away from concurrent test runs.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("OV3D_TEST_DOMAIN_ID", str(random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))
                                                 .randint(1, 101)))
os.environ["ROS_DOMAIN_ID"] = os.environ["OV3D_TEST_DOMAIN_ID"]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import time  # noqa: E402

import pytest  # noqa: E402

import rclpy  # noqa: E402  (scripts/setup.sh installs rclpy and builds ov3d_interfaces; a missing one is a failure)
import ov3d_interfaces.srv  # noqa: E402,F401

# Discovery sometimes takes ~3 s; all waits use this generous bound and return as soon as the condition holds.
GRAPH_TIMEOUT = 20.0


@pytest.fixture(scope="session")
def ros_context():
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture
def run_nodes(ros_context):
    """run_nodes(factory, ...) -> NodeRunner spinning in a background thread; closed after the test."""
    from ov3d_ros.nodes.runner import NodeRunner

    runners = []

    def start(*factories, threads: int | None = None):
        runner = NodeRunner(list(factories), threads=threads)
        runners.append(runner)
        return runner.start()

    yield start
    for runner in reversed(runners):
        runner.close()


def _wait_until(predicate, timeout: float = GRAPH_TIMEOUT, what: str = "condition", poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


class LogCatcher:
    """Collects /rosout messages (what a node logged, as any ROS tool would see it)."""

    def __init__(self, node):
        from rcl_interfaces.msg import Log
        from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

        self.messages = []
        qos = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(Log, "/rosout", lambda m: self.messages.append((m.name, m.level, m.msg)), qos)

    def find(self, node_name: str, text: str):
        return [m for m in self.messages if m[0].endswith(node_name) and text in m[2]]


@pytest.fixture
def wait_until():
    """wait_until(predicate, timeout=GRAPH_TIMEOUT, what=...): poll without fixed sleeps; fail naming ``what``."""
    return _wait_until


@pytest.fixture
def log_catcher():
    """log_catcher(node) -> LogCatcher subscribed to /rosout through ``node``."""
    return LogCatcher
