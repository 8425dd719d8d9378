"""Resumable training state: safetensors for tensors, JSON for everything else; nothing is ever unpickled.

Layout of a run's `state/` folder:
    latest.json                      {"name": "000001234"}  (replaced atomically; names the complete snapshot)
    000001234/model.safetensors      training model weights
    000001234/ema.safetensors        EMA weights and its update counter
    000001234/optimizer.safetensors  optimizer tensors (+ optimizer.json: groups and scalar state)
    000001234/trainer.json           loop counters, scheduler, grad scaler, early stopping, config
    000001234/rng_{rank}.safetensors + rng_{rank}.json   every process's random generators
    000001234/grads_{rank}.safetensors  gradients accumulated since the last optimizer step (mid-epoch saves)
A snapshot folder is written under a temporary name, flushed to the disk and renamed into place before latest.json
points at it, so a kill or a power cut at any moment leaves the previous snapshot intact; the one before the latest
is kept too, the fallback if the latest is ever found damaged. What goes in is a TrainingState.state_dict() plus each
process's generators and pending gradients; read_snapshot gives back what TrainingState.load_state_dict takes.
"""

from __future__ import annotations

import errno
import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .files import atomic_write, fsync_path

SNAPSHOT_NAME = re.compile(r"\d{9}")
STATE_VERSION = 2  # 2: best fitness kept once (early stopping's); the schedule's planned epochs


class StateError(RuntimeError):
    """A training state folder is missing or incomplete; the message names it."""


def optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split optimizer.state_dict() into tensors (safetensors) and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_to_files(python_rng: random.Random) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's generators: torch CPU and CUDA, numpy's global, Python's global and the loop's own."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": _jsonable(random.getstate()),
            "loop": _jsonable(python_rng.getstate())}
    return tensors, meta


def rng_from_files(tensors: dict[str, torch.Tensor], meta: dict, python_rng: random.Random) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_tupled(meta["python"]))
    python_rng.setstate(_tupled(meta["loop"]))


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file created by us, so it gets the umask's permissions (safetensors' own writer makes 0600)."""
    path.write_bytes(save(tensors))


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)), durable=True)


def snapshot_name(step: int) -> str:
    return f"{step:09d}"


def save_snapshot(folder: Path, step: int, rank: int, state: Callable[[], dict[str, Any]] | None,
                  python_rng: random.Random, pending_grads: dict[str, torch.Tensor],
                  barrier: Callable[[], None], any_failed: Callable[[bool], bool] = lambda failed: failed) -> None:
    """Write one snapshot from every process: each its generators and pending gradients, the main process (the one
    given `state`, a TrainingState.state_dict) the rest, then make it the latest. `barrier` waits for all processes,
    `any_failed` tells each whether any failed. A failed save (a full disk, say) leaves nothing behind, keeps the
    previous snapshots, and raises StateError on every process."""
    tmp = folder / f".{snapshot_name(step)}.partial"
    error: OSError | None = None
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        error = err
    barrier()
    if error is None:
        try:
            write_rank_files(tmp, rank, python_rng, pending_grads)
        except OSError as err:
            error = err
    if not any_failed(error is not None) and state is not None:
        try:
            write_main_files(tmp, state())
            commit_snapshot(folder, tmp, step)
        except OSError as err:
            error = err
    if any_failed(error is not None):
        if state is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise StateError(save_failure(folder, error))
    barrier()


def save_failure(folder: Path, error: OSError | None) -> str:
    """Why a save failed, and that the previous snapshot is still there to resume from."""
    if error is None:
        reason = "another process could not write its part"
    elif error.errno == errno.ENOSPC:
        reason = "no space left on the device"
    else:
        reason = f"{error.strerror or error} ({error.filename or folder})"
    return f"{folder}: saving the training state failed: {reason}. The previous state is kept; free the problem " \
           f"(disk space, permissions), then continue with --resume"


def write_rank_files(tmp: Path, rank: int, python_rng: random.Random,
                     pending_grads: dict[str, torch.Tensor] | None = None) -> None:
    """This process's generators and, mid-accumulation, its not-yet-applied gradients (local under no_sync)."""
    tensors, meta = rng_to_files(python_rng)
    save_tensors(tensors, tmp / f"rng_{rank}.safetensors")
    (tmp / f"rng_{rank}.json").write_text(json.dumps(meta))
    if pending_grads:
        save_tensors({k: v.detach().cpu().contiguous() for k, v in pending_grads.items()},
                     tmp / f"grads_{rank}.safetensors")


