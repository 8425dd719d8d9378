"""`val --save-json` scored by pycocotools agrees with our mAP50-95 (they differ slightly by design)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIXTURES
from PIL import Image

from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.val import validate

WEIGHTS = str(FIXTURES / "demo_yolov5n.safetensors")


def coco_ground_truth(root: Path, names: list[str]) -> dict:
    """The demo val labels as a COCO annotation file (image ids are the numeric file stems)."""
    images, annotations = [], []
    for image_path in sorted((root / "images" / "val").glob("*.png")):
        width, height = Image.open(image_path).size
        image_id = int(image_path.stem)
        images.append({"id": image_id, "width": width, "height": height, "file_name": image_path.name})
        for row in (root / "labels" / "val" / f"{image_path.stem}.txt").read_text().splitlines():
            if not row.strip():
                continue
            cls, x, y, w, h = (float(v) for v in row.split())
            box = [(x - w / 2) * width, (y - h / 2) * height, w * width, h * height]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in enumerate(names)]}


def test_pycocotools_agrees_with_our_map(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = write_demo_dataset(tmp_path / "demo", train_images=4, val_images=100, imgsz=128)
    save_dir, (result,) = validate(str(data), [WEIGHTS], imgsz=128, save_json=True, project=str(tmp_path / "runs"),
                                   workers=0)
    truth_file = tmp_path / "truth.json"
    names = ["circle", "square", "triangle", "cross", "ring", "star"]
    truth_file.write_text(json.dumps(coco_ground_truth(data.parent, names)))
    truth = COCO(str(truth_file))
    detections = truth.loadRes(str(save_dir / "demo_yolov5n_predictions.json"))
    evaluator = COCOeval(truth, detections, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    coco_map, coco_map50 = evaluator.stats[0], evaluator.stats[1]
    print(f"pycocotools mAP50-95 {coco_map:.4f} mAP50 {coco_map50:.4f}; ours {result.metrics.map50_95:.4f} "
          f"{result.metrics.map50:.4f}")
    # COCO matches greedily by score over all detections per image and class and interpolates recall per 0.01;
    # YOLOv5 matches per image at each IoU and integrates its own PR curve: close, not equal.
    assert abs(coco_map - result.metrics.map50_95) < 0.01, (coco_map, result.metrics.map50_95)
    assert abs(coco_map50 - result.metrics.map50) < 0.02, (coco_map50, result.metrics.map50)
