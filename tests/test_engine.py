"""The loops in-process: gradient accumulation, stopping on request from any process, sharded validation."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import FIXTURES
from torch.optim.lr_scheduler import LambdaLR

from yolo_accel.checkpoint import load_model
from yolo_accel.config import LossHyp
from yolo_accel.data.dataset import YoloDataset
from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.data.labels import scan_labels
from yolo_accel.data.loader import Batch
from yolo_accel.data.sources import list_images, load_data_config
from yolo_accel.ema import ModelEMA
from yolo_accel.engine import StepPlan, evaluate, new_accelerator, should_stop_now, train_one_epoch
from yolo_accel.loss import DetectionLoss
from yolo_accel.model import build_model
from yolo_accel.optim import Warmup, build_optimizer
from yolo_accel.training_state import EarlyStopping, TrainingState
from yolo_accel.val import build_val_batches


def batches(count: int, size: int = 4):
    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        images = torch.randint(0, 255, (size, 3, 64, 64), dtype=torch.uint8, generator=generator)
        targets = torch.tensor([[i, i % 3, 0.5, 0.5, 0.3, 0.3] for i in range(size)], dtype=torch.float32)
        yield Batch(images, targets, ("x.jpg",) * size, (None,) * size, None)


def training_setup(tiny_yaml, batch_size: int = 16):
    accelerator = new_accelerator("no", cpu=True)
    torch.manual_seed(0)
    model = build_model(tiny_yaml)
    optimizer = build_optimizer(model, "SGD", lr=0.01, momentum=0.9, weight_decay=0.0)
    state = TrainingState(model, model, ModelEMA(model), optimizer, LambdaLR(optimizer, lambda e: 1.0), None,
                          EarlyStopping(5), 1, random.Random(0))
    criterion = DetectionLoss.from_detect(model.model[-1], LossHyp())
    warmup = Warmup(batches=0, bias_lr=0.1, momentum=0.8, final_momentum=0.9, batch_size=batch_size)
    plan = StepPlan(accelerator, criterion, warmup, lambda e: 1.0, 1.0, 64, 32, False, 8)
    return plan, state


def test_gradients_sum_over_the_nominal_batch_before_each_step(tiny_yaml):
    plan, state = training_setup(tiny_yaml, batch_size=16)  # 64 / 16: an optimizer step every 4 batches
    steps = []
    original_step = state.optimizer.step
    state.optimizer.step = lambda *a, **k: steps.append(state.loop.step) or original_step(*a, **k)
    assert train_one_epoch(plan, state, batches(6), epochs=1, stop_requested=lambda: False, show_progress=False)
    assert steps == [3] and state.loop.last_opt_step == 3 and int(state.ema.updates) == 1
    # batches 4 and 5 are pending: their gradients are the sum of both backward passes, not a mean
    pending = state.pending_gradients()
    plan2, fresh = training_setup(tiny_yaml)
    fresh.unwrapped.load_state_dict(state.unwrapped.state_dict())
    fresh.model.train()
    for images, targets, *_ in list(batches(6))[4:]:
        images = (images.float() / 255).contiguous(memory_format=torch.channels_last)
        loss, _ = plan2.criterion([p.float() for p in fresh.model(images)], targets)
        loss.backward()
    for key in ("model.0.conv.weight", "model.24.m.0.bias"):
        summed = fresh.unwrapped.get_parameter(key).grad  # a mean would be half of it
        assert ((pending[key] - summed).norm() / summed.norm()).item() < 1e-3, key
    assert (state.loop.epoch, state.loop.batch, state.loop.step) == (0, 6, 6)


def test_a_stop_requested_anywhere_ends_the_epoch_after_the_batch_in_flight(tiny_yaml):
    plan, state = training_setup(tiny_yaml)
    requests = iter([False, False, True])
    assert not train_one_epoch(plan, state, batches(6), epochs=1, stop_requested=lambda: next(requests),
                               show_progress=False)
    assert state.loop.batch == 3  # the next batch to run on resume
    # with several processes the flags are summed: one process asked is enough
    two = SimpleNamespace(num_processes=2, device=torch.device("cpu"),
                          reduce=lambda flag, reduction: flag + torch.tensor([1.0]))
    assert should_stop_now(two, False) and not should_stop_now(plan.accelerator, False)


def test_sharded_validation_sees_every_image_once_with_the_same_letterbox(tmp_path):
    root = write_demo_dataset(tmp_path, train_images=2, val_images=11, imgsz=128, seed=1).parent
    index = scan_labels(list_images(load_data_config(str(root / "data.yaml")), "val"), verbose=False)
    dataset = YoloDataset(index, 128, 4, rect=True, pad=0.5)
    model = load_model(FIXTURES / "demo_yolov5n.safetensors").eval()
    accelerator = new_accelerator("no", cpu=True)
    single_loader, single_indices = build_val_batches(dataset, 4, 0, 0, 1)
    single = evaluate(model, single_loader, single_indices, accelerator, nc=6, show_progress=False)
    shards = []
    for rank in range(3):
        loader, indices = build_val_batches(dataset, 4, 0, rank, 3)
        assert all(b == sorted(b) for b in loader.batch_sampler)  # contiguous parts of each batch
        shards += evaluate(model, loader, indices, accelerator, nc=6, show_progress=False).predictions
    assert sorted(r.index for r in shards) == list(range(11))  # every image once, no padding
    for a, b in zip(sorted(shards, key=lambda r: r.index), single.predictions, strict=True):
        assert a.index == b.index and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.detections, b.detections, rtol=1e-4, atol=1e-3)


def test_switching_precision_in_one_process_uses_accelerates_private_state():
    """new_accelerator resets only Accelerate's precision state (its private AcceleratorState); this fails first
    if Accelerate renames what that relies on."""
    assert isinstance(AcceleratorState._shared_state, dict) and callable(AcceleratorState._reset_state)
    assert new_accelerator("bf16", cpu=True).mixed_precision == "bf16"
    assert new_accelerator("no", cpu=True).mixed_precision == "no"


@pytest.fixture(autouse=True)
def fp32_afterwards():
    yield
    new_accelerator("no", cpu=True)


def test_loss_hyp_defaults_are_scratch_low():
    import yaml
    from conftest import ROOT

    values = yaml.safe_load((ROOT / "configs/hyps/hyp.scratch-low.yaml").read_text())
    assert all(np.isclose(getattr(LossHyp(), k), values[k]) for k in ("box", "cls", "obj", "anchor_t", "fl_gamma"))
