"""Procedural indoor rooms and a vectorised ray-cast RGB-D renderer with ground truth.

A room is an axis-aligned box [0, Lx] x [0, Ly] (world z up, floor at z = 0, no ceiling) with four walls, a floor
and 8-20 pieces of furniture built from primitives. The renderer intersects every pixel ray with every primitive
analytically (numpy), for a camera moving on a smooth loop around the room centre. Each frame gives colour
(Lambertian shading x instance colour x a texture fixed to the surface), depth in metres (optionally with a
Kinect-like noise model), the pose, the intrinsics and per-pixel class and instance maps. Everything is
deterministic given the seeds.

Modules, bottom up:
- ``primitives``: boxes, cylinders / cone frustums, spheres, quads, and their ray intersections;
- ``furniture``: ``CLASS_NAMES``, ``SceneObject`` and one builder per class;
- ``materials``: class-typical albedos (``appearance="materials"``) and the world-fixed surface texture;
- ``layout``: placing furniture without collisions, clear of the camera loop;
- ``room``: ``SyntheticRoom`` (generate, render a pose, ground-truth surface samples), ``default_camera``;
- ``sensor``: ``render_frame`` / ``render_sequence`` with depth noise and ``ViewVariation``;
- ``ground_truth``: ``labelled_reconstruction``, the labelled fused cloud held-out scenes are scored on.

``RENDER_VERSION`` names the renderer's output: bump it whenever a change alters the frames a seed renders, so
caches of rendered frames (the synthetic camera node's) are rebuilt.
"""
from ov3d_ros.data.synthetic.furniture import CLASS_NAMES, SceneObject
from ov3d_ros.data.synthetic.ground_truth import labelled_reconstruction
from ov3d_ros.data.synthetic.materials import APPEARANCES, MATERIALS
from ov3d_ros.data.synthetic.primitives import Box, Cylinder, Quad, Sphere
from ov3d_ros.data.synthetic.room import SyntheticRoom, default_camera
from ov3d_ros.data.synthetic.sensor import SyntheticFrame, ViewVariation, render_frame, render_sequence

RENDER_VERSION = 1

__all__ = [
    "APPEARANCES",
    "CLASS_NAMES",
    "MATERIALS",
    "RENDER_VERSION",
    "Box",
    "Cylinder",
    "Sphere",
    "Quad",
    "SceneObject",
    "SyntheticRoom",
    "SyntheticFrame",
    "ViewVariation",
    "default_camera",
    "labelled_reconstruction",
    "render_frame",
    "render_sequence",
]
