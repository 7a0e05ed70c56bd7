"""Spinning ROS 2 nodes from Python: one executor thread over a set of nodes, and the single-node entry point.

``NodeRunner`` serves ``ov3d-run`` and the tests (several nodes in one process); ``spin_nodes`` is the ``main`` of
each node's console script (``ros2 run ov3d_ros fusion_node``).
"""
from __future__ import annotations

import signal
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
            init_without_signal_handlers(["ov3d-run", *(ros_args or [])])
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


def init_without_signal_handlers(args) -> None:
    """rclpy.init without rclpy's SIGINT/SIGTERM handlers. Those shut the context down at once, while callbacks and
    the segmenter's network thread still publish ("publisher's context is invalid"); the callers stop on a signal
    (``stop_on_signals``, or KeyboardInterrupt) and close executor, nodes and context in that order."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def stop_on_signals() -> threading.Event:
    """SIGINT and SIGTERM (what Ctrl-C and ``ros2 launch`` send) set the returned event instead of raising, so a
    signal that comes while the nodes are being built does not leave them half made; ``spin_until_stopped`` ends on
    it. Main thread only."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


def spin_until_stopped(executor, stop: threading.Event) -> None:
    """Spin ``executor`` until ``stop`` is set (or rclpy shuts down). The wait wakes twice a second, so a stop is
    seen even when no callback is due."""
    import rclpy

    while rclpy.ok() and not stop.is_set():
        executor.spin_once(timeout_sec=0.5)


def spin_nodes(node_classes, args=None, help_text: str | None = None) -> None:
    """Entry point of the single-node console scripts: rclpy.init with the command line's --ros-args, spin until
    Ctrl-C or SIGTERM, then shut down in order. ``-h``/``--help`` before any --ros-args prints ``help_text``."""
    import rclpy

    argv = sys.argv if args is None else args
    own = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    if help_text and {"-h", "--help"} & set(own):
        print(help_text)
        sys.exit(0)
    stop = stop_on_signals()
    init_without_signal_handlers(argv)
    runner = None
    try:
        runner = NodeRunner(node_classes, init=False)
        spin_until_stopped(runner.executor, stop)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if runner is not None:
            runner.close()
        rclpy.try_shutdown()
