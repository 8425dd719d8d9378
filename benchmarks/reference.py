"""YOLOv5 v7.0's figures for the same benchmarks, on the same files: run inside the reference environment.

    ../shared/tools/setup_reference.sh DIR        # the PyPI package yolov5==7.0.14, patched to run offline
    DIR/bin/python benchmarks/reference.py loader --data DATA.yaml --img 640 --batch-size 16 --workers 2
    DIR/bin/python benchmarks/reference.py train --data DATA.yaml --cfg yolov5n.yaml --img 320 --epochs 3
    DIR/bin/python benchmarks/reference.py val --data DATA.yaml --weights YOLOV5.pt --img 320 --batch-size 32

`loader` times YOLOv5's create_dataloader / LoadImagesAndLabels as benchmarks/dataloader.py times ours (or, with
--workers 0, the CPU time per image in one process); `train` runs `yolov5 train` twice, for 1 and for --epochs
epochs, and reports the steady-state seconds per epoch from the difference (setup, the first epoch's warm-up
and the final validation cancel out); `val` times the second of two `yolov5 val` passes, as benchmarks/val.py
times ours (give ours the same weights through `yolo-accel convert`). The last stdout line is one JSON object.
Never imported by yolo-accel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def loader(args: argparse.Namespace) -> dict:
    import torch
    import yaml
    from yolov5.utils.dataloaders import create_dataloader

    data = yaml.safe_load(Path(args.data).read_text())
    train = str(Path(data.get("path", Path(args.data).parent)) / data["train"])
    hyp = yaml.safe_load(Path(args.hyp).read_text())
    train_loader, dataset = create_dataloader(train, args.img, args.batch_size, 32, hyp=hyp, augment=True,
                                              workers=args.workers, shuffle=True, seed=args.seed,
                                              prefix="train: ")
    if args.workers == 0:  # CPU time per image in this process: what it costs to feed a GPU
        torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(args.seed)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        order = (order * (args.images // len(order) + 1))[:args.images]
        collate = type(dataset).collate_fn
        for i in order[:args.batch_size]:  # warm-up
            dataset[i]
        start_cpu, start = time.process_time(), time.perf_counter()
        for k in range(0, len(order), args.batch_size):
            collate([dataset[i] for i in order[k:k + args.batch_size]])
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
        return {"impl": "yolov5", "cpu_ms_per_image": round(cpu / len(order) * 1e3, 3),
                "wall_ms_per_image": round(wall / len(order) * 1e3, 3), "images": len(order), "img": args.img}
    seen, images = 0, 0
    start = time.perf_counter()
    while seen < args.warmup + args.batches:
        for batch_images, *_ in train_loader:
            seen += 1
            if seen == args.warmup:
                start = time.perf_counter()
            elif seen > args.warmup:
                images += len(batch_images)
            if seen == args.warmup + args.batches:
                break
    seconds = time.perf_counter() - start
    return {"impl": "yolov5", "images_per_s": round(images / seconds, 2), "images": images, "img": args.img,
            "batch_size": args.batch_size, "workers": train_loader.num_workers, "seconds": round(seconds, 3)}


def train(args: argparse.Namespace) -> dict:
    walls = {}
    for epochs in (1, args.epochs):
        with tempfile.TemporaryDirectory() as project:
            command = [sys.executable, "-m", "yolov5.train", "--data", args.data, "--cfg", args.cfg, "--weights", "",
                       "--img", str(args.img), "--batch-size", str(args.batch_size), "--epochs", str(epochs),
                       "--workers", str(args.workers), "--device", args.device, "--project", project, "--noplots",
                       "--hyp", args.hyp]
            start = time.perf_counter()
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "WANDB_MODE": "disabled"})
            if done.returncode:
                sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            walls[epochs] = time.perf_counter() - start
    steady = (walls[args.epochs] - walls[1]) / (args.epochs - 1)
    return {"impl": "yolov5", "epoch_seconds": round(steady, 2), "walls": {k: round(v, 2) for k, v in walls.items()},
            "epochs": args.epochs, "img": args.img, "batch_size": args.batch_size, "cfg": args.cfg}


def val(args: argparse.Namespace) -> dict:
    import yaml
    from yolov5 import val as yolov5_val
    from yolov5.utils.dataloaders import IMG_FORMATS

    data = yaml.safe_load(Path(args.data).read_text())
    folder = Path(data.get("path", Path(args.data).parent)) / data["val"]
    images = sum(1 for f in folder.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
    seconds = []
    with tempfile.TemporaryDirectory() as project:
        for _ in range(2):  # the first pass warms the label cache, page cache and allocator; the second is timed
            start = time.perf_counter()
            results, *_ = yolov5_val.run(data=args.data, weights=args.weights, batch_size=args.batch_size,
                                      imgsz=args.img, workers=args.workers, device=args.device,
                                      project=project, plots=False)
            seconds.append(time.perf_counter() - start)
    return {"impl": "yolov5", "images_per_s": round(images / seconds[-1], 2), "val_seconds": round(seconds[-1], 3),
            "images": images, "mAP50": round(float(results[2]), 4), "mAP50-95": round(float(results[3]), 4),
            "img": args.img, "batch_size": args.batch_size, "workers": args.workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["loader", "train", "val"])
    parser.add_argument("--data", required=True)
    hyps = Path(__file__).resolve().parent.parent / "configs" / "hyps"
    parser.add_argument("--hyp", default=str(hyps / "hyp.scratch-low.yaml"))
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--images", type=int, default=128, help="images timed for the CPU cost (--workers 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", help="val: a YOLOv5 checkpoint (.pt)")
    args = parser.parse_args()
    # YOLOv5's checkpoints are pickled modules, which torch>=2.6 refuses to load by default (here and in the
    # `yolov5 train` runs started from here)
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    result = {"loader": loader, "train": train, "val": val}[args.what](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
