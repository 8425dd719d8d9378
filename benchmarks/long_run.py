"""Whether a long run stays healthy: memory, open files, threads and child processes over many epochs.

    python benchmarks/long_run.py --epochs 100 --out /tmp/long-run            # the README job, 100 epochs
    python benchmarks/long_run.py --epochs 30 --img 64 --out /tmp/long-run    # quicker

Trains `yolo-accel train` (demo data unless --data, yolov5n) in a child process and, each time results.csv gains
`--every` rows, reads /proc for the training process and its loader workers: resident memory (MB), open file
descriptors, threads and child processes. Reported: one row per sample, and the change from the first sample to
the last (a leak grows with the epochs; the first epochs fill caches and pools). The last stdout line is JSON.
Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--img", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=int, default=10, help="sample after every N epochs")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(x) for x in (task / "children").read_text().split()]
    return found


def sample(pid: int, epochs_done: int) -> dict:
    kids = children(pid)
    workers_mb = []
    for kid in kids:
        with contextlib.suppress(OSError):  # gone meanwhile
            workers_mb.append(round(status_field(kid, "VmRSS") / 1024, 1))
    return {"epochs": epochs_done, "main_rss_mb": round(status_field(pid, "VmRSS") / 1024, 1),
            "worker_rss_mb": workers_mb, "open_files": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": status_field(pid, "Threads"), "children": len(kids)}


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.out / "run"
    command = [sys.executable, str(ROOT / "cli.py"), "train", "--data", args.data, "--cfg", args.cfg,
               "--epochs", str(args.epochs), "--img", str(args.img), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "--project", str(args.out), "--name", "run", "--exist-ok", "--noplots"]
    results = run / "results.csv"
    results.unlink(missing_ok=True)
    samples = []
    start = time.perf_counter()
    with open(args.out / "train.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while child.poll() is None:
            time.sleep(0.5)
            try:
                rows = len(results.read_text().splitlines()) - 1
            except OSError:
                continue
            if rows >= args.every * (len(samples) + 1):
                try:
                    samples.append(sample(child.pid, rows))
                except OSError:  # it ended meanwhile
                    break
                print(json.dumps(samples[-1]), file=sys.stderr)
    if child.wait() != 0:
        sys.exit(f"training failed (exit {child.returncode}); see {args.out / 'train.log'}")
    first, last = samples[0], samples[-1]
    summary = {"epochs": args.epochs, "img": args.img, "workers": args.workers, "samples": samples,
               "minutes": round((time.perf_counter() - start) / 60, 1),
               "change_first_to_last": {
                   "main_rss_mb": round(last["main_rss_mb"] - first["main_rss_mb"], 1),
                   "worker_rss_mb": [round(b - a, 1) for a, b in zip(first["worker_rss_mb"], last["worker_rss_mb"])],
                   "open_files": last["open_files"] - first["open_files"],
                   "threads": last["threads"] - first["threads"],
                   "children": last["children"] - first["children"]}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
