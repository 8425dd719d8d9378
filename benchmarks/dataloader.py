"""Training data-loader throughput: images/s of the full augmented pipeline on a dataset's train split.

Mosaic, random perspective, HSV, flips and collate with a training hyp file, shuffled, no image cache, so
decoding is measured too. Progress goes to stderr; the last stdout line is one JSON object.

    python benchmarks/dataloader.py --data DATA.yaml --img 640 --batch-size 16 --workers 2 --batches 30
    python benchmarks/dataloader.py --data DATA.yaml --workers 0          # CPU ms per image, one process
    python benchmarks/dataloader.py --data DATA.yaml --reference-python REF/bin/python --rounds 3

With workers, it also reports each worker's resident memory at the end of every epoch (it should stay flat).
`--reference-python` runs this script and benchmarks/reference.py (YOLOv5 v7.0's loader, in the reference
environment) alternately, `--rounds` times each, and reports both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo", help="dataset yaml, a shipped name, or 'demo'")
    parser.add_argument("--hyp", default="scratch-low", help="hyperparameter yaml or shipped name")
    parser.add_argument("--img", type=int, default=640, help="training image size (pixels)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes; 0: CPU ms per image")
    parser.add_argument("--batches", type=int, default=30, help="batches timed after the warm-up")
    parser.add_argument("--warmup", type=int, default=2,
                        help="batches loaded before timing starts (worker start-up; one epoch: mosaic pools full)")
    parser.add_argument("--images", type=int, default=128, help="images timed for the CPU cost (--workers 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hsv-on-device", action="store_true",
                        help="leave HSV to the device stage, as training on a GPU does (its cost is then the GPU's)")
    parser.add_argument("--reference-python", help="the reference environment's python: alternate with YOLOv5's")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --reference-python")
    return parser.parse_args(argv)


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def cpu_cost(dataset, collate, args: argparse.Namespace) -> dict:
    """CPU time per training image in this process, whole batches as a worker builds them, in the loader's order
    (epochs follow one another when the dataset is smaller than --images)."""
    import torch

    from yolo_accel.data.loader import EpochSampler, PoolBatchSampler

    torch.set_num_threads(1)
    sampler = EpochSampler(len(dataset), shuffle=True, seed=args.seed)
    batches: list = []
    while len(batches) < args.warmup or sum(len(b) for b in batches[args.warmup:]) < args.images:
        batches += list(PoolBatchSampler(sampler, batch_size=args.batch_size, drop_last=False))
        sampler.set_epoch(sampler.epoch + 1)
    for batch in batches[:max(args.warmup, 1)]:
        collate(dataset.__getitems__(batch))
    images = 0
    start_cpu, start = time.process_time(), time.perf_counter()
    for batch in batches[max(args.warmup, 1):]:
        collate(dataset.__getitems__(batch))
        images += len(batch)
        if images >= args.images:
            break
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    return {"impl": "yolo-accel", "hsv_on_device": dataset.hsv_on_device,
            "cpu_ms_per_image": round(cpu / images * 1e3, 3),
            "wall_ms_per_image": round(wall / images * 1e3, 3), "images": images, "img": args.img,
            "warmup": args.warmup}


def throughput(args: argparse.Namespace) -> dict:
    from yolo_accel.config import AugmentHyp, hyp_slice, load_hyp
    from yolo_accel.data.dataset import YoloDataset
    from yolo_accel.data.labels import scan_labels
    from yolo_accel.data.loader import build_dataloader, collate
    from yolo_accel.data.sources import list_images, load_data_config

    hyp = hyp_slice(AugmentHyp, load_hyp(args.hyp))
    data = load_data_config(args.data)
    index = scan_labels(list_images(data, "train"), verbose=False)
    dataset = YoloDataset(index, imgsz=args.img, batch_size=args.batch_size, augment=True, hyp=hyp, cache=None,
                          seed=args.seed)
    dataset.hsv_on_device = args.hsv_on_device
    if args.workers == 0:
        return cpu_cost(dataset, collate, args)
    loader = build_dataloader(dataset, batch_size=args.batch_size, workers=args.workers, shuffle=True,
                              seed=args.seed)
    print(f"{len(dataset)} train images from {data.source}, {len(loader)} batches per epoch, "
          f"{loader.num_workers} workers", file=sys.stderr)

    # small datasets run out of batches: epochs follow one another as in training (set_epoch, workers kept)
    seen, images, epoch = 0, 0, 0
    worker_rss: list[list[float]] = []
    start = time.perf_counter()
    while seen < args.warmup + args.batches:
        loader.batch_sampler.sampler.set_epoch(epoch)
        iterator = iter(loader)
        for batch in iterator:
            seen += 1
            if seen == args.warmup:
                start = time.perf_counter()
            elif seen > args.warmup:
                images += len(batch.images)
            if seen % 5 == 0 or seen == args.warmup + args.batches:
                print(f"batch {seen}/{args.warmup + args.batches} (epoch {epoch})", file=sys.stderr)
            if seen == args.warmup + args.batches:
                break
        else:  # a whole epoch: the persistent workers' memory now
            worker_rss.append([rss_mb(w.pid) for w in getattr(iterator, "_workers", [])])
        epoch += 1
    seconds = time.perf_counter() - start
    return {"impl": "yolo-accel", "images_per_s": round(images / seconds, 2), "images": images,
            "batches": args.batches, "batch_size": args.batch_size, "img": args.img, "workers": loader.num_workers,
            "seconds": round(seconds, 3), "warmup": args.warmup, "data": str(data.source),
            "train_images": len(dataset), "worker_rss_mb_per_epoch": worker_rss}


def last_json(command: list[str]) -> dict:
    """Run a benchmark command; its last stdout line, parsed (and echoed to stderr as each run ends)."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    print(result.stdout.strip().splitlines()[-1], file=sys.stderr)  # each run as it ends
    return json.loads(result.stdout.strip().splitlines()[-1])


