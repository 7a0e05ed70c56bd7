"""`ov3d-train` argument handling (the commands themselves run in test_pipeline.py)."""
import pytest

from ov3d_ros.training.cli import build_parser, main


def test_subcommands_and_overrides_parse():
    parser = build_parser()
    args = parser.parse_args(["stage1", "--config", "training/stage1.yaml", "--set", "stage1.steps=5",
                              "stage1.lr=1e-3", "--set", "seed=3", "--restart"])
    assert args.command == "stage1" and args.restart
    assert args.overrides == ["stage1.steps=5", "stage1.lr=1e-3", "seed=3"]
    for command in ("prepare", "stage2", "eval", "all", "label"):
        assert parser.parse_args([command] + (["--scene", "x"] if command == "label" else [])).command == command


def test_bad_override_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["stage1", "--set", "stage1.stepz=5"])
    assert exc.value.code == 2
    assert "unknown config key 'stage1.stepz'" in capsys.readouterr().err


def test_missing_stage1_checkpoint_is_reported(tmp_path, capsys):
    code = main(["stage2", "--no-progress", "--set", f"output_dir={tmp_path}", "data.kind=scannet"])
    assert code == 2
