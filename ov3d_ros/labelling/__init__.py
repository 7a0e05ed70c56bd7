"""2D pseudo-labelling (``ov3d-train label``): vocabulary sources, SAM masks and their clean-up, CLIP mask naming.

Modules: ``vocabulary`` (fixed list / multimodal LLM / union), ``masks`` (SAM loading, automatic masks, Segment3D
part removal, minimum area, overlap resolution), ``naming`` (CLIP crop naming with score and margin thresholds),
``pipeline`` (per-frame labeller, per-scene resumable runner writing ``data.pseudo_labels``), ``config`` (the
recipe), ``cli`` (the ``label`` subcommand). segment_anything, open_clip and transformers are imported only inside
the functions that use them, so ``import ov3d_ros.labelling.<module>`` works without them.
"""
