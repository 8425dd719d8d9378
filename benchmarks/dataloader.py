"""Training data-loader throughput: images/s of the full augmented pipeline on a dataset's train split.

Mosaic, random perspective, HSV, flips and collate with a training hyp file, shuffled, no image cache, so
decoding is measured too. Progress goes to stderr; the last stdout line is one JSON object.

    python benchmarks/dataloader.py --data DATA.yaml --img 640 --batch-size 16 --workers 2 --batches 30
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout without installing

from yolo_accel.config import load_hyp
from yolo_accel.data.dataset import YoloDataset
from yolo_accel.data.labels import scan_labels
from yolo_accel.data.loader import build_dataloader
from yolo_accel.data.sources import list_images, load_data_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo", help="dataset yaml, a shipped name, or 'demo'")
    parser.add_argument("--hyp", default="scratch-low", help="hyperparameter yaml or shipped name")
    parser.add_argument("--img", type=int, default=640, help="training image size (pixels)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batches", type=int, default=30, help="batches timed after the warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="batches loaded before timing starts (worker start-up)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    hyp = load_hyp(args.hyp)
    data = load_data_config(args.data)
    index = scan_labels(list_images(data, "train"), verbose=False)
    dataset = YoloDataset(index, imgsz=args.img, batch_size=args.batch_size, augment=True, hyp=hyp, cache=None,
                          seed=args.seed)
    loader = build_dataloader(dataset, batch_size=args.batch_size, workers=args.workers, shuffle=True,
                              seed=args.seed)
    print(f"{len(dataset)} train images from {data.source}, {len(loader)} batches per epoch, "
          f"{loader.num_workers} workers", file=sys.stderr)

    # small datasets run out of batches: epochs follow one another as in training (set_epoch, workers kept)
    seen, images, epoch = 0, 0, 0
    start = time.perf_counter()
    while seen < args.warmup + args.batches:
        loader.batch_sampler.sampler.set_epoch(epoch)
        for batch in loader:
            seen += 1
            if seen == args.warmup:
                start = time.perf_counter()
            elif seen > args.warmup:
                images += len(batch.images)
            if seen % 5 == 0 or seen == args.warmup + args.batches:
                print(f"batch {seen}/{args.warmup + args.batches} (epoch {epoch})", file=sys.stderr)
            if seen == args.warmup + args.batches:
                break
        epoch += 1
    seconds = time.perf_counter() - start
    result = {"images_per_s": round(images / seconds, 2), "images": images, "batches": args.batches,
              "batch_size": args.batch_size, "img": args.img, "workers": loader.num_workers,
              "seconds": round(seconds, 3), "warmup": args.warmup, "data": str(data.source),
              "train_images": len(dataset)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
