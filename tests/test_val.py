"""yolo-accel val: metrics of trained weights, saved outputs, and equality across process counts.

tests/fixtures/demo_yolov5n.safetensors is the best.safetensors of the README's `yolo-accel train` (yolov5n, demo
data, 50 epochs at 128 px), stored in fp16.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from yolo_accel.config import ConfigError
from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.val import validate

WEIGHTS = str(FIXTURES / "demo_yolov5n.safetensors")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo"), train_images=8, val_images=100, imgsz=128)


def test_trained_weights_score_on_the_demo_val_split(demo_data, tmp_path, caplog):
    with caplog.at_level("INFO", logger="yolo_accel"):
        save_dir, (result,) = validate(str(demo_data), [WEIGHTS], imgsz=128, project=str(tmp_path), workers=0,
                                       save_txt=True, save_conf=True, save_json=True)
    assert result.images == 100 and result.instances > 250
    assert result.metrics.map50 > 0.85 and 0.5 < result.metrics.map50_95 < result.metrics.map50
    assert "mAP50-95" in caplog.text and "ring" in caplog.text and "Speed:" in caplog.text
    metrics = json.loads((save_dir / "metrics.json").read_text())[WEIGHTS]
    assert metrics["mAP50"] == pytest.approx(result.metrics.map50) and set(metrics["classes"]) >= {"circle", "star"}
    labels = sorted((save_dir / "labels").glob("*.txt"))
    assert len(labels) == 100
    first = [list(map(float, row.split())) for row in labels[0].read_text().splitlines()]
    assert all(len(row) == 6 and min(row[1:5]) >= 0 and max(row[1:5]) <= 1 for row in first)
    detections = json.loads((save_dir / "demo_yolov5n_predictions.json").read_text())
    assert {"image_id", "category_id", "bbox", "score"} <= set(detections[0])
    assert all(0 <= d["bbox"][0] <= 128 and d["bbox"][2] > 0 for d in detections)
    assert (save_dir / "confusion_matrix.png").is_file() and (save_dir / "val_batch0_pred.jpg").is_file()


def test_val_refuses_weights_for_another_class_count(demo_data, tmp_path):
    from yolo_accel.checkpoint import save_weights
    from yolo_accel.model import build_model

    other = save_weights(build_model("yolov5n", nc=3), tmp_path / "nc3.safetensors")
    with pytest.raises(ConfigError, match=r"nc=3 but .* has 6 classes"):
        validate(str(demo_data), [str(other)], imgsz=128, project=str(tmp_path), workers=0)
    with pytest.raises(ConfigError, match="at least one"):
        validate(str(demo_data), [], project=str(tmp_path))


@pytest.mark.slow
def test_two_processes_give_exactly_the_single_process_metrics(demo_data, tmp_path):
    args = [str(ROOT / "cli.py"), "val", "--data", str(demo_data), "--weights", WEIGHTS, "--img", "128",
            "--batch-size", "16", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    runs = [[sys.executable, *args, "--project", str(tmp_path / "one")],
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
             *args, "--project", str(tmp_path / "two")]]
    for command in runs:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    one, two = (json.loads((tmp_path / p / "exp" / "metrics.json").read_text())[WEIGHTS] for p in ("one", "two"))
    # every image once (no padding duplicates) with the same letterbox; the only difference left is the float
    # rounding of convolutions over batches of 8 instead of 16 (~1e-8 relative)
    assert one["images"] == two["images"] == 100 and one["instances"] == two["instances"]
    for key in ("precision", "recall", "mAP50", "mAP50-95"):
        assert one[key] == pytest.approx(two[key], rel=1e-6, abs=1e-9), key
    assert one["classes"].keys() == two["classes"].keys()
    for name, values in one["classes"].items():
        assert values == pytest.approx(two["classes"][name], rel=1e-6, abs=1e-9), name


def test_test_time_augmentation(demo_data, tmp_path):
    import torch

    from yolo_accel.checkpoint import load_model

    model = load_model(WEIGHTS).eval()
    with torch.no_grad():
        plain, augmented = model(torch.rand(1, 3, 160, 160)), model.forward_augmented(torch.rand(1, 3, 160, 160))
    # scale 1 without its stride-32 boxes, 0.83 flipped (padded back to 160), 0.67 (padded to 128) without its
    # stride-8 boxes
    assert plain.shape[1] == 3 * (400 + 100 + 25)
    assert augmented.shape[1] == 3 * (400 + 100) + 3 * (400 + 100 + 25) + 3 * (64 + 16)
    plain_dir, (plain_result,) = validate(str(demo_data), [WEIGHTS], imgsz=160, project=str(tmp_path), workers=0,
                                          plots=False)
    assert not [*plain_dir.glob("*.png"), *plain_dir.glob("*.jpg")]
    _, (tta_result,) = validate(str(demo_data), [WEIGHTS], imgsz=160, project=str(tmp_path), workers=0, augment=True)
    assert tta_result.metrics.map50_95 > plain_result.metrics.map50_95 - 0.02 and tta_result.metrics.map50 > 0.85
