"""results.csv: one row per epoch, YOLOv5's columns in its fixed-width layout. Training writes it; evolve and the
plots read it."""

from __future__ import annotations

import csv
from pathlib import Path

from .files import atomic_write

LOSS_COLUMNS = ("box_loss", "obj_loss", "cls_loss")  # YOLOv5's; anchor-free models: box_loss, cls_loss, dfl_loss


def metric_columns(loss_names: tuple[str, ...] = LOSS_COLUMNS) -> tuple[str, ...]:
    """The 7 numbers of a validation result: P, R, mAP50, mAP50-95 and the three validation losses."""
    return ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
            *(f"val/{name}" for name in loss_names))


def result_columns(loss_names: tuple[str, ...] = LOSS_COLUMNS) -> tuple[str, ...]:
    """results.csv's columns after `epoch`: training losses, the validation result, the three learning rates."""
    return (*(f"train/{name}" for name in loss_names), *metric_columns(loss_names), "x/lr0", "x/lr1", "x/lr2")


METRIC_COLUMNS = metric_columns()
RESULT_COLUMNS = result_columns()


def append_results(path: Path, epoch: int, values: list[float], columns: tuple[str, ...] = RESULT_COLUMNS) -> None:
    """One row (values in `columns` order); the header first if the file is new."""
    header = "" if path.exists() else ",".join(f"{k:>20}" for k in ["epoch", *columns]) + "\n"
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
