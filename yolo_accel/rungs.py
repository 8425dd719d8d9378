"""Successive halving's bookkeeping for `yolo-accel evolve --halving`: the rung epochs, evolve_rungs.csv (every
candidate's fitness at the epochs it was judged, with the candidate-epochs each record cost), the early-stopping
rule of one-run halving (Ray Tune's ASHA) and the promotions of `--restarts` (ASHA's, held to successive halving's
budget). Pure functions of the rung records; evolve.py holds the lock around them."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from .files import atomic_write

RUNG_FACTOR = 3  # successive halving: rungs at E/9, E/3, E; a candidate continues if in the top third of its rung
RUNG_COLUMNS = ("candidate", "epochs", "fitness", "stopped", "spent")  # spent: candidate-epochs this record cost


def rung_epochs(epochs: int, factor: int = RUNG_FACTOR) -> tuple[int, ...]:
    """The epoch counts where a candidate of `epochs` is judged: E/factor^2, E/factor and E, rounded, at least 1,
    each once (10 -> 1, 3, 10; 30 -> 3, 10, 30; 2 -> 1, 2)."""
    return tuple(sorted({max(1, round(epochs / factor ** k)) for k in (2, 1, 0)}))


def keep_training(earlier: list[float], score: float, factor: int = RUNG_FACTOR) -> bool:
    """ASHA's rule as Ray Tune's ASHA scheduler applies it: continue unless `score` is below the (1 - 1/factor)
    quantile of the fitness earlier candidates recorded at this rung (the first at a rung always continues, the
    second continues if it is at least as good as the first)."""
    return not earlier or score >= float(np.quantile(earlier, 1 - 1 / factor))


def read_rungs(path: Path) -> list[dict]:
    """evolve_rungs.csv rows (candidate, epochs, fitness, stopped, spent), in the order they were recorded; a file
    without the spent column (a continuing search's) gets it from the epochs."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines()[1:]:
        fields = line.split(",")
        try:
            record = rung_record(rows, fields[0], int(fields[1]), float(fields[2]), fields[3].strip() == "1")
            rows.append({**record, "spent": int(fields[4])} if len(fields) > 4 else record)
        except (IndexError, ValueError):  # a torn row
            continue
    return rows


def write_rungs(path: Path, history: list[dict]) -> None:
    """evolve_rungs.csv rewritten whole (a driver that holds every record)."""
    lines = [",".join(RUNG_COLUMNS)] + [f"{r['candidate']},{r['epochs']},{r['fitness']:.6g},{int(r['stopped'])},"
                                        f"{r['spent']}" for r in history]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def record_rung(path: Path, record: dict) -> None:
    """Append one rung record (with the ledger's lock held)."""
    text = "" if path.exists() else ",".join(RUNG_COLUMNS) + "\n"
    with open(path, "a") as f:
        f.write(text + f"{record['candidate']},{record['epochs']},{record['fitness']:.6g},{int(record['stopped'])},"
                       f"{record['spent']}\n")


def rung_record(history: list[dict], name: str, epochs: int, score: float, stopped: bool,
                restarts: bool = False) -> dict:
    """A record of candidate `name` at `epochs`, with the candidate-epochs it cost: all of them for a run restarted
    from the start, else those since the candidate's previous rung."""
    before = 0 if restarts else max((r["epochs"] for r in history if r["candidate"] == name), default=0)
    return {"candidate": name, "epochs": epochs, "fitness": score, "stopped": stopped, "spent": epochs - before}


def promotion(history: list[dict], rungs: tuple[int, ...], busy: set[str], last: bool) -> str | None:
    """Successive halving's promotions, made as runs end (ASHA's, Li et al., "A System for Massively Parallel
    Hyperparameter Tuning", held to successive halving's budget): from the highest rung down, a rung with n runs
    recorded sends at most n // 3 of them on in all, each time the best of its top third that has not gone on (nor
    is running). When `last` (no candidate left to draw, none running), the best run of a rung that has not gone
    on does, so a search ends with the best of every rung tried at the next, and at least one trained in full."""
    pairs = list(itertools.pairwise(rungs))[::-1]
    for low, high in pairs:
        ranked = [r["candidate"] for r in sorted((r for r in history if r["epochs"] == low),
                                                 key=lambda r: -r["fitness"])]
        gone = {r["candidate"] for r in history if r["epochs"] == high} | (busy & set(ranked))
        allowed = len(ranked) // RUNG_FACTOR
        top = [name for name in ranked[:allowed] if name not in gone]
        if top and len(gone) < allowed:
            return top[0]
        if last and ranked and ranked[0] not in gone:
            return ranked[0]
    return None


def next_rung(history: list[dict], name: str, rungs: tuple[int, ...]) -> int:
    """The epochs of a candidate's next run: the first rung above those it was recorded at."""
    done = max((r["epochs"] for r in history if r["candidate"] == name), default=0)
    return next((epochs for epochs in rungs if epochs > done), rungs[-1])


def judge_rung(history: list[dict], name: str, epochs: int, score: float) -> tuple[bool, dict | None]:
    """Whether candidate `name` goes on past the rung at `epochs` (keep_training against what earlier candidates
    recorded there), and the record to add (None when it was judged there before a restart: the same verdict)."""
    mine = [r for r in history if r["candidate"] == name and r["epochs"] == epochs]
    if mine:
        return not mine[0]["stopped"], None
    go_on = keep_training([r["fitness"] for r in history if r["epochs"] == epochs], score)
    return go_on, rung_record(history, name, epochs, score, not go_on)
