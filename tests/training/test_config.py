"""Recipes: defaults + YAML (+ base) + dotted overrides, validation, resolved config on disk."""
import pytest
import yaml

from ov3d_ros.training.config import DEFAULTS, ConfigError, load_config, parse_override, save_resolved_config


def test_defaults_without_recipe():
    cfg = load_config()
    assert cfg["stage1"]["consistency_weight"] == 0.2
    assert cfg == DEFAULTS


def test_recipe_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("stage1:\n  steps: 50\n  lr: 0.01\ndata:\n  kind: scannet\n  train: [a]\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nstage1:\n  steps: 70\n")
    cfg = load_config(tmp_path / "run.yaml", ["stage1.consistency_weight=0", "stage2.grid_voxel=0.1",
                                              "data.synthetic.train_seeds=[7, 8]", "eval.checkpoint=x.pt"])
    assert cfg["stage1"]["steps"] == 70  # recipe over base
    assert cfg["stage1"]["lr"] == 0.01  # from base
    assert cfg["stage1"]["consistency_weight"] == 0
    assert cfg["stage2"]["grid_voxel"] == 0.1
    assert cfg["data"]["synthetic"]["train_seeds"] == [7, 8]
    assert cfg["data"]["train"] == [str(tmp_path / "a")]  # scene paths resolve against the recipe folder
    assert cfg["eval"]["checkpoint"] == "x.pt"
    assert cfg["stage1"]["warmup_steps"] == DEFAULTS["stage1"]["warmup_steps"]


def test_unknown_keys_and_bad_values_fail_loudly(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'stage1.stepz'"):
        load_config(None, ["stage1.stepz=5"])
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(None, ["stage1.steps=abc"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(None, ["stage1.steps=2.5"])
    with pytest.raises(ConfigError, match="true/false"):
        load_config(None, ["stage1.amp=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("stage1.steps")
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["stage1=3"])
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_config(tmp_path / "missing.yaml")
    # free-form sections accept new keys
    cfg = load_config(None, ["model.overrides.channels=[8, 16]"])
    assert cfg["model"]["overrides"] == {"channels": [8, 16]}


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["stage1.steps=12"])
    path = save_resolved_config(cfg, tmp_path / "run")
    assert path.name == "config.yaml"
    assert yaml.safe_load(path.read_text()) == cfg
    assert load_config(path) == cfg


def test_shipped_recipes_load():
    from pathlib import Path
    folder = Path(__file__).resolve().parents[2] / "training"
    # label.yaml belongs to the labelling CLI (its own keys); every other recipe is a curriculum recipe.
    names = ["synthetic_data.yaml", "stage1.yaml", "stage2.yaml", "eval.yaml", "demo.yaml"]
    for name in names:
        cfg = load_config(folder / name)
        assert cfg["stage1"]["consistency_weight"] == 0.2, name


def test_the_scannet_label_recipe_is_label_yaml_with_its_own_frames():
    from pathlib import Path

    from ov3d_ros.labelling.config import load_label_config

    folder = Path(__file__).resolve().parents[2] / "training"
    base, scannet = load_label_config(folder / "label.yaml"), load_label_config(folder / "label_scannet.yaml")
    assert scannet["frames"]["every"] == 100 == load_config(folder / "scannet.yaml")["data"]["frame_stride"]
    assert scannet["masks"] == base["masks"] and scannet["naming"]["templates"] == base["naming"]["templates"]


def test_exponent_without_dot_is_a_number():
    # PyYAML reads 1e-4 as a string (YAML 1.1); the config must still treat it as a number.
    assert load_config(None, ["stage1.lr=1e-4"])["stage1"]["lr"] == 1e-4
