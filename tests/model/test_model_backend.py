"""CPU correctness of spconv (Native algorithm) against dense torch convolutions, and algorithm selection."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ov3d_ros.model import build_model
from ov3d_ros.model.backend import ConvAlgo, conv_algos, resolve_device, set_conv_algo, spconv

# Even extents: a stride-2 conv drops the last slice of an odd extent (why voxelize pads its spatial shape).
GRID = (6, 4, 8)


def _sparse_input(cin: int, seed: int = 0, active: int = 40):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(int(np.prod(GRID)), generator=g)[:active]
    coords = torch.stack(torch.unravel_index(flat, GRID), dim=1)
    feats = torch.randn(active, cin, generator=g)
    indices = torch.cat([torch.zeros(active, 1, dtype=torch.long), coords], dim=1).int()
    dense = torch.zeros(1, cin, *GRID)
    dense[0, :, coords[:, 0], coords[:, 1], coords[:, 2]] = feats.T
    return spconv.SparseConvTensor(feats, indices, list(GRID), 1), dense, coords


def _dense_weight(conv) -> torch.Tensor:
    # spconv stores (out, kx, ky, kz, in) on every build; torch conv3d wants (out, in, kx, ky, kz).
    return conv.weight.detach().permute(0, 4, 1, 2, 3).contiguous()


def _init(conv, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)


def test_submanifold_conv_on_cpu_matches_dense_conv3d():
    x, dense, coords = _sparse_input(4)
    conv = spconv.SubMConv3d(4, 5, 3, padding=1, bias=False, algo=ConvAlgo.Native)
    _init(conv, 1)
    out = conv(x)
    ref = F.conv3d(dense, _dense_weight(conv), padding=1)
    # Submanifold: outputs exactly at the input sites, same order as the input.
    assert torch.equal(out.indices, x.indices)
    expected = ref[0, :, coords[:, 0], coords[:, 1], coords[:, 2]].T
    torch.testing.assert_close(out.features, expected, rtol=1e-5, atol=1e-5)


def test_strided_and_inverse_conv_on_cpu_match_dense_references():
    x, dense, coords = _sparse_input(3, seed=2, active=60)
    down = spconv.SparseConv3d(3, 6, 2, stride=2, bias=False, indice_key="d1", algo=ConvAlgo.Native)
    up = spconv.SparseInverseConv3d(6, 2, 2, bias=False, indice_key="d1", algo=ConvAlgo.Native)
    _init(down, 3)
    _init(up, 4)
    y = down(x)
    ref_down = F.conv3d(dense, _dense_weight(down), stride=2)
    oc = y.indices[:, 1:].long()
    # Active outputs are exactly the 2x2x2 blocks holding an input voxel.
    blocks = {tuple(c) for c in (coords // 2).tolist()}
    assert {tuple(c) for c in oc.tolist()} == blocks
    torch.testing.assert_close(y.features, ref_down[0, :, oc[:, 0], oc[:, 1], oc[:, 2]].T, rtol=1e-5, atol=1e-5)

    z = up(y)
    # The inverse conv returns to the input sites: a transposed conv of the downsampled grid sampled there.
    dense_y = torch.zeros(1, 6, *ref_down.shape[2:])
    dense_y[0, :, oc[:, 0], oc[:, 1], oc[:, 2]] = y.features.detach().T
    ref_up = F.conv_transpose3d(dense_y, up.weight.detach().permute(4, 0, 1, 2, 3).contiguous(), stride=2)
    zc = z.indices[:, 1:].long()
    assert {tuple(c) for c in zc.tolist()} == {tuple(c) for c in coords.tolist()}
    torch.testing.assert_close(z.features, ref_up[0, :, zc[:, 0], zc[:, 1], zc[:, 2]].T, rtol=1e-5, atol=1e-5)


def test_model_convs_are_native_on_cpu_and_follow_the_device(tiny_cfg):
    model = build_model(tiny_cfg)
    assert conv_algos(model) == {ConvAlgo.Native}
    # The GPU choice spconv made at construction is remembered and restored for a CUDA device ...
    set_conv_algo(model, "cuda")
    assert ConvAlgo.MaskImplicitGemm in conv_algos(model)
    # ... and moving the model back to the CPU (through .to) selects Native again.
    model.to("cpu")
    assert conv_algos(model) == {ConvAlgo.Native}
    model.float()
    assert conv_algos(model) == {ConvAlgo.Native}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_gpu_and_cpu_outputs_agree(tiny_cfg):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 2, (3000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (3000, 3)).astype(np.uint8)
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        cpu = model(xyz, rgb)
        model.to("cuda")
        assert conv_algos(model) == {ConvAlgo.MaskImplicitGemm}
        gpu = model(xyz, rgb).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
