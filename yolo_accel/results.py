"""results.csv: one row per epoch, YOLOv5's columns in its fixed-width layout. Training writes it; evolve and the
plots read it."""

from __future__ import annotations

import csv
from pathlib import Path

from .files import atomic_write

LOSS_COLUMNS = ("box_loss", "obj_loss", "cls_loss")
# the 7 numbers of YOLOv5's validation results tuple: P, R, mAP50, mAP50-95 and the three validation losses
METRIC_COLUMNS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
                  *(f"val/{name}" for name in LOSS_COLUMNS))
RESULT_COLUMNS = (*(f"train/{name}" for name in LOSS_COLUMNS), *METRIC_COLUMNS, "x/lr0", "x/lr1", "x/lr2")


def append_results(path: Path, epoch: int, values: list[float]) -> None:
    """One row (values in RESULT_COLUMNS order); the header first if the file is new."""
    header = "" if path.exists() else ",".join(f"{k:>20}" for k in ["epoch", *RESULT_COLUMNS]) + "\n"
    row = ",".join(f"{v:>20.5g}" for v in [epoch, *values]) + "\n"
    with open(path, "a") as f:
        f.write(header + row)


def drop_results_from(path: Path, epoch: int) -> None:
    """Forget rows for `epoch` and later (and a row cut short): a run killed after writing a row but before its
    state snapshot redoes that epoch."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    columns = lines[0].count(",") if lines else 0

    def earlier(line: str) -> bool:
        fields = line.split(",")
        try:
            return line.endswith("\n") and len(fields) == columns + 1 and float(fields[0]) < epoch
        except ValueError:
            return False

    kept = lines[:1] + [line for line in lines[1:] if earlier(line)]
    if len(kept) != len(lines):
        atomic_write(path, lambda tmp: tmp.write_text("".join(kept)))


def read_results(path: Path) -> list[dict[str, float]]:
    """Every row as {column: value}; empty if the file does not exist."""
    if not path.exists():
        return []
    with open(path) as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f, skipinitialspace=True)]
