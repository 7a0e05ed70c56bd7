"""Sparse-convolution U-Net (spconv) mapping voxelised points into a text-embedding space.

Layout (SparseConvNet / Pointcept SpUNet style):
  stem      SubMConv3d(k=stem_kernel) + BN + ReLU                                  level 0 (voxel_size)
  encoder   per stage s: SparseConv3d(k=2, stride=2) + BN + ReLU, then residual blocks of two SubMConv3d(k=3)
            -> level s+1 (voxel_size * 2**(s+1))
  decoder   per stage (deepest first): SparseInverseConv3d(k=2) back to the finer level + BN + ReLU,
            concatenation with the encoder's skip at that level, residual blocks
  head      Linear(decoder_channels[-1] -> embed_dim)
Output: one embedding per voxel, gathered to the points through the voxelisation's inverse index and
L2-normalised (``normalize=False`` gives the raw head output).

Temperature: the model owns a learnable ``logit_scale`` (CLIP's log of 1/temperature, initialised to
log(1/0.07)); classification logits are ``model.logit_scale_value() * cosine(point, text)``. It lives in the model
so a checkpoint carries the temperature the training loss learned and the segmenter can report softmax scores.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backend import set_conv_algo, spconv
from .voxelize import Voxelized, in_channels, voxelize

# Presets. "small": CPU tests and CPU training (3 levels, 1 block per stage, ~1.3M parameters, ~5 MB checkpoint)
# at 4 cm voxels. "full": GPU (Pointcept SpUNet-v1m1 widths and depths, ~39M parameters) at 2 cm voxels.
# embed_dim defaults to the demo text encoder (all-MiniLM-L6-v2, 384-d); set it to the encoder's dimension.
PRESETS: dict[str, dict] = {
    "small": {
        "height_feature": True,  # voxelize(height=True): z is height above the floor in a z-up frame
        "offset_feature": False,  # voxelize(offsets=False): features that do not depend on the point density
        "in_channels": in_channels(True, False),
        "embed_dim": 384,
        "voxel_size": 0.04,
        "stem_channels": 16,
        "stem_kernel": 3,
        "encoder_channels": [32, 64, 96],
        "encoder_layers": [1, 1, 1],
        "decoder_channels": [64, 48, 32],
        "decoder_layers": [1, 1, 1],
        "bn_momentum": 0.02,
        "logit_scale_init": math.log(1.0 / 0.07),
    },
    "full": {
        "height_feature": True,
        "offset_feature": False,
        "in_channels": in_channels(True, False),
        "embed_dim": 512,
        "voxel_size": 0.02,
        "stem_channels": 32,
        "stem_kernel": 5,
        "encoder_channels": [32, 64, 128, 256],
        "encoder_layers": [2, 3, 4, 6],
        "decoder_channels": [256, 128, 96, 96],
        "decoder_layers": [2, 2, 2, 2],
        "bn_momentum": 0.02,
        "logit_scale_init": math.log(1.0 / 0.07),
    },
}
_KNOWN_KEYS = set(PRESETS["small"]) | {"preset"}
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: beyond this the softmax is a hard argmax and training destabilises


def resolve_config(cfg: dict | str | None) -> dict:
    """Fill a config from its preset: {"preset": "small", "embed_dim": 512, ...} -> every key set, validated."""
    if cfg is None:
        cfg = {}
    if isinstance(cfg, str):
        cfg = {"preset": cfg}
    if not isinstance(cfg, dict):
        raise TypeError(f"model config must be a dict or a preset name, got {type(cfg).__name__}")
    unknown = set(cfg) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}")
    preset = cfg.get("preset", "small")
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    out = copy.deepcopy(PRESETS[preset])
    out.update(copy.deepcopy({k: v for k, v in cfg.items() if k != "preset"}))
    out["preset"] = preset

    def positive_int(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"model config {name} must be a positive int, got {value!r}")

    for name in ("in_channels", "embed_dim", "stem_channels", "stem_kernel"):
        positive_int(name, out[name])
    if "in_channels" in cfg and "offset_feature" not in cfg:
        # Configs from before offset_feature existed (older checkpoints) all had the point offsets.
        out["offset_feature"] = True
    for name in ("height_feature", "offset_feature"):
        if not isinstance(out[name], bool):
            raise ValueError(f"model config {name} must be true or false, got {out[name]!r}")
    if "in_channels" not in cfg:
        out["in_channels"] = in_channels(out["height_feature"], out["offset_feature"])
    elif "height_feature" not in cfg:
        # A config that fixes in_channels alone (checkpoints from before the height channel) says which it is.
        out["height_feature"] = out["in_channels"] == in_channels(True, out["offset_feature"])
    expected = in_channels(out["height_feature"], out["offset_feature"])
    if out["in_channels"] != expected:
        raise ValueError(f"model config in_channels={out['in_channels']} does not match the voxel features "
                         f"({expected} with height_feature={out['height_feature']}, "
                         f"offset_feature={out['offset_feature']})")
    if out["stem_kernel"] % 2 == 0:
        raise ValueError(f"model config stem_kernel must be odd (a centred submanifold conv), got {out['stem_kernel']}")
    lists = ("encoder_channels", "encoder_layers", "decoder_channels", "decoder_layers")
    for name in lists:
        out[name] = list(out[name]) if isinstance(out[name], (list, tuple)) else out[name]
        if not isinstance(out[name], list) or not out[name]:
            raise ValueError(f"model config {name} must be a non-empty list, got {out[name]!r}")
        for i, v in enumerate(out[name]):
            positive_int(f"{name}[{i}]", v)
    levels = len(out["encoder_channels"])
    if any(len(out[name]) != levels for name in lists):
        raise ValueError("model config encoder_channels, encoder_layers, decoder_channels and decoder_layers "
                         f"must have the same length (levels); got {[len(out[n]) for n in lists]}")
    vs = out["voxel_size"]
    if isinstance(vs, bool) or not isinstance(vs, (int, float)) or not math.isfinite(vs) or vs <= 0:
        raise ValueError(f"model config voxel_size must be a positive number of metres, got {vs!r}")
    out["voxel_size"] = float(vs)
    out["bn_momentum"] = float(out["bn_momentum"])
    out["logit_scale_init"] = float(out["logit_scale_init"])
    return out


def _norm(channels: int, momentum: float) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=momentum)


class ResidualBlock(spconv.SparseModule):
    """Two SubMConv3d(k=3) with BN/ReLU and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, indice_key: str, momentum: float):
        super().__init__()
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Linear(in_channels, out_channels, bias=False),
                                          _norm(out_channels, momentum))
        self.conv1 = spconv.SubMConv3d(in_channels, out_channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = _norm(out_channels, momentum)
        self.conv2 = spconv.SubMConv3d(out_channels, out_channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = _norm(out_channels, momentum)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features if self.shortcut is None else self.shortcut(x.features)
        out = self.conv1(x)
        out = out.replace_feature(F.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(F.relu(self.bn2(out.features) + identity))


def _conv_bn_relu(conv: spconv.SparseModule, channels: int, momentum: float) -> spconv.SparseSequential:
    return spconv.SparseSequential(conv, _norm(channels, momentum), nn.ReLU())


class SpUNet(nn.Module):
    """Sparse U-Net: points (xyz, rgb) -> (N, embed_dim) features. Build with ``build_model(cfg)``."""

    def __init__(self, cfg: dict | str | None = None):
        super().__init__()
        cfg = resolve_config(cfg)
        self.cfg = cfg
        self.voxel_size = cfg["voxel_size"]
        self.embed_dim = cfg["embed_dim"]
        self.levels = len(cfg["encoder_channels"])
        mom = cfg["bn_momentum"]
        enc_ch, enc_n = cfg["encoder_channels"], cfg["encoder_layers"]
        dec_ch, dec_n = cfg["decoder_channels"], cfg["decoder_layers"]
        stem = cfg["stem_channels"]

        self.stem = _conv_bn_relu(
            spconv.SubMConv3d(cfg["in_channels"], stem, cfg["stem_kernel"], padding=cfg["stem_kernel"] // 2,
                              bias=False,
                              # a k=3 stem shares its index pairs with the level-0 decoder blocks
                              indice_key="subm0" if cfg["stem_kernel"] == 3 else "stem"), stem, mom)
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        prev = stem
        for s in range(self.levels):
            self.down.append(_conv_bn_relu(
                spconv.SparseConv3d(prev, enc_ch[s], 2, stride=2, bias=False, indice_key=f"down{s + 1}"),
                enc_ch[s], mom))
            self.encoder.append(spconv.SparseSequential(*[
                ResidualBlock(enc_ch[s], enc_ch[s], f"subm{s + 1}", mom) for _ in range(enc_n[s])]))
            prev = enc_ch[s]
        # Decoder stage d goes from level L-d to level L-d-1 and concatenates that level's skip.
        skip_ch = [stem] + enc_ch[:-1]
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for d in range(self.levels):
            level = self.levels - 1 - d
            self.up.append(_conv_bn_relu(
                spconv.SparseInverseConv3d(prev, dec_ch[d], 2, bias=False, indice_key=f"down{level + 1}"),
                dec_ch[d], mom))
            blocks = [ResidualBlock(dec_ch[d] + skip_ch[level], dec_ch[d], f"subm{level}", mom)]
            blocks += [ResidualBlock(dec_ch[d], dec_ch[d], f"subm{level}", mom) for _ in range(dec_n[d] - 1)]
            self.decoder.append(spconv.SparseSequential(*blocks))
            prev = dec_ch[d]
        self.head = nn.Linear(prev, self.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(cfg["logit_scale_init"], dtype=torch.float32))
        self._reset_parameters()
        # Built on the CPU: record spconv's GPU algorithm choice per conv, then switch to Native.
        set_conv_algo(self, "cpu")

    def _reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- device handling ---------------------------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        # Every .to()/.cuda()/.cpu() goes through _apply: re-pick the conv algorithm for the new device.
        out = super()._apply(fn, *args, **kwargs)
        set_conv_algo(self, self.device)
        return out

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # -- forward ------------------------------------------------------------------------------------------------
    def voxelize(self, xyz, rgb, batch=None) -> Voxelized:
        """Voxelise points on the model's device at its voxel size, grid aligned for its downsampling."""
        return voxelize(xyz, rgb, self.voxel_size, batch=batch, align=2 ** self.levels, device=self.device,
                        height=self.cfg["height_feature"], offsets=self.cfg["offset_feature"])

    def encode_voxels(self, vox: Voxelized) -> torch.Tensor:
        """(M, embed_dim) raw (un-normalised) head output, one row per voxel of ``vox``."""
        if vox.feats.shape[1] != self.cfg["in_channels"]:
            raise ValueError(f"voxel features have {vox.feats.shape[1]} channels, the model expects "
                             f"{self.cfg['in_channels']}")
        if vox.feats.device != self.device:
            raise ValueError(f"voxels are on {vox.feats.device} but the model is on {self.device}")
        x = spconv.SparseConvTensor(vox.feats, vox.coords, vox.spatial_shape, vox.batch_size)
        x = self.stem(x)
        skips = [x]
        for down, blocks in zip(self.down, self.encoder):
            x = blocks(down(x))
            skips.append(x)
        skips.pop()  # the deepest level is the decoder's input, not a skip
        for up, blocks in zip(self.up, self.decoder):
            x = up(x)
            skip = skips.pop()
            x = blocks(x.replace_feature(torch.cat([x.features, skip.features], dim=1)))
        return self.head(x.features)

    def forward(self, xyz, rgb, batch=None, *, normalize: bool = True) -> torch.Tensor:
        """Per-point features (N, embed_dim), L2-normalised unless ``normalize=False``.

        xyz (N, 3) metres, rgb (N, 3) uint8 or float in [0, 1], numpy or torch; batch: optional (N,) cloud index.
        """
        feats, inverse = self.forward_voxels(xyz, rgb, batch, normalize=normalize)
        # index_select: its backward is an index_add, much cheaper than advanced indexing's index_put.
        return feats.index_select(0, inverse)

    def forward_voxels(self, xyz, rgb, batch=None, *, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(voxel features (M, embed_dim), inverse (N,)) with forward(...) == features[inverse].

        Points of one voxel share its feature, so a loss can work on voxel logits and gather those:
        ``(scale * (features @ text.T))[inverse]`` moves N x Q numbers instead of N x embed_dim (measured
        ~15% off a CPU training step on 50k points with a 384-d embedding).
        """
        vox = self.voxelize(xyz, rgb, batch)
        feats = self.encode_voxels(vox)
        if normalize:
            feats = F.normalize(feats, dim=1)
        return feats, vox.inverse

    # -- helpers ------------------------------------------------------------------------------------------------
    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale) clamped to MAX_LOGIT_SCALE: multiply cosine similarities by it to get logits."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def receptive_field(self) -> float:
        """Conservative radius (metres) of the region that can influence one voxel's output.

        Sums the reach of every layer on the deepest path (stem, encoder blocks and downsamplings, upsamplings,
        decoder blocks); used as the context margin when the segmenter cuts a large cloud into chunks.
        """
        cfg = self.cfg
        reach = cfg["stem_kernel"] // 2
        for s in range(self.levels):
            reach += 2 ** s  # stride-2 downsampling from level s: a coarse voxel spans 2 finer ones
            reach += 2 * cfg["encoder_layers"][s] * 2 ** (s + 1)
        for d in range(self.levels):
            level = self.levels - 1 - d
            reach += 2 ** level  # inverse conv back to level `level`
            reach += 2 * cfg["decoder_layers"][d] * 2 ** level
        return float((reach + 1) * self.voxel_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(cfg: dict | str | None = None) -> SpUNet:
    """Build a SpUNet from a config dict ({"preset": "small"|"full", overrides...}) or a preset name."""
    return SpUNet(cfg)
