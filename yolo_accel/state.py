"""Resumable training state: safetensors for tensors, JSON for everything else; nothing is ever unpickled.

Layout of a run's `state/` folder:
    latest.json                      {"name": "000001234"}  (replaced atomically; names the complete snapshot)
    000001234/model.safetensors      training model weights
    000001234/ema.safetensors        EMA weights and its update counter
    000001234/optimizer.safetensors  optimizer tensors (+ optimizer.json: groups and scalar state)
    000001234/trainer.json           loop counters, scheduler, grad scaler, early stopping, config
    000001234/rng_{rank}.safetensors + rng_{rank}.json   every process's random generators
    000001234/grads_{rank}.safetensors  gradients accumulated since the last optimizer step (mid-epoch saves)
A snapshot folder is written under a temporary name and renamed into place before latest.json points at it,
so a kill at any moment leaves the previous snapshot intact.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .files import atomic_write

STATE_VERSION = 1


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


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def snapshot_name(step: int) -> str:
    return f"{step:09d}"


def begin_snapshot(folder: Path, step: int) -> Path:
    """The temporary folder a snapshot is written into (every process may write its RNG files there)."""
    tmp = folder / f".{snapshot_name(step)}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def write_rank_files(tmp: Path, rank: int, python_rng: random.Random,
                     pending_grads: dict[str, torch.Tensor] | None = None) -> None:
    """This process's generators and, mid-accumulation, its not-yet-applied gradients (local under no_sync)."""
    tensors, meta = rng_to_files(python_rng)
    save_file(tensors, str(tmp / f"rng_{rank}.safetensors"))
    (tmp / f"rng_{rank}.json").write_text(json.dumps(meta))
    if pending_grads:
        save_file({k: v.detach().cpu().contiguous() for k, v in pending_grads.items()},
                  str(tmp / f"grads_{rank}.safetensors"))


def write_main_files(tmp: Path, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None,
                     optimizer: dict, trainer: dict) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    tensors, meta = optimizer_to_files(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "trainer.json").write_text(json.dumps({"version": STATE_VERSION, **trainer}, indent=1))


def commit_snapshot(folder: Path, tmp: Path, step: int) -> Path:
    """Rename the finished snapshot into place, point latest.json at it, then drop older snapshots."""
    target = folder / snapshot_name(step)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    write_json(folder / "latest.json", {"name": target.name})
    for old in folder.iterdir():
        if old.is_dir() and old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_snapshot(folder: Path) -> Path:
    pointer = folder / "latest.json"
    try:
        name = json.loads(pointer.read_text())["name"]
    except (OSError, ValueError, KeyError):
        raise StateError(f"{folder}: no training state to resume from (missing or unreadable latest.json)") from None
    snapshot = folder / name
    if not (snapshot / "trainer.json").is_file():
        raise StateError(f"{snapshot}: training state is incomplete")
    return snapshot


def read_snapshot(snapshot: Path) -> dict[str, Any]:
    """Everything a resume needs except the RNG files (read per process with read_rank_files)."""
    trainer = json.loads((snapshot / "trainer.json").read_text())
    if trainer.get("version", 0) > STATE_VERSION:
        raise StateError(f"{snapshot}: written by a newer yolo-accel (state version {trainer['version']})")
    ema_file = snapshot / "ema.safetensors"
    return {
        "trainer": trainer,
        "model": load_file(str(snapshot / "model.safetensors")),
        "ema": load_file(str(ema_file)) if ema_file.is_file() else None,
        "optimizer": optimizer_from_files(load_file(str(snapshot / "optimizer.safetensors")),
                                          json.loads((snapshot / "optimizer.json").read_text())),
    }


def read_rank_files(snapshot: Path, rank: int, python_rng: random.Random) -> bool:
    """Restore this process's generators; False if the snapshot has none for this rank."""
    tensors_file, meta_file = snapshot / f"rng_{rank}.safetensors", snapshot / f"rng_{rank}.json"
    if not (tensors_file.is_file() and meta_file.is_file()):
        return False
    rng_from_files(load_file(str(tensors_file)), json.loads(meta_file.read_text()), python_rng)
    return True


def read_pending_grads(snapshot: Path, rank: int) -> dict[str, torch.Tensor]:
    """Gradients accumulated but not yet applied when this process's state was saved (empty if none)."""
    path = snapshot / f"grads_{rank}.safetensors"
    return load_file(str(path)) if path.is_file() else {}
