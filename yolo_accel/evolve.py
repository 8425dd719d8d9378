"""Hyperparameter evolution (YOLOv5's genetic search) with a file-locked ledger shared by any number of workers.

Each worker: lock the ledger, read it, pick a parent from the top 5 by fitness, mutate, claim the candidate,
unlock; train it in its own folder (candidates/NAME, with a snapshot every epoch); lock and append one whole row.
Workers on one machine or on several machines sharing the folder cooperate through the lock; re-running
continues. A worker killed mid-candidate leaves its claim and snapshot: the next worker on that machine resumes the
candidate exactly and writes its row once.

With `halving` (successive halving, ASHA's early-stopping rule as Ray Tune's ASHA scheduler applies it), a
candidate validates at rung epochs E/9, E/3 (factor 3) and stops at a rung where its fitness is below the top
third of what earlier candidates reached there (the first at a rung always goes on); stopped candidates go to
evolve_stopped.csv, not evolve.csv, so parents (and hyp_evolve.yaml) come only from candidates trained in full,
whose fitness is comparable. Every candidate's rung results, in the order they happened, are in evolve_rungs.csv.
With `restarts` (successive halving with promotions), a rung is a whole training run of its epochs, learning-rate
schedule and EMA included: every candidate trains E/9 epochs; a worker's next run is a promotion where there is
one (ASHA's, held to successive halving's budget: a rung of n runs sends at most n // 3 on, each the best of its
top third not yet gone on) to a run of the next rung's epochs from the start, else a new candidate; at the end the
best of every rung goes on. Every run is a row (evolve_stopped.csv with its epochs, or evolve.csv at E) and a rung
record; parents are drawn from the runs of the longest rung that holds at least 5 (every candidate's first-rung
run until then), as fitness is comparable within a rung only. At most n E/3 candidate-epochs for n candidates
(n E/9 at each of the three rungs), and the end's few runs.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml
from filelock import FileLock

from .config import ConfigError, TrainConfig, load_hyp
from .data.sources import DataError, list_images, load_data_config
from .files import atomic_write, check_output_folder, increment_path
from .metrics import fitness
from .optim import auto_optimizer
from .results import METRIC_COLUMNS, read_results
from .rungs import (
    RUNG_FACTOR,
    judge_rung,
    next_rung,
    promotion,
    read_rungs,
    record_rung,
    rung_epochs,
    rung_record,
    write_rungs,
)

LOGGER = logging.getLogger("yolo_accel")
RESULT_KEYS = METRIC_COLUMNS
PARENTS = 5  # YOLOv5 draws a parent from the top 5 by fitness
# (mutation gain, lower bound, upper bound) per hyperparameter, YOLOv5 v7.0's; gain 0 keeps it fixed
BOUNDS = {
    "lr0": (1, 1e-5, 1e-1), "lrf": (1, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98), "weight_decay": (1, 0.0, 0.001),
    "warmup_epochs": (1, 0.0, 5.0), "warmup_momentum": (1, 0.0, 0.95), "warmup_bias_lr": (1, 0.0, 0.2),
    "box": (1, 0.02, 0.2), "cls": (1, 0.2, 4.0), "cls_pw": (1, 0.5, 2.0), "obj": (1, 0.2, 4.0),
    "obj_pw": (1, 0.5, 2.0), "iou_t": (0, 0.1, 0.7), "anchor_t": (1, 2.0, 8.0), "anchors": (2, 2.0, 10.0),
    "fl_gamma": (0, 0.0, 2.0), "hsv_h": (1, 0.0, 0.1), "hsv_s": (1, 0.0, 0.9), "hsv_v": (1, 0.0, 0.9),
    "degrees": (1, 0.0, 45.0), "translate": (1, 0.0, 0.9), "scale": (1, 0.0, 0.9), "shear": (1, 0.0, 10.0),
    "perspective": (0, 0.0, 0.001), "flipud": (1, 0.0, 1.0), "fliplr": (0, 0.0, 1.0), "mosaic": (1, 0.0, 1.0),
    "mixup": (1, 0.0, 1.0), "copy_paste": (1, 0.0, 1.0)}
# the anchor-free recipe's gains live on other scales (box 7.5, cls 0.5, dfl 1.5)
ANCHOR_FREE_BOUNDS = {**BOUNDS, "box": (1, 1.0, 20.0), "cls": (1, 0.1, 4.0), "dfl": (1, 0.3, 6.0)}
MUTATION_PROBABILITY, SIGMA = 0.8, 0.2


def bounds_for(hyp: dict[str, float]) -> dict[str, tuple[float, float, float]]:
    """(gain, low, high) per hyperparameter for this recipe: YOLOv5's, or the anchor-free one's (a `dfl` gain)."""
    return ANCHOR_FREE_BOUNDS if "dfl" in hyp else BOUNDS


def clamp(hyp: dict[str, float]) -> dict[str, float]:
    """Each hyp within its bounds, rounded to 5 decimals (YOLOv5's) and to the 5 significant digits evolve.csv
    holds, so a candidate trains with exactly the values its row records and hyp_evolve.yaml reproduces the best
    one (YOLOv5 trains 3.95423 and records 3.9542)."""
    out = dict(hyp)
    for key, (_, low, high) in bounds_for(hyp).items():
        if key in out:
            out[key] = float(f"{round(min(max(out[key], low), high), 5):.5g}")
    return out


def select_parent(rows: np.ndarray, rng: np.random.Generator, parent: str = "single") -> np.ndarray:
    """From ledger rows (n, 7 + hyps): the top 5 by fitness, one drawn by fitness weight (or their weighted mean)."""
    n = min(PARENTS, len(rows))
    top = rows[np.argsort(-fitness(rows))][:n]
    weights = fitness(top) - fitness(top).min() + 1e-6
    if parent == "weighted" and n > 1:
        return (top * weights.reshape(n, 1)).sum(0) / weights.sum()
    return top[rng.choice(n, p=weights / weights.sum())]


def mutate(parent_hyp: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """YOLOv5's mutation: factor (gain * [rand < 0.8] * N(0,1) * U(0,1) * 0.2 + 1) clipped to [0.3, 3]; redrawn
    until something changes; then clamped and rounded."""
    keys = list(parent_hyp)
    bounds = bounds_for(parent_hyp)
    gains = np.array([bounds.get(k, (0, 0, 0))[0] for k in keys], dtype=float)
    factors = np.ones(len(keys))
    while (factors == 1).all():
        factors = (gains * (rng.random(len(keys)) < MUTATION_PROBABILITY) * rng.standard_normal(len(keys))
                   * rng.random() * SIGMA + 1).clip(0.3, 3.0)
    return clamp({k: float(parent_hyp[k] * f) for k, f in zip(keys, factors)})


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`.lock (filelock: an advisory lock on POSIX, a locked file on Windows; across
    processes, and across machines on file systems that honour it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(path.suffix + ".lock"), thread_local=False):
        yield


def read_ledger(path: Path) -> tuple[list[str], np.ndarray]:
    """(column names, rows (n, 7 + hyps)) of evolve.csv; call with the lock held."""
    if not path.exists():
        return [], np.zeros((0, 0))
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            values = [float(v) for v in line.split(",")]
        except ValueError:
            values = []
        if len(values) == len(header) and all(np.isfinite(values)):
            rows.append(values)
        else:  # a row cut short by a crash mid-append, on a file system without atomic appends
            LOGGER.warning(f"WARNING ⚠️ {path}: skipping line {number}, a torn or damaged row")
    return header, np.array(rows, dtype=float).reshape(-1, len(header))


def append_row(path: Path, hyp: dict[str, float], results: tuple[float, ...],
               result_keys: tuple[str, ...] = RESULT_KEYS) -> None:
    """One whole row in one write (header first if new), with the lock held; YOLOv5's fixed-width layout."""
    keys = [*result_keys, *hyp]
    text = "" if path.exists() else ",".join(f"{k:>20}" for k in keys) + "\n"
    text += ",".join(f"{v:>20.5g}" for v in [*results, *hyp.values()]) + "\n"
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn last row: end it, so this one stays whole
                text = "\n" + text
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_best(save_dir: Path, header: list[str], rows: np.ndarray) -> int:
    """hyp_evolve.yaml: YOLOv5's comment header (best and last generation, their results) and the best hyps."""
    best = int(np.argmax(fitness(rows[:, :4])))
    comment = ("# YOLOv5 Hyperparameter Evolution Results\n"
               f"# Best generation: {best}\n# Last generation: {len(rows) - 1}\n"
               "# " + ", ".join(f"{k:>20s}" for k in header[:7]) + "\n"
               "# " + ", ".join(f"{v:>20.5g}" for v in rows[best, :7]) + "\n\n")
    hyp = {k: float(v) for k, v in zip(header[7:], rows[best, 7:])}
    atomic_write(save_dir / "hyp_evolve.yaml", lambda tmp: tmp.write_text(comment + yaml.safe_dump(hyp,
                                                                                                   sort_keys=False)))
    return best


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_claims(path: Path) -> list[str]:
    """Candidates in flight (evolve.claims, one 'host:pid:folder' per line); call with the lock held."""
    return path.read_text().split() if path.exists() else []


def update_claims(path: Path, add: str | None = None, remove: str | None = None) -> list[str]:
    """Add or remove a claim (with the lock held); returns the claims of this machine's dead workers, still
    listed: their candidates are resumed (adopt_claim) or dropped."""
    claims = [c for c in read_claims(path) if c != remove] + ([add] if add else [])
    path.write_text("".join(c + "\n" for c in claims))
    host = socket.gethostname()
    return [c for c in claims if c.split(":")[0] == host and not _alive(int(c.split(":")[1]))]


def adopt_claim(path: Path, orphans: list[str], candidates: Path) -> str | None:
    """Take over the first orphaned candidate that left its folder (with the lock held): its claim becomes this
    worker's; orphans without one are dropped. Returns the candidate folder's name, or None."""
    adopted = None
    for claim in orphans:
        folder = claim.split(":", 2)[2] if claim.count(":") >= 2 else ""
        update_claims(path, remove=claim)
        if adopted is None and folder and (candidates / folder / "candidate.yaml").is_file():
            adopted = folder
            update_claims(path, add=f"{socket.gethostname()}:{os.getpid()}:{folder}")
        elif folder:
            shutil.rmtree(candidates / folder, ignore_errors=True)
    return adopted


def train_candidate(config: TrainConfig, hyp: dict[str, float], folder: Path,
                    on_rung: Callable[[int, float], bool] | None = None,
                    rungs: tuple[int, ...] = ()) -> tuple[dict[str, float], int]:
    """Train one candidate in `folder` (validation only at its rungs and last epoch, a snapshot every epoch; a
    folder with a snapshot is resumed; one whose run ended is read back). Returns its 7 result columns by name (P,
    R, mAP50, mAP50-95 and the validation losses, whose names are the model's) at the epoch it ended, and the epochs
    it trained. `on_rung(epochs, fitness)` is asked at each rung before the last whether to go on."""
    from .callbacks import Callbacks
    from .state import StateError, snapshots
    from .train import train

    done = last_results(folder)
    if done[1] >= config.resolved().epochs:  # its worker was stopped after the run ended, before the row was written
        return done
    callbacks = Callbacks()
    if on_rung is not None:
        def judge(event) -> None:
            epochs = event.epoch + 1
            if epochs in rungs[:-1]:
                row = [event.metrics[k] for k in list(event.metrics)[3:7]]  # P, R, mAP50, mAP50-95
                event.stop = not on_rung(epochs, result_fitness(row))

        callbacks.add("on_fit_epoch_end", judge)
    try:
        snapshots(folder / "state")
        options = replace(config, resume=str(folder))
    except StateError:  # not started, or stopped before its first snapshot: from the start, in the same folder
        folder.mkdir(parents=True, exist_ok=True)
        hyp_file = folder / "hyp_candidate.yaml"
        hyp_file.write_text(yaml.safe_dump(hyp, sort_keys=False))
        options = replace(config, hyp=str(hyp_file), project=str(folder.parent), name=folder.name, noval=True,
                          nosave=True, noplots=True, resume=None, exist_ok=True, candidate=True,
                          val_epochs=rungs[:-1])
    return last_results(train(options, callbacks))


def last_results(folder: Path) -> tuple[dict[str, float], int]:
    """A candidate run's result columns at its last epoch (after epoch and the three training losses) and the
    epochs it trained; ({}, 0) before its first epoch ends."""
    rows = read_results(folder / "results.csv")
    return (dict(list(rows[-1].items())[4:11]), len(rows)) if rows else ({}, 0)


def result_fitness(results: dict[str, float] | list[float]) -> float:
    """Fitness (0.1 mAP50 + 0.9 mAP50-95) of result columns that start P, R, mAP50, mAP50-95."""
    return float(fitness(np.array(list(results.values()) if isinstance(results, dict) else results)[None])[0])


def next_candidate(save_dir: Path, base: dict[str, float], generations: int, rng: np.random.Generator,
                   parent: str, n: int) -> tuple[str, dict[str, float]] | None:
    """With the ledger locked: a candidate a killed worker of this machine left (resumed), else a new one (a
    mutated parent, or the base hyps first), claimed; None when the ledgers and claims hold `generations`."""
    ledger, claims, candidates = save_dir / "evolve.csv", save_dir / "evolve.claims", save_dir / "candidates"
    with locked(ledger):
        header, rows = read_ledger(ledger)
        name = adopt_claim(claims, update_claims(claims), candidates)
        if name is not None:
            LOGGER.info(f"evolve: resuming candidate {name}, which a stopped worker left")
            return name, yaml.safe_load((candidates / name / "candidate.yaml").read_text())
        done = len(rows) + len(read_ledger(save_dir / "evolve_stopped.csv")[1])
        if done + len(read_claims(claims)) >= generations:  # the rest is being trained by other workers
            return None
        return new_candidate(save_dir, header, rows, base, rng, parent, n)


def new_candidate(save_dir: Path, header: list[str], rows: np.ndarray, base: dict[str, float],
                  rng: np.random.Generator, parent: str, n: int) -> tuple[str, dict[str, float]]:
    """A candidate bred from a parent drawn from `rows` (the base hyps while there are none), with its folder
    (candidate.yaml) and its claim; with the ledger locked."""
    if len(rows):
        chosen = select_parent(rows, rng, parent)
        hyp = mutate({k: float(chosen[header.index(k)]) for k in base if k in header}, rng)
    else:
        hyp = clamp(base)
    name = f"{socket.gethostname()}-{os.getpid()}-{n}"
    folder = save_dir / "candidates" / name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "candidate.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(hyp, sort_keys=False)))
    update_claims(save_dir / "evolve.claims", add=f"{socket.gethostname()}:{os.getpid()}:{name}")
    return name, hyp


def parent_rows(save_dir: Path, rungs: tuple[int, ...]) -> tuple[list[str], np.ndarray]:
    """The parents with promotions: the runs of the longest rung that holds at least PARENTS of them (the runs in
    full in evolve.csv, a shorter rung's in evolve_stopped.csv, without the epochs column), else every candidate's
    first-rung run. Fitness is comparable within a rung only, and the longest rung judged by enough runs is the
    closest to what a candidate trained in full reaches (BOHB's rule for the budget its model learns from)."""
    header, full = read_ledger(save_dir / "evolve.csv")
    if len(rungs) == 1 or len(full) >= PARENTS:
        return header, full
    header, rows = read_ledger(save_dir / "evolve_stopped.csv")
    if not len(rows):
        return header[:-1], rows
    epochs = next((e for e in rungs[-2::-1] if (rows[:, -1] == e).sum() >= PARENTS), rungs[0])
    return header[:-1], rows[rows[:, -1] == epochs][:, :-1]


def next_job(save_dir: Path, base: dict[str, float], generations: int, rng: np.random.Generator, parent: str,
             n: int, rungs: tuple[int, ...]) -> tuple[str, dict[str, float], int] | None:
    """Successive halving with promotions (`--halving --restarts`), with the ledger locked: the run a killed worker
    of this machine left (resumed), else a promotion, else a new candidate's first rung while fewer than
    `generations` were drawn; claimed. (candidate, hyps, epochs of the run), or None when nothing is left to start."""
    ledger, claims, candidates = save_dir / "evolve.csv", save_dir / "evolve.claims", save_dir / "candidates"
    with locked(ledger):
        history = read_rungs(save_dir / "evolve_rungs.csv")
        name = adopt_claim(claims, update_claims(claims), candidates)
        if name is not None:
            LOGGER.info(f"evolve: resuming candidate {name}, which a stopped worker left")
            return name, yaml.safe_load((candidates / name / "candidate.yaml").read_text()), \
                next_rung(history, name, rungs)
        busy = {claim.split(":", 2)[2] for claim in read_claims(claims) if claim.count(":") >= 2}
        drawn = len(busy | {r["candidate"] for r in history})
        name = promotion(history, rungs, busy, last=drawn >= generations and not busy)
        if name is not None:
            update_claims(claims, add=f"{socket.gethostname()}:{os.getpid()}:{name}")
            return name, yaml.safe_load((candidates / name / "candidate.yaml").read_text()), \
                next_rung(history, name, rungs)
        if drawn >= generations:
            return None
        name, hyp = new_candidate(save_dir, *parent_rows(save_dir, rungs), base, rng, parent, n)
    return name, hyp, rungs[0]


def rung_judge(save_dir: Path, name: str) -> Callable[[int, float], bool]:
    """on_rung for a candidate of the file-locked ledger: judge_rung against evolve_rungs.csv, recorded there."""
    ledger, rungs_file = save_dir / "evolve.csv", save_dir / "evolve_rungs.csv"

    def on_rung(epochs: int, score: float) -> bool:
        with locked(ledger):
            go_on, record = judge_rung(read_rungs(rungs_file), name, epochs, score)
            if record is not None:
                record_rung(rungs_file, record)
        return go_on

    return on_rung


def base_hyp(config: TrainConfig) -> dict[str, float]:
    """The starting hyperparameters, with the anchor count as a gene unless anchors are not evolved."""
    base = load_hyp(config.hyp)
    if config.noautoanchor or "dfl" in base:  # anchor-free models have no anchors to evolve
        base.pop("anchors", None)
    else:
        base.setdefault("anchors", 3.0)
    return base


def evolve_worker(config: TrainConfig, save_dir: Path, generations: int, seed: int | None = None,
                  parent: str = "single", halving: bool = False, restarts: bool = False) -> None:
    """Run candidates until the ledgers hold `generations` of them (counting every worker's); with `restarts`,
    runs (next_job: promotions and new candidates) until none is left to start."""
    base = base_hyp(config)
    epochs = config.resolved().epochs
    rungs = rung_epochs(epochs) if halving else (epochs,)
    rng = np.random.default_rng(seed if seed is not None else [os.getpid(), time.time_ns()])
    for n in itertools.count():
        if restarts:
            job = next_job(save_dir, base, generations, rng, parent, n, rungs)
        else:
            chosen = next_candidate(save_dir, base, generations, rng, parent, n)
            job = None if chosen is None else (*chosen, epochs)
        if job is None:
            break
        name, hyp, run_epochs = job
        start = time.perf_counter()
        # stopped (Ctrl-C, SIGTERM) or failed, the claim and snapshot stay for the next worker to resume
        if restarts:
            results, trained = train_candidate(replace(config, epochs=run_epochs), hyp,
                                               save_dir / "candidates" / name / f"epochs{run_epochs}")
        else:
            results, trained = train_candidate(config, hyp, save_dir / "candidates" / name,
                                               rung_judge(save_dir, name) if halving else None, rungs)
        finish_candidate(save_dir, name, hyp, results, trained, epochs, generations, time.perf_counter() - start,
                         restarts=restarts)


def finish_candidate(save_dir: Path, name: str, hyp: dict[str, float], results: dict[str, float], trained: int,
                     epochs: int, generations: int, seconds: float, rungs: list[dict] | None = None,
                     restarts: bool = False) -> None:
    """A finished candidate's row (evolve.csv if trained in full, else evolve_stopped.csv with its epochs), its
    claim and folder gone, hyp_evolve.yaml and the plots updated, a progress line; all with the ledger locked.
    `rungs`: every rung record, this candidate's last one included, to write as evolve_rungs.csv (a driver that
    holds them); without it the record is appended to the file. With `restarts` this is one rung's run: every
    run is recorded, and a candidate short of `epochs` keeps candidate.yaml (it may be promoted later)."""
    ledger, stopped_ledger, rungs_file = save_dir / "evolve.csv", save_dir / "evolve_stopped.csv", \
        save_dir / "evolve_rungs.csv"
    score = result_fitness(results)
    with locked(ledger):
        if trained >= epochs:
            append_row(ledger, hyp, tuple(results.values()), tuple(results))
        else:  # stopped at a rung (recorded there)
            append_row(stopped_ledger, {**hyp, "epochs": float(trained)}, tuple(results.values()), tuple(results))
        if rungs is not None:
            write_rungs(rungs_file, rungs)
        elif trained >= epochs or restarts:
            record_rung(rungs_file, rung_record(read_rungs(rungs_file), name, trained, score, trained < epochs,
                                                restarts))
        update_claims(save_dir / "evolve.claims", remove=f"{socket.gethostname()}:{os.getpid()}:{name}")
        done = save_dir / "candidates" / name
        shutil.rmtree(done / f"epochs{trained}" if restarts and trained < epochs else done, ignore_errors=True)
        header, rows = read_ledger(ledger)
        history = read_rungs(rungs_file)
        count = len({r["candidate"] for r in history}) if restarts else len(rows) + len(read_ledger(stopped_ledger)[1])
        best = write_best(save_dir, header, rows) if len(rows) else None
        report_progress(save_dir, header, rows, history, count, generations, score, best, trained, epochs, seconds,
                        "a rung's run" if restarts else "stopped at a rung")


def report_progress(save_dir: Path, header: list[str], rows: np.ndarray, history: list[dict], count: int,
                    generations: int, score: float, best: int | None, trained: int, epochs: int,
                    seconds: float, short: str = "stopped at a rung") -> None:
    """One line per finished candidate; evolve.png and evolve_compute.png redrawn (with the lock held, so workers
    never write a plot at once)."""
    from .plots import plot_evolve, plot_evolve_compute

    best_text = f"best {fitness(rows)[best]:.4f} (generation {best})" if best is not None else "no full candidate yet"
    how = f"{trained}/{epochs} epochs" + (f" ({short})" if trained < epochs else "")
    LOGGER.info(f"evolve: candidate {count}/{generations} fitness {score:.4f}, {best_text}, {how}, {seconds:.1f}s")
    if len(rows):
        plot_evolve(save_dir / "evolve.csv", header, rows)
    plot_evolve_compute(save_dir / "evolve_compute.png", history)


def resolve_auto_optimizer(config: TrainConfig, save_dir: Path) -> TrainConfig:
    """--optimizer auto, decided once for the whole evolution (train would otherwise replace every candidate's
    lr0 and momentum with its choice, and they would evolve for nothing): the chosen optimizer, and a starting
    hyp (SAVE_DIR/hyp_start.yaml) holding its lr0, momentum and warmup_bias_lr."""
    data = load_data_config(config.data)
    epochs = config.resolved().epochs
    name, lr0, momentum = auto_optimizer(len(list_images(data, "train")), config.batch_size, epochs,
                                         1 if config.single_cls else data.nc)
    start = {**load_hyp(config.hyp), "lr0": lr0, "momentum": momentum, "warmup_bias_lr": 0.0}
    path = save_dir / "hyp_start.yaml"
    atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(start, sort_keys=False)))
    LOGGER.info(f"evolve: optimizer auto chose {name}(lr={lr0:g}, momentum={momentum:g}) for every candidate")
    return replace(config, optimizer=name, hyp=str(path))


