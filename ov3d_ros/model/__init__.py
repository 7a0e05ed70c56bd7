"""Sparse-convolution segmenter model: voxelisation, the spconv U-Net, checkpoints, CPU/GPU backend.

``import ov3d_ros.model`` needs torch and spconv (core requirements); nothing heavier.
"""
from .unet import MAX_LOGIT_SCALE, PRESETS, SpUNet, build_model, resolve_config
from .voxelize import HEIGHT_OFFSET, IN_CHANNELS, Voxelized, in_channels, voxelize

__all__ = ["build_model", "PRESETS", "voxelize", "SpUNet", "Voxelized", "IN_CHANNELS", "HEIGHT_OFFSET", "in_channels",
           "resolve_config", "MAX_LOGIT_SCALE"]
