"""ov3d_ros: open-vocabulary 3D semantic segmentation for robots.

The core (everything outside ``ov3d_ros.nodes``) is ROS-free: numpy + torch only.
"""

__version__ = "0.1.0"
