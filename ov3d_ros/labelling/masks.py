"""Class-agnostic 2D masks: SAM automatic masks, then the clean-up that makes them one entity per pixel.

Clean-up, in order (:func:`clean_masks`):

1. **Segment3D part removal** (:func:`remove_part_masks`): SAM's automatic generator returns wholes *and* their
   parts (a chair and its seat). A mask lying at least ``containment`` (90%) inside a larger mask is dropped, so
   parts never become objects of their own.
2. **Minimum area** (:func:`drop_small_masks`): specks are too small to name reliably from a crop.
3. **Overlap resolution** (:func:`resolve_overlaps`): each pixel keeps exactly one mask. By default the smaller
   mask wins (what overlaps after step 1 is mostly a small object in front of or on a larger surface); a mask whose
   visible remainder falls below the minimum area is then dropped too, and its pixels go to the next mask under
   them.

SAM itself (``segment_anything``) is imported only by :func:`load_sam` / :class:`SamMaskGenerator`; the clean-up is
plain numpy and is what the tests check against hand-made masks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Official SAM image encoders (segment_anything/build_sam.py): used to tell the user which model_type a
# checkpoint belongs to when it does not fit the chosen one.
SAM_ENCODERS = {
    "vit_h": {"embed_dim": 1280, "depth": 32},
    "vit_l": {"embed_dim": 1024, "depth": 24},
    "vit_b": {"embed_dim": 768, "depth": 12},
}
# A custom, freely sized SAM (``model_type: custom``): for tests and small experiments. These defaults describe a
# tiny model that runs the real automatic-mask-generator code path on a 64x64 input in well under a second.
CUSTOM_SAM_DEFAULTS: dict[str, Any] = {
    "img_size": 64,  # square input side the image is resized/padded to (official: 1024)
    "patch_size": 16,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "global_attn_indexes": [1],
    "window_size": 2,
    "prompt_embed_dim": 32,  # official: 256
    "mask_in_chans": 4,
    "decoder_depth": 2,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}


@dataclass
class MaskSet:
    """K binary masks over one (H, W) image and a quality score per mask (SAM's predicted IoU; 1.0 if unknown)."""

    masks: np.ndarray  # (K, H, W) bool
    scores: np.ndarray  # (K,) float32

    def __post_init__(self):
        self.masks = np.asarray(self.masks)
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (K, H, W), got shape {self.masks.shape}")
        if self.masks.dtype != bool:
            raise TypeError(f"masks must be bool, got {self.masks.dtype}")
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.scores) != len(self.masks):
            raise ValueError(f"{len(self.masks)} masks but {len(self.scores)} scores")

    @classmethod
    def empty(cls, height: int, width: int) -> "MaskSet":
        return cls(np.zeros((0, height, width), bool), np.zeros(0, np.float32))

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def areas(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).sum(1).astype(np.int64)

    def select(self, keep: np.ndarray) -> "MaskSet":
        return MaskSet(self.masks[keep], self.scores[keep])

    def __len__(self) -> int:
        return len(self.masks)


