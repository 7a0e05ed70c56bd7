"""The training loop's weight averages: ema_decay (the formula on a hand-built case, what model.pt holds, resume) and
the mean of several runs' weights (stage2.replicas)."""
import numpy as np
import pytest
import torch

from ov3d_ros.training.loop import LoopConfig, TrainingInterrupted, WeightAverage, average_state_dicts, train_loop


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))


def test_weight_average_follows_the_formula_and_swaps_back():
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema = WeightAverage(layer, decay=0.5)
    values = [3.0, 5.0, 9.0]
    expected = 1.0
    for n, v in enumerate(values, start=1):
        with torch.no_grad():
            layer.weight.fill_(v)
        ema.update()
        d = min(0.5, (1 + n) / (10 + n))  # the warm-up: 2/11, 3/12, then 0.5
        expected = d * expected + (1 - d) * v
    assert ema.average["weight"].item() == pytest.approx(expected, rel=1e-6)
    with ema.swapped_in():
        assert layer.weight.item() == pytest.approx(expected, rel=1e-6)
    assert layer.weight.item() == 9.0  # the training weights are back
    ema.copy_to()
    assert layer.weight.item() == pytest.approx(expected, rel=1e-6)


def test_weight_average_covers_batch_norm_statistics_but_not_counters():
    net = _net()
    ema = WeightAverage(net, decay=0.9)
    assert "1.running_mean" in ema.average and "1.running_var" in ema.average
    assert "1.num_batches_tracked" not in ema.average


def _run(out_dir, steps, ema_decay, stop_after_step=None):
    net = _net()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    exported = {}

    def loss_fn(step, rng: np.random.Generator, net):
        idx = torch.as_tensor(rng.choice(len(x), 16, replace=False))
        return {"loss": torch.nn.functional.mse_loss(net(x[idx]), y[idx])}

    def export(path, step):
        exported[step] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        torch.save(exported[step], path)

    loop = LoopConfig(steps=steps, lr=0.05, weight_decay=0.0, warmup_steps=1, min_lr_ratio=0.1, grad_clip=0.0,
                      amp=False, checkpoint_every=2, log_every=2, ema_decay=ema_decay)
    train_loop(model=net, loss_fn=loss_fn, loop=loop, out_dir=out_dir, seed=0, tag=9, device=torch.device("cpu"),
               export_model=export, show_progress=False, stop_after_step=stop_after_step)
    return net, exported


def test_exported_model_is_the_average_and_resume_is_exact(tmp_path):
    net, exported = _run(tmp_path / "full", steps=6, ema_decay=0.8)
    state = torch.load(tmp_path / "full" / "state.pt", weights_only=False)
    average = state["ema"]["average"]
    assert state["ema"]["updates"] == 6
    # model.pt holds the average, the training state the raw weights, and the loop leaves the average in the model
    assert all(torch.equal(exported[6][k], average[k]) for k in average)
    assert not torch.equal(state["model"]["0.weight"], average["0.weight"])
    assert all(torch.equal(net.state_dict()[k], average[k]) for k in average)

    with pytest.raises(TrainingInterrupted):
        _run(tmp_path / "broken", steps=6, ema_decay=0.8, stop_after_step=5)
    _run(tmp_path / "broken", steps=6, ema_decay=0.8)
    resumed = torch.load(tmp_path / "broken" / "state.pt", weights_only=False)
    assert resumed["ema"]["updates"] == 6
    for key, value in average.items():
        assert torch.equal(value, resumed["ema"]["average"][key]), key


def test_resuming_an_unaveraged_run_with_an_average_is_refused(tmp_path):
    _run(tmp_path, steps=2, ema_decay=0.0)
    with pytest.raises(ValueError, match="ema_decay"):
        _run(tmp_path, steps=4, ema_decay=0.8)


def test_ema_decay_out_of_range_is_rejected():
    section = dict(steps=1, lr=0.1, weight_decay=0.0, warmup_steps=0, min_lr_ratio=0.1, grad_clip=0.0, amp=False,
                   checkpoint_every=1, log_every=1, ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        LoopConfig.from_section(section)


def test_average_state_dicts_means_floats_and_keeps_counters():
    a, b = _net().state_dict(), _net().state_dict()
    for key in a:
        if torch.is_floating_point(b[key]):
            b[key] = b[key] + 2.0
    b["1.num_batches_tracked"] = torch.tensor(7)
    mean = average_state_dicts([a, b])
    for key, value in a.items():
        if torch.is_floating_point(value):
            torch.testing.assert_close(mean[key], value + 1.0)
    assert mean["1.num_batches_tracked"].item() == a["1.num_batches_tracked"].item()
    with pytest.raises(ValueError):
        average_state_dicts([])
