"""Training throughput: end to end, and with the data pipeline replaced by tensors already in memory.

    python benchmarks/train.py --data DATA.yaml --cfg yolov5n.yaml --img 320 --batch-size 16 --epochs 2

Runs `yolo-accel train` (validation each epoch, as YOLOv5 does) and times every epoch and its training loop;
then replays the same number of batches from memory through the same model, loss and optimizer step to get
the compute ceiling. The last stdout line is one JSON object.
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

from yolo_accel import engine
from yolo_accel import train as train_module
from yolo_accel.config import TrainConfig
from yolo_accel.data.batch_augment import apply_hsv_batch


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="")
    parser.add_argument("--mixed-precision", default="auto")
    return parser.parse_args()


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    loop_seconds: list[float] = []
    images_seen = [0]
    captured: dict = {}
    original_epoch = engine.train_one_epoch

    def counted(loader):
        for batch in loader:
            images_seen[0] += len(batch[0])
            yield batch

    def timed_epoch(parts, loader, *rest, **kwargs):
        captured["parts"], captured["loader"] = parts, loader
        start = time.perf_counter()
        marks.setdefault("first_epoch", start)
        done = original_epoch(parts, counted(loader), *rest, **kwargs)
        loop_seconds.append(time.perf_counter() - start)
        return done

    original_finish = train_module.finish

    def timed_finish(*a, **kw):
        marks["epochs_done"] = time.perf_counter()
        return original_finish(*a, **kw)

    marks: dict[str, float] = {}
    train_module.train_one_epoch = timed_epoch  # time the loop the trainer really runs
    train_module.finish = timed_finish
    with tempfile.TemporaryDirectory() as project:
        cfg = TrainConfig(data=args.data, cfg=args.cfg, imgsz=args.img, batch_size=args.batch_size, epochs=args.epochs,
                          workers=args.workers, project=project, device=args.device,
                          mixed_precision=args.mixed_precision)
        start = time.perf_counter()
        train_module.train(cfg)
        total = time.perf_counter() - start
        ceiling = measure_ceiling(captured["parts"], captured["loader"], batches=min(len(captured["loader"]), 30))
    result = {
        "images_per_s": round(images_seen[0] / sum(loop_seconds), 2),
        "ceiling_images_per_s": round(ceiling, 2),
        # like YOLOv5's "N epochs completed in": training + per-epoch validation + saving, no setup
        "epoch_seconds": round((marks["epochs_done"] - marks["first_epoch"]) / args.epochs, 2),
        "train_loop_seconds_per_epoch": round(sum(loop_seconds) / len(loop_seconds), 2),
        "total_seconds": round(total, 2),
        "epochs": args.epochs, "batch_size": args.batch_size, "img": args.img, "cfg": args.cfg, "data": args.data,
        "workers": args.workers, "device": str(captured["parts"].accelerator.device),
        "mixed_precision": captured["parts"].accelerator.mixed_precision, "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


def measure_ceiling(parts, loader, batches: int) -> float:
    """Images/s of forward + loss + backward + step on batches preloaded into memory (no data loading)."""
    device = parts.accelerator.device
    loader.set_epoch(0)
    stored = []
    for i, (images, targets, _, _, hsv_gains) in enumerate(loader):
        images = images.to(device)
        if hsv_gains is not None:
            images = apply_hsv_batch(images, hsv_gains)
        stored.append((images, targets.to(device)))
        if i + 1 == batches:
            break
    model, optimizer, criterion, accelerator = parts.model, parts.optimizer, parts.criterion, parts.accelerator
    model.train()

    def step(images, targets):
        predictions = model(images.float() / 255)
        loss, _ = criterion([p.float() for p in predictions], targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()

    step(*stored[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for images, targets in stored:
        step(images, targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(x[0]) for x in stored) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
