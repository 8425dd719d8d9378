"""yolo-accel export: TorchScript and ONNX outputs equal PyTorch's (boxes in image units, scores) within 1e-4."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from typer.testing import CliRunner

from yolo_accel.checkpoint import load_model
from yolo_accel.cli import app
from yolo_accel.config import ConfigError
from yolo_accel.export import export, output_difference


@pytest.fixture
def weights(tmp_path):
    return str(shutil.copy(FIXTURES / "demo_yolov5n.safetensors", tmp_path / "demo.safetensors"))


def reference_output(weights: str, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_model(weights).eval().fuse()(images)


def test_torchscript_and_onnx_match_pytorch(weights):
    onnxruntime = pytest.importorskip("onnxruntime")
    paths = export(weights, imgsz=128, device="cpu")
    assert [p.suffix for p in paths] == [".torchscript", ".onnx"]
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    expected = reference_output(weights, images)
    extra = {"config.txt": ""}
    scripted = torch.jit.load(str(paths[0]), _extra_files=extra)
    assert json.loads(extra["config.txt"])["names"][0] == "circle"
    assert output_difference(scripted(images), expected, 128) <= 1e-4
    session = onnxruntime.InferenceSession(str(paths[1]), providers=["CPUExecutionProvider"])
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):  # static: batch fixed at 1
        session.run(None, {"images": images.numpy()})
    output = session.run(None, {"images": images[:1].numpy()})[0]
    assert output_difference(torch.from_numpy(output), expected[:1], 128) <= 1e-4
    onnx = pytest.importorskip("onnx")
    assert {p.key: p.value for p in onnx.load(str(paths[1])).metadata_props}["stride"] == "32"


def test_dynamic_onnx_takes_other_batch_and_image_sizes(weights):
    onnxruntime = pytest.importorskip("onnxruntime")
    (path,) = export(weights, include=("onnx",), imgsz=128, dynamic=True, device="cpu")
    images = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(2))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"images": images.numpy()})[0]
    expected = reference_output(weights, images)
    assert output.shape == tuple(expected.shape) == (2, 3 * (12 * 20 + 6 * 10 + 3 * 5), 11)
    assert output_difference(torch.from_numpy(output), expected, 160) <= 1e-4
    assert np.isfinite(output).all()


def test_export_cli_and_errors(weights):
    result = CliRunner().invoke(app, ["export", "--weights", weights, "--include", "torchscript", "--img", "64"])
    assert result.exit_code == 0, result.output
    with pytest.raises(ConfigError, match="unknown format"):
        export(weights, include=("tflite",))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--half export needs a CUDA device"):
            export(weights, half=True)
