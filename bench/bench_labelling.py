#!/usr/bin/env python
"""Time one frame of the 2D pseudo-labelling pipeline with random weights: SAM vit_b + CLIP ViT-B-32.

Random weights make the timing, not the labels, meaningful. Random SAM scores fail SAM's own quality filters, so
they are switched off; even then a random SAM returns only a few distinct masks, so the clean-up and CLIP naming
are timed on --masks masks made here (random rectangles, as many as a real SAM gives on a ScanNet frame: roughly
50-150 at 640x480) plus SAM's own.

    python bench/bench_labelling.py                       # 640x480 on the GPU when present
    python bench/bench_labelling.py --size 320x240 --points-per-side 16 --repeats 1   # a quicker CPU run

Prints per-stage seconds (median over --repeats after one warm-up frame, which also embeds the vocabulary).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="frame WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--sam-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--clip-model", default="ViT-B-32")
    parser.add_argument("--points-per-side", type=int, default=32, help="SAM prompt grid (default 32 = 1024 points)")
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--masks", type=int, default=100, help="masks made per frame for clean-up and naming")
    parser.add_argument("--repeats", type=int, default=3, help="timed frames after the warm-up frame")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()

    import torch

    from ov3d_ros.labelling.masks import MaskSet, SamMaskGenerator, clean_masks, load_sam
    from ov3d_ros.labelling.naming import ClipEmbedder, MaskNamer
    from ov3d_ros.labelling.pipeline import compose_label_image, resolve_device
    from ov3d_ros.labelling.vocabulary import FixedVocabulary, builtin_vocabulary

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    width, height = args.size
    t0 = time.perf_counter()
    sam = load_sam(args.sam_type, None, device=device, allow_random_weights=True)
    generator = SamMaskGenerator(sam, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                                 pred_iou_thresh=0.0, stability_score_thresh=0.0)
    namer = MaskNamer(ClipEmbedder(args.clip_model, None, device=device, allow_random_weights=True),
                      min_similarity=-1.0, min_margin=0.0)
    vocabulary = FixedVocabulary(builtin_vocabulary("scannet200"))
    load_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    # A frame with structure (flat regions and edges) rather than pure noise; content does not matter here.
    image = np.zeros((height, width, 3), np.uint8)
    for _ in range(12):
        r0, c0 = rng.integers(0, height - 8), rng.integers(0, width - 8)
        image[r0:r0 + rng.integers(8, height // 2), c0:c0 + rng.integers(8, width // 2)] = rng.integers(0, 256, 3)

    # Rectangles of 0.5-15% of the frame: after part removal and overlap resolution most of them survive.
    extra_masks = np.zeros((args.masks, height, width), bool)
    for k in range(args.masks):
        h, w = rng.integers(height // 12, height // 3), rng.integers(width // 12, width // 3)
        r0, c0 = rng.integers(0, height - h), rng.integers(0, width - w)
        extra_masks[k, r0:r0 + h, c0:c0 + w] = True
    extra_scores = rng.uniform(0.5, 1.0, args.masks).astype(np.float32)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def one_frame() -> dict:
        times = {}
        t = time.perf_counter()
        vocab = vocabulary.vocabulary(image)
        times["vocabulary"] = time.perf_counter() - t
        t = time.perf_counter()
        raw = generator.generate(image)
        sync()
        times["sam_masks"] = time.perf_counter() - t
        raw = MaskSet(np.concatenate([raw.masks, extra_masks]), np.concatenate([raw.scores, extra_scores]))
        t = time.perf_counter()
        cleaned, index_map = clean_masks(raw, containment=0.9, min_area=100)
        times["cleanup"] = time.perf_counter() - t
        t = time.perf_counter()
        names = namer.name(image, cleaned.masks, vocab)
        sync()
        times["clip_naming"] = time.perf_counter() - t
        compose_label_image(index_map, names, vocab)
        times["total"] = sum(times.values())
        times["masks_raw"], times["masks_clean"] = len(raw), len(cleaned)
        return times

    warm = one_frame()
    runs = [one_frame() for _ in range(max(args.repeats, 0))] or [warm]
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"labelling bench: {width}x{height}, SAM {args.sam_type} ({args.points_per_side}^2 points), CLIP "
          f"{args.clip_model}, ScanNet200 vocabulary, random weights, device {name}")
    print(f"  model load: {load_s:.2f} s; warm-up frame (embeds the vocabulary): {warm['total']:.3f} s")
    print(f"  masks per frame: {runs[-1]['masks_raw']} into clean-up ({runs[-1]['masks_raw'] - args.masks} from SAM), "
          f"{runs[-1]['masks_clean']} named after it")
    for key in ("vocabulary", "sam_masks", "cleanup", "clip_naming", "total"):
        print(f"  {key:<12} {statistics.median(r[key] for r in runs):8.3f} s/frame (median of {len(runs)})")


if __name__ == "__main__":
    main()