def alternate(args: argparse.Namespace, argv: list[str]) -> dict:
    """This script and the reference's, one after the other, `rounds` times."""
    flag = "--reference-python"
    own = [a for i, a in enumerate(argv) if a != flag and not (i and argv[i - 1] == flag)]
    if args.hsv_on_device:  # the reference has no such stage: it pays HSV on the CPU
        print("note: --hsv-on-device leaves HSV out of ours only; YOLOv5 always pays it on the CPU", file=sys.stderr)
    data = str(Path(args.data).resolve())
    hyp = Path(args.hyp) if Path(args.hyp).is_file() else HERE.parent / "configs" / "hyps" / f"hyp.{args.hyp}.yaml"
    reference = [args.reference_python, str(HERE / "reference.py"), "loader", "--data", data, "--img", str(args.img),
                 "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--batches", str(args.batches),
                 "--warmup", str(args.warmup), "--images", str(args.images), "--seed", str(args.seed),
                 "--hyp", str(hyp)]
    key = "cpu_ms_per_image" if args.workers == 0 else "images_per_s"
    ours, theirs = [], []
    for round_ in range(args.rounds):
        ours.append(last_json([sys.executable, __file__, *own]))
        theirs.append(last_json(reference))
        print(f"round {round_ + 1}: yolo-accel {ours[-1][key]}, yolov5 {theirs[-1][key]} ({key})", file=sys.stderr)
    mine, ref = statistics.median(r[key] for r in ours), statistics.median(r[key] for r in theirs)
    return {"metric": key, "yolo_accel": [r[key] for r in ours], "yolov5": [r[key] for r in theirs],
            "median_yolo_accel": mine, "median_yolov5": ref, "ratio": round(mine / ref, 3),
            "worker_rss_mb_per_epoch": [r.get("worker_rss_mb_per_epoch") for r in ours], "img": args.img,
            "batch_size": args.batch_size, "workers": args.workers, "data": data}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = alternate(args, argv) if args.reference_python else throughput(args)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
