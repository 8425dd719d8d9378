"""Accuracy: YOLOv5n and YOLOv5nu trained by yolo-accel, beside YOLOv5nu trained by Ultralytics 8, same data.

    python benchmarks/accuracy.py --data demo --img 128 --epochs 50 --out /tmp/acc-demo \\
        --ultralytics-python UL/bin/python
    python benchmarks/make_dataset.py --out /tmp/clutter --kind clutter --images 400 --val-images 100 --min-size 0.12
    python benchmarks/accuracy.py --data /tmp/clutter/data.yaml --img 128 --epochs 50 --out /tmp/acc-clutter ...
    python benchmarks/accuracy.py --data demo --out /tmp/acc-bf16 --precision no bf16 --emulate-bf16 \\
        --trainers "yolo-accel yolov5n" "yolo-accel yolov5nu"
    python benchmarks/accuracy.py --data demo --out /tmp/acc-gpu --precision no fp16 --device 0 \\
        --trainers "yolo-accel yolov5n" "yolo-accel yolov5nu"

Every run trains from scratch (the model yaml, no weights) with the same epochs, batch size, image size and
seeds; each trainer uses its own defaults otherwise (yolo-accel: the v7.0 recipe for yolov5n, the anchor-free
recipe for yolov5nu; Ultralytics: its `yolo train` defaults). Runs alternate by seed. Every best weights file is
then scored by the same evaluator, `yolo-accel val` (Ultralytics' best.pt through `yolo-accel convert`), and
Ultralytics' own best mAP50-95 from its results.csv is reported beside it. Each finished run is appended to
OUT/runs.jsonl, so an interrupted benchmark continues where it stopped. `--precision` trains yolo-accel's models
once per given `--mixed-precision` (auto, no, fp16, bf16) and reports each apart, the guard that mixed precision
costs no accuracy; `--emulate-bf16` runs bf16 training through benchmarks/bf16_emulation.py, for CPUs without bf16
instructions (PyTorch's own bf16 path there is ~8x slower). Scoring is always in fp32. `UL` is a scratch
environment with `pip install ultralytics`; it is run as a separate program and never imported here. The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ULTRALYTICS_TRAIN = """
import sys
from ultralytics import YOLO
data, epochs, imgsz, batch, seed, workers, project, name = sys.argv[1:]
YOLO("yolov5nu.yaml").train(data=data, epochs=int(epochs), imgsz=int(imgsz), batch=int(batch), seed=int(seed),
                            workers=int(workers), device="cpu", project=project, name=name, exist_ok=True,
                            plots=False)
"""
TRAINERS = ("yolo-accel yolov5n", "yolo-accel yolov5nu", "ultralytics yolov5nu")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--img", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS),
                        help="which runs to make (all three by default)")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=("auto", "no", "fp16", "bf16"),
                        help="yolo-accel's --mixed-precision; each given one is trained and reported apart")
    parser.add_argument("--emulate-bf16", action="store_true",
                        help="bf16 training through benchmarks/bf16_emulation.py (CPUs without bf16 instructions)")
    parser.add_argument("--device", default="", help="yolo-accel's --device (e.g. 0 for a GPU; default: its own)")
    parser.add_argument("--out", type=Path, required=True, help="run folders and runs.jsonl")
    parser.add_argument("--ultralytics-python", help="python of an environment with ultralytics installed")
    return parser.parse_args()


def data_yaml(data: str) -> str:
    if data == "demo":
        from yolo_accel.data.demo import demo_dataset

        return str(demo_dataset())
    return str(Path(data).resolve())


def run_name(trainer: str, precision: str, seed: int) -> str:
    """The run folder's name; runs in the default precision keep the names of earlier ledgers."""
    suffix = "" if precision == "auto" or trainer.startswith("ultralytics") else f"-{precision}"
    return f"{trainer.replace(' ', '-')}{suffix}-seed{seed}"


