"""yolo-accel detect and the Python API on the demo data with the trained demo weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from PIL import Image
from typer.testing import CliRunner

from yolo_accel import YOLO
from yolo_accel.boxes import box_iou, xywh_to_xyxy
from yolo_accel.checkpoint import load_model, save_weights
from yolo_accel.cli import app
from yolo_accel.config import ConfigError
from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.predict import list_sources

WEIGHTS = str(FIXTURES / "demo_yolov5n.safetensors")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo"), train_images=4, val_images=12, imgsz=128).parent


def ground_truth(image: Path) -> torch.Tensor:
    rows = (image.parent.parent.parent / "labels" / "val" / f"{image.stem}.txt").read_text().split("\n")
    labels = torch.tensor([[float(x) for x in r.split()] for r in rows if r.strip()]).reshape(-1, 5)
    return torch.cat((labels[:, :1], xywh_to_xyxy(labels[:, 1:]) * 128), 1)


def test_predictions_match_the_drawn_shapes(demo_root):
    images = sorted((demo_root / "images" / "val").glob("*.png"))
    results = YOLO(WEIGHTS).predict([str(p) for p in images], imgsz=128)
    assert [r.path for r in results] == images
    matched = total = 0
    for result in results:
        truth = ground_truth(result.path)
        total += len(truth)
        if len(truth) and len(result.boxes_xyxy):
            iou = box_iou(truth[:, 1:], result.boxes_xyxy)
            best = iou.max(1)
            same_class = result.classes[best.indices] == truth[:, 0]
            matched += int(((best.values > 0.5) & same_class).sum())
    assert total > 20 and matched / total > 0.7


def test_detect_saves_images_labels_and_crops(demo_root, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["detect", "--source", str(demo_root / "images" / "val"), "--weights", WEIGHTS,
                                 "--img", "128", "--project", str(tmp_path), "--save-txt", "--save-conf",
                                 "--save-crop", "--classes", "0,1,2,3,4,5"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "exp"
    annotated = sorted(run.glob("*.png"))
    assert len(annotated) == 12 and Image.open(annotated[0]).size == (128, 128)
    original = Image.open(demo_root / "images" / "val" / annotated[0].name)
    assert Image.open(annotated[0]).tobytes() != original.convert("RGB").tobytes()  # boxes were drawn
    rows = [r.split() for f in (run / "labels").glob("*.txt") for r in f.read_text().splitlines()]
    assert rows and all(len(r) == 6 for r in rows)
    assert list((run / "crops").rglob("*.jpg"))


def test_class_names_from_weights_never_leave_the_run_folder(demo_root, tmp_path):
    hostile = ["../../escaped", "/tmp/abs", "..", "a\\..\\b", "nul\x00byte", "x" * 400]
    weights = save_weights(load_model(WEIGHTS), tmp_path / "hostile.safetensors", names=hostile)
    project = tmp_path / "deep" / "project"
    result = CliRunner().invoke(app, ["detect", "--source", str(demo_root / "images" / "val"), "--weights",
                                      str(weights), "--img", "128", "--project", str(project), "--save-crop",
                                      "--nosave"])
    assert result.exit_code == 0, result.output
    crops = project / "exp" / "crops"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != weights]
    assert written and all(p.resolve().is_relative_to(crops.resolve()) for p in written)
    folders = {p.parent.name for p in written}
    assert all(p.parent.parent == crops for p in written) and len(folders) > 1
    assert all(len(name.encode()) <= 120 and "/" not in name and "\x00" not in name for name in folders)


def test_detect_filters_classes(demo_root):
    everything = YOLO(WEIGHTS).predict(str(demo_root / "images" / "val"), imgsz=128)
    results = YOLO(WEIGHTS).predict(str(demo_root / "images" / "val"), imgsz=128, classes=[0])
    kept = sum(len(r.classes) for r in results)
    assert all((r.classes == 0).all() for r in results)
    assert 0 < kept < sum(len(r.classes) for r in everything)  # class 0 found, the others filtered out


def test_sources_in_every_form(demo_root, tmp_path):
    folder = demo_root / "images" / "val"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / '00001.png'}\n{folder / '00002.png'}\n")
    assert len(list_sources(folder)) == 12
    assert len(list_sources(f"{folder}/0000[0-4].png")) == 5
    assert [p.name for p in list_sources(listing)] == ["00001.png", "00002.png"]
    assert list_sources(folder / "00003.png") == [folder / "00003.png"]
    with pytest.raises(ConfigError, match="no such image"):
        list_sources(tmp_path / "missing")


def test_api_val_and_names(demo_root):
    model = YOLO(WEIGHTS)
    assert model.names == ["circle", "square", "triangle", "cross", "ring", "star"]
    result = model.val(data=str(demo_root / "data.yaml"), imgsz=128, workers=0, project=str(demo_root / "runs"))
    assert result.images == 12 and result.metrics.map50 > 0.6


def test_api_export_and_refused_options(demo_root, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(Path(WEIGHTS).read_bytes())
    model = YOLO(weights)
    assert model.export(format="torchscript", imgsz=64) == [tmp_path / "w.torchscript"]
    with pytest.raises(ConfigError, match="--conf-thres"):
        model.predict(demo_root / "images" / "val", conf=2)
    with pytest.raises(ConfigError, match="export needs a weights file"):
        YOLO("yolov5n").export()


def test_detect_keeps_same_named_images_and_skips_a_broken_one(demo_root, tmp_path):
    images = sorted((demo_root / "images" / "val").glob("*.png"))[:2]
    for folder, image in zip(("a", "b"), images):
        (tmp_path / "src" / folder).mkdir(parents=True)
        (tmp_path / "src" / folder / "same.png").write_bytes(image.read_bytes())
    (tmp_path / "src" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = CliRunner().invoke(app, ["detect", "--source", str(tmp_path / "src" / "**" / "*.png"), "--weights",
                                      WEIGHTS, "--img", "128", "--project", str(tmp_path / "runs"), "--save-txt"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "exp"
    assert sorted(p.name for p in run.glob("*.png")) == ["same.png", "same_2.png"]
    assert sorted(p.name for p in (run / "labels").glob("*.txt")) == ["same.txt", "same_2.txt"]
    assert "broken.png: skipped, cannot be decoded" in result.output
