"""Dataset yaml (YOLOv5 semantics) -> resolved image lists, and image -> label path mapping."""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, read_yaml, resolve_config

LOGGER = logging.getLogger("yolo_accel")
IMAGE_FORMATS = ("bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp")
DATA_KEYS = {"path", "train", "val", "test", "names", "nc", "download"}


class DataError(ValueError):
    """The dataset is missing or unusable; the message says which file and what to fix."""


@dataclass(frozen=True)
class DataConfig:
    """A parsed dataset yaml: absolute sources per split, class names, and where it came from."""

    source: Path
    root: Path
    splits: dict[str, list[Path]]  # 'train' / 'val' / 'test' -> folders, .txt lists or globs
    names: list[str]
    download: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.names)


def _parse_names(raw: Any, nc: Any, source: Path) -> list[str]:
    if raw is None:
        if not isinstance(nc, int) or nc < 1:
            raise ConfigError(f"{source}: needs 'names' (a list, or a dict of index: name)")
        return [f"class{i}" for i in range(nc)]
    if isinstance(raw, dict):
        keys = sorted(raw)
        if keys != list(range(len(keys))):
            raise ConfigError(f"{source}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        names = [str(raw[k]) for k in keys]
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    else:
        raise ConfigError(f"{source}: 'names' must be a list or a dict, got {type(raw).__name__}")
    if nc is not None and nc != len(names):
        raise ConfigError(f"{source}: nc={nc} but {len(names)} names are listed; make them agree")
    return names


def load_data_config(data: str | Path) -> DataConfig:
    """Read a dataset yaml ('demo', a shipped name like 'coco128', or a path) and resolve its paths.

    `path` is relative to the yaml's folder; split entries are relative to `path`.
    """
    if str(data) == "demo":
        from .demo import demo_dataset

        data = demo_dataset()
    source = resolve_config(data, "data")
    raw = read_yaml(source)
    unknown = sorted(set(raw) - DATA_KEYS)
    if unknown:
        LOGGER.warning(f"{source}: ignoring unknown key(s) {', '.join(unknown)}")
    root = Path(raw.get("path") or ".").expanduser()
    if not root.is_absolute():
        root = (source.parent / root).resolve()
    splits: dict[str, list[Path]] = {}
    for split in ("train", "val", "test"):
        entries = raw.get(split)
        if not entries:
            continue
        entries = entries if isinstance(entries, list) else [entries]
        splits[split] = [p if p.is_absolute() else root / p for p in (Path(str(e)).expanduser() for e in entries)]
    if "train" not in splits and "val" not in splits:
        raise ConfigError(f"{source}: needs 'train' and/or 'val' entries")
    return DataConfig(source=source, root=root, splits=splits, names=_parse_names(raw.get("names"), raw.get("nc"),
                      source), download=raw.get("download"))


def missing_data_message(config: DataConfig, split: str, missing: Path) -> str:
    message = f"{config.source}: {split} data not found at {missing}"
    if config.download:
        message += (f". yolo-accel does not download datasets: get it from {config.download} and unpack it so "
                    f"that {missing} exists")
    return message


def expand_entry(entry: Path) -> list[Path] | None:
    """Files named by one entry: a glob, a folder (recursive), a .txt list (relative lines: to its folder) or a
    file; None if it names nothing that exists."""
    text = str(entry)
    if any(ch in text for ch in "*?["):
        return [Path(p) for p in glob.glob(text, recursive=True)]
    if entry.is_dir():
        return [p for p in entry.rglob("*") if p.is_file()]
    if entry.is_file() and entry.suffix == ".txt":
        lines = [line.strip() for line in entry.read_text().splitlines() if line.strip()]
        return [Path(line) if Path(line).is_absolute() else (entry.parent / line) for line in lines]
    return [entry] if entry.is_file() else None


def only_images(files: list[Path]) -> list[Path]:
    """The image files among `files`, normalised, deduplicated and sorted."""
    return sorted({Path(os.path.normpath(p)) for p in files if p.suffix[1:].lower() in IMAGE_FORMATS})


def list_images(config: DataConfig, split: str) -> list[Path]:
    """Every image of a split, sorted; folders are searched recursively, .txt lists resolve against their folder."""
    if split not in config.splits:
        raise DataError(f"{config.source}: no '{split}' split")
    files: list[Path] = []
    for entry in config.splits[split]:
        found = expand_entry(entry)
        if found is None:
            raise DataError(missing_data_message(config, split, entry))
        files += found
    images = only_images(files)
    if not images:
        raise DataError(f"{config.source}: no images ({', '.join(IMAGE_FORMATS)}) found for '{split}' in "
                        f"{', '.join(map(str, config.splits[split]))}")
    return images


def label_path(image: Path) -> Path:
    """/a/images/b/c.jpg -> /a/labels/b/c.txt (the last /images/ segment becomes /labels/)."""
    parts = str(image).rsplit(f"{os.sep}images{os.sep}", 1)
    joined = f"{os.sep}labels{os.sep}".join(parts)
    return Path(joined).with_suffix(".txt")
