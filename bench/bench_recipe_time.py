#!/usr/bin/env python3
"""How long a training recipe takes on this machine: the wall time of a stage-1 and a stage-2 optimiser step at the
recipe's settings (preset, voxel, batch, pixel stride, depth range), and the recipe's steps extrapolated from them.

    .venv/bin/python bench/bench_recipe_time.py                                   # training/scannet.yaml
    .venv/bin/python bench/bench_recipe_time.py --steps 20 --set stage1.frames_per_step=4   # per worker of 8 GPUs

The frames are synthetic rooms rendered at --size (ScanNet's depth is 640x480), written in the ScanNet layout with
their true labels as pseudo labels: a step's cost depends on the points and voxels, not on where they come from.
Without the recipe's text-encoder weights on this machine, the offline MiniLM stands in (the model's embed_dim
follows it: the last layer is a little smaller). Each stage runs one step first (start-up, kernels), then --steps
more, resumed from it; the figure is the mean of those. Prints seconds a step, peak GPU memory on CUDA, and hours.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "training" / "scannet.yaml"), help="training recipe")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, as ov3d-train --set")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per stage after the first (default 4)")
    parser.add_argument("--size", default="640x480", help="rendered frame size (default 640x480)")
    parser.add_argument("--rooms", type=int, default=2, help="synthetic rooms (default 2)")
    parser.add_argument("--frames", type=int, default=16, help="frames per room (default 16)")
    args = parser.parse_args()

    import torch

    from ov3d_ros.text import build_text_encoder
    from ov3d_ros.training import pipeline
    from ov3d_ros.training.config import load_config

    recipe = load_config(args.config, args.overrides)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="ov3d_recipe_time_") as tmp:
        spec = recipe["text_encoder"]
        try:
            if spec.get("kind") == "open_clip" and not spec.get("pretrained"):
                raise ValueError("text_encoder.pretrained is not set")
            encoder = build_text_encoder(spec)
        except (ValueError, OSError, RuntimeError) as exc:
            print(f"text encoder {spec} not available here ({exc}); the offline MiniLM stands in")
            encoder = build_text_encoder(None)
        sets = args.overrides + [
            f"output_dir={tmp}", "data.kind=synthetic", "data.train=[]", "data.val=[]", "data.frame_stride=1",
            f"data.synthetic.train_seeds={list(range(args.rooms))}", "data.synthetic.val_seeds=[]",
            f"data.synthetic.n_frames={args.frames}", f"data.synthetic.width={width}",
            f"data.synthetic.height={height}", "stage1.checkpoint_every=1", "stage2.checkpoint_every=1",
            "stage2.replicas=1"]
        cfg = load_config(args.config, sets)
        train, _ = pipeline.prepare_synthetic(cfg, progress=False)
        scenes, vocabulary = pipeline.load_train_data(cfg, train, progress=False)
        points = sum(len(f) for s in scenes for f in s.frames) / sum(len(s.frames) for s in scenes)
        seconds = {}
        for stage, run in (("stage1", pipeline.run_stage1), ("stage2", pipeline.run_stage2)):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            for steps in (1, 1 + args.steps):  # the first step alone, then the timed ones resumed from it
                cfg[stage]["steps"] = steps
                result = run(cfg, scenes=scenes, vocabulary=vocabulary, progress=False, text_encoder=encoder)
            seconds[stage] = result["seconds"] / args.steps
            memory = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB"
                      if torch.cuda.is_available() else "")
            batch = cfg["stage1"]["frames_per_step"] if stage == "stage1" else cfg["stage2"]["scenes_per_step"]
            what = "frames" if stage == "stage1" else "global scenes"
            print(f"{stage}: {seconds[stage]:.2f} s a step ({batch} {what} a step{memory})")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    total = sum(recipe[s]["steps"] * seconds[s] for s in seconds)
    print(f"\n{Path(args.config).name} on {device}, frames of {width}x{height} (~{points / 1000:.0f}k points each "
          f"after pixel_stride {recipe['data']['pixel_stride']}):")
    for stage in seconds:
        print(f"  {stage}: {recipe[stage]['steps']} steps x {seconds[stage]:.2f} s = "
              f"{recipe[stage]['steps'] * seconds[stage] / 3600:.1f} h")
    print(f"  total {total / 3600:.1f} h of this device (stage-2 pseudo-labelling and evaluation not included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
