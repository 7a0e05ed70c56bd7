"""PNG rendering of a labelled cloud: the file is a real PNG and the label colours land where the points are."""
import numpy as np
import pytest
from PIL import Image

from ov3d_ros.cloud import PointCloud
from ov3d_ros.viz import label_palette, render_labelled_cloud


def _count_colour(image: np.ndarray, colour: np.ndarray, tol: int = 6) -> int:
    return int((np.abs(image[:, :, :3].astype(int) - np.rint(colour * 255)).max(axis=2) <= tol).sum())


def test_render_writes_top_and_oblique_views_with_label_colours(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    xyz = rng.uniform([0, 0, 0], [4, 3, 1], (n, 3))
    label = np.where(xyz[:, 0] < 2, 0, 1)            # left half "chair", right half "table"
    label[::10] = -1
    cloud = PointCloud(xyz=xyz, rgb=np.zeros((n, 3)), label=label, score=np.ones(n))
    path = render_labelled_cloud(cloud, ["chair", "table", "lamp"], tmp_path / "sub" / "view.png", title="t")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 400 and image.shape[1] > 900
    palette = label_palette(3)
    left, right = image[:, : image.shape[1] // 2], image[:, image.shape[1] // 2:]
    # The top view (left half of the figure): chair colour and table colour both drawn with many pixels.
    assert _count_colour(left, palette[0]) > 500 and _count_colour(left, palette[1]) > 500
    # The oblique view (right half) shows the points too.
    assert _count_colour(right, palette[0]) > 300 and _count_colour(right, palette[1]) > 300
    # "lamp" has no points: its colour appears only as a legend marker.
    assert _count_colour(image, palette[2]) < 200


def test_render_rejects_unlabelled_or_inconsistent_clouds(tmp_path):
    cloud = PointCloud(xyz=np.zeros((3, 3)), rgb=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no labels"):
        render_labelled_cloud(cloud, ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="label 4 has no query name"):
        render_labelled_cloud(cloud.with_labels(np.array([0, 4, -1])), ["a"], tmp_path / "x.png")
