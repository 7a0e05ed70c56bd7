"""Shared fixtures for the model tests: a tiny U-Net config and a synthetic room-like cloud."""
import numpy as np
import pytest
import torch

# Two levels and narrow widths: every test model builds and runs in milliseconds on a CPU.
TINY_CFG = {
    "preset": "small",
    "embed_dim": 16,
    "voxel_size": 0.05,
    "stem_channels": 8,
    "encoder_channels": [8, 16],
    "encoder_layers": [1, 1],
    "decoder_channels": [16, 8],
    "decoder_layers": [1, 1],
}


def room_cloud(n: int = 4000, seed: int = 0):
    """Points on a floor, two walls and a box, coloured per surface: (xyz float32, rgb uint8, part int)."""
    rng = np.random.default_rng(seed)
    part = rng.integers(0, 4, n)
    u, v = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    xyz = np.empty((n, 3), np.float32)
    xyz[part == 0] = np.c_[u * 3, v * 2.5, np.zeros(n)][part == 0]          # floor
    xyz[part == 1] = np.c_[u * 3, np.zeros(n), v * 2][part == 1]            # wall y=0
    xyz[part == 2] = np.c_[np.zeros(n), v * 2.5, u * 2][part == 2]          # wall x=0
    xyz[part == 3] = np.c_[1 + u * 0.6, 1 + v * 0.5, np.full(n, 0.7)][part == 3]  # box top
    palette = np.array([[120, 100, 80], [200, 200, 190], [180, 190, 200], [150, 40, 30]], np.uint8)
    rgb = np.clip(palette[part].astype(int) + rng.integers(-10, 11, (n, 3)), 0, 255).astype(np.uint8)
    xyz += rng.normal(0, 0.003, xyz.shape).astype(np.float32)
    return xyz, rgb, part


@pytest.fixture(autouse=True)
def _one_thread_and_seeded():
    # Tests run on 2 cores shared with other jobs: with 2 intra-op threads each of the many small sparse-conv
    # ops waits for a descheduled partner thread (measured 30x slower under load than 1 thread).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # random weights: the same in every run whatever the test order
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_cfg():
    return dict(TINY_CFG)


@pytest.fixture
def cloud():
    return room_cloud()
