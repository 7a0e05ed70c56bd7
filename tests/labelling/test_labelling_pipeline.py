"""The per-frame pipeline and the per-scene runner: output format read back by the curriculum's dataset reader,
resumability, the summary, and the real SAM + open_clip code paths end to end through the CLI (tiny random models
saved by conftest.py: plumbing, not quality)."""
import hashlib
import json
import logging

import numpy as np
import pytest

from ov3d_ros.data.pseudo_labels import read_frame_labels, read_scene_vocabulary
from ov3d_ros.data.scannet import ScanNetScene, write_scannet_scene
from ov3d_ros.data.synthetic import CLASS_NAMES, SyntheticRoom, render_sequence
from ov3d_ros.labelling.masks import MaskSet
from ov3d_ros.labelling.naming import MaskNames
from ov3d_ros.data.scenes import find_scenes
from ov3d_ros.labelling.pipeline import PseudoLabeller, compose_label_image, label_scene
from ov3d_ros.labelling.vocabulary import FixedVocabulary

W, H = 80, 60
MIN_AREA = 30
UNNAMED_CLASS = "wall"  # the oracle namer declines to name walls: they must stay unlabelled


def make_scene(path, seed=0, n_frames=3):
    room = SyntheticRoom.generate(seed)
    frames = render_sequence(room, n_frames=n_frames, width=W, height=H, noise=False, seed=seed)
    write_scannet_scene(path, frames, class_names=list(CLASS_NAMES))
    return path


def majority_class(class_map, mask):
    classes = class_map[mask]
    classes = classes[classes >= 0]
    return CLASS_NAMES[int(np.bincount(classes).argmax())] if len(classes) else None


