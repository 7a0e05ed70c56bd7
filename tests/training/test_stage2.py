"""Stage-2 pseudo labelling on hand-built cases: a model whose features are known exactly, so the expected labels
can be written down."""
from types import SimpleNamespace

import numpy as np
import torch

from ov3d_ros.training.stage2 import pseudo_label_scene

# Three orthonormal "text embeddings": 0 = floor, 1 = cabinet, 2 = wall.
TEXT = torch.eye(3)


class HandBuiltModel(torch.nn.Module):
    """Features from the point's x coordinate: x < 0 looks like a floor that leans slightly to cabinet, x >= 0 is
    a plain cabinet. Rotation about gravity is ignored by turning it off in the recipe."""

    def forward(self, xyz: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        floorish = torch.tensor([0.9, 0.3, 0.0])
        cabinet = torch.tensor([0.0, 1.0, 0.0])
        feats = torch.where((xyz[:, :1] < 0), floorish, cabinet)
        return torch.nn.functional.normalize(feats, dim=1)

    def logit_scale_value(self) -> float:
        return 10.0


def _label(guard: bool, vocab_ids) -> np.ndarray:
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.uniform([-2, 0, 0], [-0.1, 2, 0.01], (400, 3)),
                          rng.uniform([0.1, 0, 0.3], [2, 2, 1.0], (400, 3))]).astype(np.float32)
    rgb = np.full((len(xyz), 3), 128, dtype=np.uint8)
    ctx = SimpleNamespace(model=HandBuiltModel(), device=torch.device("cpu"))
    s2 = {"rotate_passes": False, "grid_voxel": 0.2, "coverage": 2, "max_passes": 20, "confidence": 0.6,
          "class_top_fraction": 0.0, "vocabulary_guard": guard}
    scene = pseudo_label_scene(ctx, "hand", xyz, rgb, np.asarray(vocab_ids), TEXT, s2, np.random.default_rng(1))
    return scene.label


def test_vocabulary_guard_leaves_out_what_the_scene_never_named():
    """The scene's images named cabinet and wall but never the floor. Over the scene vocabulary the floor points'
    best class is cabinet, with probability sigmoid(10 * 0.32) = 0.96, well over the bar. The guard sees that their
    best class over the whole vocabulary is floor, which the scene lacks, and leaves them unlabelled; the cabinet
    points keep their label."""
    floor, cabinet = slice(0, 400), slice(400, 800)
    plain = _label(False, [1, 2])
    assert (plain[floor] == 1).all() and (plain[cabinet] == 1).all()
    guarded = _label(True, [1, 2])
    assert (guarded[floor] == -1).all() and (guarded[cabinet] == 1).all()


def test_vocabulary_guard_changes_nothing_when_every_best_class_is_named():
    """The scene names floor and cabinet (not wall): every point's best class is in the scene vocabulary, so the
    guard leaves out nothing and the labels equal the plain ones."""
    plain = _label(False, [0, 1])
    guarded = _label(True, [0, 1])
    np.testing.assert_array_equal(plain, guarded)
    assert (plain[:400] == 0).all() and (plain[400:] == 1).all()
