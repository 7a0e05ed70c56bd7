"""The ROS 2 layer, the only modules that import rclpy or ROS messages: thin nodes over the ROS-free core.

``fusion_node`` (frames -> partial clouds and the global map), ``segmenter_node`` (labelled clouds, markers,
``/query_objects``), ``synthetic_camera_node``; ``conversions`` (arrays -> messages, PointCloud2), ``params``
(declared parameters), ``sync`` (bounded queues, approximate-time pairing), ``objects`` (per-query summaries),
``runner`` (spinning nodes), ``run_cli`` (``ov3d-run``) and ``query_client`` (``ov3d-query``).
"""