def warn_rungs_in_warmup(config: TrainConfig) -> None:
    """A warning when a rung comes before the warmup ends: the learning rate is still ramping there, so a fitness
    at that rung ranks candidates by how far their warmup got, not by how well they train. YOLOv5's warmup lasts
    max(warmup_epochs, 100 batches); the anchor-free recipe's min(warmup_epochs, epochs - 1)."""
    resolved = config.resolved()
    hyp = load_hyp(resolved.hyp)
    warmup, what = hyp.get("warmup_epochs", 0.0), "hyp warmup_epochs"
    if "dfl" in hyp:
        warmup = min(warmup, resolved.epochs - 1)
    elif warmup > 0 and resolved.batch_size > 0:
        try:
            batches = math.ceil(len(list_images(load_data_config(resolved.data), "train")) / resolved.batch_size)
        except (ConfigError, DataError, OSError):  # the run itself reports a dataset it cannot read
            batches = 0
        if batches:
            warmup, what = max(warmup, 100 / batches), "hyp warmup_epochs, at least 100 batches"
    early = [e for e in rung_epochs(resolved.epochs)[:-1] if e < warmup]
    if early:
        LOGGER.warning(f"evolve: successive halving judges candidates at epoch {', '.join(map(str, early))}, within "
                       f"the warmup ({warmup:.3g} epochs: {what}), where fitness "
                       f"ranks them poorly; with --epochs {math.ceil(warmup) * RUNG_FACTOR ** 2} or more every rung "
                       "comes after it")


