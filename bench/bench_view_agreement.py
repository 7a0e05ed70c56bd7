#!/usr/bin/env python3
"""How far a model's features already agree between overlapping frames: the room the consistency term has to act.

    .venv/bin/python bench/bench_view_agreement.py --checkpoint runs/figures/seed1/cons_off/stage1/model.pt \
        runs/figures/seed1/cons_on/stage1/model.pt --set data.root=runs/figures/data --max-gap 6

Loads the training scenes of --config, finds their frame pairs up to --max-gap frames apart (stage 1's matching:
matching.match_points on stage1.match_voxel, at least stage1.min_pair_matches points), runs every frame through each
checkpoint on its own, and prints per gap:

  - the mean cosine between the features of matched points: 1 - this is L_cons on those pairs;
  - the share of matched points whose best class over the scene's vocabulary is the same in both frames;
  - the cosine on object points only (the frame's pseudo label is neither of the two most common classes).

With --augment each frame first gets stage 1's augmentation, drawn independently, as in training. Agreement near 1
without the term means the frames give the network the same evidence, and L_cons has little to correct: then a
gain from consistency has to come from data whose views really differ (pose noise, exposure, occlusion).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, nargs="+", help="checkpoints to compare, side by side")
    parser.add_argument("--config", default="training/demo.yaml", help="recipe giving the training scenes")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-gap", type=int, default=6, help="pairs at most this many frames apart")
    parser.add_argument("--augment", action="store_true", help="augment each frame as stage 1 does")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.max_gap < 1:
        parser.error("--max-gap must be >= 1")
    logging.basicConfig(level=logging.WARNING)

    import torch
    import torch.nn.functional as F

    from ov3d_ros.training import pipeline
    from ov3d_ros.training.augment import augment_points
    from ov3d_ros.training.common import TrainingContext
    from ov3d_ros.training.config import load_config
    from ov3d_ros.training.losses import label_counts

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides + ["workers=1", f"stage1.pair_max_gap={args.max_gap}"])
    train, _ = pipeline.resolve_scenes(cfg, progress=False)
    scenes, vocabulary = pipeline.load_train_data(cfg, train, progress=False)
    counts = label_counts((frame.label for scene in scenes for frame in scene.frames), len(vocabulary))
    background = set(np.argsort(counts)[-2:].tolist())
    print(f"{sum(len(s.pairs) for s in scenes)} pairs in {len(scenes)} scenes; object points: every class but "
          f"{', '.join(vocabulary[c] for c in sorted(background))}")

    text_encoder = None
    for path in args.checkpoint:
        ctx = TrainingContext.from_checkpoint(cfg, path, text_encoder=text_encoder)
        text_encoder = ctx.text_encoder
        ctx.model.eval()
        text = ctx.embed(vocabulary)
        rng = np.random.default_rng(args.seed)
        per_gap: dict[int, list[np.ndarray]] = {}
        with torch.no_grad():
            for scene in scenes:
                features: dict[int, torch.Tensor] = {}

                def point_features(i: int) -> torch.Tensor:
                    if i not in features:
                        frame = scene.frames[i]
                        xyz, rgb = frame.xyz, frame.rgb
                        if args.augment:
                            xyz, rgb, _ = augment_points(xyz, rgb, rng, cfg["stage1"]["augment"])
                        vox = ctx.model.voxelize(torch.from_numpy(np.asarray(xyz, np.float32)),
                                                 torch.from_numpy(np.asarray(rgb)),
                                                 torch.zeros(len(xyz), dtype=torch.long))
                        features[i] = F.normalize(ctx.model.encode_voxels(vox).float(), dim=1)[vox.inverse]
                    return features[i]

                ids = torch.as_tensor(scene.vocab_ids)
                for pair in scene.pairs:
                    fa = point_features(pair.a)[torch.from_numpy(pair.ia)]
                    fb = point_features(pair.b)[torch.from_numpy(pair.ib)]
                    cos = (fa * fb).sum(1).numpy()
                    same = ((fa @ text[ids].T).argmax(1) == (fb @ text[ids].T).argmax(1)).numpy()
                    label = scene.frames[pair.a].label[pair.ia]
                    obj = (label >= 0) & ~np.isin(label, list(background))
                    gap = abs(scene.frames[pair.a].index - scene.frames[pair.b].index)
                    per_gap.setdefault(gap, []).append(np.array([cos.mean(), same.mean(),
                                                                 cos[obj].mean() if obj.any() else np.nan]))
        print(f"\n{path}{' (augmented)' if args.augment else ''}")
        print(f"{'gap':>4} {'pairs':>6} {'cos':>7} {'same class':>11} {'cos objects':>12}")
        for gap in sorted(per_gap):
            rows = np.stack(per_gap[gap])
            print(f"{gap:4d} {len(rows):6d} {rows[:, 0].mean():7.3f} {100 * rows[:, 1].mean():10.1f}% "
                  f"{np.nanmean(rows[:, 2]):12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