def train(trainer: str, args: argparse.Namespace, data: str, seed: int, precision: str) -> Path:
    """Train one model; return its best weights (safetensors)."""
    name = run_name(trainer, precision, seed)
    folder = args.out / name
    if trainer.startswith("yolo-accel"):
        emulated = args.emulate_bf16 and precision == "bf16"
        command = [sys.executable, str(Path(__file__).parent / "bf16_emulation.py")] if emulated else \
            [str(Path(sys.executable).parent / "yolo-accel")]
        device = ["--device", args.device] if args.device else []
        subprocess.run([*command, "train", "--data", data, "--cfg", f"{trainer.split()[1]}.yaml", "--epochs",
                        str(args.epochs), "--img", str(args.img), "--batch-size", str(args.batch_size), "--workers",
                        str(args.workers), "--seed", str(seed), "--mixed-precision", precision, *device,
                        "--project", str(args.out), "--name", name, "--exist-ok"], check=True,
                       stdout=subprocess.DEVNULL)
        return folder / "weights" / "best.safetensors"
    if not args.ultralytics_python:
        raise SystemExit("--ultralytics-python is needed for the Ultralytics runs")
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    subprocess.run([args.ultralytics_python, "-c", ULTRALYTICS_TRAIN, data, str(args.epochs), str(args.img),
                    str(args.batch_size), str(seed), str(args.workers), str(args.out.resolve()), name], check=True,
                   env=env, stdout=subprocess.DEVNULL, cwd=args.out)
    converted = folder / "weights" / "best.safetensors"
    cli = Path(sys.executable).parent / "yolo-accel"
    subprocess.run([str(cli), "convert", str(folder / "weights" / "best.pt"), str(converted)], check=True,
                   stdout=subprocess.DEVNULL)
    return converted


def ultralytics_own_best(folder: Path) -> float:
    """The best mAP50-95 that Ultralytics' own validation reported during training."""
    with open(folder / "results.csv", newline="") as f:
        return max(float(row["metrics/mAP50-95(B)"]) for row in csv.DictReader(f))


def score(weights: Path, args: argparse.Namespace, data: str) -> dict:
    from yolo_accel.val import validate

    _, (result,) = validate(data, [str(weights)], imgsz=args.img, batch_size=32, workers=args.workers,
                            device=args.device, project=str(args.out / "val"), exist_ok=True)
    return {"mAP50": round(result.metrics.map50, 4), "mAP50-95": round(result.metrics.map50_95, 4)}


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    data = data_yaml(args.data)
    ledger = args.out / "runs.jsonl"
    done = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.is_file() else []
    runs = [(t, p) for t in args.trainers for p in (["auto"] if t.startswith("ultralytics") else args.precision)]
    for seed in args.seeds:
        for trainer, precision in runs:
            if any(r["trainer"] == trainer and r.get("precision", "auto") == precision and r["seed"] == seed
                   for r in done):
                continue
            start = time.perf_counter()
            weights = train(trainer, args, data, seed, precision)
            row = {"trainer": trainer, "precision": precision, "seed": seed,
                   "train_minutes": round((time.perf_counter() - start) / 60, 1), **score(weights, args, data)}
            if trainer.startswith("ultralytics"):
                row["own_val_mAP50-95"] = round(ultralytics_own_best(weights.parent.parent), 4)
            print(json.dumps(row), file=sys.stderr)
            with open(ledger, "a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
    summary = {"data": args.data, "img": args.img, "epochs": args.epochs, "batch_size": args.batch_size}
    for trainer, precision in runs:
        rows = [r for r in done if r["trainer"] == trainer and r.get("precision", "auto") == precision
                and r["seed"] in args.seeds]
        if rows:
            key = trainer if precision == "auto" else f"{trainer} {precision}"
            summary[key] = {k: [r[k] for r in rows] for k in ("mAP50", "mAP50-95", "train_minutes")}
            summary[key]["mean mAP50-95"] = round(statistics.mean(r["mAP50-95"] for r in rows), 4)
    v5, v5u = summary.get(TRAINERS[0]), summary.get(TRAINERS[1])
    if v5 and v5u:
        summary["v5u / v5 (mAP50-95)"] = round(v5u["mean mAP50-95"] / v5["mean mAP50-95"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
