"""ov3d-segment: label a point cloud (PLY) with free-text queries using a trained checkpoint.

    ov3d-segment scene.ply --checkpoint model.pt --queries "chair,table,floor" --out labelled.ply

Writes labelled.ply (the input's points plus per-vertex ``label`` int32, -1 = unknown, and ``score`` float32) and
labelled.labels.json mapping each label index to its query. With ``--instances`` the points are also split into
object instances (``ov3d_ros.instances``): a per-vertex ``instance`` int32 (-1 = none) and labelled.instances.json
with each instance's id, query, label, score, point count, centroid and box.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
import logging
import sys
import time
from pathlib import Path
import numpy as np

from .data.ply import read_ply, write_ply
from .instances import cluster_grid, extract_instances
from .segmenter import Segmenter
from .superpoints import SuperpointConfig

log = logging.getLogger("ov3d.segment")


def sidecar_path(out: Path) -> Path:
    """labelled.ply -> labelled.labels.json"""
    return out.with_name(out.stem + ".labels.json")


def instances_path(out: Path) -> Path:
    """labelled.ply -> labelled.instances.json"""
    return out.with_name(out.stem + ".instances.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ov3d-segment",
        description="Open-vocabulary segmentation of a point cloud: every point gets the query whose text "
                    "embedding is closest to its feature, or -1 (unknown) when the best score is below "
                    "--min-score.",
        epilog="Example: ov3d-segment scene.ply --checkpoint runs/demo/stage2/model.pt "
               "--queries 'chair,table,floor' --out labelled.ply",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("cloud", type=Path, help="input point cloud (PLY with x y z and red green blue)")
    p.add_argument("--checkpoint", "-c", type=Path, required=True, help="trained model checkpoint (.pt)")
    p.add_argument("--queries", "-q", required=True,
                   help="comma-separated text queries, e.g. 'chair,table,floor'; label i = i-th query")
    p.add_argument("--out", "-o", type=Path, required=True, help="output PLY with label and score per vertex")
    p.add_argument("--min-score", type=float, default=0.0,
                   help="points whose best score is below this get label -1 (unknown)")
    p.add_argument("--score", choices=("cosine", "softmax"), default="cosine",
                   help="score kind: cosine similarity of the best query, or its softmax probability over the "
                        "queries at the model's learned temperature")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--chunk-points", type=int, default=400_000,
                   help="most points per network pass; lower it if memory runs out")
    p.add_argument("--passes", type=int, default=1,
                   help="test-time passes averaged per voxel, each on one random point per voxel of the cloud "
                        "turned about gravity (costs one network run per pass; pays only for checkpoints with "
                        "point offsets, offset_feature)")
    p.add_argument("--superpoints", action=argparse.BooleanOptionalAction, default=True,
                   help="average the features over superpoints (surface patches of one orientation and colour), "
                        "so each patch gets one label")
    p.add_argument("--superpoint-voxel", type=float, default=0.02,
                   help="cell size [m] of the superpoint graph: about the spacing of the cloud's points")
    p.add_argument("--instances", action="store_true",
                   help="split each query's points into object instances: per-vertex 'instance' and "
                        "<out>.instances.json (id, query, score, points, centroid, gravity-aligned box)")
    p.add_argument("--cluster-voxel", type=float, default=0.05, help="grid [m] on which instances are found")
    p.add_argument("--min-points", type=int, default=30, help="smallest instance, in points")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2


def _run(args) -> int:
    queries = [q.strip() for q in args.queries.split(",")]
    if not args.cloud.is_file():
        raise FileNotFoundError(f"input cloud not found: {args.cloud}")
    if args.out.resolve() == args.cloud.resolve():
        raise ValueError("--out must differ from the input cloud")
    cloud, extras = read_ply(args.cloud)
    log.info("read %d points from %s", len(cloud), args.cloud)
    superpoints = SuperpointConfig(voxel_size=args.superpoint_voxel) if args.superpoints else None
    segmenter = Segmenter.load(args.checkpoint, device=args.device, chunk_points=args.chunk_points,
                               passes=args.passes, superpoints=superpoints)
    queries = segmenter.check_queries(queries)
    log.info("model on %s; %d queries: %s", segmenter.device, len(queries), ", ".join(queries))
    start = time.perf_counter()
    labelled = segmenter.segment(cloud, queries, args.min_score, score=args.score, progress=True)
    log.info("segmented in %.2f s", time.perf_counter() - start)
    # Extras that are per-vertex arrays travel to the output; input label/score are replaced by ours.
    keep = {k: v for k, v in extras.items() if k not in ("label", "score") and len(v) == len(labelled)}
    if args.instances:
        grid = cluster_grid(labelled.xyz, args.cluster_voxel)  # every point a unit of its own
        found = extract_instances(grid, labelled.label, labelled.score, len(queries), min_points=args.min_points)
        for k, inst in enumerate(found.instances):
            inst.id = k
        per_point = np.empty(len(labelled), dtype=np.int32)
        per_point[grid.group_unit] = found.group_instance
        labelled = replace(labelled, instance=per_point)
        write_instances(instances_path(args.out), found.instances, queries)
        log.info("%d object instances -> %s", len(found.instances), instances_path(args.out))
    write_ply(args.out, labelled, extra=keep or None)
    counts = {q: int((labelled.label == i).sum()) for i, q in enumerate(queries)}
    unknown = int((labelled.label == -1).sum())
    sidecar = {
        "version": 1,
        "labels": {str(i): q for i, q in enumerate(queries)},
        "unknown_label": -1,
        "score": args.score,
        "min_score": args.min_score,
        "checkpoint": str(args.checkpoint),
        "input": str(args.cloud),
        "counts": counts,
        "unknown_count": unknown,
    }
    side = sidecar_path(args.out)
    side.write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("wrote %s and %s; %s", args.out, side,
             ", ".join(f"{q}: {c}" for q, c in counts.items()) + f", unknown: {unknown}")
    return 0


def write_instances(path: Path, instances, queries: list[str]) -> Path:
    """The instances as JSON: {"instances": [{"id", "query", "label", "score", "score_max", "points", "centroid",
    "box": {"center", "size", "yaw"}}]}."""
    def rounded(values):
        return [round(float(v), 4) for v in values]

    body = {"version": 1, "instances": [
        {"id": int(i.id), "query": queries[i.query], "label": int(i.query), "score": round(i.score_mean, 4),
         "score_max": round(i.score_max, 4), "points": int(i.points), "centroid": rounded(i.centroid),
         "box": {"center": rounded(i.box.center), "size": rounded(i.box.size), "yaw": round(i.box.yaw, 4)}}
        for i in instances]}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
