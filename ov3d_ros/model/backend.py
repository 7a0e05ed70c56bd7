"""Device and sparse-convolution algorithm selection (CPU vs GPU).

spconv's CUDA wheels run CPU tensors correctly only with ``ConvAlgo.Native`` (the implicit-GEMM algorithms are
GPU kernels; on CPU they give wrong results or fail). On a GPU spconv's default per-layer choice is fastest.
The weights have the same layout for every algorithm, so the choice is made per device, not per checkpoint:
``set_conv_algo`` rewrites the ``algo`` of every sparse conv of a module, and ``SpUNet`` calls it whenever it is
moved (``.to()``, ``.cuda()``, ``.cpu()``), so one checkpoint loads and runs on either.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

with warnings.catch_warnings():
    # spconv 2.3 uses torch.cuda.amp decorators that newer torch flags as deprecated at import time;
    # the warnings say nothing actionable to our users.
    warnings.simplefilter("ignore", FutureWarning)
    import spconv.pytorch as spconv
    from spconv.pytorch import ConvAlgo
    from spconv.pytorch.conv import SparseConvolution


def _silence_fx_tracing_notice() -> None:
    """spconv's modules ask torch.fx whether they are being traced; torch 2.14 answers with a one-time warning
    about its own API ("is_fx_tracing will return true ...") that means nothing to our users. Emit it once with
    its logger muted (it is lru-cached, so it never prints later). Harmless if torch changes these internals."""
    try:
        from torch.fx import _symbolic_trace
    except ImportError:
        return
    notice = getattr(_symbolic_trace, "is_fx_tracing_warning", None)
    logger = getattr(_symbolic_trace, "log", None)
    if notice is None or logger is None:
        return
    was_disabled, logger.disabled = logger.disabled, True
    try:
        notice()
    finally:
        logger.disabled = was_disabled


_silence_fx_tracing_notice()

# Attribute where each conv remembers the algorithm spconv chose for it at construction (its GPU default).
_GPU_ALGO_ATTR = "_ov3d_gpu_algo"


def resolve_device(device="auto") -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise torch.device(device), checked to be usable."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here (use 'cpu' or 'auto')")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: spconv runs on 'cpu' or 'cuda' only")
    return dev


def sparse_convs(module: nn.Module) -> list[SparseConvolution]:
    return [m for m in module.modules() if isinstance(m, SparseConvolution)]


def algo_for(device: torch.device | str, gpu_default: ConvAlgo) -> ConvAlgo:
    return ConvAlgo.Native if torch.device(device).type == "cpu" else gpu_default


def set_conv_algo(module: nn.Module, device: torch.device | str) -> None:
    """Make every sparse conv of ``module`` use the right algorithm for ``device``.

    Every conv of one network must agree: an inverse conv reuses the index pairs its strided partner built,
    and their layout depends on the algorithm.
    """
    for conv in sparse_convs(module):
        if not hasattr(conv, _GPU_ALGO_ATTR):
            # First visit: a conv built with algo=None holds spconv's own GPU choice for its kernel size
            # (Native for large kernels); keep it for whenever the module goes to a GPU.
            setattr(conv, _GPU_ALGO_ATTR, conv.algo)
        conv.algo = algo_for(device, getattr(conv, _GPU_ALGO_ATTR))


def conv_algos(module: nn.Module) -> set[ConvAlgo]:
    """The set of algorithms the module's sparse convs use now (for checks and tests)."""
    return {conv.algo for conv in sparse_convs(module)}
