"""Experiment trackers through Accelerate: every tracker it ships, and what YOLOv5's loggers logged beyond scalars
(the first training mosaics, validation predictions, the final curves and confusion matrix as images; the best
weights as an artifact where the tracker keeps files)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS
from PIL import Image

from .config import ConfigError

LOGGER = logging.getLogger("yolo_accel")
TRACKERS = tuple(LOGGER_TYPE_TO_CLASS)  # aim, comet_ml, mlflow, tensorboard, wandb, clearml, dvclive, swanlab, ...
PACKAGES = {"tensorboard": "tensorboard", "comet_ml": "comet_ml"}  # the module each needs, where not its own name


def installed(tracker: str) -> bool:
    try:
        importlib.import_module(PACKAGES.get(tracker, tracker))
    except ImportError:
        return False
    return True


def resolve_trackers(log_with: str) -> list[str]:
    """--log-with: none, all (every installed tracker), or names separated by commas; an unknown or uninstalled one
    is a ConfigError saying what to install."""
    if log_with in ("", "none"):
        return []
    if log_with == "all":
        return [t for t in TRACKERS if installed(t)]
    names = [n.strip() for n in log_with.split(",") if n.strip()]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"--log-with {name}: not a tracker Accelerate knows (choose from "
                              f"{', '.join(TRACKERS)}, all or none)")
        if not installed(name):
            raise ConfigError(f"--log-with {name}: the {PACKAGES.get(name, name)} package is not installed "
                              f"(pip install {PACKAGES.get(name, name).replace('_', '-')})")
    return names


def log_images(accelerator: Accelerator, files: list[Path], step: int) -> None:
    """The image files that exist, each under its file name, to every tracker that takes images."""
    images = {path.stem: np.asarray(Image.open(path).convert("RGB")) for path in files if path.is_file()}
    if not images:
        return
    for tracker in accelerator.trackers:
        if not hasattr(tracker, "log_images"):
            continue
        try:
            if tracker.name == "tensorboard":
                for name, image in images.items():
                    tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({name: [image] for name, image in images.items()}, step=step)
        except Exception as err:  # a tracker's own failure must not end a training run
            LOGGER.warning(f"WARNING ⚠️ {tracker.name}: images not logged ({err})")


def log_weights(accelerator: Accelerator, path: Path, name: str) -> None:
    """A weights file as an artifact, to the trackers that keep files (wandb, mlflow)."""
    if not path.is_file():
        return
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "wandb":
                import wandb

                artifact = wandb.Artifact(name, type="model")
                artifact.add_file(str(path))
                tracker.run.log_artifact(artifact)
            elif tracker.name == "mlflow":
                tracker.log_artifact(str(path))
        except Exception as err:  # as above
            LOGGER.warning(f"WARNING ⚠️ {tracker.name}: {path.name} not logged ({err})")
