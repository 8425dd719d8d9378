"""The training state round trip in-process: TrainingState.state_dict -> snapshot files -> load_state_dict."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from yolo_accel.checkpoint import save_weights
from yolo_accel.ema import ModelEMA
from yolo_accel.model import build_model
from yolo_accel.optim import build_optimizer
from yolo_accel.state import (
    STATE_VERSION,
    StateError,
    latest_snapshot,
    read_pending_grads,
    read_rank_files,
    read_snapshot,
    save_snapshot,
    snapshots,
)
from yolo_accel.training_state import EarlyStopping, LoopState, TrainingState


def new_state(tiny_yaml, seed: int = 0, optimizer: str = "AdamW") -> TrainingState:
    torch.manual_seed(seed)
    model = build_model(tiny_yaml).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, optimizer, lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = LambdaLR(opt, lr_lambda=lambda e: 1 - e / 10)
    return TrainingState(model, model, ModelEMA(model), opt, scheduler, None, EarlyStopping(5), 10,
                         random.Random(seed), maps=np.zeros(3))


def train_steps(state: TrainingState, steps: int, step_every: int = 1) -> None:
    """A few loss.backward() calls on random images, stepping the optimizer every `step_every`."""
    state.model.train()
    for _ in range(steps):
        images = torch.rand(2, 3, 64, 64)
        loss = sum(p.float().square().mean() for p in state.model(images))
        loss.backward()
        state.loop.step += 1
        if state.loop.step % step_every == 0:
            state.optimizer.step()
            state.optimizer.zero_grad()
            state.ema.update(state.unwrapped)
            state.loop.last_opt_step = state.loop.step - 1
    state.scheduler.step()


def save(state: TrainingState, folder) -> None:
    save_snapshot(folder, state.loop.step, 0, state.state_dict, state.rng, state.pending_gradients(), lambda: None)


def test_round_trip_restores_every_tensor_counter_and_generator(tiny_yaml, tmp_path):
    trained = new_state(tiny_yaml)
    train_steps(trained, 3)
    trained.loop = LoopState(epoch=2, batch=5, step=3, last_opt_step=2, mean_loss=[0.1, 0.2, 0.3])
    trained.stopper(0, 0.4)
    trained.stopper(1, 0.3)
    trained.maps = np.array([0.1, 0.5, 0.9])
    trained.rng.random()
    torch.manual_seed(123)
    np.random.seed(7)
    save(trained, tmp_path)
    expected_draws = (torch.rand(3), np.random.rand(3), random.random(), trained.rng.random())

    restored = new_state(tiny_yaml, seed=1)
    snapshot = latest_snapshot(tmp_path)
    restored.load_state_dict(read_snapshot(snapshot))
    assert read_rank_files(snapshot, 0, restored.rng)
    draws = (torch.rand(3), np.random.rand(3), random.random(), restored.rng.random())
    assert torch.equal(draws[0], expected_draws[0]) and np.array_equal(draws[1], expected_draws[1])
    assert draws[2:] == expected_draws[2:]
    for a, b in ((trained.unwrapped, restored.unwrapped), (trained.ema, restored.ema)):
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), key
    a, b = trained.optimizer.state_dict(), restored.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for pid, entries in a["state"].items():
        for name, value in entries.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][pid][name])), (pid, name)
    assert restored.scheduler.state_dict() == trained.scheduler.state_dict()
    assert restored.loop == trained.loop and np.array_equal(restored.maps, trained.maps)
    assert (restored.stopper.best_fitness, restored.stopper.best_epoch) == (0.4, 0)


def test_pending_gradients_come_back_in_their_parameters_layout(tiny_yaml, tmp_path):
    trained = new_state(tiny_yaml)
    train_steps(trained, 3, step_every=2)  # the third backward is not yet applied
    pending = trained.pending_gradients()
    assert pending and all(torch.equal(pending[k], p.grad) for k, p in trained.unwrapped.named_parameters())
    save(trained, tmp_path)
    restored = new_state(tiny_yaml)
    snapshot = latest_snapshot(tmp_path)
    restored.load_pending_gradients(read_pending_grads(snapshot, 0))
    for key, param in restored.unwrapped.named_parameters():
        assert torch.equal(param.grad, pending[key]) and param.grad.stride() == param.stride(), key
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "grad and param do not obey the gradient layout contract"
        loss = sum(p.float().square().mean() for p in restored.model(torch.rand(2, 3, 64, 64)))
        loss.backward()
    assert new_state(tiny_yaml).pending_gradients() == {}  # nothing pending right after a step


def test_newer_or_older_states_are_refused_and_version_1_is_read(tiny_yaml, tmp_path):
    state = new_state(tiny_yaml)
    save(state, tmp_path)
    snapshot = latest_snapshot(tmp_path)
    trainer_file = snapshot / "trainer.json"
    trainer = json.loads(trainer_file.read_text())
    assert trainer["version"] == STATE_VERSION
    trainer_file.write_text(json.dumps({**trainer, "version": STATE_VERSION + 1}))
    with pytest.raises(StateError, match="newer yolo-accel"):
        read_snapshot(snapshot)
    trainer_file.write_text(json.dumps({"epoch": 3}))
    with pytest.raises(StateError, match="made by an older version"):
        read_snapshot(snapshot)
    # version 1 kept best fitness twice and the planned epochs in its config copy
    old = {**trainer, "version": 1, "config": {"epochs": 7},
           "loop": {**trainer["loop"], "best_fitness": 0.25, "best_epoch": 2}}
    del old["planned_epochs"]
    trainer_file.write_text(json.dumps(old))
    restored = new_state(tiny_yaml)
    restored.load_state_dict(read_snapshot(snapshot))
    assert restored.planned_epochs == 7 and restored.loop == LoopState()


def test_a_missing_snapshot_names_the_folder(tmp_path):
    with pytest.raises(StateError, match=str(tmp_path)):
        latest_snapshot(tmp_path)


def test_snapshots_keep_the_one_before_and_a_failed_save_leaves_nothing_behind(tiny_yaml, tmp_path, monkeypatch):
    import errno
    import os

    import yolo_accel.state as state_module

    state = new_state(tiny_yaml)
    for step in (1, 2, 3):
        state.loop.step = step
        save(state, tmp_path)
    assert [p.name for p in snapshots(tmp_path)] == ["000000003", "000000002"]  # the latest and the one before
    umask = os.umask(0)
    os.umask(umask)
    assert all((p.stat().st_mode & 0o777) == (0o666 & ~umask) for p in (tmp_path / "000000003").iterdir())
    weights = save_weights(state.unwrapped, tmp_path.parent / "w.safetensors")
    assert (weights.stat().st_mode & 0o777) == (0o666 & ~umask)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module, "save_tensors", disk_full)
    state.loop.step = 4
    with pytest.raises(StateError, match=r"no space left on the device\. The previous state is kept"):
        save(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000002", "000000003", "latest.json"]


def test_a_damaged_snapshot_is_named(tiny_yaml, tmp_path):
    state = new_state(tiny_yaml)
    save(state, tmp_path)
    model = latest_snapshot(tmp_path) / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(StateError, match=r"model\.safetensors: damaged or unreadable"):
        read_snapshot(latest_snapshot(tmp_path))
