"""``ov3d-train``: the PGOV3D partial-to-global curriculum.

``config`` (recipes), ``datasets`` (partial frames with pixel pseudo labels, global clouds, labelled scenes),
``losses`` (one implementation of the text losses, the VoxelEncoder that DDP wraps), ``stage1`` and ``stage2``,
``loop`` (optimisation, checkpoints, exact resume), ``distributed`` (DistributedDataParallel workers: torchrun or
``workers: N``), ``metrics`` and ``evaluate``, ``pipeline`` (the stages end to end) and ``cli``.
"""
