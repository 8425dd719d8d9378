"""Dataset yaml (YOLOv5 semantics) -> resolved image lists, and image -> label path mapping."""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import stat
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


def is_special_file(path: Path) -> bool:
    """A FIFO, socket or device: opening one can block forever or read without end."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _matches(parts: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    """glob's rules on path segments: `**` spans any number of folders, wildcards skip hidden names."""
    if not patterns:
        return not parts
    if patterns[0] == "**":
        return any(_matches(parts[i:], patterns[1:]) for i in range(len(parts) + 1))
    if not parts or (parts[0].startswith(".") and not patterns[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], patterns[0]) and _matches(parts[1:], patterns[1:])


def glob_files(pattern: str) -> list[Path]:
    """Regular files matching a glob. `**` walks folders visiting each one once, so links that loop back (a `**`
    over a link to `.`) end the walk instead of recursing without end, as glob.glob would."""
    if "**" not in pattern:
        return [Path(p) for p in glob.glob(pattern) if not is_special_file(Path(p)) and os.path.isfile(p)]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    patterns = parts[fixed:]
    found, seen = [], set()
    for root, folders, files in os.walk(base, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen:  # reached again through a link: its files are already listed
            folders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        relative = Path(root).relative_to(base).parts
        for name in files:
            path = Path(root) / name
            if _matches((*relative, name), patterns) and path.is_file():
                found.append(path)
    return found


def expand_entry(entry: Path) -> list[Path] | None:
    """Regular files named by one entry: a glob, a folder (recursive), a .txt list (relative lines: to its folder)
    or a file; None if it names nothing that exists. FIFOs, sockets and devices are left out with a warning."""
    text = str(entry)
    if any(ch in text for ch in "*?["):
        return glob_files(text)
    if entry.is_dir():
        return [p for p in entry.rglob("*") if p.is_file()]  # rglob does not follow links into folders
    if entry.is_file() and entry.suffix == ".txt":
        lines = [line.strip() for line in entry.read_text(errors="replace").splitlines() if line.strip()]
        listed = [Path(line) if Path(line).is_absolute() else (entry.parent / line) for line in lines]
        special = [p for p in listed if is_special_file(p)]
        for path in special[:5]:
            LOGGER.warning(f"WARNING ⚠️ {entry}: skipping {path}: not a regular file (a FIFO, socket or device)")
        return [p for p in listed if p not in special] if special else listed
    if is_special_file(entry):
        raise DataError(f"{entry}: not a regular file (a FIFO, socket or device); name an image, a folder, a glob "
                        f"or a .txt list")
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
