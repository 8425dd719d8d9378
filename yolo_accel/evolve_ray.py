"""`yolo-accel evolve --backend ray`: each candidate a Ray task, as many at once as the cluster holds.

One driver (this process) owns the ledger: it breeds each candidate from the latest evolve.csv, submits it as a
task with the resources it needs (one GPU each where the cluster has GPUs, else `cpus_per_candidate` CPUs), and
writes a task's row when it returns, so machines without a shared file system can take part (the dataset path must
exist on each). The same files as the file-locked backend: evolve.csv, evolve_stopped.csv, evolve_rungs.csv,
hyp_evolve.yaml, evolve.png. Successive halving's rung verdicts come from an actor that holds the rung records;
with --restarts (promotions) the driver picks each run, a promotion or a new candidate, as a slot frees.

A task lost with its worker or node is retried (`max_retries`); it trains in the candidate's folder
(save_dir/candidates/NAME where that path can be written, else a local one), so a retry on the same machine or
over a shared file system resumes the candidate's latest epoch snapshot exactly. Candidates a killed driver left
are resumed first, as with the file-locked backend. Ray is an optional extra: `pip install "yolo-accel[ray]"`.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .config import ConfigError, TrainConfig
from .evolve import (
    base_hyp,
    finish_candidate,
    next_candidate,
    next_job,
    result_fitness,
    train_candidate,
)
from .rungs import judge_rung, read_rungs, rung_epochs, rung_record

LOGGER = logging.getLogger("yolo_accel")
RETRIES = 3  # a task whose worker or node died is run again this many times


class RungBoard:
    """The rung records of one evolution (a Ray actor): tasks ask it for their verdicts; the driver reads it."""

    def __init__(self, history: list[dict]):
        self.history = list(history)

    def judge(self, name: str, epochs: int, score: float) -> bool:
        go_on, record = judge_rung(self.history, name, epochs, score)
        if record is not None:
            self.history.append(record)
        return go_on

    def records(self) -> list[dict]:
        return self.history

    def add(self, record: dict) -> list[dict]:
        """A candidate's final record; returns every record."""
        self.history.append(record)
        return self.history


def run_candidate(options: dict, hyp: dict[str, float], folder: str, rungs: tuple[int, ...], board) -> tuple:
    """One candidate, in a Ray worker: (result columns, epochs trained). Trains in `folder`, or in a local folder
    of the same name where that path cannot be made (a machine without the driver's file system)."""
    import ray

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        where = Path(folder)
    except OSError:
        where = Path(tempfile.gettempdir()) / "yolo-accel-evolve" / Path(folder).name
        where.mkdir(parents=True, exist_ok=True)
    name = Path(folder).name
    on_rung = (lambda epochs, score: ray.get(board.judge.remote(name, epochs, score))) if board is not None else None
    return train_candidate(TrainConfig.from_dict(options, "the evolve driver's options"), hyp, where, on_rung, rungs)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError('--backend ray needs Ray: pip install "yolo-accel[ray]"') from None
    return ray


def evolve_on_ray(config: TrainConfig, save_dir: Path, generations: int, seed: int | None = None,
                  halving: bool = False, address: str | None = None, cpus_per_candidate: int = 0,
                  restarts: bool = False) -> None:
    """Run the evolution's candidates as Ray tasks until the ledgers hold `generations` of them (with `restarts`,
    promotions and new candidates until none is left to start: the driver asks next_job again as each returns)."""
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = cpus_per_candidate or (1 if gpus else max(1, config.workers + 1))
    slots = gpus if gpus else max(1, int(resources.get("CPU", 1)) // cpus)
    task = ray.remote(max_retries=RETRIES, num_cpus=cpus, num_gpus=1 if gpus else 0)(run_candidate)
    LOGGER.info(f"evolve: Ray cluster with {resources.get('CPU', 0):g} CPUs and {gpus} GPUs, "
                f"{slots} candidate(s) at once ({'1 GPU' if gpus else f'{cpus} CPUs'} each)")
    epochs = config.resolved().epochs
    rungs = rung_epochs(epochs) if halving else (epochs,)
    board = ray.remote(RungBoard).remote(read_rungs(save_dir / "evolve_rungs.csv")) if halving and not restarts \
        else None
    base, options = base_hyp(config), config.to_dict()
    rng = np.random.default_rng(seed if seed is not None else [os.getpid(), time.time_ns()])
    running: dict = {}  # task reference -> (name, hyp, start)
    for n in itertools.count():
        job = None
        if len(running) < slots and restarts:
            job = next_job(save_dir, base, generations, rng, "single", n, rungs)
        elif len(running) < slots:
            chosen = next_candidate(save_dir, base, generations, rng, "single", n)
            job = None if chosen is None else (*chosen, epochs)
        if job is not None:
            name, hyp, run_epochs = job
            folder = (save_dir / "candidates" / name).resolve()
            if restarts:  # one rung's run
                ref = task.remote({**options, "epochs": run_epochs}, hyp, str(folder / f"epochs{run_epochs}"),
                                  (run_epochs,), None)
            else:
                ref = task.remote(options, hyp, str(folder), rungs, board)
            running[ref] = (name, hyp, time.perf_counter())
            continue
        if not running:
            break
        (done,), _ = ray.wait(list(running), num_returns=1)
        name, hyp, start = running.pop(done)
        results, trained = ray.get(done)
        history = None
        if board is not None:
            history = ray.get(board.records.remote())
            if trained >= epochs:  # its last record (a stopped one was recorded by its verdict)
                final = rung_record(history, name, trained, result_fitness(results), False)
                history = ray.get(board.add.remote(final))
        finish_candidate(save_dir, name, hyp, results, trained, epochs, generations, time.perf_counter() - start,
                         rungs=history, restarts=restarts)