def _as_mask_stack(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be a (K, H, W) array, got shape {masks.shape}")
    if masks.dtype != bool:
        raise TypeError(f"masks must be bool, got {masks.dtype}")
    return masks


def intersection_counts(masks: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """(K, K) int64 matrix of pixel counts in both mask i and mask j (the diagonal holds the areas).

    Computed as a matrix product over pixel chunks so K=200 masks at 640x480 never hold a (K, H*W) float copy.
    float32 counts are exact below 2^24 pixels per chunk.
    """
    masks = _as_mask_stack(masks)
    k = len(masks)
    flat = masks.reshape(k, -1)
    counts = np.zeros((k, k), np.int64)
    for start in range(0, flat.shape[1], chunk):
        block = flat[:, start:start + chunk].astype(np.float32)
        counts += np.rint(block @ block.T).astype(np.int64)
    return counts


def remove_part_masks(masks: np.ndarray, scores: np.ndarray | None = None, containment: float = 0.9) -> np.ndarray:
    """Segment3D clean-up: keep-flags (K,) bool that drop every mask lying >= ``containment`` inside a larger mask.

    "Inside" is |i and j| / |i|. "Larger" is by area; equal areas are ordered by score, then by index (the earlier
    mask counts as larger), so of two near-identical masks exactly one survives. Every larger mask counts, dropped
    or not, which keeps the result independent of processing order. Empty masks are dropped.
    """
    masks = _as_mask_stack(masks)
    if not 0.0 < containment <= 1.0:
        raise ValueError(f"containment must be in (0, 1], got {containment}")
    k = len(masks)
    if k == 0:
        return np.zeros(0, bool)
    scores = np.zeros(k, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
    if len(scores) != k:
        raise ValueError(f"{k} masks but {len(scores)} scores")
    inter = intersection_counts(masks)
    area = np.diag(inter).astype(np.float64)
    index = np.arange(k)
    # larger[i, j]: mask j ranks above mask i (area, then score, then lower index)
    larger = (area[None, :] > area[:, None]) | (
        (area[None, :] == area[:, None]) & ((scores[None, :] > scores[:, None]) |
                                            ((scores[None, :] == scores[:, None]) & (index[None, :] < index[:, None]))))
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = inter / area[:, None]
    is_part = ((inside >= containment) & larger).any(axis=1)
    return (area > 0) & ~is_part


def drop_small_masks(masks: np.ndarray, min_area: int) -> np.ndarray:
    """Keep-flags (K,) bool for masks with at least ``min_area`` pixels (and at least one)."""
    masks = _as_mask_stack(masks)
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    return masks.reshape(len(masks), -1).sum(1) >= max(int(min_area), 1)


def resolve_overlaps(masks: np.ndarray, scores: np.ndarray | None = None, priority: str = "smaller") -> np.ndarray:
    """(H, W) int32 map: the index of the one mask each pixel belongs to, -1 where no mask covers it.

    ``priority="smaller"``: where masks overlap the smaller one wins (ties: higher score, then lower index).
    ``priority="score"``: the higher-scoring mask wins (ties: smaller, then lower index).
    """
    masks = _as_mask_stack(masks)
    k, h, w = masks.shape
    index_map = np.full((h, w), -1, np.int32)
    if k == 0:
        return index_map
    scores = np.zeros(k, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
    if len(scores) != k:
        raise ValueError(f"{k} masks but {len(scores)} scores")
    area = masks.reshape(k, -1).sum(1)
    index = np.arange(k)
    if priority == "smaller":
        winner_first = np.lexsort((index, -scores, area))
    elif priority == "score":
        winner_first = np.lexsort((index, area, -scores))
    else:
        raise ValueError(f"overlap priority must be 'smaller' or 'score', got {priority!r}")
    # Paint the lowest-priority mask first so every winner overwrites it.
    for i in winner_first[::-1]:
        index_map[masks[i]] = i
    return index_map


def clean_masks(mask_set: MaskSet, *, containment: float = 0.9, min_area: int = 100,
                priority: str = "smaller") -> tuple[MaskSet, np.ndarray]:
    """Part removal, minimum area, overlap resolution. Returns the surviving masks as their *visible* (disjoint)
    regions and the (H, W) int32 index map into them (-1 = no mask). Masks keep SAM's order among themselves."""
    h, w = mask_set.shape
    if len(mask_set) == 0:
        return MaskSet.empty(h, w), np.full((h, w), -1, np.int32)
    keep = remove_part_masks(mask_set.masks, mask_set.scores, containment)
    keep &= drop_small_masks(mask_set.masks, min_area)
    kept = mask_set.select(keep)
    while True:
        index_map = resolve_overlaps(kept.masks, kept.scores, priority)
        # A mask mostly covered by smaller ones may keep only a sliver, no better than a speck: drop it and let
        # the next mask under those pixels have them (hence resolve again until nothing changes).
        visible_area = np.bincount(index_map[index_map >= 0].ravel(), minlength=len(kept))
        slivers = visible_area < max(int(min_area), 1)
        if not slivers.any():
            break
        kept = kept.select(~slivers)
    visible = index_map[None, :, :] == np.arange(len(kept), dtype=np.int32)[:, None, None]
    return MaskSet(visible, kept.scores), index_map


# ----------------------------------------------------------------------------------------------------------------
# SAM loading and automatic masks


def _require_segment_anything():
    try:
        import segment_anything  # noqa: F401
    except ImportError as exc:
        raise ImportError("SAM masks need segment-anything: pip install segment-anything "
                          "(and torchvision matching your torch)") from exc
    return segment_anything


def _build_custom_sam(arch: dict):
    """A SAM of any size, assembled from segment_anything.modeling the way the official builders do."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    unknown = set(arch) - set(CUSTOM_SAM_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown sam.custom keys: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(CUSTOM_SAM_DEFAULTS)})")
    a = {**CUSTOM_SAM_DEFAULTS, **arch}
    if a["img_size"] % a["patch_size"]:
        raise ValueError(f"sam.custom.img_size ({a['img_size']}) must be a multiple of patch_size ({a['patch_size']})")
    grid = a["img_size"] // a["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a["depth"], embed_dim=a["embed_dim"], img_size=a["img_size"], mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=a["num_heads"], patch_size=a["patch_size"],
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(a["global_attn_indexes"]),
            window_size=a["window_size"], out_chans=a["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a["prompt_embed_dim"], image_embedding_size=(grid, grid),
            input_image_size=(a["img_size"], a["img_size"]), mask_in_chans=a["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=a["decoder_depth"], embedding_dim=a["prompt_embed_dim"],
                                          mlp_dim=a["decoder_mlp_dim"], num_heads=a["decoder_num_heads"]),
            transformer_dim=a["prompt_embed_dim"], iou_head_depth=3, iou_head_hidden_dim=a["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _read_state_dict(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip or weights_only errors all mean "not a plain tensor checkpoint"
        raise ValueError(f"SAM checkpoint {path} could not be read as a PyTorch state dict: {exc}") from exc
    # Some re-saved checkpoints wrap the weights ({"model": sd} / {"state_dict": sd}).
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 3:
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"SAM checkpoint {path} does not hold a state dict of tensors")
    return state


def describe_sam_checkpoint(state_dict: dict) -> str:
    """What kind of SAM a state dict holds, in words (for error messages)."""
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        return "no SAM image encoder (key image_encoder.patch_embed.proj.weight is missing)"
    blocks = {k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")}
    embed_dim, depth = int(patch.shape[0]), len(blocks)
    match = [name for name, enc in SAM_ENCODERS.items() if enc == {"embed_dim": embed_dim, "depth": depth}]
    kind = f"model_type '{match[0]}'" if match else "a custom size"
    return f"a ViT image encoder with embed_dim {embed_dim} and {depth} blocks ({kind})"


def load_sam(model_type: str, checkpoint: str | Path | None, *, device: str = "cpu", custom: dict | None = None,
             allow_random_weights: bool = False):
    """Build SAM of ``model_type`` (vit_h | vit_l | vit_b | custom) and load ``checkpoint`` into it.

    Fails before the (large) model is built when the checkpoint file is missing or holds another encoder size, and
    names the model_type it does hold. ``checkpoint=None`` gives random weights, allowed only with
    ``allow_random_weights`` (benchmarks): random masks are not pseudo labels.
    """
    _require_segment_anything()  # before torch: a missing package is reported at once
    import torch
    from segment_anything import sam_model_registry

    if model_type not in (*SAM_ENCODERS, "custom"):
        raise ValueError(f"sam.model_type must be one of {', '.join([*SAM_ENCODERS, 'custom'])}, got {model_type!r}")
    state_dict = None
    if checkpoint is None or str(checkpoint) == "":
        if not allow_random_weights:
            raise ValueError("sam.checkpoint is not set: download a SAM checkpoint (e.g. sam_vit_h_4b8939.pth from "
                             "the segment-anything release) and set sam.checkpoint / --sam-checkpoint to its path")
        log.warning("SAM has RANDOM weights (no checkpoint): masks are meaningless; use this for timing only")
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint not found: {path} (set sam.checkpoint or --sam-checkpoint)")
        state_dict = _read_state_dict(path)
        if model_type in SAM_ENCODERS:
            # Cheap check on the encoder size first: building vit_h just to find a vit_b checkpoint takes long.
            patch = state_dict.get("image_encoder.patch_embed.proj.weight")
            blocks = {k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")}
            expected = SAM_ENCODERS[model_type]
            if patch is None or int(patch.shape[0]) != expected["embed_dim"] or len(blocks) != expected["depth"]:
                raise ValueError(f"SAM checkpoint {path} does not fit sam.model_type '{model_type}' (embed_dim "
                                 f"{expected['embed_dim']}, {expected['depth']} blocks): it holds "
                                 f"{describe_sam_checkpoint(state_dict)}")
    sam = sam_model_registry[model_type](checkpoint=None) if model_type in SAM_ENCODERS else \
        _build_custom_sam(custom or {})
    if state_dict is not None:
        expected_sd = sam.state_dict()
        missing = sorted(set(expected_sd) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected_sd))
        wrong_shape = [k for k in expected_sd if k in state_dict and state_dict[k].shape != expected_sd[k].shape]
        if missing or unexpected or wrong_shape:
            details = []
            if missing:
                details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
            if unexpected:
                details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
            if wrong_shape:
                k = wrong_shape[0]
                details.append(f"{len(wrong_shape)} shape mismatches (e.g. {k}: checkpoint "
                               f"{tuple(state_dict[k].shape)} vs model {tuple(expected_sd[k].shape)})")
            raise ValueError(f"SAM checkpoint {checkpoint} does not fit sam.model_type '{model_type}': "
                             f"{'; '.join(details)}; the checkpoint holds {describe_sam_checkpoint(state_dict)}")
        sam.load_state_dict(state_dict)
    return sam.to(torch.device(device)).eval()


class SamMaskGenerator:
    """SAM's automatic mask generator returning a :class:`MaskSet` (binary masks, predicted-IoU scores).

    The thresholds are SamAutomaticMaskGenerator's (defaults tuned by its authors for vit_h). Small-region
    post-processing (``min_mask_region_area``) needs OpenCV and is left off by default; the clean-up's minimum area
    does that job on whole masks.
    """

    def __init__(self, sam, *, points_per_side: int = 32, points_per_batch: int = 64, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 min_mask_region_area: int = 0):
        _require_segment_anything()
        from segment_anything import SamAutomaticMaskGenerator

        if points_per_side < 1 or points_per_batch < 1:
            raise ValueError(f"points_per_side and points_per_batch must be >= 1, got {points_per_side}, "
                             f"{points_per_batch}")
        self.sam = sam
        self.generator = SamAutomaticMaskGenerator(
            sam, points_per_side=int(points_per_side), points_per_batch=int(points_per_batch),
            pred_iou_thresh=float(pred_iou_thresh), stability_score_thresh=float(stability_score_thresh),
            box_nms_thresh=float(box_nms_thresh), crop_n_layers=int(crop_n_layers),
            min_mask_region_area=int(min_mask_region_area), output_mode="binary_mask",
        )

    def generate(self, image: np.ndarray) -> MaskSet:
        image = check_rgb_image(image)
        records = self.generator.generate(image)
        h, w = image.shape[:2]
        if not records:
            return MaskSet.empty(h, w)
        masks = np.stack([np.asarray(r["segmentation"], bool) for r in records])
        scores = np.array([r["predicted_iou"] for r in records], np.float32)
        return MaskSet(masks, scores)


def check_rgb_image(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array, or a TypeError/ValueError saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 RGB, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def build_mask_generator(sam_cfg: dict, *, device: str = "cpu", allow_random_weights: bool = False
                         ) -> SamMaskGenerator:
    """Load SAM and wrap it in the automatic mask generator from the ``sam`` config section."""
    sam = load_sam(sam_cfg.get("model_type", "vit_h"), sam_cfg.get("checkpoint"), device=device,
                   custom=sam_cfg.get("custom"), allow_random_weights=allow_random_weights)
    return SamMaskGenerator(
        sam, points_per_side=sam_cfg.get("points_per_side", 32), points_per_batch=sam_cfg.get("points_per_batch", 64),
        pred_iou_thresh=sam_cfg.get("pred_iou_thresh", 0.88),
        stability_score_thresh=sam_cfg.get("stability_score_thresh", 0.95),
        box_nms_thresh=sam_cfg.get("box_nms_thresh", 0.7), crop_n_layers=sam_cfg.get("crop_n_layers", 0),
        min_mask_region_area=sam_cfg.get("min_mask_region_area", 0),
    )
