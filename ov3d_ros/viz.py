"""PNG rendering of a labelled cloud (ROS-free, matplotlib Agg): a top view and one oblique view, with a legend
of the query names. Used by `ov3d-run --demo` so a person can look at the result without RViz."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ov3d_ros.cloud import PointCloud

UNLABELLED_COLOR = (0.72, 0.72, 0.72)


def label_palette(n: int) -> np.ndarray:
    """(n, 3) float RGB in [0, 1]: distinct, saturated colours (tab10/tab20 first, then evenly spaced hues)."""
    import matplotlib

    base = list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["tab20"].colors[1::2])
    if n <= len(base):
        return np.asarray(base[:n], dtype=np.float64).reshape(n, 3)
    hsv = matplotlib.colormaps["hsv"]
    extra = [hsv(i / (n - len(base)))[:3] for i in range(n - len(base))]
    return np.asarray(base + extra, dtype=np.float64)


def render_labelled_cloud(cloud: PointCloud, queries: list[str], path: str | Path, *, title: str = "",
                          max_points: int = 80_000, seed: int = 0, dpi: int = 110) -> Path:
    """Write a PNG with the top (x-y) and an oblique 3D view of ``cloud`` coloured by ``cloud.label``
    (index into ``queries``; -1 grey). Returns the path written."""
    if cloud.label is None:
        raise ValueError("render_labelled_cloud: the cloud has no labels (segment it first)")
    if len(cloud) == 0:
        raise ValueError("render_labelled_cloud: the cloud is empty")
    if cloud.label.size and cloud.label.max() >= len(queries):
        raise ValueError(f"render_labelled_cloud: label {int(cloud.label.max())} has no query name "
                         f"({len(queries)} queries given)")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rng = np.random.default_rng(seed)
    index = np.arange(len(cloud))
    if len(index) > max_points:  # keep the figure fast to draw and small on disk
        index = np.sort(rng.choice(index, max_points, replace=False))
    xyz = cloud.xyz[index].astype(np.float64)
    label = cloud.label[index]
    palette = label_palette(len(queries))
    colors = np.tile(np.asarray(UNLABELLED_COLOR), (len(index), 1))
    labelled = label >= 0
    colors[labelled] = palette[label[labelled]]
    sizes = np.where(labelled, 1.6, 0.6)

    fig = Figure(figsize=(13, 6.2))
    FigureCanvasAgg(fig)
    top = fig.add_subplot(1, 2, 1)
    # Draw unlabelled points first (labelled ones on top), each set from low to high so the top view shows the
    # highest surface, as a camera above would.
    order = np.lexsort((xyz[:, 2], labelled))
    top.scatter(xyz[order, 0], xyz[order, 1], c=colors[order], s=sizes[order], linewidths=0, rasterized=True)
    top.set_aspect("equal")
    top.set_xlabel("x [m]")
    top.set_ylabel("y [m]")
    top.set_title("top view")

    oblique = fig.add_subplot(1, 2, 2, projection="3d")
    oblique.scatter(xyz[order, 0], xyz[order, 1], xyz[order, 2], c=colors[order], s=sizes[order],
                    linewidths=0, depthshade=False, rasterized=True)
    span = np.ptp(xyz, axis=0)
    oblique.set_box_aspect(np.maximum(span, 1e-3))
    oblique.view_init(elev=35, azim=-60)
    oblique.set_xlabel("x")
    oblique.set_ylabel("y")
    oblique.set_zlabel("z")
    oblique.set_title("oblique view")

    counts = np.bincount(cloud.label[cloud.label >= 0], minlength=len(queries))
    handles = [Line2D([], [], marker="o", linestyle="", color=palette[i], label=f"{q} ({counts[i]})")
               for i, q in enumerate(queries)]
    handles.append(Line2D([], [], marker="o", linestyle="", color=UNLABELLED_COLOR,
                          label=f"unlabelled ({int((cloud.label < 0).sum())})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.9, bottom=0.14, wspace=0.1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