def evolve(config: TrainConfig, generations: int = 300, parallel: int = 1, project: str = "runs/evolve",
           name: str = "exp", resume: str | None = None, seed: int | None = None, halving: bool = False,
           backend: str = "file", address: str | None = None, cpus_per_candidate: int = 0,
           restarts: bool = False) -> Path:
    """`yolo-accel evolve`: one worker here, or `parallel` worker processes sharing the file-locked ledger, or
    (backend "ray") one task per candidate on a Ray cluster (evolve_ray.py); returns the evolve folder."""
    if backend not in ("file", "ray"):
        raise ConfigError(f"--backend must be file or ray, got {backend!r}")
    if generations < 1 or parallel < 1:
        raise ConfigError(f"--generations and --parallel must be at least 1, got {generations} and {parallel}")
    if restarts and not halving:
        raise ConfigError("--restarts is how --halving trains its rungs: pass both")
    if backend == "ray" and parallel > 1:
        raise ConfigError("--parallel is for the file backend; with --backend ray the cluster decides how many "
                          "candidates run at once")
    from .train import with_model_defaults

    config = with_model_defaults(config)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("evolve trains one process per candidate, not one candidate over a process group: run it "
                          "without accelerate launch, with --parallel N (one worker per GPU)")
    if resume:
        save_dir = Path(resume)
        check_output_folder(save_dir, "the evolve folder")
    else:
        existing = sorted(Path(project).glob(f"{name}*/evolve.csv"), key=lambda p: p.stat().st_mtime)
        save_dir = increment_path(Path(project) / name, mkdir=True) if not existing else existing[-1].parent
    save_dir.mkdir(parents=True, exist_ok=True)
    if config.optimizer == "auto":
        config = resolve_auto_optimizer(config, save_dir)
    atomic_write(save_dir / "opt.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False)))
    workers = "a Ray cluster" if backend == "ray" else f"{parallel} worker(s)"
    LOGGER.info(f"evolve: {generations} generations in {save_dir} on {workers}" +
                (f", successive halving at epochs {', '.join(map(str, rung_epochs(config.resolved().epochs)))}"
                 + (" (with promotions, each rung a run of its own)" if restarts else "") if halving else ""))
    if halving and not restarts:
        warn_rungs_in_warmup(config)
    if backend == "ray":
        from .evolve_ray import evolve_on_ray

        evolve_on_ray(config, save_dir, generations, seed, halving, address, cpus_per_candidate, restarts)
    elif parallel <= 1:
        evolve_worker(config, save_dir, generations, seed, halving=halving, restarts=restarts)
    else:
        flags = [flag for flag, on in (("halving", halving), ("restarts", restarts)) if on]
        workers = [subprocess.Popen([sys.executable, "-m", "yolo_accel.evolve", str(save_dir), str(generations),
                                     "none" if seed is None else str(seed + i), *flags],
                                    env={**os.environ, **({"CUDA_VISIBLE_DEVICES": str(i % device_count())}
                                                          if device_count() else {})})
                   for i in range(parallel)]
        codes = [w.wait() for w in workers]
        if any(codes):
            LOGGER.warning(f"evolve: worker exit codes {codes}")
    return save_dir


def device_count() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":  # a --parallel worker: python -m yolo_accel.evolve SAVE_DIR GENERATIONS SEED
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    folder, total = Path(sys.argv[1]), int(sys.argv[2])
    worker_seed = None if sys.argv[3] == "none" else int(sys.argv[3])
    options = yaml.safe_load((folder / "opt.yaml").read_text())
    evolve_worker(TrainConfig.from_dict(options, str(folder / "opt.yaml")), folder, total, worker_seed,
                  halving="halving" in sys.argv[4:], restarts="restarts" in sys.argv[4:])
