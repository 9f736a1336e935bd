"""The shared training loop (ensemble.training.train_loop) on a tiny linear classifier: seconds on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ensemble.nn.training import TrainConfig, _schedule, mixed_precision, resolve_device, train_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1.0).long()
    return x, y


def _loader(batch_size: int = 16):
    x, y = _data()
    return [{"x": x[i:i + batch_size], "y": y[i:i + batch_size]} for i in range(0, len(x), batch_size)]


def _loss(model, batch):
    return nn.functional.cross_entropy(model(batch["x"]), batch["y"])


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _full_loss(model) -> float:
    x, y = _data()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


CPU = torch.device("cpu")


def test_loss_decreases():
    model = _model()
    before = _full_loss(model)
    cfg = TrainConfig(epochs=5, lr=0.05, warmup_ratio=0.0, precision="fp32")
    result = train_loop(model, _loader(), _loss, cfg, CPU)
    assert result.steps == 5 * 4
    assert _full_loss(model) < before - 0.1


def test_best_checkpoint_restored():
    """evaluate returns a fixed schedule: the weights left in the model are those of the best eval."""
    scores = iter([0.9, 0.5, 0.7, 0.8])
    snapshots = []

    def evaluate(m):
        snapshots.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return next(scores)

    model = _model()
    cfg = TrainConfig(epochs=1, lr=0.05, eval_every=1, precision="fp32")
    result = train_loop(model, _loader(), _loss, cfg, CPU, evaluate=evaluate)
    assert [h["valid_logloss"] for h in result.history] == [0.9, 0.5, 0.7, 0.8]
    assert result.best_step == 2 and result.best_score == 0.5
    final = model.state_dict()
    for k, v in snapshots[1].items():
        torch.testing.assert_close(final[k], v, rtol=0, atol=0)
    assert not torch.equal(final["0.weight"], snapshots[3]["0.weight"])  # the last weights were dropped


def test_early_stopping_stops():
    scores = iter([0.5, 0.6, 0.7] + [0.1] * 100)
    cfg = TrainConfig(epochs=10, lr=0.01, eval_every=2, patience=2, precision="fp32")
    result = train_loop(_model(), _loader(), _loss, cfg, CPU, evaluate=lambda m: next(scores))
    assert result.steps == 6  # evals at steps 2 (best), 4, 6 -> two without improvement
    assert len(result.history) == 3 and result.best_step == 2


def test_max_steps_and_param_groups():
    model = _model()
    groups = [{"params": list(model[0].parameters()), "lr": 0.0},
              {"params": list(model[2].parameters())}]
    first = model[0].weight.detach().clone()
    cfg = TrainConfig(epochs=3, lr=0.05, max_steps=3, precision="fp32")
    result = train_loop(model, _loader(), _loss, cfg, CPU, param_groups=groups)
    assert result.steps == 3
    assert torch.equal(model[0].weight, first)  # lr 0 group frozen by its own lr, not the default


def test_awp_and_clipping_run():
    model = _model()
    before = _full_loss(model)
    cfg = TrainConfig(epochs=4, lr=0.05, awp_eps=0.01, awp_start_epoch=0.0, max_grad_norm=0.5,
                      warmup_ratio=0.0, precision="fp32")
    train_loop(model, _loader(), _loss, cfg, CPU)
    after = _full_loss(model)
    assert math.isfinite(after) and after < before


def test_schedule_shapes():
    lin = _schedule("linear", 2, 10)
    assert lin(0) == 0.5 and lin(1) == 1.0 and lin(10) == 0.0
    cos = _schedule("cosine", 0, 10)
    assert cos(0) == 1.0 and abs(cos(5) - 0.5) < 1e-12
    with pytest.raises(ValueError):
        _schedule("bogus", 0, 10)(0)


def test_device_and_precision_errors():
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU messages")
    with pytest.raises(ValueError, match="cpu"):
        resolve_device("cuda")
    assert resolve_device("cuda", allow_cpu_fallback=True).type == "cpu"
    assert resolve_device("auto").type == "cpu"
    assert mixed_precision("auto", CPU) == "no"
    with pytest.raises(ValueError, match="CUDA"):
        mixed_precision("bf16", CPU)


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        train_loop(_model(), [], _loss, TrainConfig(precision="fp32"), CPU)
