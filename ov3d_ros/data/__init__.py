"""Scenes on disk, read and written: ``scenes`` (``open_scene``: a ScanNet-layout folder or a rosbag2 recording,
its frame ids and label folder), ``scannet``, ``rosbag``, ``ply``, ``pseudo_labels`` (the 2D pseudo-label format),
``fuse_cli`` (``ov3d-fuse``) and ``synthetic`` (procedural rooms with a ray-cast RGB-D sensor and ground truth)."""
