"""ov3d_ros: open-vocabulary 3D semantic segmentation for robots.

The core (everything outside ``ov3d_ros.nodes``) is ROS-free: plain Python, numpy and torch. ``docs/architecture.md``
gives the layout and who may import what.
"""

__version__ = "0.1.0"
