from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from conftest import REFERENCE
from safetensors.torch import save_file

from yolo_accel.checkpoint import (
    UnsafeCheckpointError,
    WeightsError,
    check_state_dict,
    import_ultralytics,
    load_model,
    read_weights,
    save_weights,
)
from yolo_accel.model import build_model


@pytest.fixture(scope="module")
def tiny(tiny_yaml):
    torch.manual_seed(0)
    model = build_model(tiny_yaml)
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))  # non-default norm statistics
    return model.eval()


def test_round_trip_rebuilds_from_the_file_alone(tiny, tmp_path):
    path = save_weights(tiny, tmp_path / "w.safetensors", names=["a", "b", "c"], extra={"epoch": 3})
    loaded = load_model(path).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), tiny(images))
    assert loaded.names == ["a", "b", "c"]
    _, metadata = read_weights(path)
    assert metadata["format"] == "yolo-accel" and metadata["format_version"] == "1"
    assert metadata["nc"] == "3" and metadata["stride"] == "[8.0, 16.0, 32.0]" and metadata["epoch"] == "3"
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_failed_save_keeps_the_previous_file(tiny, tmp_path, monkeypatch):
    path = save_weights(tiny, tmp_path / "w.safetensors")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("yolo_accel.checkpoint.save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_weights(tiny, path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"nope\.safetensors: file not found"):
        load_model(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match=r"junk\.safetensors: not a readable safetensors file"):
        load_model(path)


def test_safetensors_without_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="no yolo-accel metadata"):
        load_model(path)


def test_shape_mismatch_names_the_keys(tiny):
    other = build_model("yolov5n")
    with pytest.raises(WeightsError, match=r"m\.safetensors: weights do not fit.*shape mismatch: "
                       r"model\.0\.conv\.weight"):
        check_state_dict(other, tiny.state_dict(), "m.safetensors")


def test_missing_and_unexpected_keys_are_named(tiny):
    state = dict(tiny.state_dict())
    state["model.99.weight"] = state.pop("model.24.anchors")
    with pytest.raises(WeightsError, match=r"missing keys: model\.24\.anchors.*unexpected keys: model\.99\.weight"):
        check_state_dict(tiny, state, "x")


class Payload:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_torch_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker), "epoch": 1}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refused global '(posix|os)\.system'"):
        import_ultralytics(path)
    assert not marker.exists()


def test_malicious_legacy_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="refused global"):
        import_ultralytics(path)
    assert not marker.exists()


def test_builtins_eval_is_refused(tmp_path):
    path = tmp_path / "eval.pt"
    path.write_bytes(b"cbuiltins\neval\n(V1+1\ntR.")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        import_ultralytics(path)


def test_a_plain_state_dict_is_not_a_yolov5_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(WeightsError, match="not a YOLOv5 checkpoint"):
        import_ultralytics(path)


def test_load_model_accepts_ultralytics_pt():
    model = load_model(REFERENCE / "tiny_ultralytics.pt")
    assert model.names == ["red", "green", "blue"] and model.nc == 3


def test_class_names_must_fit_the_model(tiny, tmp_path):
    path = save_weights(tiny, tmp_path / "w.safetensors", names=["a", "b"])
    with pytest.raises(WeightsError, match="2 class names for a model with nc=3"):
        load_model(path)
    path = save_weights(tiny, tmp_path / "w.safetensors", names=["a", "b", "c"], extra={"names": '{"0": 1}'})
    with pytest.raises(WeightsError, match="must be a list of strings"):
        load_model(path)
    path = save_weights(tiny, tmp_path / "w.safetensors", extra={"names": "[not json"})
    with pytest.raises(WeightsError, match="'names' is not valid JSON"):
        load_model(path)


def test_safe_filename():
    from yolo_accel.files import safe_filename

    assert safe_filename("person", "class0") == "person"
    assert safe_filename("../../x", "c") == ".._.._x"
    assert safe_filename("..", "c") == safe_filename("", "c") == safe_filename(" . ", "c") == "c"
    assert safe_filename("a/b\\c:d", "c") == "a_b_c_d"
    assert safe_filename("行人", "c") == "行人"
    assert len(safe_filename("é" * 200, "c").encode()) <= 120


def test_hostile_headers_are_refused_before_anything_is_built(tiny, tmp_path):
    import time

    from yolo_accel.config import ConfigError

    huge = {**tiny.yaml, "nc": 20_000_000}
    path = save_weights(tiny, tmp_path / "huge.safetensors", extra={"model_yaml": json.dumps(huge)})
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="nc must be an integer from 1 to 10000"):
        load_model(path)
    wide = {**tiny.yaml, "backbone": [[-1, 1, "Conv", [10**7, 3, 2]], *tiny.yaml["backbone"][1:]]}
    path = save_weights(tiny, tmp_path / "wide.safetensors", extra={"model_yaml": json.dumps(wide)})
    with pytest.raises(ConfigError, match=r"wide\.safetensors: layer 0: 1250000 output channels"):
        load_model(path)
    assert time.perf_counter() - start < 2  # refused from the header, nothing allocated
    path = save_weights(tiny, tmp_path / "v.safetensors", extra={"format_version": "1; rm -rf /"})
    with pytest.raises(WeightsError, match=r"format_version .* is not a number"):
        load_model(path)


def test_a_pickle_whose_modules_contain_themselves_is_refused(tiny, tmp_path, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("models.yolo")

    class DetectionModel:  # what an Ultralytics checkpoint names, here a module that is its own child
        pass

    DetectionModel.__module__, DetectionModel.__qualname__ = "models.yolo", "DetectionModel"
    fake.DetectionModel = DetectionModel
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.yolo", fake)
    looped = DetectionModel()
    looped.yaml, looped._parameters, looped._buffers = tiny.yaml, {}, {}
    looped._modules = {"model": looped}
    torch.save({"model": looped, "epoch": 1}, tmp_path / "loop.pt")
    with pytest.raises(WeightsError, match=r"loop\.pt: refused: the pickled modules form a cycle"):
        load_model(tmp_path / "loop.pt")
