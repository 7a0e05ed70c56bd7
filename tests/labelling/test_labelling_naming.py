"""Mask naming: the decision rule on a stub embedding space built here (fixed vectors per text and per crop colour),
crops, and the real open_clip embedder on a tiny random-weight model saved by conftest.py."""
import numpy as np
import pytest

from ov3d_ros.labelling.naming import CLIP_MEAN_RGB, MaskNamer, assign_names, masked_crop

# The stub space: each text is a fixed unit vector; "stool" lies almost on "chair" (cosine 0.995).
TEXT_VECTORS = {
    "chair": [1.0, 0.0, 0.0],
    "table": [0.0, 1.0, 0.0],
    "lamp": [0.0, 0.0, 1.0],
    "stool": [0.995, 0.0998749, 0.0],
}
# A crop is embedded by the colour at its centre (every test mask is a rectangle, centred in its square crop).
COLOUR_VECTORS = {
    (255, 0, 0): [1.0, 0.0, 0.0],  # red things look like chairs
    (0, 255, 0): [0.0, 1.0, 0.0],  # green things like tables
    (0, 0, 255): [0.7071, 0.7071, 0.0],  # blue things exactly between chair and table
    (255, 255, 255): [0.0, 0.1, 0.05],  # white things like nothing much
}


class StubEmbedder:
    def __init__(self):
        self.text_calls = []

    def encode_images(self, crops):
        out = []
        for crop in crops:
            h, w = crop.shape[:2]
            out.append(COLOUR_VECTORS[tuple(int(c) for c in crop[h // 2, w // 2])])
        return np.array(out, np.float32).reshape(-1, 3)

    def encode_texts(self, texts):
        self.text_calls.append(list(texts))
        return np.array([TEXT_VECTORS[t] for t in texts], np.float32)


def scene():
    image = np.zeros((40, 60, 3), np.uint8)
    masks = np.zeros((4, 40, 60), bool)
    for k, (colour, (r0, c0)) in enumerate(zip(COLOUR_VECTORS, [(2, 2), (2, 30), (22, 2), (22, 30)])):
        image[r0:r0 + 12, c0:c0 + 20] = colour
        masks[k, r0:r0 + 12, c0:c0 + 20] = True
    return image, masks


def test_assign_names_thresholds():
    similarity = np.array([[0.9, 0.1, 0.0],
                           [0.5, 0.495, 0.0],  # margin 0.005: ambiguous
                           [0.1, 0.15, 0.12],  # best 0.15 < 0.2: too low
                           [0.3, 0.29, 0.0]])  # margin exactly 0.01: accepted (thresholds are inclusive)
    names = assign_names(similarity, min_similarity=0.2, min_margin=0.01 - 1e-6)
    assert names.entity.tolist() == [0, -1, -1, 0]
    np.testing.assert_allclose(names.score, [0.9, 0.5, 0.15, 0.3], atol=1e-6)
    np.testing.assert_allclose(names.margin, [0.8, 0.005, 0.03, 0.01], atol=1e-6)
    assert names.texts(["chair", "table", "lamp"]) == ["chair", None, None, "chair"]


def test_single_text_has_no_runner_up():
    names = assign_names(np.array([[0.3], [0.1]]), min_similarity=0.2, min_margin=0.5)
    assert names.entity.tolist() == [0, -1] and np.isinf(names.margin).all()


def test_assign_names_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        assign_names(np.array([[np.nan, 0.1]]), min_similarity=0.0, min_margin=0.0)


def test_namer_on_stub_space():
    image, masks = scene()
    namer = MaskNamer(StubEmbedder(), min_similarity=0.2, min_margin=0.01, crop_padding=0.1)
    names = namer.name(image, masks, ["chair", "table", "lamp"])
    # red -> chair, green -> table, blue: equally chair and table (margin 0) -> unlabelled,
    # white: normalised [0, .894, .447] -> table 0.894 beats lamp 0.447 -> table
    assert names.texts(["chair", "table", "lamp"]) == ["chair", "table", None, "table"]
    np.testing.assert_allclose(names.margin[2], 0.0, atol=1e-4)


def test_low_margin_leaves_mask_unlabelled():
    image, masks = scene()
    namer = MaskNamer(StubEmbedder(), min_similarity=0.2, min_margin=0.01)
    # "stool" is a near-synonym of "chair" in this space: the red crop fits both (1.0 vs 0.995)
    names = namer.name(image, masks[:1], ["chair", "stool"])
    assert names.entity.tolist() == [-1]
    np.testing.assert_allclose(names.margin, [0.005], atol=1e-4)
    # without the near-synonym the same crop is named
    assert namer.name(image, masks[:1], ["chair", "lamp"]).entity.tolist() == [0]
    # and a margin threshold of zero takes the best even when it is a near tie
    assert MaskNamer(StubEmbedder(), min_margin=0.0).name(image, masks[:1], ["stool", "chair"]).entity.tolist() == [1]


def test_name_batch_embeds_each_text_once_and_keeps_frames_apart():
    image, masks = scene()
    embedder = StubEmbedder()
    namer = MaskNamer(embedder, min_similarity=0.2, min_margin=0.01)
    results = namer.name_batch([(image, masks[:2], ["chair", "table"]),
                                (image, masks[:0], ["lamp"]),  # a frame without masks
                                (image, masks[1:2], ["table", "lamp", "chair"])])
    assert embedder.text_calls == [["chair", "table", "lamp"]]
    assert [r.entity.tolist() for r in results] == [[0, 1], [], [0]]


def test_masked_crop_is_square_padded_and_greyed():
    image = np.full((20, 30, 3), 9, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:20] = True  # 4 x 10 box
    crop = masked_crop(image, mask, padding=0.1)  # pad = 1 px each side -> 6 x 12, squared to 12 x 12
    assert crop.shape == (12, 12, 3) and crop.dtype == np.uint8
    inside = crop[3 + 1:3 + 5, 1:11]  # rows offset by (12 - 6) // 2 = 3, then the 1 px pad
    assert (inside == 9).all()
    assert (crop[0] == CLIP_MEAN_RGB).all() and (crop[3, 0] == CLIP_MEAN_RGB).all()  # square pad and masked pad
    kept = masked_crop(image, mask, padding=0.1, mask_background=False)
    assert (kept[3:9] == 9).all()  # the padding ring keeps its real pixels
    with pytest.raises(ValueError, match="empty mask"):
        masked_crop(image, np.zeros((20, 30), bool))
    with pytest.raises(ValueError, match="does not match"):
        masked_crop(image, np.zeros((10, 30), bool))


# ---------------------------------------------------------------------------------------------------------------
# open_clip


def test_clip_embedder_loads_local_checkpoint(tiny_clip):
    import open_clip
    import torch

    from ov3d_ros.labelling.naming import ClipEmbedder

    torch.set_num_threads(1)
    name, path = tiny_clip
    embedder = ClipEmbedder(name, str(path), templates=["a photo of a {}."])
    saved = torch.load(path, weights_only=True)
    torch.testing.assert_close(embedder.model.state_dict()["text_projection"], saved["text_projection"])
    texts = embedder.encode_texts(["chair", "table", "chair"])
    assert texts.shape == (3, 32) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(texts[0], texts[2])
    # the cached text embedding is what the model gives for the prompt
    reference = open_clip.create_model(name, pretrained=str(path)).eval()
    with torch.no_grad():
        expected = reference.encode_text(open_clip.get_tokenizer(name)(["a photo of a chair."]), normalize=True)
    np.testing.assert_allclose(texts[0], expected[0].numpy(), atol=1e-5)
    crops = [np.full((50, 50, 3), v, np.uint8) for v in (0, 128, 255)]
    images = embedder.encode_images(crops)
    assert images.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)


def test_clip_checkpoint_errors(tiny_clip, tmp_path):
    from ov3d_ros.labelling.naming import ClipEmbedder

    name, path = tiny_clip
    with pytest.raises(FileNotFoundError, match="neither a file nor an open_clip tag"):
        ClipEmbedder(name, str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match="does not fit open_clip model 'ov3d-test-tiny-clip-wide'"):
        ClipEmbedder("ov3d-test-tiny-clip-wide", str(path))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipEmbedder("ViT-Nope-99", str(path))
    with pytest.raises(ValueError, match="naming.pretrained is not set"):
        ClipEmbedder(name, None)
    with pytest.raises(ValueError, match="templates"):
        ClipEmbedder(name, str(path), templates=["no placeholder"])
