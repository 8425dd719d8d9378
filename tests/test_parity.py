"""Parity with Ultralytics YOLOv5 v7.0, against fixtures written by tests/fixtures/make_reference_fixtures.py."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REFERENCE
from safetensors.torch import load_file
from seeded_weights import seeded_state_dict

from yolo_accel.checkpoint import import_ultralytics
from yolo_accel.model import build_model
from yolo_accel.model.summary import summarize

TABLE = json.loads((REFERENCE / "models.json").read_text())
VARIANTS = list(TABLE)


def assert_outputs_match(model: torch.nn.Module, expected: dict[str, torch.Tensor], atol: float = 5e-3) -> None:
    """Equal to float32 rounding. The convolution algorithms torch picks differ between CPUs, rounding accumulates
    over a few hundred layers (yolov5x: up to 4e-3 px on boxes of hundreds of pixels, against the fixtures made on
    another CPU), and any real difference of architecture or weights shows up as whole pixels.

    Train-mode maps normalise with the batch's own statistics, which amplify those rounding differences (the more
    so the deeper the model and the smaller the maps); they are compared in relative L2 norm (1e-2; seen up to 3e-3
    for yolov5x, where a wrong weight or layer gives about 1), and for P6 models,
    whose 64-px test images give 1x1 maps at stride 64 (batch variance of a handful of values: seen 0.3 between
    CPUs), by shape alone. Eval mode, the same weights and head with fixed statistics, is compared elementwise."""
    images = expected["images"]
    with torch.no_grad():
        train_maps = __import__("copy").deepcopy(model).train()(images)
        for i, level in enumerate(train_maps):
            reference = expected[f"train.{i}"]
            assert level.shape == reference.shape
            if len(train_maps) < 4:
                assert float((level - reference).norm() / reference.norm()) < 1e-2, i
        assert f"train.{len(train_maps)}" not in expected
        model.eval()
        torch.testing.assert_close(model(images[:1]), expected["eval"], atol=atol, rtol=1e-4)
        model.fuse()
        torch.testing.assert_close(model(images[:1]), expected["eval_fused"], atol=atol, rtol=1e-4)


def test_all_shipped_variants_have_fixtures():
    assert VARIANTS == ["yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x",
                        "yolov5n6", "yolov5s6", "yolov5m6", "yolov5l6", "yolov5x6"]


# the two smallest in every run; the larger ones (seconds each on 2 cores) with the slow tests
@pytest.mark.parametrize("variant", [v if v in ("yolov5n", "yolov5s", "yolov5n6") else
                                     pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def test_variant_matches_reference(variant):
    reference = TABLE[variant]
    model = build_model(variant)
    state = model.state_dict()
    keys = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()]
    assert keys == reference["keys"]

    summary = summarize(model)
    assert f"{summary.layers} layers, {summary.parameters} parameters, {summary.gradients} gradients, " \
           f"{summary.gflops:.1f} GFLOPs" == reference["summary"]["line"]
    assert summary.gflops == pytest.approx(reference["summary"]["gflops"], rel=1e-12)

    model.load_state_dict(seeded_state_dict(state))
    assert_outputs_match(model, load_file(REFERENCE / f"outputs_{variant}.safetensors"))
    fused = summarize(model)
    assert (fused.layers, fused.parameters) == (reference["fused_summary"]["layers"],
                                                reference["fused_summary"]["parameters"])
    assert fused.gflops == pytest.approx(reference["fused_summary"]["gflops"], rel=1e-12)


def test_same_seed_gives_the_reference_initial_weights(tiny_yaml):
    torch.manual_seed(0)
    state = build_model(tiny_yaml).state_dict()
    expected = load_file(REFERENCE / "tiny_init.safetensors")
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_reference_checkpoint_imports_with_identical_outputs():
    model, names, info = import_ultralytics(REFERENCE / "tiny_ultralytics.pt")
    assert names == ["red", "green", "blue"]
    assert model.nc == 3 and info["epoch"] == -1
    assert all(v.dtype != torch.float16 for v in model.state_dict().values())
    assert_outputs_match(model, load_file(REFERENCE / "tiny_outputs.safetensors"), atol=1e-5)
