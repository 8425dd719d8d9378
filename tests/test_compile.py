"""torch.compile through Accelerate (`accelerate launch --dynamo_backend ...`, or `train --compile`): the run's
weights, EMA and resumable state are those of an uncompiled run, and it resumes either way."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.utils import DynamoBackend
from safetensors.torch import load_file
from test_train import final_weights, latest_state, max_difference, tiny_config

from yolo_accel.checkpoint import read_weights
from yolo_accel.config import TrainConfig
from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.engine import compile_plugin
from yolo_accel.results import read_results
from yolo_accel.train import train
from yolo_accel.val import validate


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("data"), train_images=24, val_images=8, imgsz=64, seed=3)


def saved_keys(run) -> dict[str, list[str]]:
    state = latest_state(run)
    return {"best": sorted(read_weights(run / "weights" / "best.safetensors")[0]),
            "model": sorted(load_file(str(state / "model.safetensors"))),
            "ema": sorted(load_file(str(state / "ema.safetensors")))}


def test_compile_flag_asks_for_inductor():
    assert compile_plugin(True).backend == DynamoBackend.INDUCTOR
    assert compile_plugin(False) is None


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_compiled_run_writes_what_a_plain_run_writes_and_resumes_either_way(tiny_data, tmp_path, monkeypatch,
                                                                               caplog, backend):
    """The launcher's dynamo_backend (ACCELERATE_DYNAMO_BACKEND, as `accelerate launch --dynamo_backend` sets it)
    compiled the training model, and its weights were saved under the wrapper's "_orig_mod." keys, which no
    command could load. aot_eager traces forward and backward as inductor does, without generating code."""
    plain = train(tiny_config(tiny_data, tmp_path / "plain", epochs=1))
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", backend.upper())
    with caplog.at_level("INFO", logger="yolo_accel"):
        compiled = train(tiny_config(tiny_data, tmp_path / "compiled", epochs=1))
    assert f"fp32 on cpu, compiled ({backend})" in caplog.text
    assert saved_keys(compiled) == saved_keys(plain)
    assert not any("_orig_mod" in k for keys in saved_keys(compiled).values() for k in keys)
    assert max_difference(final_weights(plain), final_weights(compiled)) < 1e-3  # the same training, other kernels
    _, results = validate(str(tiny_data), [str(compiled / "weights" / "best.safetensors")], imgsz=64, workers=0,
                          project=str(tmp_path / "val"), plots=False)
    assert results[0].images == 8

    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")  # a compiled run resumed without compiling, and back
    train(TrainConfig(resume=str(compiled), epochs=2))
    loop = json.loads((latest_state(compiled) / "trainer.json").read_text())["loop"]
    assert loop["epoch"] == 2
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", backend.upper())
    train(TrainConfig(resume=str(plain), epochs=2))
    assert [r["epoch"] for r in read_results(plain / "results.csv")] == [0, 1]
    assert torch.are_deterministic_algorithms_enabled() is False
