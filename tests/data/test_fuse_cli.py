"""ov3d-fuse on a small exported synthetic scene."""
from __future__ import annotations

import numpy as np
import pytest

from ov3d_ros.data.fuse_cli import build_parser, fuse_scene, main
from ov3d_ros.data.ply import read_ply
from ov3d_ros.data.scannet import ScanNetScene


def test_fused_cloud_lies_on_the_ground_truth_surfaces(exported_scene, gt_cloud, near, tmp_path, capsys):
    out = tmp_path / "fused.ply"
    assert main([str(exported_scene), "--out", str(out), "--voxel-size", "0.03", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "fused 12 frames" in printed and "frames/s" in printed
    cloud, extras = read_ply(out)
    assert len(cloud) > 5000
    assert extras["count"].min() >= 1
    sample = np.random.default_rng(0).choice(len(cloud), 2000, replace=False)
    # Voxel means of noise-free surface points stay within a voxel (3 cm) of the surface; the GT samples are
    # 2 cm apart, so 3 cm covers both.
    assert near(cloud.xyz[sample].astype(np.float64), gt_cloud.xyz.astype(np.float64), 0.03) > 0.99
    # The colours are the scene's, not black.
    assert cloud.rgb.mean() > 30


def test_stride_and_max_frames(exported_scene, tmp_path, capsys):
    out = tmp_path / "few.ply"
    assert main([str(exported_scene), "-o", str(out), "--stride", "5", "--max-frames", "2", "--pixel-stride", "2",
                 "-q"]) == 0
    assert "fused 2 frames" in capsys.readouterr().out
    few, _ = read_ply(out)
    vmap, n, _ = fuse_scene(ScanNetScene(exported_scene), 0.02, stride=5, max_frames=2, pixel_stride=2,
                            progress=False)
    assert n == 2
    # The CLI's --voxel-size default is 0.02 m: the same map.
    assert len(few) == len(vmap.to_cloud())


def test_bad_arguments(exported_scene, tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x.ply")]) == 2
    assert main([str(exported_scene), "--out", str(tmp_path / "x.ply"), "--voxel-size", "-1"]) == 2
    assert main([str(exported_scene), "--out", str(tmp_path / "x.ply"), "--stride", "0", "-q"]) == 1
    assert not (tmp_path / "x.ply").exists()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--voxel-size", "--stride", "--max-frames", "--out"):
        assert option in text


def test_parser_defaults():
    args = build_parser().parse_args(["scene", "--out", "c.ply"])
    assert args.voxel_size == 0.02 and args.stride == 1 and args.max_frames is None
