"""Training throughput: end to end, and with the data pipeline replaced by tensors already in memory.

    python benchmarks/train.py --data DATA.yaml --cfg yolov5n.yaml --img 320 --batch-size 16 --epochs 3
    python benchmarks/train.py --data DATA.yaml ... --reference-python REF/bin/python --rounds 2
    python benchmarks/train.py --data DATA.yaml ... --compile     # torch.compile (first_epoch_extra_seconds: compiling)

Runs `yolo-accel train` (validation each epoch, as YOLOv5 does) and times every epoch and its training loop;
then replays the same number of batches from memory through the same model, loss and optimizer step to get
the compute ceiling. Steady state leaves out the first epoch (worker start-up, allocator and kernel warm-up).
`--reference-python` alternates with `yolov5 train` on the same data (benchmarks/reference.py). The last stdout
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `yolo-accel` sets it, before torch loads OpenMP

import torch
from dataloader import last_json  # benchmarks/, beside this script

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
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first is left out of steady state")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="")
    parser.add_argument("--mixed-precision", default="auto")
    parser.add_argument("--compile", action="store_true", help="train --compile (torch.compile, inductor)")
    parser.add_argument("--reference-python", help="the reference environment's python: alternate with YOLOv5's")
    parser.add_argument("--rounds", type=int, default=2, help="alternations with --reference-python")
    return parser.parse_args()


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = alternate(args) if args.reference_python else measure(args)
    print(json.dumps(result))


def alternate(args: argparse.Namespace) -> dict:
    """This benchmark and `yolov5 train` (benchmarks/reference.py) one after the other, `rounds` times."""
    own = [sys.executable, __file__, "--data", args.data, "--cfg", args.cfg, "--img", str(args.img),
           "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--workers", str(args.workers),
           "--device", args.device, "--mixed-precision", args.mixed_precision, *(["--compile"] if args.compile else [])]
    reference = [args.reference_python, str(Path(__file__).resolve().parent / "reference.py"), "train", "--data",
                 str(Path(args.data).resolve()), "--cfg", args.cfg, "--img", str(args.img), "--batch-size",
                 str(args.batch_size), "--epochs", str(args.epochs), "--workers", str(args.workers), "--device",
                 args.device or "cpu"]
    ours, theirs = [], []
    for round_ in range(args.rounds):
        ours.append(last_json(own))
        theirs.append(last_json(reference))
        print(f"round {round_ + 1}: yolo-accel {ours[-1]['epoch_seconds']} s/epoch "
              f"(loop {ours[-1]['loop_over_ceiling']} of the ceiling), yolov5 {theirs[-1]['epoch_seconds']} s/epoch",
              file=sys.stderr)
    mine = statistics.median(r["epoch_seconds"] for r in ours)
    ref = statistics.median(r["epoch_seconds"] for r in theirs)
    return {"yolo_accel_epoch_seconds": [r["epoch_seconds"] for r in ours],
            "yolov5_epoch_seconds": [r["epoch_seconds"] for r in theirs], "ratio": round(mine / ref, 3),
            "loop_over_ceiling": [r["loop_over_ceiling"] for r in ours],
            "mixed_precision": ours[0]["mixed_precision"], "cfg": args.cfg, "img": args.img,
            "batch_size": args.batch_size, "epochs": args.epochs, "data": args.data}


def measure(args: argparse.Namespace) -> dict:
    loop_seconds: list[float] = []
    epoch_starts: list[float] = []
    images_seen = [0]
    captured: dict = {}
    original_epoch = engine.train_one_epoch

    def counted(loader):
        for batch in loader:
            images_seen[0] += len(batch[0])
            yield batch

    def timed_epoch(plan, training, loader, *rest, **kwargs):
        captured["plan"], captured["training"], captured["loader"] = plan, training, loader
        start = time.perf_counter()
        epoch_starts.append(start)
        before, cpu_before = images_seen[0], cpu_seconds()
        done = original_epoch(plan, training, counted(loader), *rest, **kwargs)
        loop_seconds.append(time.perf_counter() - start)
        loop_images.append(images_seen[0] - before)
        cpu_after = cpu_seconds()
        loop_cpu.append({"main": cpu_after.pop("main") - cpu_before["main"],  # workers: each from its start
                         "workers": sum(v - cpu_before.get(pid, 0.0) for pid, v in cpu_after.items())})
        return done

    original_finish = train_module.finish

    def timed_finish(*a, **kw):
        marks["epochs_done"] = time.perf_counter()
        return original_finish(*a, **kw)

    marks: dict[str, float] = {}
    loop_images: list[int] = []
    loop_cpu: list[dict[str, float]] = []
    train_module.train_one_epoch = timed_epoch  # time the loop the trainer really runs
    train_module.finish = timed_finish
    with tempfile.TemporaryDirectory() as project:
        config = TrainConfig(data=args.data, model=args.cfg, imgsz=args.img, batch_size=args.batch_size,
                             epochs=args.epochs, workers=args.workers, project=project, device=args.device,
                             mixed_precision=args.mixed_precision, noplots=True,  # as the reference runs
                             compile=args.compile)
        start = time.perf_counter()
        train_module.train(config)
        total = time.perf_counter() - start
        ceiling = measure_ceiling(captured["plan"], captured["training"], captured["loader"],
                                  batches=min(len(captured["loader"]), 30))
    # each epoch: training + validation + saving, from its start to the next one's (or to the end of the last)
    epoch_seconds = [b - a for a, b in zip(epoch_starts, [*epoch_starts[1:], marks["epochs_done"]])]
    loop_rate = sum(loop_images[1:]) / sum(loop_seconds[1:])
    result = {
        "images_per_s": round(loop_rate, 2),  # the training loop, steady state
        "ceiling_images_per_s": round(ceiling, 2),
        "loop_over_ceiling": round(loop_rate / ceiling, 3),
        "epoch_seconds": round(sum(epoch_seconds[1:]) / len(epoch_seconds[1:]), 2),  # steady state
        "first_epoch_seconds": round(epoch_seconds[0], 2),
        # what the first epoch took beyond a steady one: start-up, and with --compile the compilation
        "first_epoch_extra_seconds": round(epoch_seconds[0] - sum(epoch_seconds[1:]) / len(epoch_seconds[1:]), 2),
        "compile": args.compile,
        "train_loop_seconds_per_epoch": round(sum(loop_seconds[1:]) / len(loop_seconds[1:]), 2),
        # share of the CPU time spent in the loop that the loader workers used (steady state); the rest is the
        # training process (model, loss, optimizer). Robust where the machine's speed drifts between measurements
        "loader_cpu_share": round(sum(c["workers"] for c in loop_cpu[1:]) /
                                  max(sum(c["workers"] + c["main"] for c in loop_cpu[1:]), 1e-9), 4),
        "total_seconds": round(total, 2),
        "epochs": args.epochs, "batch_size": args.batch_size, "img": args.img, "cfg": args.cfg, "data": args.data,
        "workers": args.workers, "device": str(captured["plan"].accelerator.device),
        "mixed_precision": captured["plan"].accelerator.mixed_precision, "torch_threads": torch.get_num_threads(),
    }
    return result


def cpu_seconds() -> dict:
    """CPU seconds used so far by this process (all threads, "main") and by each live child process (the
    loader's workers, by pid), from /proc (Linux; elsewhere no workers are counted)."""
    used: dict = {"main": time.process_time()}
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[child.pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return used


def measure_ceiling(plan, training, loader, batches: int) -> float:
    """Images/s of forward + loss + backward + step on batches preloaded into memory (no data loading)."""
    device = plan.accelerator.device
    loader.set_epoch(0)
    stored = []
    for i, (images, targets, _, _, hsv_gains) in enumerate(loader):
        images = images.to(device)
        if hsv_gains is not None:
            images = apply_hsv_batch(images, hsv_gains)
        stored.append((images, targets.to(device)))
        if i + 1 == batches:
            break
    model, optimizer, criterion, accelerator = training.model, training.optimizer, plan.criterion, plan.accelerator
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