def write_main_files(tmp: Path, state: dict[str, Any]) -> None:
    """model, ema, optimizer and trainer files of a TrainingState.state_dict()."""
    save_tensors({k: v.detach().cpu().contiguous() for k, v in state["model"].items()}, tmp / "model.safetensors")
    if state.get("ema") is not None:
        save_tensors({k: v.detach().cpu().contiguous() for k, v in state["ema"].items()}, tmp / "ema.safetensors")
    tensors, meta = optimizer_to_files(state["optimizer"])
    save_tensors(tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "trainer.json").write_text(json.dumps({"version": STATE_VERSION, **state["trainer"]}, indent=1))


def commit_snapshot(folder: Path, tmp: Path, step: int) -> Path:
    """Flush the finished snapshot to the disk, rename it into place, point latest.json at it, and keep it and the
    one before it (the fallback if it is ever found damaged); older ones are dropped."""
    for file in tmp.iterdir():
        fsync_path(file)
    fsync_path(tmp)
    target = folder / snapshot_name(step)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    fsync_path(folder)
    previous = latest_name(folder)
    write_json(folder / "latest.json", {"name": target.name})
    for old in folder.iterdir():
        if old.is_dir() and old.name not in (target.name, previous):
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_name(folder: Path) -> str | None:
    """The snapshot latest.json names, if it is readable."""
    try:
        name = json.loads((folder / "latest.json").read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and SNAPSHOT_NAME.fullmatch(name) else None


def snapshots(folder: Path) -> list[Path]:
    """Complete snapshots to resume from, best first: the latest, then older ones, newest first."""
    latest = latest_name(folder)
    found = sorted((p for p in folder.iterdir() if p.is_dir() and SNAPSHOT_NAME.fullmatch(p.name)),
                   key=lambda p: (p.name != latest, -int(p.name))) if folder.is_dir() else []
    found = [p for p in found if (p / "trainer.json").is_file()]
    if not found:
        raise StateError(f"{folder}: no training state to resume from (no complete snapshot)")
    return found


def latest_snapshot(folder: Path) -> Path:
    return snapshots(folder)[0]


def upgrade_trainer(trainer: dict[str, Any], source: Path) -> dict[str, Any]:
    """trainer.json of an older state version in today's form (or StateError if it cannot be)."""
    version = trainer.get("version", 0)
    if version > STATE_VERSION:
        raise StateError(f"{source}: written by a newer yolo-accel (state version {version}, this one reads up to "
                         f"{STATE_VERSION}); upgrade yolo-accel")
    if version < 1 or not {"loop", "scheduler", "stopper"} <= set(trainer):
        raise StateError(f"{source}: made by an older version of yolo-accel (state version {version}) that this "
                         f"one cannot resume; start a new run (its weights load with --weights)")
    if version == 1:  # best fitness was also kept in the loop counters; the planned epochs in the config copy
        trainer = {**trainer, "loop": {k: v for k, v in trainer["loop"].items()
                                       if k not in ("best_fitness", "best_epoch")},
                   "planned_epochs": trainer["config"]["epochs"]}
    return trainer


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as err:
        raise StateError(f"{path}: damaged or unreadable ({err})") from None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StateError(f"{path}: damaged or unreadable ({err})") from None


def read_snapshot(snapshot: Path) -> dict[str, Any]:
    """A TrainingState.state_dict() as saved (RNG and gradient files are read per process: read_rank_files,
    read_pending_grads); StateError naming the file if any part is damaged."""
    trainer = _json(snapshot / "trainer.json")
    if not isinstance(trainer, dict):
        raise StateError(f"{snapshot / 'trainer.json'}: damaged (not a JSON object)")
    trainer = upgrade_trainer(trainer, snapshot / "trainer.json")
    ema_file = snapshot / "ema.safetensors"
    try:
        optimizer = optimizer_from_files(_tensors(snapshot / "optimizer.safetensors"),
                                         _json(snapshot / "optimizer.json"))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise StateError(f"{snapshot / 'optimizer.json'}: damaged ({err!r})") from None
    return {"trainer": trainer, "model": _tensors(snapshot / "model.safetensors"),
            "ema": _tensors(ema_file) if ema_file.is_file() else None, "optimizer": optimizer}


def read_rank_files(snapshot: Path, rank: int, python_rng: random.Random) -> bool:
    """Restore this process's generators; False if the snapshot has none for this rank."""
    tensors_file, meta_file = snapshot / f"rng_{rank}.safetensors", snapshot / f"rng_{rank}.json"
    if not (tensors_file.is_file() and meta_file.is_file()):
        return False
    try:
        rng_from_files(_tensors(tensors_file), _json(meta_file), python_rng)
    except (KeyError, TypeError, ValueError) as err:
        raise StateError(f"{meta_file}: damaged ({err!r})") from None
    return True


def read_pending_grads(snapshot: Path, rank: int) -> dict[str, torch.Tensor]:
    """Gradients accumulated but not yet applied when this process's state was saved (empty if none)."""
    path = snapshot / f"grads_{rank}.safetensors"
    return _tensors(path) if path.is_file() else {}
