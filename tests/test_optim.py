"""Optimizer groups, schedules, warmup, EMA and early stopping: YOLOv5 v7.0's numbers."""

from __future__ import annotations

import math

import pytest
import torch

from yolo_accel.config import WarmupHyp
from yolo_accel.ema import ModelEMA
from yolo_accel.model import build_model
from yolo_accel.optim import Warmup, accumulate_steps, build_optimizer, lr_lambda, parameter_groups, scaled_weight_decay
from yolo_accel.training_state import EarlyStopping

WARMUP = WarmupHyp(warmup_epochs=3.0, warmup_bias_lr=0.1, warmup_momentum=0.8)


@pytest.fixture(scope="module")
def model(tiny_yaml):
    return build_model(tiny_yaml)


def test_three_parameter_groups(model):
    biases, weights, norm_weights = parameter_groups(model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(weights) == len(convs) and len(norm_weights) == len(norms)
    assert len(biases) == len(norms) + 3  # every norm bias plus the three Detect conv biases
    assert len(biases) + len(weights) + len(norm_weights) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_optimizer_groups_and_decay(model, name):
    optimizer = build_optimizer(model, name, lr=0.01, momentum=0.937, weight_decay=5e-4)
    decays = [g["weight_decay"] for g in optimizer.param_groups]
    assert decays == [0.0, 5e-4, 0.0]
    if name == "SGD":
        assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.937
    else:
        assert optimizer.param_groups[0]["betas"] == (0.937, 0.999)
    with pytest.raises(ValueError, match="SGD, Adam or AdamW"):
        build_optimizer(model, "RMSProp")


def test_nominal_batch_accumulation_and_decay_scaling():
    assert [accumulate_steps(b) for b in (1, 16, 32, 64, 128)] == [64, 4, 2, 1, 1]
    assert scaled_weight_decay(5e-4, 16) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 24) == pytest.approx(5e-4 * 24 * 3 / 64)
    assert scaled_weight_decay(5e-4, 128) == pytest.approx(1e-3)


def test_lr_schedules():
    linear = lr_lambda(100, 0.01)
    assert [linear(0), linear(50), linear(100)] == pytest.approx([1.0, 0.505, 0.01])
    cosine = lr_lambda(100, 0.01, cosine=True)
    assert [cosine(0), cosine(50), cosine(100)] == pytest.approx([1.0, 0.505, 0.01])
    assert cosine(25) == pytest.approx(((1 - math.cos(math.pi / 4)) / 2) * (0.01 - 1) + 1)


def test_warmup_ramps_lr_momentum_and_accumulation(model):
    optimizer = build_optimizer(model, "SGD", lr=0.01, momentum=0.937, weight_decay=5e-4)
    for group in optimizer.param_groups:
        group["initial_lr"] = 0.01
    warmup = Warmup.plan(WARMUP, 0.937, batches_per_epoch=10, batch_size=16)
    assert warmup.batches == 100  # max(3 epochs * 10 batches, 100)
    warmup.apply(optimizer, 0, epoch_factor=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.0, 0.0]
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.8)
    warmup.apply(optimizer, 50, epoch_factor=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.055, 0.005, 0.005])
    assert optimizer.param_groups[1]["momentum"] == pytest.approx((0.8 + 0.937) / 2)
    assert [warmup.accumulate(s) for s in (0, 50, 100, 500)] == [1, 2, 4, 4]
    assert Warmup.plan(WARMUP, 0.937, batches_per_epoch=100, batch_size=16).batches == 300


def test_anchor_free_warmup_follows_ultralytics():
    """No 100-batch floor, and the last epoch is left out of the ramp (Ultralytics 8's rule)."""
    assert Warmup.plan(WARMUP, 0.9, batches_per_epoch=25, batch_size=16, epochs=50).batches == 75
    assert Warmup.plan(WARMUP, 0.9, batches_per_epoch=25, batch_size=16, epochs=3).batches == 50
    assert Warmup.plan(WARMUP, 0.9, batches_per_epoch=25, batch_size=16, epochs=1).batches == 0


def test_ema_follows_with_the_yolov5_ramp(model):
    ema = ModelEMA(model)
    moved = build_model(model.yaml)
    ema.update(moved)
    d = 0.9999 * (1 - math.exp(-1 / 2000))
    key = "model.0.conv.weight"
    expected = model.state_dict()[key] * d + moved.state_dict()[key] * (1 - d)
    torch.testing.assert_close(ema.module.state_dict()[key], expected)
    assert int(ema.state_dict()["updates"]) == 1 and all(not p.requires_grad for p in ema.module.parameters())


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=3)
    decisions = [stopper(epoch, fit) for epoch, fit in enumerate([0.1, 0.3, 0.2, 0.25, 0.29, 0.28])]
    assert decisions == [False, False, False, False, True, True]
    assert stopper.best_epoch == 1 and stopper.best_fitness == 0.3
    assert not any(EarlyStopping(patience=0)(e, 0.0) for e in range(1000))  # 0 disables it
