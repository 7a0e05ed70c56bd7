"""ament_python package ov3d_ros (also pip-installable: `pip install -e .`)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ov3d_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["assets/*", "data/*.txt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/training", glob("training/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    python_requires=">=3.10",
    # torch/spconv/open_clip are listed in requirements/core.txt: their wheels must be chosen per machine
    # (CPU or CUDA, Python version), which a plain install_requires cannot express well.
    install_requires=["numpy", "pyyaml", "tqdm", "pillow"],
    zip_safe=True,
    maintainer="ov3d_ros maintainers",
    maintainer_email="maintainers@ov3d-ros.dev",
    description="Open-vocabulary 3D semantic segmentation for ROS 2 (PGOV3D curriculum)",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            # offline tools
            "ov3d-fuse = ov3d_ros.data.fuse_cli:main",
            "ov3d-segment = ov3d_ros.segment_cli:main",
            "ov3d-train = ov3d_ros.training.cli:main",
            # ROS 2 nodes (names used by launch/segment.launch.py)
            "fusion_node = ov3d_ros.nodes.fusion_node:main",
            "segmenter_node = ov3d_ros.nodes.segmenter_node:main",
            "synthetic_camera_node = ov3d_ros.nodes.synthetic_camera_node:main",
            # ROS-less conveniences: all nodes in one process, and a service client
            "ov3d-run = ov3d_ros.nodes.run_cli:main",
            "ov3d-query = ov3d_ros.nodes.query_client:main",
        ],
    },
)
