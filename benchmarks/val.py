"""Validation throughput (a whole `yolo-accel val` pass: loading, inference, NMS, metrics) and detect latency.

    python benchmarks/val.py --data DATA.yaml --weights W --img 320 --batch-size 32

Plots are off, as in a timed `val.run(..., plots=False)` of the reference.
The last stdout line is one JSON object: images_per_s (the second of two passes), val_seconds,
detect_ms_per_image (batch 1, file to boxes) and the mAPs it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `yolo-accel` sets it, before torch loads OpenMP

import torch

from yolo_accel import val
from yolo_accel.api import YOLO
from yolo_accel.data.sources import list_images, load_data_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--detect-images", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as project:
        for _ in range(2):  # the first pass warms the label cache, page cache and allocator; the second is timed
            start = time.perf_counter()
            _, (result,) = val.validate(args.data, [args.weights], batch_size=args.batch_size, imgsz=args.img,
                                        project=project, workers=args.workers, plots=False)
            seconds.append(time.perf_counter() - start)
    model = YOLO(args.weights)
    images = list_images(load_data_config(args.data), "val")[: args.detect_images]
    model.predict(str(images[0]), imgsz=args.img)
    start = time.perf_counter()
    for path in images:
        model.predict(str(path), imgsz=args.img)
    latency = (time.perf_counter() - start) / len(images) * 1e3
    print(json.dumps({
        "images_per_s": round(result.images / seconds[-1], 2), "val_seconds": round(seconds[-1], 3),
        "images": result.images, "detect_ms_per_image": round(latency, 2), "mAP50": round(result.metrics.map50, 4),
        "mAP50-95": round(result.metrics.map50_95, 4), "img": args.img, "batch_size": args.batch_size,
        "workers": args.workers, "torch_threads": torch.get_num_threads(), "data": args.data,
    }))


if __name__ == "__main__":
    main()
