"""Hyperparameter evolution (YOLOv5's genetic search) with a file-locked ledger shared by any number of workers.

Each worker: lock the ledger, read it, pick a parent from the top 5 by fitness, mutate, unlock; train the
candidate; lock and append one whole row. Workers on one machine or on several machines sharing the folder
cooperate through the lock; a killed worker loses only its own unfinished candidate; re-running continues.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml
from filelock import FileLock

from .config import ConfigError, TrainConfig, load_hyp
from .data.sources import list_images, load_data_config
from .files import atomic_write, increment_path
from .metrics import fitness
from .optim import auto_optimizer
from .results import METRIC_COLUMNS, read_results

LOGGER = logging.getLogger("yolo_accel")
RESULT_KEYS = METRIC_COLUMNS
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
    """Each hyp within its bounds, rounded to 5 digits."""
    out = dict(hyp)
    for key, (_, low, high) in bounds_for(hyp).items():
        if key in out:
            out[key] = round(min(max(out[key], low), high), 5)
    return out


def select_parent(rows: np.ndarray, rng: np.random.Generator, parent: str = "single") -> np.ndarray:
    """From ledger rows (n, 7 + hyps): the top 5 by fitness, one drawn by fitness weight (or their weighted mean)."""
    n = min(5, len(rows))
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


def update_claims(path: Path, add: str | None = None, remove: str | None = None) -> int:
    """Candidates in flight (evolve.claims, one 'host:pid:n' per line), pruning this host's dead workers; call with
    the lock held. Returns how many remain after the change."""
    host = socket.gethostname()
    claims = [c for c in (path.read_text().split() if path.exists() else []) if c != remove]
    claims = [c for c in claims if c.split(":")[0] != host or _alive(int(c.split(":")[1]))]
    if add:
        claims.append(add)
    path.write_text("".join(c + "\n" for c in claims))
    return len(claims)


def train_candidate(config: TrainConfig, hyp: dict[str, float]) -> dict[str, float]:
    """Train one candidate (validation and saving only at its last epoch); its 7 result columns, by name (P, R,
    mAP50, mAP50-95 and the validation losses, whose names are the model's)."""
    from .train import train

    with tempfile.TemporaryDirectory(prefix="yolo-accel-evolve-") as work:
        hyp_file = Path(work) / "hyp.yaml"
        hyp_file.write_text(yaml.safe_dump(hyp, sort_keys=False))
        run = train(replace(config, hyp=str(hyp_file), project=work, name="candidate", noval=True, nosave=True,
                            noplots=True, resume=None, exist_ok=True, candidate=True))
        last = read_results(run / "results.csv")[-1]
    return dict(list(last.items())[4:11])  # after epoch and the three training losses


def evolve_worker(config: TrainConfig, save_dir: Path, generations: int, seed: int | None = None,
                  parent: str = "single") -> None:
    """Run candidates until the ledger holds `generations` rows (counting every worker's)."""
    ledger = save_dir / "evolve.csv"
    base = load_hyp(config.hyp)
    if config.noautoanchor or "dfl" in base:  # anchor-free models have no anchors to evolve
        base.pop("anchors", None)
    else:
        base.setdefault("anchors", 3.0)
    rng = np.random.default_rng(seed if seed is not None else [os.getpid(), time.time_ns()])
    claims = save_dir / "evolve.claims"
    for n in itertools.count():
        claim = f"{socket.gethostname()}:{os.getpid()}:{n}"
        with locked(ledger):
            header, rows = read_ledger(ledger)
            done = len(rows)
            if done + update_claims(claims) >= generations:  # the rest is being trained by other workers
                break
            update_claims(claims, add=claim)
            if done:
                chosen = select_parent(rows, rng, parent)
                hyp = mutate({k: float(chosen[header.index(k)]) for k in base if k in header}, rng)
            else:
                hyp = clamp(base)
        start = time.perf_counter()
        try:
            results = train_candidate(config, hyp)
        except BaseException:  # stopped (Ctrl-C, SIGTERM) or failed: drop this candidate's claim, record nothing
            with locked(ledger):
                update_claims(claims, remove=claim)
            raise
        with locked(ledger):
            append_row(ledger, hyp, tuple(results.values()), tuple(results))
            update_claims(claims, remove=claim)
            header, rows = read_ledger(ledger)
            best = write_best(save_dir, header, rows)
        score = float(fitness(np.array(list(results.values()))[None])[0])
        LOGGER.info(f"evolve: generation {len(rows)}/{generations} fitness {score:.4f}, best {fitness(rows)[best]:.4f} "
                    f"(generation {best}), {time.perf_counter() - start:.1f}s")


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


def evolve(config: TrainConfig, generations: int = 300, parallel: int = 1, project: str = "runs/evolve",
           name: str = "exp", resume: str | None = None, seed: int | None = None) -> Path:
    """`yolo-accel evolve`: one worker here, or `parallel` worker processes; returns the evolve folder."""
    from .train import with_model_defaults

    config = with_model_defaults(config)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("evolve trains one process per candidate, not one candidate over a process group: run it "
                          "without accelerate launch, with --parallel N (one worker per GPU)")
    if resume:
        save_dir = Path(resume)
    else:
        existing = sorted(Path(project).glob(f"{name}*/evolve.csv"), key=lambda p: p.stat().st_mtime)
        save_dir = increment_path(Path(project) / name, mkdir=True) if not existing else existing[-1].parent
    save_dir.mkdir(parents=True, exist_ok=True)
    if config.optimizer == "auto":
        config = resolve_auto_optimizer(config, save_dir)
    atomic_write(save_dir / "opt.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False)))
    LOGGER.info(f"evolve: {generations} generations in {save_dir} with {parallel} worker(s)")
    if parallel <= 1:
        evolve_worker(config, save_dir, generations, seed)
    else:
        workers = [subprocess.Popen([sys.executable, "-m", "yolo_accel.evolve", str(save_dir), str(generations),
                                     "none" if seed is None else str(seed + i)],
                                    env={**os.environ, **({"CUDA_VISIBLE_DEVICES": str(i % device_count())}
                                                          if device_count() else {})})
                   for i in range(parallel)]
        codes = [w.wait() for w in workers]
        if any(codes):
            LOGGER.warning(f"evolve: worker exit codes {codes}")
    header, rows = read_ledger(save_dir / "evolve.csv")
    if len(rows):
        from .plots import plot_evolve

        plot_evolve(save_dir / "evolve.csv", header, rows)
    return save_dir


def device_count() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":  # a --parallel worker: python -m yolo_accel.evolve SAVE_DIR GENERATIONS SEED
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    folder, total = Path(sys.argv[1]), int(sys.argv[2])
    worker_seed = None if sys.argv[3] == "none" else int(sys.argv[3])
    options = yaml.safe_load((folder / "opt.yaml").read_text())
    evolve_worker(TrainConfig.from_dict(options, str(folder / "opt.yaml")), folder, total, worker_seed)
