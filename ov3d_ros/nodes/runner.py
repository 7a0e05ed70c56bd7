"""Spinning ROS 2 nodes from Python: one executor thread over a set of nodes, and the single-node entry point.

``NodeRunner`` serves ``ov3d-run`` and the tests (several nodes in one process); ``spin_nodes`` is the ``main`` of
each node's console script (``ros2 run ov3d_ros fusion_node``).
"""
from __future__ import annotations

import sys
import threading


class NodeRunner:
    """rclpy context + nodes + an executor spinning in a background thread; ``close()`` shuts it all down in the
    order that avoids aborts at interpreter exit (executor, thread, nodes, context).

    The executor is single-threaded unless ``threads`` > 1: the nodes' callbacks are short (the segmenter's network
    passes run in its own thread), and rclpy's multi-threaded executor spins, holding the interpreter lock, while a
    ready callback waits for its busy group -- at 30 Hz that starved the camera and the fusion node of frames."""

    def __init__(self, node_factories, *, ros_args: list[str] | None = None, threads: int | None = None,
                 init: bool = True) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

        self.rclpy = rclpy
        self._owns_context = init and not rclpy.ok()
        if self._owns_context:
            rclpy.init(args=["ov3d-run", *(ros_args or [])])
        self.nodes = []
        try:
            for factory in node_factories:
                self.nodes.append(factory())
        except BaseException:
            self.close()
            raise
        self.executor = MultiThreadedExecutor(num_threads=threads) if threads and threads > 1 \
            else SingleThreadedExecutor()
        for node in self.nodes:
            self.executor.add_node(node)
        self._thread: threading.Thread | None = None

    def start(self) -> "NodeRunner":
        self._thread = threading.Thread(target=self._spin, name="ov3d-executor", daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.shutdown(timeout_sec=10.0)
        if self._thread_alive():
            self._thread.join(timeout=10.0)
        for node in reversed(self.nodes):
            node.destroy_node()
        self.nodes = []
        if self._owns_context:
            self.rclpy.try_shutdown()

    def _thread_alive(self) -> bool:
        return getattr(self, "_thread", None) is not None and self._thread.is_alive()

    def __enter__(self) -> "NodeRunner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def spin_nodes(node_classes, args=None) -> None:
    """Entry point of the single-node console scripts: rclpy.init with the command line's --ros-args, spin until
    Ctrl-C."""
    import rclpy

    argv = sys.argv if args is None else args
    rclpy.init(args=argv)
    runner = None
    try:
        runner = NodeRunner(node_classes, init=False)
        runner.executor.spin()
    except KeyboardInterrupt:
        pass
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if runner is not None:
            runner.close()
        rclpy.try_shutdown()