def _key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class Oracle:
    """Ground truth standing in for SAM and CLIP: the scene's instance masks (plus one part of each instance that
    the clean-up must drop) and each mask's majority class as its name. Counts the frames it segments."""

    def __init__(self, scene_dir):
        scene = ScanNetScene(scene_dir)
        self.maps = {}
        for i in range(len(scene)):
            self.maps[_key(scene.frame(i).color)] = scene.ground_truth_maps(i)
        self.generated = 0

    def generate(self, image):
        self.generated += 1
        _, instance_map = self.maps[_key(image)]
        masks = []
        for inst in np.unique(instance_map[instance_map >= 0]):
            whole = instance_map == inst
            masks.append(whole)
            part = np.zeros_like(whole)
            rows, cols = np.nonzero(whole)
            part[rows[: len(rows) // 3], cols[: len(cols) // 3]] = True  # a third of its pixels: inside the whole
            masks.append(part & whole)
        return MaskSet(np.stack(masks), np.ones(len(masks)))

    def name_batch(self, items):
        out = []
        for image, masks, vocabulary in items:
            class_map, _ = self.maps[_key(image)]
            entity = []
            for mask in masks:
                name = majority_class(class_map, mask)
                entity.append(-1 if name in (None, UNNAMED_CLASS) else vocabulary.index(name))
            n = len(masks)
            out.append(MaskNames(np.array(entity, np.int64), np.ones(n, np.float32), np.ones(n, np.float32)))
        return out


def expected_from_maps(class_map, instance_map):
    """Per pixel the class name the labels must carry (None = unlabelled), straight from the ground truth."""
    expected = np.full(class_map.shape, None, dtype=object)
    for inst in np.unique(instance_map[instance_map >= 0]):
        mask = instance_map == inst
        name = majority_class(class_map, mask)
        if mask.sum() >= MIN_AREA and name not in (None, UNNAMED_CLASS):
            expected[mask] = name
    return expected


def expected_labels(scene_dir, position):
    return expected_from_maps(*ScanNetScene(scene_dir).ground_truth_maps(position))


def oracle_labeller(scene_dir):
    oracle = Oracle(scene_dir)
    return oracle, PseudoLabeller(FixedVocabulary(CLASS_NAMES), oracle, oracle, min_area=MIN_AREA)


def test_compose_label_image():
    index_map = np.array([[-1, 0, 1], [2, 2, 1]], np.int32)
    names = MaskNames(np.array([1, -1, 0]), np.ones(3, np.float32), np.ones(3, np.float32))
    label, entities = compose_label_image(index_map, names, ["chair", "table"])
    assert entities == ["table", "chair"]  # masks 0 and 2, in mask order; mask 1 unnamed
    np.testing.assert_array_equal(label, [[0, 1, 0], [2, 2, 0]])
    assert label.dtype == np.uint16


def test_labels_read_back_by_the_curriculum_reader(tmp_path):
    from ov3d_ros.training.config import DEFAULTS
    from ov3d_ros.training.datasets import load_training_scenes

    scene_dir = make_scene(tmp_path / "scene0000_00")
    _, labeller = oracle_labeller(scene_dir)
    summary = label_scene(scene_dir, labeller, batch_size=2, progress=False)

    scene = ScanNetScene(scene_dir)
    for position, frame_id in enumerate(scene.frame_ids):
        label, entities = read_frame_labels(str(scene_dir), frame_id)
        assert label.shape == (H, W)
        got = np.array([None] + entities, dtype=object)[label.astype(np.int64)]
        expected = expected_labels(scene_dir, position)
        assert (got == expected).all(), f"frame {frame_id}: labels differ from the ground truth"
        assert summary["frames"][frame_id]["labelled_fraction"] == pytest.approx((label > 0).mean(), abs=1e-6)
        assert summary["frames"][frame_id]["named"] == len(entities)
    vocabulary = read_scene_vocabulary(str(scene_dir))
    assert UNNAMED_CLASS not in vocabulary and vocabulary == sorted(vocabulary)
    assert summary["totals"]["vocabulary_size"] == len(vocabulary) and summary["totals"]["frames"] == len(scene)
    on_disk = json.loads((scene_dir / "pseudo_labels" / "summary.json").read_text())
    assert on_disk["totals"]["frames"] == len(scene)

    # stage 1's reader: every labelled point carries the class of its pixel
    data_cfg = {**DEFAULTS["data"], "pixel_stride": 1}
    scenes, train_vocab = load_training_scenes([str(scene_dir)], data_cfg, pair_max_gap=1, min_pair_matches=10 ** 9,
                                               match_voxel=0.05, progress=False)
    assert train_vocab == vocabulary
    checked = 0
    for position, frame in enumerate(scenes[0].frames):
        expected = expected_labels(scene_dir, position)
        u, v = frame.partial.pixels[:, 0], frame.partial.pixels[:, 1]
        want = expected[v, u]
        got = np.array(train_vocab + [None], dtype=object)[frame.label]  # -1 -> None
        assert (got == want).all()
        checked += int((frame.label >= 0).sum())
    assert checked > 100  # the scene really had labelled points


def test_an_unreadable_frame_is_skipped_and_listed(tmp_path):
    from ov3d_ros.data.errors import FrameError

    scene_dir = make_scene(tmp_path / "scene0000_00")
    ids = ScanNetScene(scene_dir).frame_ids
    _, labeller = oracle_labeller(scene_dir)  # reads the intact frames
    jpeg = scene_dir / "color" / f"{ids[1]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated
    with pytest.raises(FrameError, match=str(jpeg)):
        label_scene(scene_dir, labeller, progress=False, strict=True)
    summary = label_scene(scene_dir, labeller, batch_size=2, progress=False)
    assert summary["unreadable"] == [ids[1]]
    assert sorted(summary["frames"]) == sorted(i for i in ids if i != ids[1])
    for position in (0, 2):
        label, entities = read_frame_labels(str(scene_dir), ids[position])
        got = np.array([None] + entities, dtype=object)[label.astype(np.int64)]
        assert (got == expected_labels(scene_dir, position)).all()


def test_resumes_where_it_stopped_and_overwrites_on_request(tmp_path):
    scene_dir = make_scene(tmp_path / "scene", n_frames=4)
    oracle, labeller = oracle_labeller(scene_dir)
    label_scene(scene_dir, labeller, max_frames=2, progress=False)
    assert oracle.generated == 2
    first = (scene_dir / "pseudo_labels" / "labels" / "0.png").read_bytes()
    summary = label_scene(scene_dir, labeller, progress=False)  # the two remaining frames only
    assert oracle.generated == 4
    assert sorted(summary["frames"], key=int) == ["0", "1", "2", "3"]
    assert summary["totals"]["frames"] == 4
    label_scene(scene_dir, labeller, progress=False)  # nothing left to do
    assert oracle.generated == 4
    (scene_dir / "pseudo_labels" / "labels" / "3.png").unlink()  # a frame whose PNG went missing is redone
    label_scene(scene_dir, labeller, progress=False)
    assert oracle.generated == 5
    label_scene(scene_dir, labeller, every=2, overwrite=True, progress=False)  # frames 0 and 2 again
    assert oracle.generated == 7
    assert (scene_dir / "pseudo_labels" / "labels" / "0.png").read_bytes() == first  # same input, same labels


def test_find_scenes(tmp_path):
    a = make_scene(tmp_path / "root" / "scene_a", n_frames=1)
    make_scene(tmp_path / "root" / "scene_b", n_frames=1, seed=1)
    (tmp_path / "root" / "notes").mkdir()
    assert find_scenes(a) == [a]
    assert [p.name for p in find_scenes(tmp_path / "root")] == ["scene_a", "scene_b"]
    with pytest.raises(ValueError, match="neither a ScanNet-layout scene"):
        find_scenes(tmp_path / "root" / "notes")
    with pytest.raises(FileNotFoundError):
        find_scenes(tmp_path / "missing")


def test_labeller_rejects_bad_images_and_settings(tmp_path):
    labeller = PseudoLabeller(FixedVocabulary(["chair"]), None, None)
    with pytest.raises(TypeError, match="uint8"):
        labeller.label_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        labeller.label_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="overlap_priority"):
        PseudoLabeller(FixedVocabulary(["chair"]), None, None, overlap_priority="largest")


# ---------------------------------------------------------------------------------------------------------------
# real models through the command line


def write_recipe(path, sam_checkpoint, clip):
    name, clip_checkpoint = clip
    recipe = {
        "device": "cpu",
        "threads": 1,
        "frames": {"every": 1, "batch_size": 2},
        "vocabulary": {"source": "fixed", "fixed": {"names": ["chair", "table", "wall", "floor"],
                                                    "extra": ["robot"]}},
        # random SAM scores fail SAM's own quality filters: switched off to let masks through
        "sam": {"model_type": "custom", "checkpoint": str(sam_checkpoint), "points_per_side": 4,
                "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
        "masks": {"min_area": 10},
        # random CLIP similarities are near zero: thresholds off, so the naming path produces entities
        "naming": {"model": name, "pretrained": str(clip_checkpoint), "min_similarity": -1.0, "min_margin": 0.0,
                   "templates": ["a photo of a {}."]},
    }
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    return path


def test_real_sam_and_clip_end_to_end_through_ov3d_train(tmp_path, tiny_sam_checkpoint, tiny_clip, caplog):
    from ov3d_ros.training.cli import main as ov3d_train

    root = tmp_path / "scannet"
    make_scene(root / "scene0000_00", n_frames=2)
    make_scene(root / "scene0001_00", n_frames=2, seed=1)
    recipe = write_recipe(tmp_path / "label.yaml", tiny_sam_checkpoint, tiny_clip)
    assert ov3d_train(["label", "--scene", str(root), "--config", str(recipe), "--no-progress"]) == 0

    labelled_pixels = 0
    for scene_dir in sorted(root.iterdir()):
        summary = json.loads((scene_dir / "pseudo_labels" / "summary.json").read_text())
        vocabulary = read_scene_vocabulary(str(scene_dir))
        assert set(vocabulary) <= {"chair", "table", "wall", "floor", "robot"}
        seen = set()
        for frame_id in ScanNetScene(scene_dir).frame_ids:
            label, entities = read_frame_labels(str(scene_dir), frame_id)
            assert label.shape == (H, W) and label.max() <= len(entities)
            assert sorted(np.unique(label[label > 0]).tolist()) == list(range(1, len(entities) + 1))
            assert summary["frames"][frame_id]["masks"] >= len(entities)  # every named mask has pixels
            assert summary["frames"][frame_id]["labelled_fraction"] == pytest.approx((label > 0).mean(), abs=1e-6)
            labelled_pixels += int((label > 0).sum())
            seen.update(entities)
        assert vocabulary == sorted(seen)
        assert summary["totals"]["vocabulary_size"] == len(vocabulary)
    assert labelled_pixels > 0  # the masks of the random SAM made it through clean-up and naming

    # run again: everything is labelled already, nothing is redone
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert ov3d_train(["label", "--scene", str(root), "--config", str(recipe), "--no-progress"]) == 0
    assert "2 of 2 frames already labelled, 0 to go" in caplog.text


def test_cli_fails_early_with_clear_messages(tmp_path, tiny_sam_checkpoint, tiny_clip, caplog):
    from ov3d_ros.labelling.cli import label_main

    scene_dir = make_scene(tmp_path / "scene", n_frames=1)
    recipe = write_recipe(tmp_path / "label.yaml", tiny_sam_checkpoint, tiny_clip)
    base = ["--scene", str(scene_dir), "--config", str(recipe), "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert label_main(base + ["--sam-checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert "SAM checkpoint not found" in caplog.text and "nope.pth" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert label_main(base + ["--sam-model-type", "vit_b"]) == 2
    assert "does not fit sam.model_type 'vit_b'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert label_main(base + ["--clip-pretrained", str(tmp_path / "clip.bin")]) == 2
    assert "neither a file nor an open_clip tag" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        (tmp_path / "empty").mkdir()
        assert label_main(["--scene", str(tmp_path / "empty"), "--config", str(recipe)]) == 2
    assert "neither a ScanNet-layout scene" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert label_main(base + ["--set", "masks.min_ara=3"]) == 2
    assert "unknown config key 'masks.min_ara'" in caplog.text
    assert not (scene_dir / "pseudo_labels").exists()  # nothing was written by any failed run


def test_modules_import_without_the_heavy_optional_packages():
    import subprocess
    import sys

    # Blocking an import in a fresh interpreter: None in sys.modules makes `import x` raise ImportError.
    script = (
        "import sys\n"
        "for name in ('segment_anything', 'open_clip', 'transformers', 'open3d', 'rosbags', 'rclpy'):\n"
        "    sys.modules[name] = None\n"
        "import ov3d_ros.labelling.vocabulary, ov3d_ros.labelling.masks, ov3d_ros.labelling.naming\n"
        "import ov3d_ros.labelling.pipeline, ov3d_ros.labelling.config, ov3d_ros.labelling.cli\n"
        "from ov3d_ros.labelling.masks import load_sam\n"
        "try:\n"
        "    load_sam('vit_b', None)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install segment-anything" in result.stdout


def write_bag(path, synthetic_frames, storage="sqlite3"):
    """A rosbag2 (sqlite3 or mcap) with rgb8 colour, 32FC1 depth, camera info and PoseStamped camera poses."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types

    def header(t):
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=int(t), nanosec=int(t % 1 * 1e9)),
                                        frame_id="camera_optical_frame")

    def image(t, array, encoding):
        data = np.ascontiguousarray(array).reshape(array.shape[0], -1).view(np.uint8)
        return T["sensor_msgs/msg/Image"](header=header(t), height=array.shape[0], width=array.shape[1],
                                          encoding=encoding, is_bigendian=0, step=data.shape[1], data=data.ravel())

    writer = Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()])
    writer.open()
    conns = {}

    def write(topic, t, msg):
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=ts)
        writer.write(conns[topic], int(t * 1e9), ts.serialize_cdr(msg, msg.__msgtype__))

    from ov3d_ros.geometry import matrix_to_quaternion

    for i, sf in enumerate(synthetic_frames):
        f, t = sf.frame, 10.0 + 0.1 * i
        cam = f.camera
        P = np.hstack([cam.K, np.zeros((3, 1))])
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        write("/camera/color/camera_info", t, T["sensor_msgs/msg/CameraInfo"](
            header=header(t), height=cam.height, width=cam.width, distortion_model="plumb_bob", d=np.zeros(5),
            k=cam.K.ravel(), r=np.eye(3).ravel(), p=P.ravel(), binning_x=0, binning_y=0, roi=roi))
        write("/camera/color/image_raw", t, image(t, f.color, "rgb8"))
        write("/camera/depth/image_raw", t, image(t, f.depth.astype(np.float32), "32FC1"))
        q, p = matrix_to_quaternion(f.T_world_cam[:3, :3]), f.T_world_cam[:3, 3]
        write("/camera_pose", t, T["geometry_msgs/msg/PoseStamped"](header=header(t), pose=T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))))
    writer.close()
    return path


@pytest.mark.parametrize("storage, as_file", [("sqlite3", False), ("mcap", True)])
def test_rosbag_labels_land_where_stage1_reads_them(tmp_path, storage, as_file):
    """The bag given as its folder or as its .mcap file: labels go to the bag folder, and stage 1 finds them."""
    from ov3d_ros.training.config import DEFAULTS
    from ov3d_ros.training.datasets import load_training_scenes

    room = SyntheticRoom.generate(3)
    synthetic = render_sequence(room, n_frames=2, width=W, height=H, noise=False, seed=3)
    folder = write_bag(tmp_path / "recording", synthetic, storage)
    bag = next(folder.glob("*.mcap")) if as_file else folder
    topics = {**DEFAULTS["data"]["rosbag"], "pose_topic": "/camera_pose", "info_topic": "/camera/color/camera_info"}

    class BagOracle(Oracle):  # rgb8 is lossless: the bag's colour images are the rendered ones
        def __init__(self):
            self.maps = {_key(sf.frame.color): (sf.class_map, sf.instance_map) for sf in synthetic}
            self.generated = 0

    oracle = BagOracle()
    labeller = PseudoLabeller(FixedVocabulary(CLASS_NAMES), oracle, oracle, min_area=MIN_AREA)
    assert find_scenes(tmp_path) == [folder]
    summary = label_scene(bag, labeller, progress=False, rosbag_topics=topics)
    assert summary["totals"]["frames"] == 2 and oracle.generated == 2
    assert sorted(summary["frames"]) == ["0", "1"]  # bag frames are named by position
    assert (folder / "pseudo_labels" / "labels" / "1.png").is_file()

    data_cfg = {**DEFAULTS["data"], "pixel_stride": 1, "rosbag": topics}
    scenes, vocab = load_training_scenes([str(bag)], data_cfg, pair_max_gap=1, min_pair_matches=10 ** 9,
                                         match_voxel=0.05, progress=False)
    for sf, frame in zip(synthetic, scenes[0].frames):
        expected = expected_from_maps(sf.class_map, sf.instance_map)
        u, v = frame.partial.pixels[:, 0], frame.partial.pixels[:, 1]
        got = np.array(vocab + [None], dtype=object)[frame.label]
        assert (got == expected[v, u]).all()
        assert (frame.label >= 0).sum() > 100


def test_label_recipes_take_the_trainers_rosbag_keys():
    from ov3d_ros.labelling.config import load_label_config

    config = load_label_config(None, ["rosbag.fixed_frame=odom", "rosbag.pose_topic=/odom", "rosbag.slop=0.03"])
    assert config["rosbag"]["fixed_frame"] == "odom" and config["rosbag"]["slop"] == 0.03
