"""DDP against FSDP through `accelerate launch`: peak memory per process and epoch time, same data and model.

    python benchmarks/scale_out.py --cfg yolov5x6.yaml --img 1280 --batch-size 8 --out /tmp/scale   # the GPUs here
    python benchmarks/scale_out.py --cfg yolov5n.yaml --img 64 --batch-size 4 --processes 2 --out /tmp/scale  # CPU
    python benchmarks/scale_out.py --cfg yolov5s.yaml --img 640 --batch-size 32 --sync-bn --out /tmp/scale-bn

Each mode trains `--epochs` epochs on a COCO-like JPEG set (benchmarks/make_dataset.py, written once into OUT) with
one process per GPU (or `--processes` CPU processes where there is no GPU), fp16 autocast on CUDA (AMP) and fp32 on
CPU; DDP with `--multi_gpu`, FSDP with configs/accelerate/fsdp.yaml. Every process reports its peak memory
(CUDA: torch.cuda.max_memory_allocated and reserved; CPU: the process's peak RSS); the main process the time of
the last epoch (training + validation) and the final mAP50-95. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="yolov5x6.yaml")
    parser.add_argument("--img", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=8, help="total over all processes")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=64, help="training images (and a quarter as many for val)")
    parser.add_argument("--data", help="a dataset yaml instead of the generated set")
    parser.add_argument("--modes", nargs="+", choices=("ddp", "fsdp"), default=["ddp", "fsdp"])
    parser.add_argument("--processes", type=int, default=0, help="processes (default: the GPU count, else 2)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm (CUDA processes)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one launched process
    return parser.parse_args()


def worker(args: argparse.Namespace) -> None:
    """One process of the launch: train, then write this process's peak memory (and, main, the timings)."""
    import torch

    from yolo_accel.callbacks import Callbacks
    from yolo_accel.config import TrainConfig
    from yolo_accel.train import train

    epoch_ends: list[float] = []
    callbacks = Callbacks()
    callbacks.add("on_fit_epoch_end", lambda event: epoch_ends.append(time.perf_counter()))
    metrics: dict = {}
    callbacks.add("on_train_end", lambda event: metrics.update(event.metrics))
    start = time.perf_counter()
    run = train(TrainConfig(data=args.data, model=args.cfg, epochs=args.epochs, imgsz=args.img,
                            batch_size=args.batch_size, workers=args.workers, project=str(args.out / "runs"),
                            name=os.environ["SCALE_OUT_MODE"], exist_ok=True, noplots=True, sync_bn=args.sync_bn),
                callbacks)
    rank = int(os.environ.get("RANK", "0"))
    report = {"rank": rank, "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if torch.cuda.is_available():
        report.update(peak_allocated_gb=round(torch.cuda.max_memory_allocated() / 2**30, 3),
                      peak_reserved_gb=round(torch.cuda.max_memory_reserved() / 2**30, 3),
                      device=torch.cuda.get_device_name())
    if epoch_ends:
        steps = [b - a for a, b in zip([start, *epoch_ends], epoch_ends)]
        report.update(epoch_seconds=[round(s, 2) for s in steps], mAP50_95=metrics.get("metrics/mAP_0.5:0.95"))
    (run / f"scale_out_rank{rank}.json").write_text(json.dumps(report))


def launch(args: argparse.Namespace, mode: str, data: str, processes: int, cuda: bool) -> dict:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "fp16" if cuda else "no", "--dynamo_backend", "no"]
    launcher += ["--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml")] if mode == "fsdp" else \
        ["--multi_gpu"]
    command = [*launcher, __file__, "--worker", "--data", data, "--cfg", args.cfg, "--img", str(args.img),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--workers", str(args.workers),
               "--out", str(args.out), *(["--sync-bn"] if args.sync_bn else [])]
    started = time.perf_counter()
    result = subprocess.run(command, env={**os.environ, "SCALE_OUT_MODE": mode}, capture_output=True, text=True)
    if result.returncode:
        return {"error": (result.stdout + result.stderr)[-2000:]}
    folder = args.out / "runs" / mode
    ranks = sorted((json.loads(p.read_text()) for p in folder.glob("scale_out_rank*.json")), key=lambda r: r["rank"])
    main = ranks[0]
    summary = {"processes": processes, "wall_seconds": round(time.perf_counter() - started, 1),
               "last_epoch_seconds": main.get("epoch_seconds", [None])[-1], "mAP50-95": main.get("mAP50_95")}
    for key in ("peak_allocated_gb", "peak_reserved_gb", "peak_rss_gb"):
        if key in main:
            summary[f"{key}_per_process"] = [r[key] for r in ranks]
    summary["device"] = main.get("device", "cpu")
    return summary


def main() -> None:
    args = parse()
    args.out = args.out.resolve()
    if args.worker:
        worker(args)
        return
    import torch

    cuda = torch.cuda.is_available()
    processes = args.processes or (torch.cuda.device_count() if cuda else 2)
    data = args.data
    if not data:
        data = str(args.out / "data" / "data.yaml")
        if not Path(data).is_file():
            subprocess.run([sys.executable, str(Path(__file__).parent / "make_dataset.py"), "--out",
                            str(args.out / "data"), "--kind", "coco", "--images", str(args.images), "--val-images",
                            str(max(args.images // 4, processes))], check=True, stdout=subprocess.DEVNULL)
    report = {"cfg": args.cfg, "img": args.img, "batch_size": args.batch_size, "epochs": args.epochs}
    for mode in args.modes:
        report[mode] = launch(args, mode, data, processes, cuda)
        print(json.dumps({mode: report[mode]}), file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
